"""The attacks of issue 15 as `bench.security_probe` runs them against a live server on loopback.

Each attack is an async function `(target, budget_s) -> Outcome`: it runs for at most about `budget_s`
seconds (or until its fixed amount of work is done), closes whatever it opened, and says how the server
answered — status codes, close codes, error codes — and whether that answer is a refusal. Sizes are the
issue's where a 2-core machine can send them in a few seconds. Attacks use key k2 (the legitimate session
of the probe uses k1), so the per-key limit of k2 is theirs to exhaust.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import httpx
import numpy as np
import websockets

ATTACK_KEY = "k2"
EVIL = "http://evil.example"


@dataclass
class Target:
    base: str  # http://127.0.0.1:PORT
    cache: Path  # where built payloads (the FLAC bomb) are kept between runs

    @property
    def ws(self) -> str:
        return "ws" + self.base[4:]

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])


@dataclass
class Outcome:
    answers: Counter = field(default_factory=Counter)  # "HTTP 400 invalid_audio", "close 1008", ... → count
    refused: bool = False  # the server answered the attack with a refusal (what it should do)
    note: str = ""

    def summary(self, limit: int = 4) -> str:
        parts = [f"{k} ×{n}" if n > 1 else k for k, n in self.answers.most_common(limit)]
        if len(self.answers) > limit:
            parts.append(f"+{len(self.answers) - limit} more")
        text = "; ".join(parts) or "no answer"
        return text + (f" ({self.note})" if self.note else "")


def _auth(key: str = ATTACK_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _http_answer(r: httpx.Response) -> str:
    code = None
    try:
        code = (r.json().get("error") or {}).get("code")
    except (ValueError, AttributeError):
        pass
    return f"HTTP {r.status_code}" + (f" {code}" if code else "")


def _refusal(answer: str) -> bool:
    return answer.startswith("HTTP 4") or answer.startswith("close 10") and not answer.startswith("close 1000") \
        or answer.startswith("error ")


def _finish(outcome: Outcome, refused: Callable[[str], bool] = _refusal) -> Outcome:
    """A refusal: every answer the attack got was one (an attack that was served even once got in)."""
    outcome.refused = bool(outcome.answers) and all(refused(a) for a in outcome.answers)
    return outcome


async def _repeat(budget_s: float, step: Callable[[], Awaitable[None]], times: int | None = None) -> None:
    end = time.perf_counter() + budget_s
    n = 0
    while time.perf_counter() < end and (times is None or n < times):
        await step()
        n += 1


def _wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    import soundfile

    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(buf, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _close_answer(exc: BaseException) -> str:
    if isinstance(exc, websockets.InvalidStatus):
        try:
            code = json.loads(exc.response.body or b"{}").get("error", {}).get("code")
        except ValueError:
            code = None
        return f"HTTP {exc.response.status_code}" + (f" {code}" if code else "")
    if isinstance(exc, websockets.ConnectionClosed):
        return f"close {exc.rcvd.code}" if exc.rcvd else "closed (no close frame)"
    return f"{type(exc).__name__}"


# ---- item 3: CPU work on the event loop ------------------------------------------------------------------------
async def chat_prompt_30mb(t: Target, budget_s: float) -> Outcome:
    """One chat completion whose user message is 30 MB of text (it was tokenized on the loop: 27.5 s)."""
    out = Outcome()
    text = "hello world " * (30 * 2 ** 20 // 12)
    body = json.dumps({"model": "qwen2.5-coder-0.5b-instruct", "max_tokens": 1,
                       "messages": [{"role": "user", "content": text}]})
    async with httpx.AsyncClient(timeout=max(60.0, budget_s)) as http:
        r = await http.post(t.base + "/v1/chat/completions", content=body,
                            headers={**_auth(), "Content-Type": "application/json"})
    out.answers[_http_answer(r)] += 1
    return _finish(out)


async def _realtime_session(t: Target, key: str = ATTACK_KEY):
    return await websockets.connect(t.ws + "/v1/realtime?model=gpt-realtime", additional_headers=_auth(key),
                                    max_size=None, open_timeout=30, ping_interval=None)


async def _collect(ws, out: Outcome, until: Callable[[dict], bool] | None = None, timeout: float = 10.0) -> None:
    """Read server events into `out` (errors and response statuses) until `until(event)` or a quiet `timeout`."""
    while True:
        try:
            event = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        except (TimeoutError, asyncio.TimeoutError):
            return
        kind = event.get("type")
        if kind == "error":
            out.answers[f"error {(event.get('error') or {}).get('code')}"] += 1
        elif kind == "response.done":
            out.answers[f"response {event['response']['status']}"] += 1
        elif kind == "session.updated":
            out.answers["accepted"] += 1
        if until is not None and until(event):
            return


async def realtime_instructions_15mb(t: Target, budget_s: float) -> Outcome:
    """A realtime session with 15 MB of `instructions`, then `response.create` three times (each froze the
    loop 12 s)."""
    out = Outcome()
    try:
        ws = await _realtime_session(t)
    except Exception as exc:
        out.answers[_close_answer(exc)] += 1
        return _finish(out)
    try:
        await _collect(ws, out, lambda e: e.get("type") == "session.created")
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["text"], "max_output_tokens": 1,
            "instructions": "Be brief. " * (15 * 2 ** 20 // 10)}}))
        update = Outcome()
        await _collect(ws, update, lambda e: e.get("type") in ("session.updated", "error"), timeout=budget_s)
        out.answers.update({f"update: {a}": n for a, n in update.answers.items()})
        # Refused: the update was answered with an error, so the 15 MB never reached a model call (the
        # responses below then run with the default instructions, as they should).
        out.refused = any(a.startswith("error ") for a in update.answers)
        end = time.perf_counter() + budget_s
        for _ in range(3):
            await ws.send(json.dumps({"type": "response.create"}))
            await _collect(ws, out, lambda e: e.get("type") in ("response.done", "error"),
                           timeout=max(1.0, end - time.perf_counter()))
    except websockets.ConnectionClosed as exc:
        out.answers[_close_answer(exc)] += 1
        out.refused = True
    finally:
        await ws.close()
    return out


def _png(side: int = 1024, seed: int = 0) -> str:
    """A noise PNG (incompressible: 3 MB decoded, about as much encoded) as a data: URL, written by hand
    (8-bit RGB, filter 0 on every row) so no imaging library is needed."""
    import struct
    import zlib

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side * 3), dtype=np.uint8)
    raw = np.hstack([np.zeros((side, 1), np.uint8), pixels]).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


async def vlm_images(t: Target, budget_s: float) -> Outcome:
    """17 large images in one chat request (one more than the 16-image cap, which was checked after decoding:
    11 s of loop). The embedded LLMs have no vision encoder, so the expected answer is an early 400."""
    out = Outcome()
    url = _png(600)
    content = [{"type": "text", "text": "What is in these pictures?"}] + \
              [{"type": "image_url", "image_url": {"url": url}} for _ in range(17)]
    body = json.dumps({"max_tokens": 1, "messages": [{"role": "user", "content": content}]})
    out.note = f"{len(body) / 2**20:.0f} MB body"
    async with httpx.AsyncClient(timeout=60) as http:
        async def once() -> None:
            r = await http.post(t.base + "/v1/chat/completions", content=body,
                                headers={**_auth(), "Content-Type": "application/json"})
            out.answers[_http_answer(r)] += 1
        await _repeat(budget_s, once, times=3)
    return _finish(out)


async def _tiny_message_flood(t: Target, path: str, count: int, budget_s: float) -> Outcome:
    """`count` tiny malformed text messages as fast as the socket takes them, replies read as they come. All
    `count` are sent unless the server stops reading for longer than 15 s (or the budget, if longer)."""
    out = Outcome()
    budget_s = max(budget_s, 15.0)
    try:
        ws = await websockets.connect(t.ws + path, additional_headers=_auth(), max_size=None, open_timeout=30,
                                      ping_interval=None, max_queue=None)
    except Exception as exc:
        out.answers[_close_answer(exc)] += 1
        return _finish(out)
    errors: Counter = Counter()

    async def read() -> None:
        try:
            async for message in ws:
                if isinstance(message, str):
                    event = json.loads(message)
                    if event.get("type") == "error":
                        errors[event.get("code") or (event.get("error") or {}).get("code")] += 1
        except websockets.ConnectionClosed:
            pass

    reader = asyncio.create_task(read())
    sent = 0
    end = time.perf_counter() + budget_s
    try:
        while sent < count and time.perf_counter() < end:
            for _ in range(500):
                await ws.send("x")
            sent += 500
        await asyncio.sleep(1.0)  # the last replies
    except websockets.ConnectionClosed as exc:
        out.answers[_close_answer(exc)] += 1
    finally:
        await ws.close()
        reader.cancel()
    if ws.close_code not in (None, 1000):
        out.answers[f"close {ws.close_code}"] += 1
    for code, n in errors.items():
        out.answers[f"error {code}"] += n
    out.note = f"{sent} sent"
    return _finish(out)


async def tts_stream_100k(t: Target, budget_s: float) -> Outcome:
    """100k one-byte text messages on /v1/tts/stream (the receive loop never yielded: 12–13 s frozen)."""
    return await _tiny_message_flood(t, "/v1/tts/stream", 100_000, budget_s)


async def asr_stream_100k(t: Target, budget_s: float) -> Outcome:
    """100k one-byte text messages on /v1/asr/stream."""
    return await _tiny_message_flood(t, "/v1/asr/stream?sample_rate=16000", 100_000, budget_s)


# ---- item 4: decompression bomb ------------------------------------------------------------------------------
def flac_bomb_bytes(cache: Path) -> bytes:
    """The probe's 711 KB FLAC (48 kHz × 8 channels × 1790 s of silence), built once (6 s) and cached."""
    path = cache / "flac_bomb_48k_8ch_1790s.flac"
    if not path.exists():
        from tests.security.test_media_security import flac_bomb  # the test's own builder: one bomb

        cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(flac_bomb())
    return path.read_bytes()


async def flac_bomb(t: Target, budget_s: float) -> Outcome:
    """The FLAC bomb uploaded for transcription (it took +2.95 GB and the ASR workers for 83 s)."""
    out = Outcome()
    bomb = flac_bomb_bytes(t.cache)
    async with httpx.AsyncClient(timeout=120) as http:
        async def once() -> None:
            r = await http.post(t.base + "/v1/audio/transcriptions", headers=_auth(),
                                files={"file": ("bomb.flac", bomb, "audio/flac")}, data={"model": "whisper-1"})
            out.answers[_http_answer(r)] += 1
        await _repeat(budget_s, once, times=3)
    out.note = f"{len(bomb) / 1000:.0f} KB"
    return _finish(out)


# ---- item 5: conversation memory -----------------------------------------------------------------------------
async def conversation_items_100x5mb(t: Target, budget_s: float) -> Outcome:
    """100 user text items of 5 MB each in one realtime session (+558 MB of conversation, unbounded)."""
    out = Outcome()
    budget_s = max(budget_s, 12.0)  # 500 MB through one socket takes a while on 2 cores
    try:
        ws = await _realtime_session(t)
    except Exception as exc:
        out.answers[_close_answer(exc)] += 1
        return _finish(out)
    message = json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "a" * (5 * 2 ** 20)}]}})
    created = 0
    sent = 0

    async def read() -> None:
        nonlocal created
        try:
            async for raw in ws:
                event = json.loads(raw)
                if event.get("type") == "error":
                    out.answers[f"error {(event.get('error') or {}).get('code')}"] += 1
                elif event.get("type") in ("conversation.item.added", "conversation.item.created"):
                    created += 1
        except websockets.ConnectionClosed:
            pass

    reader = asyncio.create_task(read())
    end = time.perf_counter() + budget_s
    try:
        while sent < 100 and time.perf_counter() < end:
            await ws.send(message)
            sent += 1
        await asyncio.sleep(1.0)
    except websockets.ConnectionClosed as exc:
        out.answers[_close_answer(exc)] += 1
    finally:
        await ws.close()
        reader.cancel()
    if ws.close_code not in (None, 1000):
        out.answers[f"close {ws.close_code}"] += 1
    out.note = f"{sent} sent, {created} stored ({created * 5} MB)"
    # Refused: the server stopped storing items well short of all of them (a byte budget or a close).
    out.refused = any(_refusal(a) for a in out.answers) and created < sent
    return out


# ---- items 1 and 2: Twilio -----------------------------------------------------------------------------------
async def twilio_bare_sockets(t: Target, budget_s: float, count: int = 10) -> Outcome:
    """`count` /twilio/media sockets (more than max_sessions) that never send a `start` frame, pinging every
    second (3 filled max_sessions=3 and locked keyed clients out for up to max_session_s). Held at least 7 s:
    the server's default start timeout is 5 s."""
    out = Outcome()
    budget_s = max(budget_s, 7.0)
    sockets = []
    for _ in range(count):
        try:
            sockets.append(await websockets.connect(t.ws + "/twilio/media", open_timeout=30, ping_interval=1.0))
        except Exception as exc:
            out.answers[_close_answer(exc)] += 1

    async def held(ws) -> None:
        try:
            await asyncio.wait_for(ws.wait_closed(), budget_s)
        except (TimeoutError, asyncio.TimeoutError):
            out.answers["still open"] += 1
            await ws.close()
            return
        out.answers[f"close {ws.close_code}"] += 1

    await asyncio.gather(*(held(ws) for ws in sockets))
    return _finish(out)


async def unkeyed_webhook(t: Target, budget_s: float) -> Outcome:
    """`POST /twilio/voice` with no key and no signature, repeatedly (it minted stream tokens for anyone)."""
    out = Outcome()
    async with httpx.AsyncClient(timeout=30) as http:
        async def once() -> None:
            r = await http.post(t.base + "/twilio/voice", data={"CallSid": f"CA{os.urandom(8).hex()}"})
            answer = _http_answer(r)
            if r.status_code == 200 and 'name="token"' in r.text:
                answer += " with a stream token"
            out.answers[answer] += 1
        await _repeat(budget_s, once, times=200)
    return _finish(out)


# ---- item 6: browsers --------------------------------------------------------------------------------------
def _raw_upgrade(port: int, host: str, origin: str) -> str:
    """A WebSocket handshake for /v1/realtime with our own Host and Origin headers → the status line's code."""
    request = (f"GET /v1/realtime?api_key={ATTACK_KEY} HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        head = s.recv(4096).decode("latin-1")
    status = head.split("\r\n", 1)[0].split(" ")[1] if head else "none"
    code = ""
    if "\r\n\r\n" in head:
        try:
            code = json.loads(head.split("\r\n\r\n", 1)[1] or "{}").get("error", {}).get("code") or ""
        except ValueError:
            pass
    return f"HTTP {status}" + (f" {code}" if code else "")


async def dns_rebinding(t: Target, budget_s: float) -> Outcome:
    """A rebound page: Host = Origin = evil.example:PORT, on a socket handshake and an HTTP GET (the socket was
    accepted: 101)."""
    out = Outcome()
    host = f"evil.example:{t.port}"
    async with httpx.AsyncClient(timeout=30) as http:
        async def once() -> None:
            answer = await asyncio.to_thread(_raw_upgrade, t.port, host, f"http://{host}")
            out.answers[answer.replace("HTTP ", "WS HTTP ")] += 1
            r = await http.get(t.base + "/v1/models", headers={**_auth(), "Host": host})
            out.answers[_http_answer(r)] += 1
        await _repeat(budget_s, once, times=50)
    return _finish(out, lambda a: "HTTP 4" in a)


async def csrf_post(t: Target, budget_s: float) -> Outcome:
    """A web page's cross-site POSTs of audio (Origin evil.example; and Sec-Fetch-Site cross-site, no Origin)."""
    out = Outcome()
    wav = _wav(2.0)
    async with httpx.AsyncClient(timeout=60) as http:
        async def once() -> None:
            for headers in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}):
                r = await http.post(t.base + "/v1/audio/transcriptions", headers=headers,
                                    files={"file": ("a.wav", wav, "audio/wav")}, data={"model": "whisper-1"})
                out.answers[_http_answer(r)] += 1
        await _repeat(budget_s, once, times=100)
    return _finish(out)


# ---- item 10: WebRTC candidates ------------------------------------------------------------------------------
async def _offer_sdp() -> str:
    """A real aiortc offer (audio + the oai-events channel), candidates gathered."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def _with_candidates(sdp: str, extra: list[str], keep_own: bool) -> str:
    out, added = [], False
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            if not added:
                out += [f"a=candidate:{c}" for c in extra]
                added = True
            if not keep_own:
                continue
        out.append(line)
    return "\r\n".join(out)


def _host_candidate(n: int, address: str, port: int | str) -> str:
    return f"{n} 1 udp {2130706431 - n} {address} {port} typ host"


async def webrtc_candidates(t: Target, budget_s: float) -> Outcome:
    """Offers naming foreign hosts (198.51.100.7, 203.0.113.9), a `.local` mDNS name and port 999999."""
    out = Outcome()
    foreign = [_host_candidate(90, "198.51.100.7", 40000), _host_candidate(91, "203.0.113.9", 40001)]
    mdns = [_host_candidate(95, "0b5c1f3e-1234-4c7e-9a53-21bf0c8e2d10.local", 40100)]
    bad_port = [_host_candidate(97, "127.0.0.1", 999999)]
    cases = [("foreign only", foreign, False), ("mDNS only", mdns, False), ("port 999999", bad_port, True),
             ("foreign + own", foreign, True)]
    accepted = []
    async with httpx.AsyncClient(timeout=60) as http:
        for name, extra, keep in cases:
            sdp = _with_candidates(await _offer_sdp(), extra, keep)
            r = await http.post(t.base + "/v1/realtime/webrtc", content=sdp,
                                headers={**_auth(), "Content-Type": "application/sdp"})
            if r.status_code == 201:
                accepted.append(name)
                await http.delete(t.base + r.headers["location"].replace("/calls/", "/webrtc/"), headers=_auth())
            out.answers[f"{name}: {_http_answer(r)}"] += 1
    # The offer that keeps the client's own loopback candidate is a call (its foreign ones dropped); the rest
    # must be refused. The candidate screening itself is tests/security/test_media_security.py's to prove.
    return _finish(out, lambda a: "HTTP 4" in a or a.startswith("foreign + own: HTTP 201"))


# ---- item 7: an unhandled route error ------------------------------------------------------------------------
async def route_error_language_zz(t: Target, budget_s: float) -> Outcome:
    """Transcriptions with `language=zz` on one keep-alive connection, each followed by a /healthz on it (the
    error walked a cyclic __cause__ into RecursionError: a 500, 274 KB of log, the connection reset)."""
    out = Outcome()
    wav = _wav(1.0)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1)) as http:
        async def once() -> None:
            r = await http.post(t.base + "/v1/audio/transcriptions", headers=_auth(),
                                files={"file": ("a.wav", wav, "audio/wav")}, data={"model": "whisper-1", "language": "zz"})
            out.answers[_http_answer(r)] += 1
            try:
                after = await http.get(t.base + "/healthz")
                if after.status_code != 200:
                    out.answers[f"next request: HTTP {after.status_code}"] += 1
            except httpx.HTTPError as exc:
                out.answers[f"next request: {type(exc).__name__}"] += 1
        await _repeat(budget_s, once, times=20)
    return _finish(out)


ATTACKS: dict[str, Callable[[Target, float], Awaitable[Outcome]]] = {
    "chat_prompt_30mb": chat_prompt_30mb,
    "realtime_instructions_15mb": realtime_instructions_15mb,
    "vlm_images": vlm_images,
    "tts_stream_100k": tts_stream_100k,
    "asr_stream_100k": asr_stream_100k,
    "flac_bomb": flac_bomb,
    "conversation_items_100x5mb": conversation_items_100x5mb,
    "twilio_bare_sockets": twilio_bare_sockets,
    "unkeyed_webhook": unkeyed_webhook,
    "dns_rebinding": dns_rebinding,
    "csrf_post": csrf_post,
    "webrtc_candidates": webrtc_candidates,
    "route_error_language_zz": route_error_language_zz,
}
