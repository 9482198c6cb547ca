"""The robot oracle's HTTP layer: one ``httpx`` client on an asyncio loop in a background thread,
with every request retried until it gets an answer worth interpreting.

Every request that fails in transit (connection refused or cut, time-out, 5xx, 408, 429) is
retried with capped, jittered exponential back-off; this is safe because reads and cancels
are idempotent and each ``POST /v1/runs`` carries an idempotency key. :func:`refusal` turns
the lab's other answers into the oracle's errors, by the contract's error codes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

import httpx

from oracles.errors import EvaluationFailed, OracleSetupError
from oracles.lab.contract import ErrorCode, error_code

log = logging.getLogger("alloop.robot")

_FIRST_BACKOFF_S = 0.1


class LabUnreachable(EvaluationFailed):
    """Retries ran out (attempts or time) before the lab answered."""


class LabClient:
    """HTTP to one lab, with retries, from any thread (see the module docstring).

    Args:
        url: The lab's base URL.
        token: Its bearer token (sent in every request, never logged).
        request_timeout_s: Time-out of one HTTP request.
        max_backoff_s: Longest wait between two attempts.
        verify: TLS verification: ``True``, ``False`` or a CA bundle path.
        stats: Where requests and retries are counted (the oracle's counters).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        request_timeout_s: float,
        max_backoff_s: float,
        verify: bool | str,
        stats: Counter[str],
    ) -> None:
        self.url = url
        self.__token = token
        self.request_timeout_s, self.max_backoff_s, self.verify = request_timeout_s, max_backoff_s, verify
        self.stats = stats
        #: Set when the client is closed; a closed client starts no loop again.
        self.closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None
        self._lock = threading.Lock()
        self._jitter = random.Random()

    def __repr__(self) -> str:  # never the token
        return f"LabClient(url={self.url!r})"

    @property
    def started(self) -> bool:
        return self._loop is not None

    # --- the event loop ---

    def start(self) -> asyncio.AbstractEventLoop:
        """The client's event loop, started on first use.

        Raises:
            OracleSetupError: the client is closed.
        """
        with self._lock:
            if self.closed:
                raise OracleSetupError("the robot oracle is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, daemon=True, name="robot-oracle")
                self._thread.start()
                self._loop = loop
                asyncio.run_coroutine_threadsafe(self._open(), loop).result()
            return self._loop

    async def _open(self) -> None:
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.__token}", "User-Agent": "alloop-robot/1"},
            timeout=httpx.Timeout(self.request_timeout_s),
            verify=self.verify,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run a coroutine on the client's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.start()).result(timeout)

    def close(self) -> None:
        """Cancel every task on the loop, close the connections, stop the loop. Idempotent."""
        self.closed = True
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            if self._client is not None:
                await self._client.aclose()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        except Exception:  # closing must not raise
            log.debug("robot oracle shutdown was not clean", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        if not loop.is_running():
            loop.close()
        self._loop = None

    # --- requests ---

    async def send(
        self,
        method: str,
        path: str,
        *,
        deadline: float | None = None,
        attempts: int | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """A request, retried on transport errors, 5xx, 408 and 429 until ``attempts`` or
        ``deadline`` run out; any other answer is returned to the caller to interpret.

        Raises:
            LabUnreachable: retries ran out.
        """
        assert self._client is not None
        attempt = 0
        while True:
            attempt += 1
            self.stats["requests"] += 1
            retry_after = None
            try:
                response = await self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:  # refused, cut, timed out, dropped mid-response
                problem = f"{type(exc).__name__}"
            else:
                if response.status_code < 500 and response.status_code not in (408, 429):
                    return response
                problem = f"HTTP {response.status_code}"
                retry_after = _retry_after(response)
            delay = min(self.max_backoff_s, _FIRST_BACKOFF_S * 2 ** (attempt - 1))
            delay *= 0.5 + 0.5 * self._jitter.random()
            if retry_after is not None:
                delay = max(delay, min(retry_after, 4 * self.max_backoff_s))
            if (attempts is not None and attempt >= attempts) or (
                deadline is not None and time.monotonic() + delay > deadline
            ):
                raise LabUnreachable(f"{method} {path}: {problem}; gave up after {attempt} attempt(s)")
            self.stats["retries"] += 1
            log.debug("%s %s: %s; retrying in %.2f s (attempt %d)", method, path, problem, delay, attempt)
            await asyncio.sleep(delay)

    def stream(self, method: str, path: str, **kwargs: Any) -> Any:
        """A streamed request (``async with``), not retried: for server-sent events."""
        assert self._client is not None
        return self._client.stream(method, path, **kwargs)


def url_problem(url: str) -> str | None:
    """What is wrong with a lab's base URL (not http(s), or credentials in it); ``None`` if
    nothing is."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s) URL"
    if parts.username or parts.password:
        return "credentials do not go in the URL; the token comes from the environment"
    return None


def refusal(response: httpx.Response, what: str, url: str, campaign: str) -> Exception:
    """The error for a 4xx answer the lab at ``url`` gave to ``what`` (a campaign's request)."""
    detail = _detail(response)
    code = response.status_code
    if code in (401, 403):
        return OracleSetupError(f"the lab at {url} refused the token (HTTP {code}) for {what}")
    reason = _code(response)
    if code == 409 and reason == ErrorCode.ESTOPPED:
        return OracleSetupError(f"the lab at {url} is e-stopped: {detail}")
    if code == 409 and reason == ErrorCode.IDEMPOTENCY_CONFLICT:
        return OracleSetupError(
            f"{what}: {detail}; another campaign named {campaign!r} used this lab — "
            "give the campaign a unique name"
        )
    if code == 422:
        return EvaluationFailed(f"the lab refused {what} (HTTP 422): {detail}", retryable=False)
    if code == 413:
        return EvaluationFailed(f"the lab refused {what} as too large (HTTP 413)", retryable=False)
    return OracleSetupError(f"unexpected answer to {what} from {url}: HTTP {code}: {detail}")


def json_body(response: httpx.Response) -> dict[str, Any]:
    """An answer's JSON object.

    Raises:
        EvaluationFailed: (retryable) the answer is not a JSON object.
    """
    try:
        data = response.json()
    except ValueError:
        raise EvaluationFailed(
            f"the lab answered HTTP {response.status_code} with something that is not JSON", retryable=True
        ) from None
    if not isinstance(data, dict):
        raise EvaluationFailed(f"the lab answered with unexpected JSON: {str(data)[:200]}", retryable=True)
    return data


def _code(response: httpx.Response) -> str | None:
    try:
        return error_code(response.json())
    except ValueError:
        return None


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    text = detail if isinstance(detail, str) else json.dumps(detail)
    return text[:1000]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None
