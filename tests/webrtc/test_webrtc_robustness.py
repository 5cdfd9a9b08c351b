"""Bad offers, late offers, vanished peers and shutdown: clear errors, and nothing left behind (no call in the
registry, no session slot, no task, every track stopped and every connection closed)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time

import httpx
import pytest
from aiortc import RTCSessionDescription
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audio_server.webrtc_peer import peers
from tests.realtime.fakes import FakeEngine, Script
from tests.webrtc.client import Client
from tests.webrtc.conftest import IDLE_TIMEOUT_S, recording, server_tasks, wait_clean

pytestmark = pytest.mark.slow
OFFER_URL = "/v1/realtime/webrtc"
STORY_FOREVER = tuple(f"Sentence {n} of an answer that is still being written. " for n in range(60))


@pytest.fixture(scope="module")
def valid_offer() -> str:
    """A real offer (aiortc: one audio track + the data channel, loopback candidates only)."""

    async def make():
        client = Client()
        sdp = await client.offer()
        await client.close()
        return sdp

    return asyncio.run(make())


def post(server, body, content_type="application/sdp", path=OFFER_URL) -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    with httpx.Client(timeout=60) as http:
        return http.post(server.base_url + path, content=content, headers={"Content-Type": content_type})


def hang_up(server, response: httpx.Response) -> None:
    call_id = response.headers["location"].rsplit("/", 1)[-1]
    with httpx.Client(timeout=60) as http:
        assert http.delete(f"{server.base_url}/v1/realtime/webrtc/{call_id}").status_code == 200


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    if code is not None:
        assert err["code"] == code, err
    return err


# ---- 1. bad SDP → 400 with an OpenAI-style body ---------------------------------------------------------------
def test_bad_offers_get_clear_400s(rtc_server, valid_offer):
    def without(prefix: str) -> str:
        return "\r\n".join(line for line in valid_offer.split("\r\n") if not line.startswith(prefix))

    no_fingerprint, no_media = without("a=fingerprint"), without("m=")
    no_codecs = without("a=rtpmap:")  # structurally fine, refused by aiortc itself (as are the next two)
    bad_setup = valid_offer.replace("a=setup:actpass", "a=setup:bogus")
    bad_port = re.sub(r"m=audio \d+", "m=audio notaport", valid_offer)
    cases = [
        (b"", "application/sdp", 400, "empty"),
        (b"hello there", "application/sdp", 400, "v=0"),
        (b"\xff\xfe\x00garbage", "application/sdp", 400, "UTF-8"),
        ("v=0\r\nthis is not sdp", "application/sdp", 400, "not 'x=value'"),
        (no_fingerprint, "application/sdp", 400, "fingerprint"),
        (no_media, "application/sdp", 400, "no audio track"),
        (no_codecs, "application/sdp", 400, "not accepted"),
        (bad_setup, "application/sdp", 400, "not accepted"),
        (bad_port, "application/sdp", 400, "not accepted"),
        ("{nope", "application/json", 400, "JSON"),
        (json.dumps(["v=0"]), "application/json", 400, "object"),
        (json.dumps({"sdp": valid_offer, "type": "answer"}), "application/json", 400, "offer"),
        (json.dumps({"type": "offer"}), "application/json", 400, "sdp"),
        (json.dumps({"sdp": valid_offer, "session": {"audio": {"output": {"voice": 3}}}}), "application/json", 400,
         None),
        (valid_offer, "image/png", 415, "Content-Type"),
        ("v=0\r\n" + "a=x\r\n" * 20000, "application/sdp", 413, "KiB"),
    ]
    before = rtc_server.app.state.open_sessions
    for body, content_type, status, phrase in cases:
        r = post(rtc_server, body, content_type)
        err = assert_openai_error(r, status)
        print(f"{status} {err['code']}: {err['message'][:110]}")
        if phrase:
            assert phrase.lower() in err["message"].lower(), (phrase, err)
        assert rtc_server.app.state.open_sessions == before  # a refused offer holds no slot
    wait_clean(rtc_server, before)


def test_offer_as_multipart_with_a_session(rtc_server, valid_offer):
    """`POST /v1/realtime/calls` takes the offer as multipart `sdp` + `session`, as OpenAI's GA endpoint does."""
    session = {"instructions": "Answer like a pirate.", "audio": {"output": {"voice": "alloy"}}}
    with httpx.Client(timeout=60) as http:
        r = http.post(rtc_server.base_url + "/v1/realtime/calls",
                      files={"sdp": (None, valid_offer), "session": (None, json.dumps(session))})
        assert r.status_code == 201 and r.headers["content-type"].startswith("application/sdp"), r.text
        peer = peers(rtc_server.app)[r.headers["location"].rsplit("/", 1)[-1]]
        assert peer.session.config.instructions == "Answer like a pirate."
        assert http.post(rtc_server.base_url + r.headers["location"] + "/hangup").status_code == 200
    wait_clean(rtc_server)


# ---- 2. offers on a call that has ended, and renegotiation of a live one ----------------------------------------
def test_second_offer_on_a_closed_call_is_refused(rtc_server):
    rtc_server.app.state.chat_engine = FakeEngine()

    async def scenario():
        client = Client()
        r = await client.connect(rtc_server.base_url)
        assert r.status_code == 201
        url = f"{rtc_server.base_url}{OFFER_URL}/{client.call_id}"
        async with httpx.AsyncClient(timeout=60) as http:
            # a new offer from the same client on the live call: renegotiated
            sdp = await client.offer()
            again = await http.post(url, content=sdp, headers={"Content-Type": "application/sdp"})
            assert again.status_code == 200 and again.text.startswith("v=0"), again.text
            await client.pc.setRemoteDescription(RTCSessionDescription(sdp=again.text, type="answer"))
            client.send({"type": "session.update", "session": {"instructions": "still here"}})
            await client.wait("session.updated")  # the call survived renegotiation
            bye = await http.delete(url)
            assert bye.status_code == 200 and bye.json()["status"] == "closed"
            late = await http.post(url, content=sdp, headers={"Content-Type": "application/sdp"})
            twice = await http.delete(url)
            unknown = await http.post(f"{rtc_server.base_url}{OFFER_URL}/rtc_0000", content=sdp,
                                      headers={"Content-Type": "application/sdp"})
        await client.close()
        return late, twice, unknown

    late, twice, unknown = asyncio.run(scenario())
    assert_openai_error(late, 410, "call_ended")
    assert_openai_error(twice, 410, "call_ended")
    assert_openai_error(unknown, 404, "call_not_found")
    wait_clean(rtc_server)


# ---- 3. a peer that vanishes without a goodbye ----------------------------------------------------------------
def test_vanished_peer_is_cleaned_up(rtc_server):
    engine = FakeEngine(Script(("This answer will never be heard by anyone at all.",) * 4, delay_s=0.05))
    rtc_server.app.state.chat_engine = engine
    question = recording("commands/goforward.wav", lead_s=0.3, tail_s=1.0)

    async def scenario():
        gone, stays = Client(), Client()
        await gone.connect(rtc_server.base_url)
        await stays.connect(rtc_server.base_url)
        peer = peers(rtc_server.app)[gone.call_id]
        gone.mic.play(question)
        await gone.wait("output_audio_buffer.started", timeout=90)  # mid-answer: tasks and audio in flight
        gone.vanish()
        t0 = time.perf_counter()
        while gone.call_id in peers(rtc_server.app) and time.perf_counter() - t0 < 60:
            await asyncio.sleep(0.1)
        noticed = time.perf_counter() - t0
        # the other call is untouched and still answers
        stays.send({"type": "session.update", "session": {"instructions": "hello"}})
        await stays.wait("session.updated", timeout=10)
        assert stays.call_id in peers(rtc_server.app)
        await stays.close()
        await gone.close()
        return peer, noticed

    peer, noticed = asyncio.run(scenario())
    cleaned = wait_clean(rtc_server)
    print(f"\nvanished peer closed {noticed:.1f} s after it went silent (idle timeout {IDLE_TIMEOUT_S:.0f} s): "
          f"{peer.close_reason!r}; everything released {cleaned:.1f} s later")
    assert peer.closed and "no media" in (peer.close_reason or "")
    assert peer.speaker.readyState == "ended" and peer.pc.connectionState == "closed"
    assert engine.open_streams == 0  # the LLM stream of the abandoned answer was closed


# ---- 4. server shutdown closes every call ------------------------------------------------------------------------
def test_shutdown_closes_calls(hub):
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    live = LiveServer(create_app(hub.settings, hub)).start()
    live.app.state.chat_engine = FakeEngine(Script(STORY_FOREVER, delay_s=0.2))

    async def scenario():
        client = Client()
        await client.connect(live.base_url)
        await client.wait("session.created")
        client.send({"type": "response.create"})  # an answer in flight when the server stops
        await client.wait("response.output_audio_transcript.delta", timeout=30)
        peer = next(iter(peers(live.app).values()))
        await asyncio.get_running_loop().run_in_executor(None, live.stop)
        closed_state = client.pc.connectionState
        await client.close()
        return client, peer, closed_state

    client, peer, client_state = asyncio.run(scenario())
    done = client.events[client.wait_index("response.done")]["response"]  # it was told, not left hanging
    assert done["status"] == "cancelled" and done["status_details"]["error"]["code"] == "server_shutdown", done
    assert peer.closed and peer.close_reason == "server shutdown", peer.close_reason
    assert not peers(live.app) and live.app.state.open_sessions == 0
    assert peer.speaker.readyState == "ended" and peer.pc.connectionState == "closed"
    print(f"\nafter shutdown the client saw connection state {client_state!r}")


# ---- 5. fuzz: random bytes and mutated offers never make a 500 ------------------------------------------------------
_LINE_OPS = ("delete", "duplicate", "swap", "mutate", "insert", "truncate")
# Lines holding addresses are only ever dropped or duplicated, never rewritten: a mutated candidate could
# name an address off this machine, and the server would send connectivity checks there.
_ADDRESS_LINES = ("a=candidate", "c=", "o=", "a=rtcp:")


def mutate(sdp: str, ops: list[tuple[str, int, int, str]]) -> str:
    lines = sdp.split("\r\n")
    for op, i, j, text in ops:
        if not lines:
            break
        i, j = i % len(lines), j % len(lines)
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(j, lines[i])
        elif op == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "mutate" and not lines[i].startswith(_ADDRESS_LINES):
            k = j % (len(lines[i]) + 1)
            lines[i] = lines[i][:k] + text + lines[i][k + 1:]
        elif op == "insert":
            lines.insert(i, random.Random(j).choice("bikmstuvxyz") + "=" + text)
        elif op == "truncate":
            lines = lines[: max(1, i)]
    return "\r\n".join(lines)


_ops = st.lists(st.tuples(st.sampled_from(_LINE_OPS), st.integers(0, 200), st.integers(0, 200),
                          st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)),
                min_size=1, max_size=4)


def test_fuzzed_offers_never_crash(rtc_server, valid_offer):
    before = rtc_server.app.state.open_sessions
    seen: dict[int, int] = {}

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=3000).map(lambda b: ("application/sdp", b)),
                     _ops.map(lambda ops: ("application/sdp", mutate(valid_offer, ops).encode())),
                     _ops.map(lambda ops: ("application/json", json.dumps({"sdp": mutate(valid_offer, ops),
                                                                            "type": "offer"}).encode()))))
    def check(case):
        content_type, body = case
        r = post(rtc_server, body, content_type)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code in (200, 201, 400, 413), (r.status_code, r.text[:300], body[:200])
        if r.status_code in (200, 201):
            hang_up(rtc_server, r)  # a mutation that is still a valid offer: a real call, ended at once
        else:
            assert_openai_error(r, r.status_code)

    check()
    print(f"\nfuzzed offers: status counts {dict(sorted(seen.items()))}")
    assert rtc_server.app.state.open_sessions == before
    wait_clean(rtc_server, before)
    assert not server_tasks(rtc_server.app)
