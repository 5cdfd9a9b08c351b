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

_CREATED = 1763856000  # 2025-11-23, a fixed date: models are packaged, not trained here
#: OpenAI's model names, accepted as aliases of ours so that SDK examples work unchanged (one list each,
#: used by the routes and by /v1/models)
ASR_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
TTS_MODEL = "piper-joe"
TTS_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
#: realtime sessions accept any model name that is not a chat model id (realtime.engine_provider); these are
#: the ones OpenAI's clients send by default
STEP_AUDIO2_ASR = "step-audio-2"  # the step-audio preset's transcription model (its LLM with the ASR prompt)
REALTIME_ALIASES = ("gpt-realtime", "gpt-4o-realtime-preview", "gpt-4o-mini-realtime-preview")


def realtime_chat_engine(app_state, model: str | None = None):
    """The chat engine a realtime session opened with `?model=` answers with (the app passes it to the session's
    host; `realtime/` never reads app state): `app_state.chat_engine` when set (an override: tests' doubles), else
    the app's process-wide engine of that model (`app_state.chat_engines`, the hub's `llm`). A Realtime model name
    that is not a chat model id selects the default LLM. Blocking (a first load takes seconds): run it off the loop."""
    from realtime.engine_provider import llm_name

    engine = getattr(app_state, "chat_engine", None)
    return engine if engine is not None else app_state.chat_engines(llm_name(model))


class ModelHub:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.executor = ThreadPoolExecutor(max_workers=settings.model_workers, thread_name_prefix="model")
        self._lock = threading.Lock()
        self._asr: dict[str, object] = {}
        self._tts = None
        self._vad = None
        self._unified = None
        self._step_audio2 = None
        self._step_audio_tts = None

    # ---- what realtime sessions read (realtime.hub.RealtimeModels) ----------------------------------------
    @property
    def pipeline(self):
        return self.settings.pipeline

    @property
    def asr_threads(self) -> int:
        return self.settings.asr_threads

    @property
    def asr_beam_size(self) -> int:
        return self.settings.asr_beam_size

    @property
    def tts_executor(self):
        return None  # realtime sentences use the realtime TTS pool, not the shared model pool

    def asr(self, name: str | None = None):
        from asr.whisper_asr import WhisperASR

        if name == STEP_AUDIO2_ASR:
            from audio_server.step_audio2_modes import StepAudio2Transcriber

            return StepAudio2Transcriber(self.step_audio2())
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

        if self.settings.preset == "step-audio":
            from audio_server.step_audio2_modes import OneVoiceSpeaker

            return OneVoiceSpeaker(self.step_audio2(), "step-audio")
        if self.settings.preset == "step-audio-tts":
            from audio_server.step_audio2_modes import OneVoiceSpeaker

            return OneVoiceSpeaker(self.step_audio_tts(), "step-audio-tts")
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

    def step_audio2(self):
        """The step-audio preset's Step-Audio 2 stack (LLM + encoder, token2wav, S3, CAM++, one stepping loop),
        loaded once from `settings.checkpoint` and shared by realtime sessions, transcription and speech."""
        from realtime.step_audio2_stack import StepAudio2Options, StepAudio2Stack

        with self._lock:
            if self._step_audio2 is None:
                if self.settings.preset != "step-audio":
                    raise RuntimeError("only the step-audio preset has a Step-Audio 2 model")
                options = StepAudio2Options(slots=self.settings.step_audio_slots)
                self._step_audio2 = StepAudio2Stack.load(self.settings.checkpoint, options)
            return self._step_audio2

    def step_audio_tts(self):
        """The step-audio-tts preset's Step-Audio-TTS-3B stack (Step1 LLM in one stepping loop, the dual-codebook
        tokenizer for the voice prompt, the v1 flow + 22.05 kHz HiFT), loaded once from `settings.checkpoint`."""
        from realtime.step_audio_tts_stack import StepAudioTTSOptions, StepAudioTTSStack

        with self._lock:
            if self._step_audio_tts is None:
                if self.settings.preset != "step-audio-tts":
                    raise RuntimeError("only the step-audio-tts preset has a Step-Audio-TTS-3B model")
                options = StepAudioTTSOptions(slots=self.settings.step_audio_slots)
                self._step_audio_tts = StepAudioTTSStack.load(self.settings.checkpoint, options)
            return self._step_audio_tts

    def load_all(self) -> None:
        self.asr()
        self.tts()
        self.vad()
        if self.settings.pipeline == "unified":
            self.unified()
        if self.settings.pipeline == "step-audio":
            self.step_audio2()

    def model_cards(self, *, everything: bool = False) -> list[dict]:
        """What `/v1/models` lists: every name a route accepts (aliases included, each saying what it stands
        for), whether or not the model is loaded yet. Test-only models (random weights) are accepted and can be
        retrieved, but are listed only when `everything` or when they are what this server serves."""
        from voxcore.embedded_whisper import EMBEDDED_WHISPER
        from runtime.llm import OPENAI_CHAT_ALIASES, TEST_ONLY, default_model
        from runtime.llm import ALIASES as LLM_ALIASES
        from runtime.llm import model_cards as llm_cards

        def card(model_id: str, kind: str, description: str, **extra) -> dict:
            return {"id": model_id, "object": "model", "created": _CREATED, "owned_by": "voxline", "kind": kind,
                    "description": description, **extra}

        cards = [card(name, "asr", info.description) for name, info in EMBEDDED_WHISPER.items()]
        cards += [card(alias, "asr", f"alias of {self.settings.asr_model}", alias_of=self.settings.asr_model)
                  for alias in ASR_ALIASES]
        cards.append(card(TTS_MODEL, "tts", "Piper VITS en_US joe medium, 22.05 kHz"))
        cards += [card(alias, "tts", f"alias of {TTS_MODEL}", alias_of=TTS_MODEL) for alias in TTS_ALIASES]
        served = default_model()
        cards += [c for c in llm_cards(_CREATED) if everything or c["id"] not in TEST_ONLY or c["id"] == served
                  or self.settings.preset == "tiny"]
        cards += [card(alias, "llm", f"alias of {target}", alias_of=target) for alias, target in LLM_ALIASES.items()]
        cards += [card(alias, "llm", f"alias of the default chat model ({served})", alias_of=served)
                  for alias in OPENAI_CHAT_ALIASES]
        cards += [card(alias, "realtime", f"alias: realtime sessions answer with the default chat model ({served})",
                       alias_of=served) for alias in REALTIME_ALIASES]
        cards.append(card("silero-vad", "vad", "Silero VAD (ONNX)"))
        if self.settings.preset == "step-audio":
            where = f"the Step-Audio 2 checkpoint {self.settings.checkpoint}"
            cards.append(card(STEP_AUDIO2_ASR, "asr", f"transcription by {where} (the default here)"))
            cards.append(card("step-audio-2-realtime", "realtime", f"speech-to-speech sessions on {where}"))
        if self.settings.preset == "step-audio-tts":
            from audio_server.step_audio_tts_modes import MODEL_NAME, is_tiny_download

            noise = (" Tiny test download with random weights: the audio is noise (mechanics, not speech quality)."
                     if is_tiny_download(self.settings.checkpoint) else "")
            cards.append(card(MODEL_NAME, "tts", f"speech by the Step-Audio-TTS-3B download {self.settings.checkpoint} "
                              "(Step1 dual-codebook ids, v1 flow, 22.05 kHz HiFT): what /v1/audio/speech serves under "
                              f"{', '.join((TTS_MODEL, *TTS_ALIASES))} here.{noise}", sample_rate=22050))
        if self.settings.pipeline == "unified":
            cards.append(card("voxline-unified-tiny", "realtime", "unified audio LLM pipeline (dual-codebook "
                              "tokenizer, MTP audio LLM, streaming vocoder), tiny preset with random weights: "
                              "mechanics only"))
        return cards

    def model_card(self, model_id: str) -> dict | None:
        """`/v1/models/{id}`: the card of any name a route accepts (listed or test-only), else None."""
        return next((c for c in self.model_cards(everything=True) if c["id"] == model_id), None)

    def resolve_asr_name(self, requested: str | None, batch: bool = False) -> str:
        """The ASR model for a request's `model`; `batch` (a whole-file transcription) may pick the step-audio
        preset's own model, which has no streaming decode (sockets and realtime turns keep Whisper)."""
        from voxcore.embedded_whisper import EMBEDDED_WHISPER

        if self.settings.preset == "step-audio" and batch and (not requested or requested in ASR_ALIASES
                                                                or requested == STEP_AUDIO2_ASR):
            return STEP_AUDIO2_ASR
        if not requested or requested in ASR_ALIASES:
            return self.settings.asr_model
        if requested in EMBEDDED_WHISPER:
            return requested
        raise ValueError(f"unknown transcription model {requested!r}; available: "
                         f"{', '.join(ASR_ALIASES)} (aliases), {', '.join(EMBEDDED_WHISPER)}")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
