"""Health, model list and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from audio_server.errors import APIError

router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request):
    state = request.app.state
    registry = getattr(state, "registry", None)
    if registry is not None and not registry.accepting:  # shutting down: load balancers stop sending here
        return JSONResponse({"status": "draining", "preset": state.settings.preset, "version": state.version},
                            status_code=503)
    return JSONResponse({"status": "ok", "preset": state.settings.preset, "version": state.version})


@router.get("/v1/models")
async def models(request: Request):
    return JSONResponse({"object": "list", "data": request.app.state.hub.model_cards()})


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request):
    """One model or alias (`client.models.retrieve("whisper-1")`): any name the routes accept."""
    card = request.app.state.hub.model_card(model_id)
    if card is None:
        raise APIError(404, f"the model {model_id!r} does not exist; GET /v1/models lists them",
                       code="model_not_found", param="model")
    return JSONResponse(card)


@router.get("/metrics")
async def metrics(request: Request):
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
