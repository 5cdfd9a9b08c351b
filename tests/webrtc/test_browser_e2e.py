"""The voice chat page in headless Chromium (Debian's `chromium`, driven by Playwright over CDP — no browser
download): a fake microphone plays a spoken question (Piper, as a 48 kHz WAV), the page calls the server
over WebRTC, and the page itself must show the user's transcript, the assistant's answer (real embedded
LLM), received audio frames (getStats) and a turn latency. A screenshot is saved as a test artifact.

The Makefile's `test` target installs chromium (`apt-get install chromium`) when it is missing; without it
these tests skip and say so."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from realtime.audio import StreamResampler
from tests.realtime.conftest import real_engine  # noqa: F401  (fixture)
from tests.webrtc.conftest import wait_clean

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
QUESTION = "What is the capital of France?"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required",
         # ICE on loopback only: the server offers 127.0.0.1, the browser may use it too; real addresses
         # rather than mDNS names (nothing is multicast on the LAN)
         "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns"]


def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        pytest.skip("Debian's chromium is not installed and this run could not install it: `make test` runs "
                    "`apt-get install -y chromium` first (needs root and the Debian archive)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the playwright package is missing ({exc}): install the test extra, pip install -e '.[test]'")
    return path


def launch(p, user_data_dir: str, extra: list[str]):
    return p.chromium.launch_persistent_context(user_data_dir, executable_path=chromium(), headless=True,
                                                args=FLAGS + extra, viewport={"width": 1000, "height": 720})


def state(page) -> dict:
    return page.evaluate("() => ({state: voxline.state, stats: voxline.stats, transcript: voxline.transcript(),"
                         " turns: voxline.turns, errors: voxline.errors, micPeak: voxline.micPeak,"
                         " message: document.getElementById('message').textContent})")


def question_wav(hub, path: Path) -> Path:
    """Piper says the question a little slowly (after Chromium's noise suppression and Opus, Whisper base
    sometimes hears "France" at full speed as "friends"), at 48 kHz, 16-bit mono."""
    from tts.piper_tts import SpeechOptions

    tts = hub.tts()
    speech = StreamResampler(tts.sample_rate, 48000, dtype="int16")(
        tts.synthesize_all(QUESTION, SpeechOptions(speed=0.85)), last=True)
    silence = np.zeros(4 * 48000, np.int16)  # while the page connects
    soundfile.write(path, np.concatenate([silence, speech, np.zeros(30 * 48000, np.int16)]), 48000,
                    subtype="PCM_16")
    return path


def test_browser_voice_chat(rtc_server, hub, real_engine, tmp_path):  # noqa: F811 (imported fixture)
    from playwright.sync_api import sync_playwright

    exe = chromium()
    rtc_server.app.state.chat_engine = real_engine
    # The fake microphone: silence while the page connects, the question, then silence (`%noloop`).
    wav = question_wav(hub, tmp_path / "question.wav")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "webrtc_e2e.png"
    console: list[str] = []
    with tempfile.TemporaryDirectory(prefix="voxline-chromium-") as profile, sync_playwright() as p:
        context = launch(p, profile, ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                                      f"--use-file-for-fake-audio-capture={wav}%noloop"])
        try:
            page = context.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.goto(rtc_server.base_url + "/")
            assert page.title().startswith("voxline")
            t0 = time.perf_counter()
            page.click("#start")
            deadline = t0 + 240
            seen = state(page)
            while time.perf_counter() < deadline:
                seen = state(page)
                bot = [e for e in seen["transcript"] if e["role"] == "assistant" and e["final"]]
                if bot and seen["state"] == "live" and page.locator("#state").inner_text() == "listening" \
                        and seen["stats"]["totalSamplesReceived"] > 0:
                    break
                assert not seen["message"], seen["message"]
                time.sleep(0.5)
            took = time.perf_counter() - t0
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot: {shot}")
            page.click("#stop")
            time.sleep(0.5)
        finally:
            context.close()
    print(f"browser chromium at {exe}: exchange done in {took:.1f} s; transcript {seen['transcript']}; "
          f"turns {seen['turns']}; stats {seen['stats']}; mic peak {seen['micPeak']:.2f}")
    if any(c.startswith("error") for c in console):
        print("console:", [c for c in console if c.startswith("error")])
    users = [e for e in seen["transcript"] if e["role"] == "user" and e["final"]]
    bots = [e for e in seen["transcript"] if e["role"] == "assistant" and e["final"]]
    assert users and "capital" in users[0]["text"].lower(), seen["transcript"]  # a word Whisper never misses
    assert bots and len(bots[0]["text"].split()) >= 2, seen["transcript"]
    assert seen["stats"]["packetsReceived"] > 50 and seen["stats"]["totalSamplesReceived"] > 48000 // 2
    assert seen["stats"]["packetsSent"] > 50  # the microphone went out
    assert seen["micPeak"] > 0.2  # the level meter moved while the question played
    turn = seen["turns"][0]
    assert turn["firstAudioMs"] is not None and turn["firstAudioMs"] > 0  # the page measured the turn
    assert not seen["errors"], seen["errors"]
    assert shot.stat().st_size > 10_000
    wait_clean(rtc_server)  # Stop hung up: the server freed everything


def test_page_explains_a_denied_microphone_and_an_unreachable_server(rtc_server):
    from playwright.sync_api import sync_playwright

    chromium()
    with tempfile.TemporaryDirectory(prefix="voxline-chromium-") as profile, sync_playwright() as p:
        # No fake UI: headless Chromium answers the permission prompt with "deny".
        context = launch(p, profile, ["--use-fake-device-for-media-stream", "--deny-permission-prompts"])
        try:
            page = context.new_page()
            page.goto(rtc_server.base_url + "/")
            page.click("#start")
            page.wait_for_selector("#message:not([hidden])", timeout=30_000)
            denied = page.inner_text("#message")
        finally:
            context.close()
    with tempfile.TemporaryDirectory(prefix="voxline-chromium-") as profile, sync_playwright() as p:
        context = launch(p, profile, ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])
        try:
            page = context.new_page()
            page.goto(rtc_server.base_url + "/")
            page.route("**/v1/realtime/**", lambda route: route.abort("connectionrefused"))  # server gone
            page.click("#start")
            page.wait_for_selector("#message:not([hidden])", timeout=30_000)
            unreachable = page.inner_text("#message")
            start_enabled = page.is_enabled("#start")
        finally:
            context.close()
    print(f"\nmic denied → {denied!r}\nserver unreachable → {unreachable!r}")
    assert "microphone access was denied" in denied.lower()
    assert "cannot reach the voxline server" in unreachable.lower() and start_enabled
    wait_clean(rtc_server)
