"""The reference lab's ASGI middleware: the bearer-token and body-size guard, fault injection.

Both run before FastAPI sees a request: a request without the token never reaches a handler
(and no body is read for it); the lab's HTTP faults (5xx before or after the work, dropped
and slow answers) are applied around the routes under ``/v1/runs``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from oracles.lab.contract import HEALTH_PATH, RUNS_PATH, ErrorCode, error_body
from oracles.lab.instruments import Lab

log = logging.getLogger("alloop.lab")

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


async def send_json(
    send: Callable[[Any], Awaitable[None]],
    status: int,
    body: Mapping[str, Any],
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer with a JSON body from the middleware, before the application runs."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class Guard:
    """Bearer-token check (constant time) and request-size limit, before anything else runs:
    a request without the token never reaches a handler, and no body is read for it."""

    def __init__(self, app: ASGIApp, token: str, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if scope["path"] != HEALTH_PATH:
            provided = headers.get(b"authorization")
            if provided is None or not secrets.compare_digest(provided, self._expected):
                error = "invalid_request" if provided is None else "invalid_token"
                await send_json(
                    send,
                    401,
                    error_body("missing or wrong bearer token", ErrorCode.UNAUTHORIZED),
                    [(b"www-authenticate", f'Bearer realm="alloop-lab", error="{error}"'.encode())],
                )
                return
        declared = headers.get(b"content-length")
        try:
            too_big = declared is not None and int(declared) > self.max_body_bytes
        except ValueError:
            await send_json(send, 400, error_body("bad Content-Length", ErrorCode.BAD_REQUEST))
            return
        if too_big:
            await self._too_large(send)
            return
        chunks, size = [], 0
        while True:  # read the body here, within the limit, then replay it to the app
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await self._too_large(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Any:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any) -> None:
        await send_json(
            send,
            413,
            error_body(f"request body larger than {self.max_body_bytes} bytes", ErrorCode.TOO_LARGE),
        )


class FaultInjection:
    """Injects the lab's HTTP faults into the routes under ``/v1/runs``."""

    def __init__(self, app: ASGIApp, lab: Lab) -> None:
        self.app, self.lab = app, lab

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(RUNS_PATH) or path.endswith("/events"):
            await self.app(scope, receive, send)
            return
        fault = self.lab.draw_http_fault()
        if fault is None:
            await self.app(scope, receive, send)
            return
        log.info("injected fault %s on %s %s", fault, scope.get("method"), path)
        if fault == "error_before":
            await send_json(send, 503, error_body("injected fault: unavailable", ErrorCode.FAULT))
            return
        messages: list[dict[str, Any]] = []

        async def capture(message: dict[str, Any]) -> None:
            messages.append(message)

        await self.app(scope, receive, capture)  # the request is handled in full
        if fault == "error_after":
            await send_json(send, 500, error_body("injected fault: internal error", ErrorCode.FAULT))
            return
        if fault == "slow":
            await asyncio.sleep(self.lab.faults.slow_s)
            for message in messages:
                await send(message)
            return
        # drop: headers go out, half the body, then the connection is cut
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        start = next(m for m in messages if m["type"] == "http.response.start")
        await send(start)
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        # returning now leaves the response incomplete: the server closes the connection


class QuietInjectedDrops(logging.Filter):
    """Uvicorn reports each injected drop as an error; the lab already logged it as a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


DROP_FILTER = QuietInjectedDrops()
