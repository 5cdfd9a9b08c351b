"""Graceful shutdown under uvicorn.

uvicorn's own shutdown (SIGTERM / SIGINT / `should_exit`) first closes every open WebSocket with 1012 and
only then tells the app (lifespan shutdown) — too late to finish anything. `GracefulServer` puts the app's
drain in front: stop listening, then `SessionRegistry.drain` — no new sessions (handshakes get 503,
`/healthz` says `draining`), each open session ended with 1001 after its in-flight work is finished or
cancelled (a realtime response gets `response.done` with status `cancelled`), all within
`shutdown_timeout_s` — and then uvicorn's shutdown as usual, which by then finds nothing left to cut.
`voxline serve` and `LiveServer` (tests, benchmarks) both run it — and so both log request lines with
secrets masked (`?api_key=***`: access_log.py), installed at startup here.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

from audio_server import access_log

log = logging.getLogger(__name__)


class GracefulServer(uvicorn.Server):
    loop: asyncio.AbstractEventLoop | None = None  # the serving loop, once started (tests reach in through it)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        access_log.install()  # before the first connection is logged
        await super().startup(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # stop accepting connections first
            server.close()
        app = self.config.app
        state = getattr(app, "state", None)
        reg = getattr(state, "registry", None)
        if reg is not None:
            timeout = state.settings.shutdown_timeout_s
            try:
                await reg.drain(timeout)
            except Exception:
                log.exception("draining the sessions failed")
        await super().shutdown(sockets)


def config(app, host: str, port: int, **kwargs) -> uvicorn.Config:
    """uvicorn settings for the app: the graceful-shutdown window covers the session drain plus a margin
    for HTTP requests still running."""
    settings = app.state.settings
    kwargs.setdefault("timeout_graceful_shutdown", max(1, int(settings.shutdown_timeout_s) + 2))
    # A realtime append of max_append_bytes is 4/3 as much base64 inside its JSON; each socket applies its
    # own, smaller per-message limit on top and answers with an error event. Bigger messages: close 1009.
    kwargs.setdefault("ws_max_size", max(settings.max_ws_message_bytes + 1024,
                                         (settings.max_append_bytes + 2) // 3 * 4 + 64 * 1024))
    return uvicorn.Config(app, host=host, port=port, **kwargs)


def serve(app, host: str, port: int, **kwargs) -> None:
    """Run until SIGTERM / SIGINT, then shut down gracefully (blocking; main thread for the signals)."""
    GracefulServer(config(app, host, port, **kwargs)).run()
