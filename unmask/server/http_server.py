"""uvicorn, hardened: a header timeout against slow clients, and a drain on SIGTERM that ends cleanly.

uvicorn times out idle kept-alive connections but not a request whose headers trickle in, so 50
slowloris connections would be held forever; here a connection must finish its headers within
`header_timeout` seconds of opening (or of starting its next request), or it is closed.

On SIGTERM / Ctrl-C: new requests get a 503, those in flight run on for `grace` seconds, and whatever is
still running then ends with an OpenAI-style error (a final error event and [DONE] when streaming, a
503 otherwise) before uvicorn closes the connections. A drained shutdown exits with status 0.
"""
from __future__ import annotations

import asyncio
import signal
from types import FrameType

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from unmask.server.serving import SHUTTING_DOWN, AsyncEngine


def timed_protocol(header_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing a connection whose request headers are not complete in time."""

    class TimedHttpToolsProtocol(HttpToolsProtocol):
        header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self.header_timer is None:
                self.arm()

        def on_headers_complete(self) -> None:
            self.disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self.disarm()
            super().connection_lost(exc)

        def arm(self) -> None:
            self.header_timer = self.loop.call_later(header_timeout, self.headers_too_slow)

        def disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def headers_too_slow(self) -> None:
            self.header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return TimedHttpToolsProtocol


class DrainingServer(uvicorn.Server):
    """A uvicorn server that, on the first SIGTERM/SIGINT, drains `engine` for `grace` seconds."""

    def __init__(self, config: uvicorn.Config, engine: AsyncEngine, grace: float) -> None:
        super().__init__(config)
        self.engine, self.grace = engine, grace
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:  # type: ignore[no-untyped-def]
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        # uvicorn re-raises a caught signal after its shutdown, so the process would end *by* SIGTERM;
        # a drained shutdown is a clean exit.
        if sig in (signal.SIGTERM, signal.SIGINT) and not self.force_exit:
            self._captured_signals.clear()
        if first and self.loop is not None:
            self.engine.draining = True
            self.loop.call_soon_threadsafe(self.loop.call_later, self.grace, self.engine.abort_all, SHUTTING_DOWN)


def serve_app(app, engine: AsyncEngine, *, host: str, port: int, keep_alive: float, header_timeout: float,
              grace: float) -> None:  # type: ignore[no-untyped-def]
    """Run `app` until SIGTERM/SIGINT, then drain as the module says."""
    config = uvicorn.Config(app, host=host, port=port, http=timed_protocol(header_timeout), log_level="info",
                            timeout_keep_alive=keep_alive, timeout_graceful_shutdown=grace + 5)
    DrainingServer(config, engine, grace).run()
