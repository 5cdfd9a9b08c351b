"""One loaded Step-Audio 2 checkpoint serving every mode: speech chat, ASR, TTS — one model, one stepping loop.

A checkpoint directory in the official layout (``config.json`` with ``text_config`` / ``audio_encoder_config``,
sharded safetensors, the tokenizer files, ``token2wav/`` with ``flow.pt``, ``hift.pt``, ``flow.yaml``,
``campplus.onnx`` and ``speech_tokenizer_v2_25hz.onnx``) is loaded once per process:

- the LLM with its audio encoder + adapter (``runtime.step_audio2``), straight into bf16 on a GPU (float32 on a
  CPU, where bf16 matmuls are slow), shard by shard;
- one :class:`~runtime.slot_loop.SlotLoop` of ``slots`` slots over it: every realtime answer, ASR request and
  TTS request is one :class:`~runtime.slot_loop.Generation` in it, so N concurrent users cost one batched step;
  spoken answers run under :class:`~runtime.step_audio2.answer.SpeechAnswerConstraint` (the 1:4 text:audio
  layout), ASR text runs free;
- token2wav (flow + HiFT, float32) and a voice: the release ships no voice prompt, so the default one is a
  sentence spoken by the packaged Piper voice (or ``voice_wav``), turned into its S3 codes (the release's ONNX
  tokenizer), its 24 kHz mel and its CAM++ speaker vector once at load.

Prompt audio (user turns, ASR input) goes through the encoder on the caller's thread (a session's decode thread or
the model pool), never the event loop; the loop thread only steps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.audio_decoding import AudioOnlyDrafter, AudioOnlyLM
from runtime.engine import DecodeEngine
from runtime.sampling import GREEDY, SamplingParams
from runtime.slot_loop import Generation, SlotLoop
from runtime.step_audio2.answer import SpeechAnswerConstraint
from runtime.step_audio2.checkpoint import load_step_audio2
from runtime.step_audio2.prompt import Prompt, asr_prompt, tts_prompt
from runtime.step_audio2.tokens import SpecialTokens, TextTokenizer
from tokenizer.s3.loader import load_s3_tokenizer
from tokenizer.speaker import SpeakerEncoder
from vocoder.step_audio2.token2wav import Token2Wav, Token2WavStream, Voice
from voxcore.strict_load import CheckpointError

log = logging.getLogger(__name__)
S3_FILE = "speech_tokenizer_v2_25hz.onnx"
SPEAKER_FILE = "campplus.onnx"
VOICE_TEXT = "Hello, it is nice to talk with you. How can I help you today?"


@dataclass(frozen=True)
class StepAudio2Options:
    slots: int = 8  # answers decoded at once (more wait for a free slot)
    capacity: int = 4096  # KV positions per slot: prompt (25 s of audio ≈ 315) + answer
    max_spoken_ids: int = 1000  # a spoken answer's ids (4 in 5 are audio: 800 codes = 32 s)
    max_text_ids: int = 448  # an ASR transcript's ids
    device: str = "auto"  # auto = cuda when available
    dtype: str = "auto"  # auto = bfloat16 on cuda, float32 on cpu
    voice_wav: str = ""  # a voice prompt (any rate, mono); empty = the packaged Piper sentence
    seed: int = 0

    def __post_init__(self) -> None:
        if self.slots < 1 or self.capacity < 256 or self.max_spoken_ids < 5 or self.max_text_ids < 1:
            raise ValueError("slots >= 1, capacity >= 256, max_spoken_ids >= 5 and max_text_ids >= 1")


def _resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    import soxr

    audio = np.asarray(audio, np.float32)
    return audio if rate == target else soxr.resample(audio, rate, target).astype(np.float32)


class StepAudio2Stack:
    """The process's Step-Audio 2 (see the module docstring). Build with :meth:`load`."""

    def __init__(self, directory: Path, model, text: TextTokenizer, token2wav: Token2Wav, s3, speaker: SpeakerEncoder,
                 options: StepAudio2Options) -> None:
        self.directory, self.model, self.text, self.token2wav = directory, model, text, token2wav
        self.special: SpecialTokens = text.special
        self.s3, self.speaker, self.options = s3, speaker, options
        self.sample_rate = token2wav.sample_rate
        cfg = model.config
        dev = next(model.parameters()).device
        self.constraint = SpeechAnswerConstraint(self.special, cfg.vocab_size, options.slots, dev)
        lm = AudioOnlyLM(model, self.constraint)
        engine = DecodeEngine(lm, batch=options.slots, capacity=options.capacity, n_draft=cfg.n_mtp,
                              drafter=AudioOnlyDrafter(self.constraint), seed=options.seed)
        self.loop = SlotLoop(engine, self.constraint, name="step-audio2-loop")
        self.voice: Voice | None = None
        self._voice_lock = threading.Lock()

    # ---- loading -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path, options: StepAudio2Options = StepAudio2Options()) -> StepAudio2Stack:
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: not a directory (a Step-Audio 2 checkpoint in the official layout)")
        device = options.device if options.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16, "float32": torch.float32}.get(options.dtype)
        if dtype is None:
            raise ValueError(f"dtype must be auto, bfloat16, float16 or float32, not {options.dtype!r}")
        t0 = time.perf_counter()
        model = load_step_audio2(directory, dtype=dtype, device=device)
        text = TextTokenizer(directory)
        t2w_dir = directory / "token2wav"
        token2wav = Token2Wav.load(t2w_dir, device=device)
        s3_file = t2w_dir / S3_FILE
        if not s3_file.is_file():
            raise CheckpointError(f"{s3_file}: missing (the S3 tokenizer that turns the voice prompt into codes)")
        s3 = load_s3_tokenizer(s3_file, "v2", device=device)
        speaker = SpeakerEncoder(t2w_dir / SPEAKER_FILE, device=device)
        stack = cls(directory, model, text, token2wav, s3, speaker, options)
        log.info("loaded Step-Audio 2 from %s (%s, %s) in %.1fs", directory, device, dtype, time.perf_counter() - t0)
        return stack

    def default_voice(self) -> Voice:
        """The voice every answer speaks with (prepared on first use: S3 codes, prompt mel, speaker vector)."""
        with self._voice_lock:
            if self.voice is None:
                self.voice = self._prepare_voice()
            return self.voice

    def _prepare_voice(self) -> Voice:
        if self.options.voice_wav:
            import soundfile

            audio, rate = soundfile.read(self.options.voice_wav, dtype="float32", always_2d=True)
            audio = audio.mean(axis=1)
        else:
            from tts.piper_tts import PiperTTS

            piper = PiperTTS()
            audio, rate = piper.synthesize_all(VOICE_TEXT).astype(np.float32) / 32768.0, piper.sample_rate
        wav16 = _resample(audio, rate, 16000)
        codes = self.s3.tokenize([wav16])[0]
        if len(codes) < 3:
            raise ValueError("the voice prompt is too short (it needs at least 3 S3 codes, 0.12 s)")
        return self.token2wav.voice(codes, _resample(audio, rate, self.sample_rate), self.speaker.embed(wav16))

    def close(self) -> None:
        self.loop.close()

    # ---- prompts and generations -------------------------------------------------------------------------
    @torch.inference_mode()
    def prompt_inputs(self, prompt: Prompt) -> tuple[list[int], torch.Tensor | None]:
        """Prompt ids and, when it holds audio, its input vectors (encoder + adapter rows in place; heavy)."""
        ids = prompt.ids
        if prompt.mels is None:
            return ids[0].tolist(), None
        dev = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        embeds = self.model.embed_prompt(ids.to(dev), prompt.mels.to(dev, dtype), prompt.mel_lens.to(dev))
        return ids[0].tolist(), embeds[0]

    def submit(self, prompt: Prompt, *, spoken: bool, on_tokens: Callable[[list[int]], None],
               on_finish: Callable[[str], None], params: SamplingParams = GREEDY, max_new: int | None = None,
               may_run: Callable[[], bool] = lambda: True, seed: int = 0) -> Generation:
        ids, embeds = self.prompt_inputs(prompt)
        room = self.options.capacity - len(ids) - 2 * self.model.config.n_mtp - 2
        limit = max_new or (self.options.max_spoken_ids if spoken else self.options.max_text_ids)
        if room < 1:
            raise ValueError(f"the prompt ({len(ids)} ids) does not fit a slot of {self.options.capacity} positions")
        stops = frozenset({self.special.eot, self.special.tts_end}) if spoken else frozenset({self.special.eot})
        gen = Generation(ids, on_tokens, on_finish, params=params, max_new=min(limit, room), stop_ids=stops,
                         seed=seed, may_run=may_run, prompt_embeds=embeds, constrained=spoken)
        return self.loop.submit(gen)

    def speech_stream(self) -> Token2WavStream:
        return self.token2wav.stream(self.default_voice())

    # ---- blocking modes for the HTTP routes (run on the model pool) ---------------------------------------
    def generate_ids(self, prompt: Prompt, *, spoken: bool, params: SamplingParams = GREEDY,
                     max_new: int | None = None) -> Iterator[list[int]]:
        """The generation's ids as the loop produces them (blocking iterator; closing it cancels)."""
        import queue

        arrivals: queue.SimpleQueue[list[int] | str] = queue.SimpleQueue()
        gen = self.submit(prompt, spoken=spoken, on_tokens=arrivals.put, on_finish=arrivals.put, params=params,
                          max_new=max_new, may_run=lambda: arrivals.qsize() < 8)
        try:
            while not isinstance(item := arrivals.get(), str):
                self.loop.wake()
                yield item
            if item == "error":
                raise RuntimeError("the Step-Audio 2 decode loop failed on this request (see the log)")
        finally:
            gen.cancel()
            self.loop.wake()

    def transcribe(self, audio_16k: np.ndarray, params: SamplingParams = GREEDY) -> str:
        """ASR with the instruct prompt of SPEC2 §2."""
        prompt = asr_prompt(torch.as_tensor(np.asarray(audio_16k, np.float32)), self.text)
        ids = [t for chunk in self.generate_ids(prompt, spoken=False, params=params) for t in chunk]
        return self.text.decode([t for t in ids if t != self.special.eot]).strip()

    def speak(self, text: str, params: SamplingParams = GREEDY) -> Iterator[np.ndarray]:
        """TTS (SPEC2 §2 task prompt): int16 PCM at 24 kHz, a chunk per completed flow chunk."""
        stream = self.speech_stream()
        # A trained model ends the speech itself; this bounds a runaway one by the text's length: speech runs at
        # ~3 text tokens/s and 25 codes/s, ~10 answer ids per text token in the 1:4 layout; 40 is 4x that, +4 s.
        budget = min(self.options.max_spoken_ids, 125 + 40 * len(self.text.encode(text)))
        for chunk in self.generate_ids(tts_prompt(text, self.text), spoken=True, params=params, max_new=budget):
            codes = [t - self.special.audio_first for t in chunk if self.special.is_audio(t)]
            for pcm in stream.push(codes):
                yield pcm
        tail = stream.finish()
        if len(tail):
            yield tail
