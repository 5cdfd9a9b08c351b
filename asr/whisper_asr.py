"""Whisper ASR on CTranslate2 (faster-whisper), loaded once and shared by every session.

Three decode paths:
- `transcribe()`: faster-whisper's full pipeline (30 s windows, timestamps, long-form). Used for files.
- `transcribe_partial()`: a cheap provisional decode of a growing segment. CTranslate2's encoder accepts
  fewer than 3000 mel frames, so we encode only the audio we have (plus a little padding) — about 6× less
  encoder work for a 3 s segment. Whisper was trained on padded 30 s windows and can loop on short
  context, so the output length is capped and repeated n-grams are blocked; partials are provisional and
  every segment's text is settled by a `final`.
- `transcribe_utterance()`: the text of one VAD-segmented utterance (a streaming `final`, a realtime turn).
  It encodes a 20.4 s window instead of 30 s: on this 2-core CPU CTranslate2's int8 encoder takes ~0.2 s
  for 2040 mel frames and ~0.5–0.6 s for 3000 (the cost per frame doubles above 1024 encoder positions,
  where one layer's 8 × N² float32 attention scores outgrow this CPU's 32 MiB L3), and the window still
  leaves ≥ 5 s of silence after the speech; an utterance of ≤ 5 s (a realtime question) gets a 10 s window,
  half the cost again. The text is the 30 s window's for most utterances, with a word or two different either
  way on some (tests/test_asr_utterance.py prints them; bench/RESULTS.md).
  Longer utterances, unknown language and repetition loops take the full 30 s path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxcore.embedded_whisper import EMBEDDED_WHISPER, whisper_model_dir

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000
FRAMES_PER_SECOND = 100  # Whisper's mel hop is 10 ms
WINDOW_FRAMES = 3000  # the 30 s window Whisper was trained on

UTTERANCE_WINDOW_FRAMES = 2040  # the largest window below the encoder's cost jump at 2048 frames
UTTERANCE_MIN_PADDING_S = 5.0
#: A short utterance (≤ 5 s: most realtime turns) is encoded in a 10 s window, the speech and ≥ 5 s of silence:
#: half the encoder cost of 20.4 s on this CPU (0.29 vs 0.56 s for a 2 s question, loaded machine). Longer ones
#: keep the 20.4 s window: a 10 s utterance in a 15 s window looped where 20.4 s did not (tests/test_asr_utterance).
SHORT_UTTERANCE_WINDOW_FRAMES = 1000
#: faster-whisper's defaults: above this ratio the text is a repetition loop; a segment whose no-speech
#: probability is above NO_SPEECH_THRESHOLD and whose mean log-probability is not above LOG_PROB_THRESHOLD is silence
COMPRESSION_RATIO_LIMIT = 2.4
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
MAX_TOKENS_PER_SECOND = 6  # fast speech is ~4 words/s; Whisper's BPE averages ~1.3 tokens per English word


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    tokens: int = 0  # text tokens decoded (a transcription's usage.output_tokens)


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    duration: float
    segments: tuple[Segment, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class DecodeOptions:
    """Per-request decoding options (validated, immutable)."""

    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    word_timestamps: bool = False
    beam_size: int = 1
    #: segment timestamps; streaming finals take their times from VAD and skip them (fewer tokens)
    timestamps: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 1.0:
            raise ValueError("temperature must be between 0 and 1")
        if not 1 <= self.beam_size <= 10:
            raise ValueError("beam_size must be between 1 and 10")


class WhisperASR:
    """One Whisper model; `transcribe*` are thread-safe and may run concurrently from a thread pool."""

    sample_rate = SAMPLE_RATE

    def __init__(self, name: str = "whisper-base", *, compute_type: str = "int8", cpu_threads: int = 2,
                 model_dir: Path | None = None,
                 utterance_window_s: float = UTTERANCE_WINDOW_FRAMES / FRAMES_PER_SECOND):
        """`utterance_window_s`: see `transcribe_utterance`; 30 makes it faster-whisper's own decode."""
        from faster_whisper import WhisperModel

        self.name = name
        self.info = EMBEDDED_WHISPER.get(name)
        directory = model_dir or whisper_model_dir(name)
        self.model = WhisperModel(str(directory), device="cpu", compute_type=compute_type,
                                  cpu_threads=cpu_threads, num_workers=1)
        self.english_only = not self.model.model.is_multilingual
        self.utterance_frames = min(WINDOW_FRAMES, int(round(utterance_window_s * FRAMES_PER_SECOND)))
        self.utterance_fallbacks = 0  # utterances the short window could not settle (loops), for tests and logs
        self._tok_lock = threading.Lock()
        self._tokenizers: dict[str, object] = {}

    # ---- full decode -------------------------------------------------------------------------------
    def transcribe(self, audio: np.ndarray, options: DecodeOptions = DecodeOptions()) -> Transcript:
        """audio: float32 mono at 16 kHz. Long audio is handled in 30 s windows."""
        duration = len(audio) / SAMPLE_RATE
        segments, language = self.stream_segments(audio, options)
        segments = tuple(segments)
        text = " ".join(s.text for s in segments if s.text).strip()
        return Transcript(text, language, duration, segments)

    def stream_segments(self, audio: np.ndarray, options: DecodeOptions = DecodeOptions()
                        ) -> tuple[Iterator[Segment], str]:
        """The segments as each 30 s window is decoded (a lazy iterator: each `next` decodes), and the language
        (given, or detected from the first window before this returns). `transcribe` collects them; a streamed
        transcription sends each one as it comes."""
        audio = np.asarray(audio, np.float32)
        if len(audio) / SAMPLE_RATE < 0.1:
            return iter(()), options.language or "en"
        language = options.language if not self.english_only else "en"
        segments_iter, info = self.model.transcribe(
            audio,
            language=language,
            beam_size=options.beam_size,
            temperature=options.temperature,
            initial_prompt=options.prompt or None,
            condition_on_previous_text=False,
            word_timestamps=options.word_timestamps,
            without_timestamps=not options.timestamps and not options.word_timestamps,
            vad_filter=False,
        )

        def segments() -> Iterator[Segment]:
            for index, seg in enumerate(segments_iter):
                words = tuple(Word(w.start, w.end, w.word, w.probability) for w in (seg.words or ()))
                yield Segment(index, seg.start, seg.end, seg.text.strip(), words, seg.avg_logprob,
                              seg.no_speech_prob, len(seg.tokens))

        return segments(), info.language

    def prompt_tokens(self, prompt: str | None) -> int:
        """How many tokens `prompt` is to the decoder (the text part of a transcription's usage)."""
        return len(self.model.hf_tokenizer.encode(" " + prompt.strip()).ids) if prompt and prompt.strip() else 0

    # ---- cheap provisional decode -----------------------------------------------------------------
    def _tokenizer(self, language: str):
        from faster_whisper.tokenizer import Tokenizer

        with self._tok_lock:
            tok = self._tokenizers.get(language)
            if tok is None:
                tok = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual,
                                task="transcribe", language=language if self.model.model.is_multilingual else None)
                self._tokenizers[language] = tok
            return tok

    def transcribe_partial(self, audio: np.ndarray, language: str | None = None) -> str:
        """Provisional text for a growing segment (see module docstring)."""
        import ctranslate2

        audio = np.asarray(audio, np.float32)
        seconds = len(audio) / SAMPLE_RATE
        if seconds < 0.2:
            return ""
        audio = audio[-30 * SAMPLE_RATE :]
        feats = self.model.feature_extractor(audio, padding=0)  # [80, T] at 100 frames/s
        # Pad with 1 s of silence, rounded to 1 s: less padding makes Whisper cut the last word.
        frames = min(3000, int(np.ceil((feats.shape[1] + 100) / 100) * 100))
        feats = np.pad(feats, ((0, 0), (0, max(0, frames - feats.shape[1]))))[:, :frames]
        tok = self._tokenizer(language or "en")
        prompt = [*tok.sot_sequence, tok.no_timestamps]
        result = self.model.model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[None], dtype=np.float32)),
            [prompt],
            beam_size=1,
            max_length=len(prompt) + int(6 * seconds) + 8,  # ~3 words/s of speech is fast talking
            no_repeat_ngram_size=3,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        ids = [t for t in result[0].sequences_ids[0] if t < tok.eot]
        return tok.decode(ids).strip()

    # ---- one utterance, short window --------------------------------------------------------------
    def transcribe_utterance(self, audio: np.ndarray, language: str | None = None, prompt: str | None = None,
                             beam_size: int = 1) -> str:
        """Text of one speech segment (see module docstring); same decoding rules as `transcribe()`."""
        from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens
        import ctranslate2

        audio = np.asarray(audio, np.float32)
        seconds = len(audio) / SAMPLE_RATE
        if seconds < 0.1:
            return ""
        language = "en" if self.english_only else language
        # Beam search only in the short window: on 8 kHz speech a 30 s window decoded with beam 5 once dropped
        # a whole window's text (bench/phone_asr.py), and the short window is where its cost is small.
        full = DecodeOptions(language=language, prompt=prompt, timestamps=False)
        window_s = self.utterance_frames / FRAMES_PER_SECOND
        if (self.utterance_frames >= WINDOW_FRAMES or language is None
                or seconds + UTTERANCE_MIN_PADDING_S > window_s):
            return self.transcribe(audio, full).text
        # The same features as faster-whisper's window: content frames, then zeros in the mel domain.
        feats = self.model.feature_extractor(audio)[:, :-1]
        short = seconds + UTTERANCE_MIN_PADDING_S <= SHORT_UTTERANCE_WINDOW_FRAMES / FRAMES_PER_SECOND
        frames = min(self.utterance_frames, SHORT_UTTERANCE_WINDOW_FRAMES) if short else self.utterance_frames
        feats = np.pad(feats, ((0, 0), (0, frames - feats.shape[1])))
        feats = np.ascontiguousarray(feats[None], dtype=np.float32)
        tok = self._tokenizer(language)
        max_length = self.model.max_length
        context = []
        if prompt and prompt.strip():
            context = [tok.sot_prev, *tok.encode(" " + prompt.strip())[-(max_length // 2 - 1):]]
        start = [*context, *tok.sot_sequence, tok.no_timestamps]
        result = self.model.model.generate(
            ctranslate2.StorageView.from_array(feats),
            [start],
            beam_size=beam_size,
            # No one says more than ~5 tokens a second: a longer text is a repetition loop (seen on 8 kHz
            # speech with a prompt), and stopping it early leaves less for the loop check to throw away.
            max_length=min(max_length, len(start) + int(MAX_TOKENS_PER_SECOND * seconds) + 8),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tok, [-1])),
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < tok.eot]
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and not avg_logprob > LOG_PROB_THRESHOLD:
            return ""
        text = tok.decode(tokens).strip()
        if text and get_compression_ratio(text) > COMPRESSION_RATIO_LIMIT:
            self.utterance_fallbacks += 1
            log.info("utterance of %.1fs looped in the short window; decoding it in 30 s", seconds)
            return self.transcribe(audio, full).text
        return text
