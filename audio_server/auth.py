"""API keys, shared by every HTTP route and socket (browser origin and Host checks: http_security.py).

Keys arrive as `Authorization: Bearer KEY` (SDKs, servers), `X-API-Key: KEY`, or `?api_key=KEY` (browsers
cannot set headers on a WebSocket). With no keys configured the service is open — the CLI refuses that
unless it listens on loopback. Comparison is constant-time.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from starlette.datastructures import Headers, QueryParams

if TYPE_CHECKING:
    from audio_server.settings import Settings

# Probes and the page stay open; Twilio's webhook checks its signature or a key itself (routes_twilio.py).
# /metrics is not among them: its counts and model names are for the operator (`metrics_public` opens it).
OPEN_PATHS = frozenset({"/", "/healthz", "/favicon.ico", "/twilio/voice"})


def open_paths(settings: "Settings") -> frozenset[str]:
    """The paths served without an API key under these settings."""
    return OPEN_PATHS | {"/metrics"} if settings.metrics_public else OPEN_PATHS


def presented_key(headers: Headers, query: QueryParams) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key") or query.get("api_key")


def key_ok(keys: tuple[str, ...], presented: str | None) -> bool:
    if not keys:
        return True
    if not presented:
        return False
    return any(hmac.compare_digest(presented.encode(), k.encode()) for k in keys)

