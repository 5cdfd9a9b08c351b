"""The unified path of a realtime session: audio → dual-codebook tokens → audio LLM (MTP) → vocoder → audio.

DESIGN.md §2's second branch. Where the cascade runs ASR, a text LLM and TTS, a session on this path
keeps its conversation as LLM token ids:

- **user turns** are encoded by the dual-codebook tokenizer while the user speaks (`audio_appended`,
  after every append: the samples the turn will certainly contain go through a B=1 streaming
  tokenizer state); at commit (`transcribe`) only the last bit is fed and the state flushed, which
  gives exactly the ids an offline encode of the committed audio gives (the tokenizer is causal and
  streams exactly). A commit the encoder did not follow (an `input_audio` item, a manual commit with
  VAD on) is encoded offline. The ids are stored by item id; the "transcript" event carries a
  labelled placeholder, because the audio never becomes text on this path.
- **responses** (`realtime.backends.unified.UnifiedBackend`) frame the conversation's ids with
  `AudioChatFormat`, decode an answer with the shared audio LLM (MTP drafts, constrained to audio ids in
  group order), stream the ids into a `VocoderSession` (short first chunk) and send the audio through
  the session exactly as the cascade sends Piper's.

`UnifiedStack` is the models (loaded once per process: `ModelHub.unified()`); `UnifiedSession` is one
session's state over them. Every session's answers are decoded by the stack's one stepping loop
(`runtime.slot_loop.SlotLoop`: one slot per answer, one batched step for all); a session's own torch work
(encoding its turns, vocoding its answer) runs on two single-thread executors, so its jobs run in order
and never block the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from asr.vad import FRAME
from realtime.audio import INTERNAL_RATE, StreamResampler
from realtime.items import Item
from realtime.session import RealtimeSession, Transcribe
from runtime.audio_decoding import AudioChatFormat, AudioOnlyDrafter, AudioOnlyLM, AudioPhaseConstraint
from runtime.engine import DecodeEngine
from runtime.model import AudioLM
from runtime.slot_loop import SlotLoop
from voxcore.interleave import GROUP_MS, GROUP_SIZE, AudioTokenLayout
from tokenizer.model import DualCodebookTokenizer, TokenizerState
from vocoder.model import ChunkSchedule, StreamingVocoder

log = logging.getLogger(__name__)
MAX_STATS = 16  # responses whose UnifiedTurnStats a session keeps (benchmarks and tests read the latest)


@dataclass(frozen=True)
class UnifiedOptions:
    """How the unified path decodes (service-wide; per-response options come from the session)."""

    n_draft: int = 3  # MTP drafts per verify step (0 = plain decoding)
    #: longest answer in audio ids (whole 120 ms groups of 5). A random model never says `end`, so this
    #: bounds every tiny-preset answer; reaching it ends the response "completed" (a client's
    #: max_output_tokens ends it "incomplete", as in the cascade).
    max_audio_tokens: int = 150
    first_chunk_groups: int = 1  # vocoder chunk sizes, in groups: a short first one for latency
    chunk_groups: int = 4
    capacity: int = 1024  # KV cache positions per slot: prompt + answer (+ MTP room)
    slots: int = 8  # answers decoded at once by the stack's one stepping loop (more wait for a free slot)
    seed: int = 0  # response i of a session samples and draws vocoder noise from seed + i
    ahead_ms: int = 1000  # how far decoding may run ahead of the audio already sent (beyond lead_ms)

    def __post_init__(self) -> None:
        if self.n_draft < 0 or self.max_audio_tokens < GROUP_SIZE or self.max_audio_tokens % GROUP_SIZE:
            raise ValueError(f"n_draft must be >= 0 and max_audio_tokens a positive multiple of {GROUP_SIZE}")
        if self.slots < 1:
            raise ValueError("slots must be >= 1")
        if self.first_chunk_groups < 1 or self.chunk_groups < 1 or self.ahead_ms < 0:
            raise ValueError("chunk sizes must be >= 1 group and ahead_ms >= 0")
        if self.capacity < self.max_audio_tokens + 2 * self.n_draft + 16:
            raise ValueError(f"capacity {self.capacity} leaves no room for a prompt next to a "
                             f"{self.max_audio_tokens}-id answer; raise capacity or lower max_audio_tokens")


class UnifiedStack:
    """Tokenizer + audio LLM + vocoder, shared by every session (the weights are never copied)."""

    def __init__(self, tokenizer: DualCodebookTokenizer, lm: AudioLM, vocoder: StreamingVocoder,
                 fmt: AudioChatFormat = AudioChatFormat(), options: UnifiedOptions = UnifiedOptions()):
        cfg, tcfg = lm.config, tokenizer.cfg
        if (tcfg.linguistic_codes, tcfg.semantic_codes) != (cfg.linguistic_size, cfg.semantic_size):
            raise ValueError(f"tokenizer codebooks ({tcfg.linguistic_codes}, {tcfg.semantic_codes}) do not match "
                             f"the LLM's audio vocabulary ({cfg.linguistic_size}, {cfg.semantic_size})")
        if options.capacity > cfg.max_seq_len:
            raise ValueError(f"capacity {options.capacity} exceeds the LLM's max_seq_len {cfg.max_seq_len}")
        if options.n_draft > cfg.n_mtp:
            raise ValueError(f"n_draft={options.n_draft} but the LLM has {cfg.n_mtp} MTP modules")
        fmt.check(cfg.text_vocab_size)
        self.tokenizer, self.lm, self.vocoder, self.fmt, self.options = tokenizer, lm, vocoder, fmt, options
        self.layout = AudioTokenLayout(cfg.audio_offset, cfg.linguistic_size, cfg.semantic_size)
        self.schedule = ChunkSchedule(options.first_chunk_groups, options.chunk_groups)
        self._loop: SlotLoop | None = None
        self._loop_lock = threading.Lock()

    @classmethod
    def tiny(cls, seed: int = 0, lm_dtype: torch.dtype = torch.float32,
             options: UnifiedOptions = UnifiedOptions()) -> "UnifiedStack":
        """The `tiny` preset: random weights of the real architectures (mechanics, never speech quality)."""
        from runtime.presets import build_tiny

        return cls(DualCodebookTokenizer.tiny(seed), build_tiny().to(lm_dtype), StreamingVocoder.tiny(seed),
                   options=options)

    def with_options(self, **changes) -> "UnifiedStack":
        """The same models under other options (e.g. another MTP draft count)."""
        return UnifiedStack(self.tokenizer, self.lm, self.vocoder, self.fmt,
                            dataclasses.replace(self.options, **changes))

    @property
    def input_rate(self) -> int:
        return self.tokenizer.cfg.sample_rate

    @property
    def sample_rate(self) -> int:
        return self.vocoder.sample_rate

    @property
    def samples_per_group(self) -> int:
        return self.vocoder.samples_per_group

    def encode(self, audio: np.ndarray) -> list[int]:
        """Offline: 16 kHz float audio → interleaved LLM ids (zero-padded to whole groups)."""
        audio = StreamResampler(INTERNAL_RATE, self.input_rate)(np.asarray(audio, np.float32), last=True)
        return self.tokenizer(torch.from_numpy(np.ascontiguousarray(audio))[None]).ids(self.layout)[0].tolist()

    def loop(self) -> SlotLoop:
        """The stack's one stepping loop: a decode engine of `options.slots` slots over the shared LLM,
        constrained per slot to audio ids in group order. Every session's answers run in it."""
        with self._loop_lock:
            if self._loop is None:
                opts = self.options
                constraint = AudioPhaseConstraint(self.lm, self.fmt, batch=opts.slots)
                engine = DecodeEngine(AudioOnlyLM(self.lm, constraint), batch=opts.slots, capacity=opts.capacity,
                                      n_draft=opts.n_draft, drafter=AudioOnlyDrafter(constraint), seed=opts.seed)
                self._loop = SlotLoop(engine, constraint, name="unified-loop")
            return self._loop

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()


class TurnEncoder:
    """One user turn streamed through the tokenizer in its own B=1 state (encode thread only)."""

    def __init__(self, stack: UnifiedStack, start: int):
        self.stack, self.start, self.fed = stack, start, start  # session sample indices (16 kHz)
        self.state: TokenizerState = stack.tokenizer.init_state(1)
        self.resampler = StreamResampler(INTERNAL_RATE, stack.input_rate)
        self.ids: list[int] = []

    def feed(self, audio: np.ndarray, last: bool = False) -> None:
        x = self.resampler(np.asarray(audio, np.float32), last=last)
        self.fed += len(audio)
        if len(x):
            out = self.stack.tokenizer(torch.from_numpy(np.ascontiguousarray(x))[None], self.state)
            self.ids += out.ids(self.stack.layout)[0].tolist()

    def finish(self, rest: np.ndarray) -> list[int]:
        """Feed the turn's last samples, flush the partial group (zero-padded, as offline) → all ids."""
        self.feed(rest, last=True)
        self.ids += self.stack.tokenizer.flush(self.state).ids(self.stack.layout)[0].tolist()
        return self.ids


def placeholder_transcript(n_ids: int) -> str:
    """What a user turn's transcription events carry on this path: the audio is never turned into text."""
    return f"[unified pipeline: {n_ids} audio tokens; no text transcript]"


class UnifiedSession:
    """One realtime session's state on the unified path: its token conversation, encoders and stats."""

    def __init__(self, session_id: str, load: Callable[[], UnifiedStack]):
        self.id, self._load = session_id, load
        self._stack: UnifiedStack | None = None
        self.encode_pool = ThreadPoolExecutor(1, thread_name_prefix=f"rt-tok-{session_id[-6:]}")
        self.decode_pool = ThreadPoolExecutor(1, thread_name_prefix=f"rt-lm-{session_id[-6:]}")
        self.turns: dict[str, list[int]] = {}  # user item id → its audio ids
        self.replies: dict[str, list[int]] = {}  # assistant item id → the audio ids generated for it
        # response id → UnifiedTurnStats of the last MAX_STATS responses (a long session must not grow it)
        self.stats: OrderedDict[str, object] = OrderedDict()
        self.incremental_turns = self.offline_turns = 0
        self.responses = 0
        self.closed = False
        self._encoder: TurnEncoder | None = None  # encode thread only
        self._plan: tuple[int, int] | None = None  # event loop: (turn start, samples submitted up to)

    # ---- models ------------------------------------------------------------------------------------
    def stack_now(self) -> UnifiedStack:
        """The stack, loading it on first use (blocking: call from a worker thread)."""
        if self._stack is None:
            self._stack = self._load()
        return self._stack

    async def stack(self) -> UnifiedStack:
        return self._stack or await asyncio.get_running_loop().run_in_executor(None, self.stack_now)

    def start(self) -> None:
        """Begin loading the models now, so the first turn does not wait for them."""
        self._submit(self.stack_now)

    def close(self) -> None:
        self.closed = True
        for pool in (self.encode_pool, self.decode_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    # ---- user turns ----------------------------------------------------------------------------------
    def audio_appended(self, session: RealtimeSession) -> None:
        """After an append: hand the samples the current turn will certainly contain to the encoder."""
        span = _certain_span(session)
        if span is None or self.closed:
            return
        start, bound = span
        if self._plan is None or self._plan[0] != start:
            self._plan = (start, start)
            self._submit(self._restart, start)
        fed = self._plan[1]
        if bound > fed:
            self._plan = (start, bound)
            self._submit(self._feed, session.buffer.slice(fed, bound))

    def transcribe(self, cmd: Transcribe, session: RealtimeSession) -> asyncio.Future:
        """A committed user turn (or audio item) → its ids, stored by item id; resolves to the placeholder."""
        offset = self._followed(cmd, session)
        start = self._plan[0] if self._plan is not None else -1
        self._plan = None  # this turn is done: a new one restarts the encoder
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self.encode_pool, self._finish, cmd.audio, start, offset)

        async def store() -> str:
            ids = await job
            self.turns[cmd.item_id] = ids
            return placeholder_transcript(len(ids))

        return asyncio.ensure_future(store())

    def _followed(self, cmd: Transcribe, session: RealtimeSession) -> int | None:
        """How many leading samples of `cmd.audio` the encoder already has, or None if it did not follow
        this turn (then it is encoded offline)."""
        if self._plan is None:
            return None
        start, fed = self._plan
        if cmd.key is not None:  # a server-VAD turn: audio = buffer[key[0]:key[1]]
            ok = cmd.key[0] == start and fed <= cmd.key[1] and len(cmd.audio) == cmd.key[1] - cmd.key[0]
        else:  # a manual commit without VAD: the whole buffer, which has just been cleared
            ok = session.detector is None and session.buffer.t0 == fed and fed - start == len(cmd.audio)
        return fed - start if ok else None

    def _submit(self, fn, *args) -> None:
        if self.closed:
            return
        fut: Future = self.encode_pool.submit(fn, *args)
        fut.add_done_callback(_log_failure)

    def _restart(self, start: int) -> None:
        self._encoder = TurnEncoder(self.stack_now(), start)

    def _feed(self, audio: np.ndarray) -> None:
        if self._encoder is not None:
            self._encoder.feed(audio)

    def _finish(self, audio: np.ndarray, start: int, offset: int | None) -> list[int]:
        enc, self._encoder = self._encoder, None
        if offset is not None and enc is not None and enc.start == start and enc.fed == start + offset:
            self.incremental_turns += 1
            return enc.finish(audio[offset:])
        self.offline_turns += 1
        return self.stack_now().encode(audio)

    # ---- responses -----------------------------------------------------------------------------------
    def next_seed(self, stack: UnifiedStack) -> int:
        self.responses += 1
        return stack.options.seed + self.responses - 1

    def record(self, response_id: str, stats) -> None:
        """Keep response `response_id`'s stats, forgetting the oldest beyond MAX_STATS."""
        self.stats[response_id] = stats
        while len(self.stats) > MAX_STATS:
            self.stats.popitem(last=False)

    def forget(self, present: set[str]) -> None:
        """Drop the ids of items no longer in the conversation (deleted, or dropped as the oldest)."""
        for store in (self.turns, self.replies):
            for gone in [i for i in store if i not in present]:
                del store[gone]

    def prompt(self, items: Sequence[Item], stack: UnifiedStack, max_new: int) -> list[int]:
        """The LLM prompt for a response answering `items`: their audio turns framed by the chat format, oldest
        turns dropped first to leave room for `max_new` answer ids, then the assistant marker. Reads only."""
        fmt = stack.fmt
        segments = [seg for seg in (self._segment(item, fmt) for item in items) if seg]
        budget = stack.options.capacity - max_new - 2 * stack.options.n_draft - 3  # - assistant marker
        kept: list[list[int]] = []
        for seg in reversed(segments):
            if len(seg) > budget:
                if not kept:  # the newest turn alone is too long: keep its last whole groups
                    room = (budget - 2) // GROUP_SIZE * GROUP_SIZE
                    kept.append([seg[0]] + (seg[len(seg) - 1 - room:-1] if room else []) + [seg[-1]])
                break
            kept.append(seg)
            budget -= len(seg)
        return [t for seg in reversed(kept) for t in seg] + [fmt.assistant]

    def _segment(self, item: Item, fmt: AudioChatFormat) -> list[int]:
        if item.type != "message":
            return []
        if item.role == "user" and item.id in self.turns:
            return [fmt.user, *self.turns[item.id], fmt.end]
        if item.role == "assistant" and item.id in self.replies:
            # Only what the listener heard stays in the context (a cancelled or truncated answer).
            heard_ms = next((c.audio_ms for c in item.content if c.type == "audio"), 0.0)
            groups = int(heard_ms / GROUP_MS + 1e-6)
            ids = self.replies[item.id][:groups * GROUP_SIZE]
            return [fmt.assistant, *ids, fmt.end] if ids else []
        return []


def _certain_span(session: RealtimeSession) -> tuple[int, int] | None:
    """(turn start, end of the samples the turn will certainly contain), or None outside a turn.

    Without VAD the turn is the whole uncommitted buffer. With server VAD it starts at the detected
    speech start and certainly contains the audio up to the last speech frame seen so far: the end the
    VAD will report is never earlier (a later quiet run only moves it later)."""
    det, buf = session.detector, session.buffer
    if det is None:
        return buf.t0, buf.total
    if det.speech_start is None:
        return None
    seg = det.segmenter
    bound = det.origin + (seg.frames_seen - seg.silence_frames) * FRAME
    return det.speech_start, max(det.speech_start, min(bound, buf.total))


def _log_failure(fut: Future) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("unified encoder job failed", exc_info=fut.exception())
