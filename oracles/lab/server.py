"""Run the reference self-driving lab with uvicorn in a background thread.

:class:`LabServer` serves :func:`~oracles.lab.app.create_app` on a loopback port, for tests,
benchmarks and examples; ``alloop lab serve`` (:mod:`oracles.lab.cli`) runs it in the
foreground. The pieces: :mod:`oracles.lab.contract` (the wire, shared with the robot oracle),
:mod:`oracles.lab.app` (routes), :mod:`oracles.lab.middleware` (token guard, fault
injection), :mod:`oracles.lab.instruments` (the queue and its instruments),
:mod:`oracles.lab.programs` and :mod:`oracles.lab.store`.
"""

from __future__ import annotations

import socket
import threading
import time

from oracles.lab.app import DEFAULT_MAX_BODY_BYTES, create_app
from oracles.lab.instruments import Lab


class LabServer:
    """Serve a lab with uvicorn in a background thread (tests, benchmarks, examples).

    Args:
        lab: The lab to serve.
        token: Its bearer token.
        host: Where to listen (loopback by default).
        port: The port; 0 picks a free one (see :attr:`url`).
        max_body_bytes: Larger request bodies get 413.
    """

    def __init__(
        self,
        lab: Lab,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        import uvicorn

        self.lab = lab
        self.app = create_app(lab, token, max_body_bytes=max_body_bytes)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            http="h11",
            lifespan="on",
            timeout_graceful_shutdown=2,
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> LabServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True, name="lab-server"
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the lab server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: open connections close, runs on an instrument finish, queued ones stay."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> LabServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
