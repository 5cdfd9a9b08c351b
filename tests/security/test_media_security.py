"""Issue 15, items 4 and 10: media an attacker controls — an upload that decodes to gigabytes, and WebRTC offers
whose ICE candidates point the server at other hosts, at the mDNS group or at impossible ports, or whose
call id belongs to another key. Each attack runs against a live server on loopback; each test also shows a
legitimate request or call going through."""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import httpx
import numpy as np
import pytest
import soundfile

from audio_server.audio_io import SpeechEncoder
from bench.common import DATA, read

# ---- item 4: decompression bomb --------------------------------------------------------------------------------
RSS_GROWTH_LIMIT = 300 * 2 ** 20


def flac_bomb(seconds: int = 1790, channels: int = 8, rate: int = 48000) -> bytes:
    """The probe's file: 1790 s of 8-channel 48 kHz silence, ~711 KB of FLAC, 2.75 GB as float32. Under the
    default 1800 s duration limit."""
    buf = io.BytesIO()
    block = np.zeros((rate * 10, channels), np.int16)
    with soundfile.SoundFile(buf, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds // 10):
            f.write(block)
    return buf.getvalue()


def without_length(flac: bytes) -> bytes:
    """The same FLAC with STREAMINFO's total-samples field zeroed: "length unknown", as a stream written to a
    pipe says (`ffmpeg -f flac -`). The header check cannot see the size; only counting while decoding can."""
    data = bytearray(flac)
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    info = 8  # 'fLaC' + the block header
    data[info + 13] &= 0xF0  # total samples: the low 4 bits of byte 13 and bytes 14–17
    data[info + 14:info + 18] = bytes(4)
    return bytes(data)


@dataclass
class _Transcript:
    text: str
    duration: float
    segments: tuple = ()


class _CountingASR:
    """Stands in for Whisper: the decoder is under test, not the model."""

    def transcribe(self, audio, options=None):
        return _Transcript(f"{len(audio)} samples", len(audio) / 16000)


class _Hub:
    """Just what /v1/audio/transcriptions needs, with the real route, decoder and worker pool."""

    def __init__(self, settings):
        self.settings = settings
        self.executor = ThreadPoolExecutor(2, thread_name_prefix="fake-hub")

    def resolve_asr_name(self, requested, batch=False):
        return "whisper-base"

    def asr(self, name=None):
        return _CountingASR()

    def llm(self, name=None):
        return None

    def close(self):
        self.executor.shutdown()


@pytest.fixture(scope="module")
def upload_server():
    from audio_server.app import create_app
    from audio_server.live import LiveServer
    from audio_server.settings import Settings

    settings = Settings()  # the defaults the probe met: 25 MB uploads, 1800 s of audio
    hub = _Hub(settings)
    live = LiveServer(create_app(settings, hub)).start()
    yield live
    live.stop()
    hub.close()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """This process's resident memory, sampled every 2 ms while the block runs (the server is a thread of it)."""

    def __enter__(self) -> "PeakRSS":
        self.before = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        return self.peak - self.before


def _transcribe(base_url: str, data: bytes, name: str) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    with httpx.Client(timeout=300) as http:
        r = http.post(base_url + "/v1/audio/transcriptions", files={"file": (name, data, "audio/flac")},
                      data={"model": "whisper-1"})
    return r, time.perf_counter() - t0


def _streamed_speech_flac() -> tuple[bytes, int]:
    """A real recording as FLAC written without seeking (no length in its header), like `ffmpeg -f flac -`."""
    speech = (read(DATA / "commands" / "001.wav") * 32767).astype(np.int16)
    encoder = SpeechEncoder("flac", 16000)
    return encoder.encode(speech) + encoder.finish(), len(speech)


@pytest.mark.parametrize("header", ["says its length", "hides its length"])
def test_flac_bomb_is_refused_and_memory_stays_bounded(upload_server, header):
    bomb = flac_bomb()
    if header == "hides its length":
        bomb = without_length(bomb)
    legit, legit_samples = _streamed_speech_flac()
    results: dict[str, tuple[httpx.Response, float]] = {}

    with PeakRSS() as rss:
        attack = threading.Thread(target=lambda: results.update(bomb=_transcribe(upload_server.base_url, bomb, "b.flac")))
        attack.start()
        health = []
        while attack.is_alive() and len(health) < 20:  # the loop stays free while the decode runs
            t0 = time.perf_counter()
            assert httpx.get(upload_server.base_url + "/healthz", timeout=10).status_code == 200
            health.append(time.perf_counter() - t0)
            time.sleep(0.05)
        results["legit"] = _transcribe(upload_server.base_url, legit, "speech.flac")
        attack.join(300)

    r, took = results["bomb"]
    print(f"\nFLAC bomb ({header}, {len(bomb) / 1024:.0f} KB): HTTP {r.status_code} in {took:.2f} s; server RSS "
          f"{rss.before / 2**20:.0f} MB before, peak {rss.peak / 2**20:.0f} MB (+{rss.growth / 2**20:.0f} MB); "
          f"/healthz during it: {len(health)} probes, slowest {max(health, default=0) * 1000:.0f} ms")
    assert r.status_code == 400, r.text[:300]
    error = r.json()["error"]
    assert error["code"] == "invalid_audio" and "samples" in error["message"], error
    assert rss.growth < RSS_GROWTH_LIMIT, f"RSS grew {rss.growth / 2**20:.0f} MB"
    assert max(health, default=0) < 2.0

    # A streamed FLAC (no length in its header) of real speech is decoded, not refused for its header.
    ok, _ = results["legit"]
    assert ok.status_code == 200, ok.text[:300]
    assert ok.json()["text"] == f"{legit_samples} samples"


# ---- item 10: WebRTC candidates and call ownership --------------------------------------------------------------
K1, K2 = "k1-media", "k2-media"
FOREIGN = ("198.51.100.7", "203.0.113.9")  # the probe's addresses: nothing on loopback reaches them
MDNS_NAME = "0b5c1f3e-1234-4c7e-9a53-21bf0c8e2d10.local"


@pytest.fixture(scope="module")
def rtc_keyed(hub):
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    settings = replace(hub.settings, api_keys=(K1, K2), webrtc_connect_timeout_s=15.0, webrtc_idle_timeout_s=10.0)
    live = LiveServer(create_app(settings, hub)).start()
    yield live
    live.stop()


def _auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def with_candidates(sdp: str, extra: list[str], keep_own: bool = True) -> str:
    """The offer with `extra` candidate values added to its first media section (the bundle's transport),
    and its own loopback candidates kept or removed."""
    out, added, in_media = [], False, False
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            if in_media and not added:
                out += [f"a=candidate:{c}" for c in extra]
                added = True
            in_media = True
        if line.startswith("a=candidate:") and not keep_own:
            continue
        out.append(line)
        if line.startswith("a=candidate:") and in_media and not added:
            out += [f"a=candidate:{c}" for c in extra]
            added = True
    return "\r\n".join(out)


def _host(n: int, address: str, port: int | str) -> str:
    return f"{n} 1 udp {2130706431 - n} {address} {port} typ host"


def _udp_sockets_on(port: int) -> int:
    """UDP sockets bound to `port` on this machine (/proc/net/udp and udp6: local address column)."""
    count = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        count += sum(1 for row in rows if int(row.split()[1].rsplit(":", 1)[1], 16) == port)
    return count


async def _call(base_url: str, key: str, edit=None):
    """An aiortc client's call with `key`; `edit` rewrites the offer SDP first. → (client, response)."""
    from aiortc import RTCSessionDescription

    from tests.webrtc.client import Client

    client = Client()
    sdp = await client.offer()
    if edit is not None:
        sdp = edit(sdp)
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.post(base_url + "/v1/realtime/webrtc", content=sdp,
                            headers={"Content-Type": "application/sdp", **_auth(key)})
    if r.status_code == 201:
        client.call_id = r.headers["location"].rsplit("/", 1)[-1]
        await client.pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
        await asyncio.wait_for(client.opened.wait(), 30)
    return client, r


async def _still_serves(client) -> None:
    """The call's session answers on its data channel."""
    after = len(client.events)
    client.send({"type": "session.update", "session": {"instructions": "Be brief."}})
    await client.wait("session.updated", after=after, timeout=20)


def _remote_addresses(server, call_id: str) -> set[str]:
    """What the server's ICE agent holds as the peer's addresses: where it sends connectivity checks."""
    from audio_server.webrtc_peer import peers

    peer = peers(server.app)[call_id]
    transports = {t.receiver.transport.transport for t in peer.pc.getTransceivers()}
    if peer.pc.sctp is not None:
        transports.add(peer.pc.sctp.transport.transport)
    return {c.ip for ice in transports for c in ice.getRemoteCandidates()}


def _hang_up(base_url: str, call_id: str, key: str) -> httpx.Response:
    return httpx.delete(f"{base_url}/v1/realtime/webrtc/{call_id}", headers=_auth(key), timeout=60)


def test_offer_candidates_naming_other_hosts_are_not_contacted(rtc_keyed):
    from tests.webrtc.conftest import wait_clean

    attack = [_host(90 + i, ip, 40000 + i) for i, ip in enumerate(FOREIGN)]

    async def scenario():
        client, r = await _call(rtc_keyed.base_url, K1, lambda sdp: with_candidates(sdp, attack))
        try:
            assert r.status_code == 201, r.text[:300]
            remote = _remote_addresses(rtc_keyed, client.call_id)
            await _still_serves(client)  # the call itself works, over its loopback candidate
        finally:
            await client.close()
            if client.call_id:
                _hang_up(rtc_keyed.base_url, client.call_id, K1)
        # An offer with nothing but foreign candidates could never connect: refused, nothing contacted.
        only, refused = await _call(rtc_keyed.base_url, K1, lambda sdp: with_candidates(sdp, attack, keep_own=False))
        await only.close()
        return remote, refused

    remote, refused = asyncio.run(scenario())
    print(f"\nserver-side remote candidates of the call: {sorted(remote)}; foreign-only offer: HTTP "
          f"{refused.status_code} {refused.text[:160]!r}")
    assert remote and not remote & set(FOREIGN), remote
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_candidate", refused.text
    wait_clean(rtc_keyed)


def test_mdns_candidate_binds_nothing_on_a_loopback_server(rtc_keyed):
    from tests.webrtc.conftest import wait_clean

    before = _udp_sockets_on(5353)

    async def scenario():
        t0 = time.perf_counter()
        client, r = await _call(rtc_keyed.base_url, K1, lambda sdp: with_candidates(sdp, [_host(95, MDNS_NAME, 40100)]))
        took = time.perf_counter() - t0
        try:
            assert r.status_code == 201, r.text[:300]
            during = _udp_sockets_on(5353)
            remote = _remote_addresses(rtc_keyed, client.call_id)
            await _still_serves(client)
        finally:
            await client.close()
            if client.call_id:
                _hang_up(rtc_keyed.base_url, client.call_id, K1)
        return during, remote, took

    during, remote, took = asyncio.run(scenario())
    print(f"\nUDP sockets on port 5353: {before} before the call, {during} during it; offer answered in "
          f"{took:.2f} s; remote candidates {sorted(remote)}")
    assert during == before, "the server bound the mDNS port for a .local candidate"
    assert MDNS_NAME not in remote and all(not a.endswith(".local") for a in remote)
    wait_clean(rtc_keyed)


@pytest.mark.parametrize("port", ["999999", "0", "65536", "12ab"])
def test_candidate_with_an_impossible_port_is_a_clear_400(rtc_keyed, port):
    from tests.webrtc.conftest import wait_clean

    async def scenario():
        bad, r = await _call(rtc_keyed.base_url, K1, lambda sdp: with_candidates(sdp, [_host(97, "127.0.0.1", port)]))
        await bad.close()
        good, ok = await _call(rtc_keyed.base_url, K1)  # the next, well-formed call is served as ever
        try:
            assert ok.status_code == 201, ok.text[:300]
            await _still_serves(good)
        finally:
            await good.close()
            if good.call_id:
                _hang_up(rtc_keyed.base_url, good.call_id, K1)
        return r

    r = asyncio.run(scenario())
    assert r.status_code == 400, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert error["code"] == "invalid_candidate" and "port" in error["message"], error
    wait_clean(rtc_keyed)


def test_only_the_key_that_made_a_call_may_renegotiate_or_hang_up(rtc_keyed):
    from tests.webrtc.conftest import wait_clean

    base = rtc_keyed.base_url

    async def scenario():
        client, r = await _call(base, K1)
        assert r.status_code == 201, r.text[:300]
        call_id = client.call_id
        try:
            stranger = _hang_up(base, call_id, K2)
            unknown = _hang_up(base, "rtc_doesnotexist00000000", K2)
            renegotiate = httpx.post(f"{base}/v1/realtime/webrtc/{call_id}", content=await client.offer(),
                                     headers={"Content-Type": "application/sdp", **_auth(K2)}, timeout=60)
            hangup_alias = httpx.post(f"{base}/v1/realtime/calls/{call_id}/hangup", headers=_auth(K2), timeout=60)
            await _still_serves(client)  # none of that touched the call
            mine = _hang_up(base, call_id, K1)
            after_stranger, after_mine = _hang_up(base, call_id, K2), _hang_up(base, call_id, K1)
        finally:
            await client.close()
        return call_id, stranger, unknown, renegotiate, hangup_alias, mine, after_stranger, after_mine

    call_id, stranger, unknown, renegotiate, alias, mine, after_stranger, after_mine = asyncio.run(scenario())
    for r in (stranger, renegotiate, alias, after_stranger):
        assert r.status_code == 404, (r.status_code, r.text[:300])
        error = r.json()["error"]
        # word for word what an id that never existed gets: another key's call is not even confirmed to exist
        assert error == {**unknown.json()["error"], "message": error["message"]}, (error, unknown.json())
        assert error["message"] == unknown.json()["error"]["message"].replace("rtc_doesnotexist00000000", call_id)
    assert mine.status_code == 200 and mine.json()["status"] == "closed"
    assert after_mine.status_code == 410 and after_mine.json()["error"]["code"] == "call_ended"
    wait_clean(rtc_keyed)


def test_candidate_policy_of_a_server_on_the_network():
    """The live tests run on loopback; the rules for a server on every interface, checked directly."""
    from audio_server.settings import Settings
    from audio_server.webrtc_candidates import BadCandidate, CandidatePolicy, screen_candidates

    lan = CandidatePolicy.from_settings(Settings(host="0.0.0.0", api_keys=("k",), ice_deny_networks=("10.0.0.0/8",)))
    assert lan.refusal("198.51.100.7") is None  # a peer on the internet is what such a server is for
    assert "deny" in lan.refusal("10.1.2.3") and "loopback" in lan.refusal("127.0.0.1")  # not itself
    assert "mDNS" in lan.refusal(MDNS_NAME) and "host name" in lan.refusal("evil.example")
    assert "unicast" in lan.refusal("224.0.0.251") and "unicast" in lan.refusal("0.0.0.0")
    mdns = CandidatePolicy.from_settings(Settings(host="0.0.0.0", api_keys=("k",), webrtc_mdns=True))
    assert mdns.refusal(MDNS_NAME) is None
    loopback = CandidatePolicy.from_settings(Settings(webrtc_mdns=True))
    assert "loopback only" in loopback.refusal(MDNS_NAME)  # mDNS is never resolved for a loopback server

    sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\n" + "".join(
        f"a=candidate:{_host(i, f'198.51.100.{i}', 5000 + i)}\r\n" for i in range(1, 66))
    with pytest.raises(BadCandidate, match="more than 64"):
        screen_candidates(sdp, lan)
    two = f"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=candidate:{_host(1, '10.0.0.5', 5001)}\r\n" \
          f"a=candidate:{_host(2, '198.51.100.7', 5002)}\r\n"
    kept, dropped = screen_candidates(two, lan)
    assert "10.0.0.5" not in kept and "198.51.100.7" in kept and dropped == ["10.0.0.5: in ice_deny_networks"]
