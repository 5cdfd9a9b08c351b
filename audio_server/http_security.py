"""What a browser may do to this server: which pages may call it (Origin), which names it answers to (Host,
against DNS rebinding), and the headers that keep its own page from being framed, sniffed or leaking its URL.

- **Origin.** A browser names the page behind a request in `Origin` (every WebSocket handshake, every
  non-GET or cross-origin fetch, form POSTs). Allowed: the server's own page — its origins derived from the
  socket the request arrived on (`scope["server"]`: `http://localhost:PORT`, `http://127.0.0.1:PORT`,
  `http://[::1]:PORT` on loopback, `http://ADDRESS:PORT` otherwise), never from the Host header, which a
  rebinding page controls — the origin of `public_url`, and `allowed_origins` (`*` = any). Anything else
  is refused before a route runs, so before a body is read: a web page cannot POST audio to a server on
  loopback (CSRF) or open its sockets.
- **Sec-Fetch-Site.** A cross-site request that carries no Origin (an `<img>`, a no-cors `<script>`) still
  says `cross-site` / `same-site` here; it needs an allowed Origin, except a top-level GET navigation (a link
  to the page), whose answer only the user sees.
- **Host.** After DNS rebinding, `evil.example` resolves to 127.0.0.1 and the attacker's page is same-origin
  with the server: its GETs carry no Origin at all. On a loopback connection the server answers only to
  loopback names, the `public_url` host and the hosts of `allowed_origins` (a proxy in front on the same
  machine passes one of those, or the operator sets `VOXLINE_PUBLIC_URL`).

Non-browser clients (SDKs, curl, Twilio) send neither Origin nor Sec-Fetch-Site and are unaffected.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audio_server.errors import error_response

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_SAFE_METHODS = ("GET", "HEAD")

#: The page (web/) is plain ES modules and a stylesheet from this server, talks to it by fetch (WebRTC
#: signalling) and WebSocket, plays a MediaStream (srcObject, not a URL) and has a `data:` favicon. WebRTC
#: media is not governed by CSP. Nothing else is needed, so nothing else is allowed — nor framing.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # The page may be opened as /?api_key=KEY: no Referer carries that URL anywhere.
    (b"referrer-policy", b"no-referrer"),
)


@dataclass(frozen=True)
class Refusal:
    code: str  # bad_host | bad_origin
    message: str


@dataclass(frozen=True)
class BrowserPolicy:
    """The configured part of the checks; the server's own origins come from each connection."""

    origins: frozenset[str]  # normalized `scheme://host[:port]`
    any_origin: bool  # allowed_origins has "*"
    hosts: frozenset[str]  # names answered to on a loopback connection (bare, lower case, IPv6 unbracketed)

    @classmethod
    def from_settings(cls, settings) -> "BrowserPolicy":
        configured = [o for o in settings.allowed_origins if o != "*"]
        if settings.public_url:
            configured.append(settings.public_url)
        origins = set()
        for value in configured:
            origin = normalize_origin(value, allow_path=value == settings.public_url)
            if origin is None:
                raise ValueError(f"{value!r} is not an origin: write scheme://host[:port], e.g. https://app.example "
                                 "(VOXLINE_ALLOWED_ORIGINS, VOXLINE_PUBLIC_URL)")
            origins.add(origin)
        hosts = set(LOOPBACK_NAMES) | {urlsplit(o).hostname or "" for o in origins}
        return cls(frozenset(origins), "*" in settings.allowed_origins, frozenset(hosts - {""}))


def normalize_origin(value: str, *, allow_path: bool = False) -> str | None:
    """`scheme://host[:port]`, lower case, default port dropped; None when `value` is not an http(s)
    origin (`null`, a path, user info…). `allow_path` takes the origin of a base URL (`public_url`)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in ("http", "https") or not host or "@" in parts.netloc or parts.query or parts.fragment:
        return None
    if parts.path not in ("", "/") and not allow_path:
        return None
    if ":" in host:
        host = f"[{host}]"
    default = 80 if scheme == "http" else 443
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def browser_refusal(scope: Scope, policy: BrowserPolicy) -> Refusal | None:
    """Why a browser may not make this request (HTTP or WebSocket handshake), or None."""
    headers = Headers(scope=scope)
    server = scope.get("server")
    local = server[0] if server else None
    host = headers.get("host")
    if host is not None and local is not None and _is_loopback(local):
        name = _host_name(host)
        if name not in policy.hosts and name != local:
            return Refusal("bad_host", f"this server does not answer to the host {host[:100]!r} (DNS rebinding?): "
                           "set VOXLINE_PUBLIC_URL to the URL callers use")
    origin = headers.get("origin")
    if policy.any_origin:
        return None
    if origin is not None:
        normalized = normalize_origin(origin)
        if normalized is not None and (normalized in policy.origins or normalized in _own_origins(scope)):
            return None
        return Refusal("bad_origin", f"origin not allowed: {origin[:100]!r} is neither this server's page nor in "
                       "VOXLINE_PUBLIC_URL / VOXLINE_ALLOWED_ORIGINS")
    if headers.get("sec-fetch-site") in ("cross-site", "same-site") and not _navigation(scope, headers):
        return Refusal("bad_origin", "a cross-site request without an allowed Origin is not served")
    return None


class BrowserGuard:
    """ASGI middleware for HTTP: `browser_refusal` → 403 (OpenAI-shaped, before the route reads a body),
    and `SECURITY_HEADERS` on every response. It sits outside the API-key check, so a rebinding page (which
    can read our answers) cannot use a victim's browser to try keys. Sockets run the same check in
    `ws_common.admit`."""

    def __init__(self, app: ASGIApp, policy: BrowserPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [h for h in SECURITY_HEADERS if h[0] not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        refused = browser_refusal(scope, self.policy)
        if refused is not None:
            response = error_response(403, refused.message, code=refused.code)
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def browser_policy(app) -> BrowserPolicy:
    """The app's policy (built by create_app from its settings)."""
    policy = getattr(app.state, "browser_policy", None)
    if policy is None:
        policy = app.state.browser_policy = BrowserPolicy.from_settings(app.state.settings)
    return policy


# ---- helpers -------------------------------------------------------------------------------------------
def _navigation(scope: Scope, headers: Headers) -> bool:
    """A top-level GET of a page (a link followed): its answer goes to the user, not to the linking page."""
    return (scope["type"] == "http" and scope.get("method") in _SAFE_METHODS
            and headers.get("sec-fetch-mode") == "navigate")


def _own_origins(scope: Scope) -> frozenset[str]:
    server = scope.get("server")
    if not server or server[1] is None:  # a unix socket: no origin of ours a browser could name
        return frozenset()
    secure = scope.get("scheme") in ("https", "wss")
    return _origins_of(secure, server[0], server[1])


@lru_cache(maxsize=64)
def _origins_of(secure: bool, address: str, port: int) -> frozenset[str]:
    scheme = "https" if secure else "http"
    names = (*LOOPBACK_NAMES, address) if _is_loopback(address) else (address,)
    candidates = (normalize_origin(f"{scheme}://{f'[{n}]' if ':' in n else n}:{port}") for n in names)
    return frozenset(o for o in candidates if o is not None)


def _host_name(host: str) -> str:
    """`Host` without port and brackets, lower case: `[::1]:8000` → `::1`, `LocalHost.:80` → `localhost`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0].rstrip(".") if host.count(":") == 1 else host.rstrip(".")


@lru_cache(maxsize=256)
def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)
