"""The WebRTC edge's small parts without a network: ICE settings, offer parsing, frame conversion (streamed ==
offline), and the paced speaker track (frames carry their own clock; clear() drops what is queued)."""

from __future__ import annotations

import asyncio
import time

import av
import numpy as np
import pytest

from audio_server.errors import APIError
from audio_server.settings import Settings
from audio_server.webrtc_config import IceConfigError, host_addresses, parse_ice_servers
from audio_server.webrtc_offer import check_sdp, parse_body
from audio_server.webrtc_tracks import FRAME, RATE, MicInput, SpeakerTrack, frame_to_mono
from realtime.audio import PCM16, PCMU, StreamResampler, ulaw_decode

MINI_SDP = ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\n"
            "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=fingerprint:sha-256 AA:BB\r\n")


# ---- settings ---------------------------------------------------------------------------------------------------
def test_ice_servers_setting():
    assert parse_ice_servers("") == []
    assert parse_ice_servers("stun:a.example:3478, stun:b.example") == [{"urls": ["stun:a.example:3478"]},
                                                                       {"urls": ["stun:b.example"]}]
    turn = '[{"urls": ["turn:t.example:3478"], "username": "u", "credential": "p"}]'
    assert parse_ice_servers(turn) == [{"urls": ["turn:t.example:3478"], "username": "u", "credential": "p"}]
    for bad, phrase in (("http://x", "STUN/TURN URL"), ("[{", "not valid JSON"), ('{"urls": "stun:x"}', "list"),
                        ('[{"urls": "turn:t:1"}]', "username"), ('[{"url": "stun:x"}]', "'urls'")):
        with pytest.raises(IceConfigError, match=phrase):
            parse_ice_servers(bad)
    with pytest.raises(ValueError, match="TURN server needs"):
        Settings(ice_servers='[{"urls": "turn:t:1"}]')
    with pytest.raises(ValueError, match="not an IP address"):
        Settings(ice_host_addresses=("eth0",))
    with pytest.raises(ValueError, match="webrtc_idle_timeout_s"):
        Settings(webrtc_idle_timeout_s=0.1)


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("VOXLINE_ICE_SERVERS", "stun:s.example:3478")
    monkeypatch.setenv("VOXLINE_ICE_HOST_ADDRESSES", "192.0.2.10,127.0.0.1")
    monkeypatch.setenv("VOXLINE_WEBRTC_IDLE_TIMEOUT_S", "12.5")
    s = Settings.from_env()
    assert s.ice_servers == "stun:s.example:3478" and s.ice_host_addresses == ("192.0.2.10", "127.0.0.1")
    assert s.webrtc_idle_timeout_s == 12.5


def test_offered_addresses_follow_the_listen_address():
    assert host_addresses("127.0.0.1", ()) == ("127.0.0.1",)
    assert host_addresses("localhost", ()) == ("127.0.0.1",)
    assert host_addresses("::1", ()) == ("::1",)
    assert host_addresses("0.0.0.0", ()) is None  # every interface (LAN)
    assert host_addresses("voice.example", ()) is None
    assert host_addresses("127.0.0.1", ("192.0.2.7",)) == ("192.0.2.7",)  # configured wins


# ---- offers -------------------------------------------------------------------------------------------------------
def test_offer_bodies():
    assert parse_body("application/sdp", MINI_SDP.encode()).sdp == MINI_SDP
    assert parse_body("application/sdp; charset=utf-8", MINI_SDP.replace("\r\n", "\n").encode()).sdp == MINI_SDP
    o = parse_body("application/json", f'{{"sdp": {MINI_SDP!r}, "type": "offer", "model": "m"}}'.replace("'", '"')
                   .replace("\r\n", "\\r\\n").encode())
    assert o.want_json and o.model == "m" and o.sdp == MINI_SDP
    form = parse_body("multipart/form-data; boundary=x", b"", {"sdp": MINI_SDP, "session": '{"instructions": "hi"}'})
    assert form.session == {"instructions": "hi"} and not form.want_json
    for content_type, body, status, phrase in (
            ("application/sdp", b"v=0\r\nm=video 9 RTP/AVP 96\r\n", 400, "no audio track"),
            ("application/sdp", MINI_SDP.replace("a=ice-pwd", "a=ice-pw").encode(), 400, "ICE credentials"),
            ("application/sdp", b"v=0\x00", 400, "NUL"),
            ("application/json", b'{"sdp": 5}', 400, "'sdp' must be a string"),
            ("application/json", b'{"sdp": "v=0"}', 400, "no audio track"),
            ("text/html", MINI_SDP.encode(), 415, "Content-Type"),
            ("multipart/form-data", b"", 415, "Content-Type")):  # a multipart body the server could not read
        with pytest.raises(APIError, match=phrase) as info:
            parse_body(content_type, body)
        assert info.value.status == status
    with pytest.raises(APIError, match="'session' must be an object"):
        parse_body("application/json", ('{"sdp": "%s", "session": [1]}' % MINI_SDP.replace("\r\n", "\\r\\n")).encode())
    assert check_sdp(MINI_SDP + "\r\n\r\n") == MINI_SDP  # blank lines dropped, CRLF kept


# ---- inbound frames -------------------------------------------------------------------------------------------------
def _frame(pcm: np.ndarray, layout: str = "stereo", fmt: str = "s16") -> av.AudioFrame:
    """An aiortc-decoder-shaped frame: packed s16 stereo at 48 kHz (or planar float)."""
    channels = 2 if layout == "stereo" else 1
    if fmt == "s16":
        data = np.repeat(pcm[:, None], channels, axis=1).reshape(1, -1)
    else:
        data = np.repeat((pcm.astype(np.float32) / 32768)[None, :], channels, axis=0)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
    frame.sample_rate = RATE
    return frame


def test_frame_to_mono_shapes():
    pcm = (np.sin(np.arange(960) / 7) * 10000).astype(np.int16)
    for layout, fmt in (("stereo", "s16"), ("mono", "s16"), ("stereo", "fltp")):
        mono = frame_to_mono(_frame(pcm, layout, fmt))
        assert mono.dtype == np.float32 and np.allclose(mono, pcm / 32768, atol=1e-4), (layout, fmt)


@pytest.mark.parametrize("sizes", [(960,), (1,), (7, 1, 960, 333), (480, 1920)])
def test_mic_input_streamed_equals_offline(sizes):
    """Frames of any size, converted one by one, give the audio the whole signal converted at once gives."""
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(9600) * 3000).astype(np.int16)
    mic, pieces, i, k = MicInput(), [], 0, 0
    while i < len(pcm):
        n = sizes[k % len(sizes)]
        pieces.append(mic(_frame(pcm[i:i + n]), PCM16))
        i, k = i + n, k + 1
    streamed = np.frombuffer(b"".join(pieces), "<i2")
    offline = StreamResampler(RATE, 24000)(pcm.astype(np.float32) / 32768)
    offline = np.clip(np.round(offline * 32768), -32768, 32767).astype(np.int16)
    n = min(len(streamed), len(offline))
    assert n > 4000 and np.array_equal(streamed[:n], offline[:n])
    assert mic.frames == k and mic.samples == len(pcm)


def test_mic_input_follows_the_session_format():
    mic = MicInput()
    pcm = (np.sin(np.arange(960 * 25) / 30) * 8000).astype(np.int16)
    out = b"".join(mic(_frame(pcm[i:i + 960]), PCMU) for i in range(0, len(pcm), 960))
    assert 0 < len(out) <= 25 * 160  # μ-law 8 kHz: a byte a sample
    assert np.abs(ulaw_decode(out).astype(np.int32)).max() > 4000


# ---- the speaker track --------------------------------------------------------------------------------------------
def test_speaker_track_plays_clears_and_reports():
    events: list[tuple[str, str]] = []

    async def scenario():
        track = SpeakerTrack(on_event=lambda kind, rid: events.append((kind, rid)))
        track.push("resp_a", np.full(FRAME * 2 + 100, 1000, np.int16))
        track.finish("resp_a")
        t0 = time.perf_counter()
        frames = [await track.recv() for _ in range(5)]
        paced = time.perf_counter() - t0
        track.push("resp_b", np.full(FRAME * 50, 2000, np.int16))
        b_frames = [await track.recv() for _ in range(3)]
        queued_before = track.queued_ms
        lost = track.clear()
        after = [await track.recv() for _ in range(2)]
        track.stop()
        with pytest.raises(Exception):
            await track.recv()
        return frames, b_frames, after, lost, queued_before, paced

    frames, b_frames, after, lost, queued_before, paced = asyncio.run(scenario())
    all_frames = frames + b_frames + after
    assert [f.pts for f in all_frames] == [i * FRAME for i in range(len(all_frames))]  # its own clock
    assert all(f.sample_rate == RATE and f.samples == FRAME and str(f.time_base) == "1/48000" for f in all_frames)
    a = np.concatenate([f.to_ndarray().ravel() for f in frames])
    assert (a[: FRAME * 2 + 100] == 1000).all() and (a[FRAME * 2 + 100:] == 0).all()  # then silence
    assert all((f.to_ndarray() == 2000).all() for f in b_frames)
    assert all((f.to_ndarray() == 0).all() for f in after)  # cleared: nothing more of resp_b
    assert lost == {"resp_b": pytest.approx(60.0)}  # 3 frames of it were played
    assert queued_before == pytest.approx((50 - 3) * 20.0)
    assert events == [("started", "resp_a"), ("stopped", "resp_a"), ("started", "resp_b")]
    print(f"\n5 frames paced over {paced * 1000:.0f} ms (real time: 80 ms after the first)")
