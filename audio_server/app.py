"""The FastAPI application: one process, models loaded once, every transport mounted on one app."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse

from audio_server import routes_audio, routes_misc, routes_ws_asr, routes_ws_tts
from audio_server.errors import install_error_handlers
from audio_server.metrics import Metrics
from audio_server.models import ModelHub
from audio_server.settings import Settings

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
    hub = hub or ModelHub(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if preload:
            hub.load_all()
        yield
        hub.close()

    app = FastAPI(title="voxline", version=_version(), lifespan=lifespan)
    app.state.settings = settings
    app.state.hub = hub
    app.state.metrics = Metrics()
    app.state.version = _version()
    install_error_handlers(app)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        app.state.metrics.requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    for module in (routes_misc, routes_audio, routes_ws_asr, routes_ws_tts):
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    async def index():
        page = WEB_DIR / "index.html"
        if page.exists():
            return FileResponse(page)
        return JSONResponse({"service": "voxline", "docs": "/docs"})

    return app
