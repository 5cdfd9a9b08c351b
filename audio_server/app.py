"""The FastAPI application: one process, models loaded once, every transport mounted on one app."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from audio_server import routes_audio, routes_misc, routes_twilio, routes_ws_asr, routes_ws_tts
from audio_server import routes_chat, routes_realtime, routes_twilio_media, routes_webrtc
from audio_server.auth import key_ok, open_paths, presented_key
from audio_server.errors import error_response, install_error_handlers
from audio_server.http_security import BrowserGuard, BrowserPolicy
from audio_server.limits import RequestLimits
from audio_server.metrics import Metrics
from audio_server.models import ModelHub
from audio_server.settings import Settings
from audio_server.ws_common import registry

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def _version() -> str:
    try:
        return version("voxline")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(settings: Settings | None = None, hub: ModelHub | None = None, *, preload: bool = False) -> FastAPI:
    """Build the app. `preload=True` loads every model before the first request (what `serve` does)."""
    settings = settings or Settings()
    owns_hub = hub is None  # a hub passed in is shared with other apps (tests): its owner closes it
    hub = hub or ModelHub(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if preload:
            hub.load_all()
            hub.llm()  # the default chat LLM (shared by the chat routes and realtime sessions)
        yield
        # Normally done already: GracefulServer drains before uvicorn closes the sockets (lifecycle.py).
        await registry(app).drain(settings.shutdown_timeout_s)
        await routes_webrtc.shutdown(app)  # close every WebRTC call: tasks, tracks, session slots
        if owns_hub:
            hub.close()

    # No /docs or /redoc: FastAPI's pages load Swagger UI / ReDoc from a CDN, and this service runs offline.
    # The schema stays at /openapi.json (behind the key like every API route).
    app = FastAPI(title="voxline", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.browser_policy = BrowserPolicy.from_settings(settings)  # who may call from a browser
    app.state.hub = hub
    app.state.metrics = Metrics()
    app.state.version = _version()
    app.state.open_sessions = 0
    # model id -> the process-wide chat engine (runtime.llm.get_engine), loaded on first use
    app.state.chat_engines = hub.llm
    # Every streaming session: limits, session timers, and the drain that shutdown runs (ws_common.py).
    registry(app).drain_hooks.append(lambda _timeout: routes_webrtc.shutdown(app))
    install_error_handlers(app)

    unkeyed = open_paths(settings)

    @app.middleware("http")
    async def require_api_key(request: Request, call_next):
        if settings.api_keys and request.url.path not in unkeyed and not request.url.path.startswith("/web/"):
            if not key_ok(settings.api_keys, presented_key(request.headers, request.query_params)):
                return error_response(401, "missing or invalid API key: send 'Authorization: Bearer KEY'",
                                      code="invalid_api_key", type="authentication_error")
        return await call_next(request)

    # Outside the key check (http_security.py says why), inside the request counter (refusals are counted).
    app.add_middleware(BrowserGuard, policy=app.state.browser_policy)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        app.state.metrics.requests.labels(route, str(response.status_code)).inc()
        # Latency to the body's last byte, not to the headers: speech and chat stream their bodies.
        response.body_iterator = app.state.metrics.timed_body(response.body_iterator, route, t0)
        return response

    # Added last, so outermost of ours: a too-large body is refused before auth or routing read it.
    app.add_middleware(RequestLimits, max_request_bytes=settings.max_request_bytes)

    for module in (routes_misc, routes_audio, routes_ws_asr, routes_ws_tts, routes_twilio):
        app.include_router(module.router)
    app.include_router(routes_realtime.router)
    app.include_router(routes_twilio_media.router)
    app.include_router(routes_chat.router)
    app.include_router(routes_webrtc.router)
    # The browser voice chat page (web/: plain ES modules, no build step), open like `/`.
    app.mount("/web", StaticFiles(directory=WEB_DIR, check_dir=False), name="web")

    @app.get("/", include_in_schema=False)
    async def index():
        page = WEB_DIR / "index.html"
        if page.exists():
            return FileResponse(page)
        return JSONResponse({"service": "voxline", "openapi": "/openapi.json"})

    return app
