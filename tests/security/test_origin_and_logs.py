"""Issue 15, items 6 and 9 and the minor items: what a web page in the user's browser can make a loopback
server do, and what the server writes about its callers.

6. DNS rebinding passed the origin check (`origin_ok` took `Host` as our own origin: Host = Origin =
   `evil.example:8401` → 101), a rebinding page's same-origin GETs carry no Origin at all, and HTTP routes
   checked no origin, so any web page could POST audio to a server on loopback (CSRF);
9. uvicorn's access log recorded `?api_key=KEY` for GETs and socket handshakes;
minor: `/metrics` was open without a key, `/docs` loaded Swagger UI from a CDN, `/` sent no CSP or frame
headers.

Each attack runs against a live server on loopback; each test also shows the legitimate caller (the page
itself, an SDK without Origin, a configured origin) served as before. No model loads: the legitimate audio
request stops at the decoder (garbage bytes → 400 invalid_audio), the socket at the TTS stream's `ready`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import re
import socket

import httpx
import pytest
import websockets

from tests.conftest import run

KEYS = ("key-alpha-1", "key-bravo-2")
GOOD = "http://good.example"
EVIL = "evil.example:8401"  # the attacker's name, rebound to 127.0.0.1 (the port is the victim server's)


def _live(hub, **overrides):
    """A live app with `hub`'s settings plus `overrides` (fields this checkout lacks are left out, so the
    attack itself runs on the old code too)."""
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    known = {f.name for f in dataclasses.fields(hub.settings)}
    settings = dataclasses.replace(hub.settings, **{k: v for k, v in overrides.items() if k in known})
    return LiveServer(create_app(settings, hub)).start()


@pytest.fixture(scope="module")
def keyed(hub):
    """The probe's setup: two keys, one allowed origin, three sessions."""
    live = _live(hub, api_keys=KEYS, allowed_origins=(GOOD,), max_sessions=3)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def loopback(hub):
    """`voxline serve` as most people run it: loopback, no keys — the server a web page attacks."""
    live = _live(hub)
    yield live
    live.stop()


# ---- raw HTTP: headers a browser sends but HTTP clients rewrite, and bodies sent only in part ------------------
def raw(port: int, head: str, body: bytes = b"", timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send `head` (request line and headers, no blank line) and `body`; return the response's status,
    headers and body. A server that waits for more body instead of answering times out here."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            lines, _, rest = data.partition(b"\r\n\r\n")
            status_line, *header_lines = lines.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if ":" in h)}
            status = int(status_line.split()[1])
            length = int(headers.get("content-length", 0)) if status != 101 else 0
            while len(rest) < length:
                chunk = s.recv(65536)
                if not chunk:
                    break
                rest += chunk
        except TimeoutError:
            pytest.fail(f"no answer within {timeout:g} s (the server waited for the rest of the request)")
    return status, headers, rest


def upgrade(port: int, path: str, host: str, origin: str | None) -> tuple[int, dict]:
    """A browser's WebSocket handshake with the Host and Origin it would send; (status, JSON body or {})."""
    key = base64.b64encode(os.urandom(16)).decode()
    head = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13")
    if origin is not None:
        head += f"\r\nOrigin: {origin}"
    status, _, body = raw(port, head)
    return status, json.loads(body) if status != 101 and body.startswith(b"{") else {}


def error_code(body: dict) -> str | None:
    return body.get("error", {}).get("code")


async def socket_type(url: str, origin: str | None = None) -> object:
    try:
        async with websockets.connect(url, origin=origin) as ws:
            return json.loads(await ws.recv())["type"]
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


# ---- item 6: DNS rebinding and CSRF -----------------------------------------------------------------------------
@pytest.mark.parametrize("server_name", ["keyed", "loopback"])
def test_dns_rebinding_socket_is_refused(request, server_name):
    """The probe: Host = Origin = evil.example:8401 (the rebound name) was answered 101, with or without keys."""
    live = request.getfixturevalue(server_name)
    path = f"/v1/tts/stream?api_key={KEYS[0]}"
    status, body = upgrade(live.port, path, EVIL, f"http://{EVIL}")
    assert status == 403 and error_code(body) in ("bad_host", "bad_origin"), (status, body)
    # The attacker's origin with our Host, and another page on this machine (another port), are refused too.
    for origin in (f"http://{EVIL}", "http://localhost:1", "null"):
        status, body = upgrade(live.port, path, f"127.0.0.1:{live.port}", origin)
        assert status == 403 and error_code(body) == "bad_origin", (origin, status, body)
    # Served: our own page under each loopback name, a configured origin, a client that sends no Origin.
    ours = [f"http://127.0.0.1:{live.port}", f"http://localhost:{live.port}"]
    for origin in ours + ([GOOD] if server_name == "keyed" else []) + [None]:
        assert run(socket_type(live.ws_url + path, origin)) == "ready", origin
    status, _ = upgrade(live.port, path, f"localhost:{live.port}", f"http://localhost:{live.port}")
    assert status == 101


def test_dns_rebinding_page_cannot_read_the_api(loopback):
    """After rebinding, the attacker's page fetches `/v1/models` same-origin: no Origin header, Host is its own
    name. The server must not answer to that name; to its own names it answers as before."""
    url = loopback.base_url + "/v1/models"
    with httpx.Client(timeout=30) as http:
        r = http.get(url, headers={"Host": EVIL, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"})
        assert r.status_code == 403 and error_code(r.json()) == "bad_host", r.text
        for host in (f"127.0.0.1:{loopback.port}", f"localhost:{loopback.port}", f"[::1]:{loopback.port}", None):
            headers = {"Host": host} if host else {}
            r = http.get(url, headers=headers)
            assert r.status_code == 200 and r.json()["object"] == "list", (host, r.text)


def test_cross_site_post_is_refused_before_its_body(loopback):
    """CSRF: a web page POSTs audio to the loopback server. Refused 403 as soon as the headers arrive — the
    server does not wait for (or decode) the body; a page that sends no Origin but says `cross-site` in
    Sec-Fetch-Site is refused too. SDKs (no Origin) and the server's own page are served."""
    boundary = "b0undary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").encode() + b"not audio at all" + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1:{loopback.port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}")
    # 2 MB announced, 1 KB sent: an answer can only come from a check made before the body is read.
    status, _, body = raw(loopback.port, head + f"\r\nOrigin: https://evil.example\r\nContent-Length: {2 * 10**6}",
                          part[:1024])
    assert status == 403 and error_code(json.loads(body)) == "bad_origin", body
    status, _, body = raw(loopback.port, head + f"\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors"
                          f"\r\nContent-Length: {len(part)}", part)
    assert status == 403 and error_code(json.loads(body)) == "bad_origin", body
    files = {"file": ("a.wav", b"not audio at all", "audio/wav")}
    with httpx.Client(timeout=30) as http:
        for origin in (None, f"http://127.0.0.1:{loopback.port}"):
            headers = {"Origin": origin, "Sec-Fetch-Site": "same-origin"} if origin else {}
            r = http.post(loopback.base_url + "/v1/audio/transcriptions", files=files, headers=headers)
            assert r.status_code == 400 and error_code(r.json()) == "invalid_audio", (origin, r.text)  # decoded
        # A link to the page from another site still opens it (a top-level GET: only the user sees it).
        r = http.get(loopback.base_url + "/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
        assert r.status_code == 200
        assert http.get(loopback.base_url + "/healthz").json()["status"] == "ok"


def test_public_url_is_our_origin_and_our_name(hub):
    """Behind a proxy on the same machine: requests arrive on loopback with the public name as Host and the
    public page as Origin. Both are the configured public URL's, so they are served; others are not."""
    live = _live(hub, public_url="https://voice.example.com/base")
    try:
        with httpx.Client(timeout=30) as http:
            served = http.get(live.base_url + "/v1/models", headers={"Host": "voice.example.com",
                                                                      "Origin": "https://voice.example.com"})
            assert served.status_code == 200, served.text
            other = http.get(live.base_url + "/v1/models", headers={"Host": "voice.example.com",
                                                                     "Origin": "https://other.example.com"})
            assert other.status_code == 403 and error_code(other.json()) == "bad_origin"
            assert http.get(live.base_url + "/v1/models", headers={"Host": EVIL}).status_code == 403
    finally:
        live.stop()


# ---- item 9: keys in logs ------------------------------------------------------------------------------------
class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def request_lines():
    """uvicorn's request lines (HTTP on uvicorn.access, WebSocket handshakes on uvicorn.error) at INFO, as
    `voxline serve` logs them."""
    handler = _Lines()
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    yield handler.lines
    for lg, level in zip(loggers, levels):
        lg.removeHandler(handler)
        lg.setLevel(level)


def test_access_log_has_no_keys(keyed, request_lines):
    with httpx.Client(timeout=30) as http:
        assert http.get(keyed.base_url + f"/v1/models?api_key={KEYS[0]}&x=1").status_code == 200
        assert http.get(keyed.base_url + "/v1/models?api_key=guessed-secret").status_code == 401
    assert run(socket_type(keyed.ws_url + f"/v1/tts/stream?api_key={KEYS[1]}")) == "ready"
    assert run(socket_type(keyed.ws_url + "/v1/tts/stream?API_KEY=guessed-secret")) == 403
    text = "\n".join(request_lines)
    for secret in (*KEYS, "guessed-secret"):
        assert secret not in text, text
    # The lines are still there and still say what was asked.
    assert "/v1/models?api_key=***&x=1" in text, text
    assert "WebSocket /v1/tts/stream?api_key=***" in text, text


# ---- minor items --------------------------------------------------------------------------------------------
def test_metrics_need_a_key(keyed, hub):
    with httpx.Client(timeout=30) as http:
        anonymous = http.get(keyed.base_url + "/metrics")
        assert anonymous.status_code == 401 and error_code(anonymous.json()) == "invalid_api_key"
        scraped = http.get(keyed.base_url + "/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"})
        assert scraped.status_code == 200 and "voxline_http_requests_total" in scraped.text
        assert http.get(keyed.base_url + "/healthz").status_code == 200  # probes stay open
    opted_out = _live(hub, api_keys=KEYS, metrics_public=True)  # VOXLINE_METRICS_PUBLIC=1 for a plain scraper
    try:
        assert httpx.get(opted_out.base_url + "/metrics", timeout=30).status_code == 200
    finally:
        opted_out.stop()


def test_no_api_docs_from_a_cdn(keyed):
    """Swagger UI / ReDoc pages load their code from a CDN: an offline service serves neither. The schema
    stays available to keyed callers."""
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    with httpx.Client(timeout=30) as http:
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            r = http.get(keyed.base_url + path, headers=auth)
            assert r.status_code == 404 and "cdn" not in r.text.lower(), (path, r.status_code)
        assert http.get(keyed.base_url + "/openapi.json").status_code == 401
        schema = http.get(keyed.base_url + "/openapi.json", headers=auth)
        assert schema.status_code == 200 and "/v1/audio/transcriptions" in schema.json()["paths"]
        page = http.get(keyed.base_url + "/")
        urls = re.findall(r'(?:src|href)="([^"]*)"', page.text)
        assert page.status_code == 200 and urls and all(u.startswith(("/web/", "data:")) for u in urls), urls


def test_page_and_static_files_send_security_headers(loopback):
    with httpx.Client(timeout=30) as http:
        for path in ("/", "/web/app.js", "/web/style.css", "/healthz"):
            r = http.get(loopback.base_url + path)
            assert r.status_code == 200, path
            csp = r.headers.get("content-security-policy", "")
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, (path, csp)
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
            assert r.headers.get("x-frame-options") == "DENY", path
            assert r.headers.get("x-content-type-options") == "nosniff", path
            assert r.headers.get("referrer-policy") == "no-referrer", path
