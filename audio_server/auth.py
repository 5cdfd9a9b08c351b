"""API keys and browser origin checks, shared by every HTTP route and socket.

Keys arrive as `Authorization: Bearer KEY` (SDKs, servers), `X-API-Key: KEY`, or `?api_key=KEY` (browsers
cannot set headers on a WebSocket). With no keys configured the service is open — the CLI refuses that
unless it listens on loopback. Comparison is constant-time.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.datastructures import Headers, QueryParams

# Probes and the page stay open; Twilio's webhook is protected by its own signature instead of our keys.
OPEN_PATHS = frozenset({"/", "/healthz", "/metrics", "/favicon.ico", "/twilio/voice"})


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


def origin_ok(origin: str | None, host_header: str | None, allowed: tuple[str, ...]) -> bool:
    """Non-browser clients send no Origin. A browser page may connect from our own host, or from a
    configured origin; `*` allows all."""
    if not origin:
        return True
    if "*" in allowed or origin in allowed:
        return True
    netloc = urlsplit(origin).netloc
    return bool(host_header) and netloc == host_header
