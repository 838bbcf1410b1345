"""ASGI middleware in front of the routes: the API key, and the request body's size and arrival time.

The body is read here, whole, before any route sees it: a body over the limit is refused on its declared
length before a byte of it is read (or, sent chunked, as soon as it passes the limit), so a 100 MB body
costs neither memory nor event-loop time; a body that trickles in slower than the timeout is refused
too, and both responses close the connection so the rest of the upload is not read.
"""
from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from unmask.server.protocol import error_body

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = ("/health", "/metrics")  # what a load balancer or Prometheus reads without the key


async def send_error(send: Send, status: int, message: str, kind: str, close: bool = False,
                     extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps(error_body(message, kind)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *extra_headers]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Guards:
    """Refuse before the app runs: 401 without the API key, 413 past `max_body` bytes, 408 past `body_timeout`."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body: int, body_timeout: float) -> None:
        self.app, self.api_key, self.max_body, self.body_timeout = app, api_key, max_body, body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and not scope["path"].startswith(OPEN_PATHS):
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                await send_error(send, 401, "a valid API key is required: send the header "
                                 "'Authorization: Bearer <key>' with the key this server was started with",
                                 "authentication_error", extra_headers=((b"www-authenticate", b"Bearer"),))
                return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self.too_large(send)
            return
        body = await self.read_body(receive, send)
        if body is None:
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then only the disconnect a streaming response listens for

        await self.app(scope, replay, send)

    async def read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once a refusal was sent (or the client left)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        parts, size = [], 0
        while True:
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:  # (3.10: not yet the built-in TimeoutError)
                await send_error(send, 408, f"the request body did not arrive within {self.body_timeout:g} s",
                                 "invalid_request_error", close=True)
                return None
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self.too_large(send)
                return None
            parts.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(parts)

    async def too_large(self, send: Send) -> None:
        await send_error(send, 413, f"the request body is larger than this server's limit of {self.max_body} bytes "
                         "(unmask serve --max-body)", "invalid_request_error", close=True)
