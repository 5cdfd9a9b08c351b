"""One loaded Step-Audio-TTS-3B download serving speech: text → dual-codebook ids (Step1) → v1 flow → 22.05 kHz HiFT.

A download in the official layout (``runtime.step1.layout``: ``Step-Audio-TTS-3B/`` with the Step1 LLM, its text
tokenizer and ``CosyVoice-300M-25Hz/``, and ``Step-Audio-Tokenizer/`` beside it) is loaded once per process:

- the Step1 LLM (``runtime.step1``), straight into bf16 on a GPU (float32 on a CPU), behind
  :class:`~runtime.step1.answer.DualCodebookAnswerConstraint` (the 2:3 linguistic/semantic phase mask and the
  reference's repetition rule) in one :class:`~runtime.slot_loop.SlotLoop` of ``slots`` slots of one
  :class:`~runtime.engine.DecodeEngine`, the machinery Step-Audio 2 runs on: N concurrent speech requests cost one
  batched step per id;
- the dual-codebook tokenizer (Paraformer vq02 + k-means, S3 v1 ONNX vq06, interleaved 2:3), which turns the voice
  prompt into its ids, and the CAM++ speaker model;
- the v1 vocoder (``vocoder.step_audio_v1.cosyvoice_v1``, flow + HiFT, float32).

The release ships no voice with the model (the reference's ``speakers/`` folder lives in its code repository), so the
default voice is a sentence spoken by the packaged Piper voice (or ``voice_wav`` with ``voice_text``), prepared once:
its interleaved ids go into the prompt (SPEC §7), its mixed values, 22.05 kHz mel and speaker vector into the flow.

Sampling follows the reference (temperature 0.7 plus the repetition rule); the answer ends at the end-of-turn id,
which the constraint allows only after whole groups, or at a budget bounded by the text's length.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.audio_decoding import AudioOnlyLM
from runtime.engine import DecodeEngine
from runtime.sampling import SamplingParams
from runtime.slot_loop import Generation, SlotLoop
from runtime.step1.answer import GROUP, DualCodebookAnswerConstraint
from runtime.step1.checkpoint import load_step1
from runtime.step1.layout import StepAudioTTSLayout, resolve_layout
from runtime.step1.prompt import Step1TextTokenizer, tts_prompt
from tokenizer.s3.loader import load_s3_tokenizer
from tokenizer.speaker import SpeakerEncoder
from tokenizer.step_audio_v1.interleave import interleave_codes, to_mixed
from tokenizer.step_audio_v1.linguistic import load_linguistic_tokenizer, preprocess_16k
from vocoder.step_audio_v1.cosyvoice_v1 import VocoderV1, VoiceV1
from voxcore.interleave import STEP_AUDIO_LAYOUT
from voxcore.strict_load import CheckpointError

log = logging.getLogger(__name__)
VOICE_TEXT = "Hello, it is nice to talk with you. How can I help you today?"
#: the reference samples at temperature 0.7 (HF generate's default top_k 50 applies there too)
REFERENCE_SAMPLING = SamplingParams(temperature=0.7, top_k=50)


@dataclass(frozen=True)
class StepAudioTTSOptions:
    slots: int = 4  # answers decoded at once (more wait for a free slot)
    capacity: int = 8192  # KV positions per slot, prompt + answer (the reference generates up to max_length 8192)
    max_answer_ids: int = 2500  # dual-codebook ids of one answer (41.67 per second: 60 s)
    device: str = "auto"  # auto = cuda when available
    dtype: str = "auto"  # auto = bfloat16 on cuda, float32 on cpu
    voice_wav: str = ""  # a voice prompt (any rate, mono); empty = the packaged Piper sentence
    voice_text: str = ""  # what voice_wav says (the prompt's human turn)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.slots < 1 or self.capacity < 256 or self.max_answer_ids < GROUP:
            raise ValueError(f"slots >= 1, capacity >= 256 and max_answer_ids >= {GROUP}")
        if bool(self.voice_wav) != bool(self.voice_text):
            raise ValueError("voice_wav and voice_text go together (the recording and what it says)")


@dataclass
class TTSVoice:
    """A prepared voice: what the recording says, its interleaved LLM ids, and the flow's view of it."""

    text: str
    prompt_ids: list[int]
    flow: VoiceV1


@dataclass
class SpeechResult:
    """One synthesis: the answer's LLM ids (end id excluded), why it ended, and the PCM."""

    ids: list[int]
    finish: str
    pcm: np.ndarray


def _resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    import soxr

    audio = np.asarray(audio, np.float32)
    return audio if rate == target else soxr.resample(audio, rate, target).astype(np.float32)


def speech_budget(text: str, limit: int) -> int:
    """Answer ids for ``text``, whole groups: a trained model ends itself; this bounds a runaway one. Speech runs at
    41.67 ids/s and rarely slower than 4 characters a second (~10 ids per character); 15 per character, + 3 s."""
    budget = min(limit, 125 + 15 * len(text))
    return max(GROUP, budget - budget % GROUP)


class StepAudioTTSStack:
    """The process's Step-Audio-TTS-3B (see the module docstring). Build with :meth:`load`."""

    def __init__(self, layout: StepAudioTTSLayout, model, text: Step1TextTokenizer, vocoder: VocoderV1,
                 linguistic, s3, speaker: SpeakerEncoder, options: StepAudioTTSOptions) -> None:
        self.layout, self.model, self.text, self.vocoder = layout, model, text, vocoder
        self.linguistic, self.s3, self.speaker, self.options = linguistic, s3, speaker, options
        self.sample_rate = vocoder.sample_rate
        cfg = model.config
        self.end_id = cfg.eos_token_id
        dev = next(model.parameters()).device
        self.constraint = DualCodebookAnswerConstraint(cfg.vocab_size, self.end_id, options.slots, dev)
        engine = DecodeEngine(AudioOnlyLM(model, self.constraint), batch=options.slots, capacity=options.capacity,
                              n_draft=0, seed=options.seed)
        self.constraint.attach(engine.state.tokens)  # the repetition rule reads the slots' token record
        self.loop = SlotLoop(engine, self.constraint, name="step-audio-tts-loop")
        self.voice: TTSVoice | None = None
        self._voice_lock = threading.Lock()
        self.last: SpeechResult | None = None  # the latest synthesis (what tests and the CLI inspect)

    # ---- loading -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path, options: StepAudioTTSOptions = StepAudioTTSOptions()) -> StepAudioTTSStack:
        layout = resolve_layout(directory)
        device = options.device if options.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16, "float32": torch.float32}.get(options.dtype)
        if dtype is None:
            raise ValueError(f"dtype must be auto, bfloat16, float16 or float32, not {options.dtype!r}")
        t0 = time.perf_counter()
        model = load_step1(layout.model_dir, dtype=dtype, device=device)
        if model.config.vocab_size < STEP_AUDIO_LAYOUT.offset + STEP_AUDIO_LAYOUT.n_linguistic + \
                STEP_AUDIO_LAYOUT.n_semantic:
            raise CheckpointError(f"{layout.model_dir / 'config.json'}: vocab_size {model.config.vocab_size} has no "
                                  "room for the dual-codebook ids 65536..70655")
        text = Step1TextTokenizer(layout.text_tokenizer)
        vocoder = VocoderV1.load(layout.vocoder_dir, device=device)
        linguistic = load_linguistic_tokenizer(str(layout.paraformer_weights), layout.cmvn, layout.kmeans,
                                               layout.paraformer_config, device=device)
        s3 = load_s3_tokenizer(layout.s3_v1, "v1", device=device)
        speaker = SpeakerEncoder(layout.campplus, device=device)
        stack = cls(layout, model, text, vocoder, linguistic, s3, speaker, options)
        log.info("loaded Step-Audio-TTS-3B from %s (%s, %s) in %.1fs", layout.root, device, dtype,
                 time.perf_counter() - t0)
        return stack

    # ---- the voice ---------------------------------------------------------------------------------------
    def default_voice(self) -> TTSVoice:
        """The voice every answer speaks with (prepared on first use)."""
        with self._voice_lock:
            if self.voice is None:
                self.voice = self._prepare_voice()
            return self.voice

    def _prepare_voice(self) -> TTSVoice:
        if self.options.voice_wav:
            import soundfile

            audio, rate = soundfile.read(self.options.voice_wav, dtype="float32", always_2d=True)
            audio, text = audio.mean(axis=1), self.options.voice_text
        else:
            from tts.piper_tts import PiperTTS

            piper = PiperTTS()
            audio, rate = piper.synthesize_all(VOICE_TEXT).astype(np.float32) / 32768.0, piper.sample_rate
            text = VOICE_TEXT
        return self.prepare_voice(audio, rate, text)

    @torch.inference_mode()
    def prepare_voice(self, audio: np.ndarray, rate: int, text: str) -> TTSVoice:
        """A voice from a recording (any rate, mono float) and its transcript: ``wav2token`` (SPEC §2 preprocess
        with trim, both streams on the same waveform, 2:3 interleave), the untrimmed 22.05 kHz mel, CAM++."""
        if rate < 16000:
            raise ValueError(f"the voice prompt is {rate} Hz; the tokenizer needs at least 16 kHz (it never upsamples)")
        wav16 = _resample(audio, rate, 16000)
        wave = preprocess_16k(wav16, enable_trim=True)
        vq02 = self.linguistic.tokenize(wave).cpu()
        vq06 = self.s3.tokenize([wave])[0]
        ids = interleave_codes(vq02, vq06).tolist()
        if not ids:
            raise ValueError("the voice prompt is too short (it needs one whole 2 + 3 group, 0.12 s)")
        flow_voice = self.vocoder.voice(to_mixed(ids).tolist(), _resample(audio, rate, self.sample_rate),
                                        self.speaker.embed(wav16))
        return TTSVoice(text, ids, flow_voice)

    def close(self) -> None:
        self.loop.close()

    # ---- generation --------------------------------------------------------------------------------------
    def prompt_ids(self, text: str, voice: TTSVoice | None = None) -> list[int]:
        voice = voice or self.default_voice()
        return tts_prompt(text, self.text, voice.text, voice.prompt_ids)

    def generate_ids(self, text: str, *, params: SamplingParams = REFERENCE_SAMPLING, max_new: int | None = None,
                     voice: TTSVoice | None = None, seed: int = 0) -> tuple[list[int], str]:
        """The answer's ids (end id excluded) and why it ended (stop | length | capacity | cancelled | error);
        blocking (the work is a slot of the shared loop)."""
        ids = self.prompt_ids(text, voice)
        budget = speech_budget(text, self.options.max_answer_ids) if max_new is None else max_new
        room = self.options.capacity - len(ids) - 2
        if room < GROUP:
            raise ValueError(f"the prompt ({len(ids)} ids) does not fit a slot of {self.options.capacity} positions")
        arrivals: queue.SimpleQueue[list[int] | str] = queue.SimpleQueue()
        gen = Generation(ids, arrivals.put, arrivals.put, params=params, max_new=min(budget, room),
                         stop_ids=frozenset({self.end_id}), seed=seed, constrained=True)
        self.loop.submit(gen)
        out: list[int] = []
        try:
            while not isinstance(item := arrivals.get(), str):
                out.extend(item)
        finally:
            gen.cancel()
            self.loop.wake()
        if item == "error":
            raise RuntimeError("the Step-Audio-TTS decode loop failed on this request (see the log)")
        if out and out[-1] == self.end_id:
            out.pop()
        return out, item

    def synthesize(self, text: str, *, params: SamplingParams = REFERENCE_SAMPLING, max_new: int | None = None,
                   voice: TTSVoice | None = None, seed: int = 0) -> SpeechResult:
        """TTS of ``text``: int16 PCM at 22.05 kHz (offline flow + HiFT on the whole answer, as the reference)."""
        voice = voice or self.default_voice()
        ids, finish = self.generate_ids(text, params=params, max_new=max_new, voice=voice, seed=seed)
        whole = ids[:len(ids) - len(ids) % GROUP]  # a budget cut mid-group: the vocoder gets whole groups
        generator = torch.Generator(device=self.vocoder.device).manual_seed(seed)
        pcm = self.vocoder.synthesize(to_mixed(whole).tolist(), voice.flow, generator=generator)
        result = SpeechResult(ids, finish, pcm)
        self.last = result
        return result

    def speak(self, text: str, params: SamplingParams = REFERENCE_SAMPLING) -> Iterator[np.ndarray]:
        """What the speech route streams: one chunk, the whole answer (the v1 flow runs offline)."""
        pcm = self.synthesize(text, params=params).pcm
        if len(pcm):
            yield pcm
