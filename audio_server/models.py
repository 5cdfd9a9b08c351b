"""The process's models, loaded once and shared by every session (DESIGN.md §4).

Loading is lazy and guarded by a lock, so the first request that needs a model pays for it and every
later one reuses it; `load_all()` warms everything up at start-up. Model calls are CPU-bound and run in
one bounded thread pool owned here.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from audio_server.settings import Settings

log = logging.getLogger(__name__)


class ModelHub:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.executor = ThreadPoolExecutor(max_workers=settings.model_workers, thread_name_prefix="model")
        self._lock = threading.Lock()
        self._asr: dict[str, object] = {}
        self._tts = None
        self._vad = None
        self._unified = None

    def asr(self, name: str | None = None):
        from asr.whisper_asr import WhisperASR

        name = name or self.settings.asr_model
        with self._lock:
            model = self._asr.get(name)
            if model is None:
                t0 = time.perf_counter()
                model = WhisperASR(name, cpu_threads=self.settings.asr_threads,
                                   utterance_window_s=self.settings.asr_utterance_window_s)
                self._asr[name] = model
                log.info("loaded ASR %s in %.2fs", name, time.perf_counter() - t0)
            return model

    def tts(self):
        from tts.piper_tts import PiperTTS

        with self._lock:
            if self._tts is None:
                t0 = time.perf_counter()
                self._tts = PiperTTS()
                log.info("loaded TTS piper/joe in %.2fs", time.perf_counter() - t0)
            return self._tts

    def vad(self):
        from asr.vad import SileroVAD

        with self._lock:
            if self._vad is None:
                self._vad = SileroVAD.shared()
            return self._vad

    def llm(self, name: str | None = None):
        """The process-wide chat engine of LLM ``name`` (default: the preset's), loaded on first use.

        One engine per model per process (``runtime.llm.get_engine``): the chat routes and every realtime
        session share it; it batches concurrent requests in its own thread."""
        from runtime.llm import get_engine

        return get_engine(name)

    def unified(self):
        """The unified audio stack (dual-codebook tokenizer → audio LLM with MTP → vocoder) of the preset,
        built on first use and shared by every session. Only the tiny preset has one (random weights)."""
        from realtime.unified_pipeline import UnifiedStack

        with self._lock:
            if self._unified is None:
                if self.settings.preset != "tiny":
                    raise RuntimeError(f"preset {self.settings.preset!r} has no unified audio model; use preset tiny")
                t0 = time.perf_counter()
                self._unified = UnifiedStack.tiny()
                log.info("built the tiny unified stack (random weights) in %.2fs", time.perf_counter() - t0)
            return self._unified

    def load_all(self) -> None:
        self.asr()
        self.tts()
        self.vad()
        if self.settings.pipeline == "unified":
            self.unified()

    def model_cards(self) -> list[dict]:
        """What `/v1/models` lists: the preset's models, whether or not they are loaded yet."""
        from asr.embedded import EMBEDDED_WHISPER

        created = 1763856000  # 2025-11-23, a fixed date: models are packaged, not trained here
        cards = [{"id": name, "object": "model", "created": created, "owned_by": "voxline",
                  "kind": "asr", "description": info.description} for name, info in EMBEDDED_WHISPER.items()]
        cards.append({"id": "whisper-1", "object": "model", "created": created, "owned_by": "voxline",
                      "kind": "asr", "description": f"alias of {self.settings.asr_model}"})
        cards.append({"id": "piper-joe", "object": "model", "created": created, "owned_by": "voxline",
                      "kind": "tts", "description": "Piper VITS en_US joe medium, 22.05 kHz"})
        for alias in ("tts-1", "gpt-4o-mini-tts"):
            cards.append({"id": alias, "object": "model", "created": created, "owned_by": "voxline",
                          "kind": "tts", "description": "alias of piper-joe"})
        from runtime.llm import model_cards as llm_cards

        cards += llm_cards(created)
        cards.append({"id": "silero-vad", "object": "model", "created": created, "owned_by": "voxline",
                      "kind": "vad", "description": "Silero VAD (ONNX)"})
        if self.settings.pipeline == "unified":
            cards.append({"id": "voxline-unified-tiny", "object": "model", "created": created, "owned_by": "voxline",
                          "kind": "realtime", "description": "unified audio LLM pipeline (dual-codebook tokenizer, "
                          "MTP audio LLM, streaming vocoder), tiny preset with random weights: mechanics only"})
        return cards

    def resolve_asr_name(self, requested: str | None) -> str:
        from asr.embedded import EMBEDDED_WHISPER

        if not requested or requested in ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"):
            return self.settings.asr_model
        if requested in EMBEDDED_WHISPER:
            return requested
        raise ValueError(f"unknown transcription model {requested!r}; available: "
                         f"whisper-1 (alias), {', '.join(EMBEDDED_WHISPER)}")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
