"""One Realtime session's state machine: it decides, the runner executes.

`RealtimeSession` owns the configuration, the conversation, the input buffer, turn detection and the
state of the active response. It never awaits and never runs a model (the VAD model is injected and
cheap); every input — a client event, a finished transcription, a piece of model output, an audio delta
the socket has sent — returns a list of typed commands:

- `Send(event, urgent)` — a server event; `urgent` ones (everything outside a response's stream, and the
  closing events of a cancelled response) go out before any queued response audio;
- `Transcribe(item_id, audio, …)` / `Speculate(key, audio, …)` — run ASR on a committed turn / ahead of it;
- `SpeculateResponse(speculation_id, key)` / `DropSpeculation(speculation_id)` — prepare a response to the turn so
  far (span `key`), sending nothing / forget it without a trace;
- `StartResponse(response_id, wait_for, speculation)` — run the LLM → TTS pipeline for a response (or let it take
  over the prepared speculation, if that answered exactly what the response answers);
- `CancelResponse(response_id)` — stop it now and drop whatever of it is still queued.

Speculative responses: at a short pause inside a turn (`SpeechPaused`) a session that would answer the turn itself
asks for a speculation on the span so far. It is committed when the turn ends at that same pause (same span: the
audio did not grow with speech) and the response would start at once; any other way the turn goes — speech
resumed, a commit or clear, a response started meanwhile — drops it. The runner confirms at the takeover that
the speculation's request equals the response's own (`speculation_matches`), else it is dropped there too.

Tests drive this class directly with a fake VAD and scripted model output; no event loop is needed.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np

from realtime.asr_prompt import transcription_prompt
from realtime.audio import INTERNAL_RATE, AudioFormatError, InputDecoder, StreamResampler, decode_bytes
from realtime.config import (
    ConfigError,
    ResponseOptions,
    SessionConfig,
    Speculation,
    apply_update,
    response_options,
)
from realtime.events import (
    AudioDelta,
    AudioDone,
    InputTranscriptCompleted,
    InputTranscriptDelta,
    InputTranscriptFailed,
    ItemTruncated,
    ProtocolEvent,
    ResponseCreated,
    ResponseDone,
    ResponseInfo,
    ServerEvent,
    TextDelta,
)
from realtime.events import SpeechStarted as SpeechStartedEvent  # (turns' SpeechStarted is the detector's)
from realtime.events import SpeechStopped as SpeechStoppedEvent
from realtime.items import (
    MAX_CONVERSATION_BYTES,
    Content,
    Conversation,
    Item,
    ItemError,
    Span,
    heard_text,
    new_id,
    parse_item,
)
from realtime.protocol import (
    AudioAppend,
    AudioClear,
    AudioCommit,
    ClientEvent,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    ProtocolError,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
    decode_item_audio,
    error_event,
)
from realtime.turns import (
    TAIL_MS,
    VAD_FRAME_MS,
    InputBuffer,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    ms,
)
from runtime.chat_api import ChatMessage, ChatRequest, ToolCall, ToolSpec

log = logging.getLogger(__name__)
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less


# ---- commands -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    event: ServerEvent
    urgent: bool = True


@dataclass(frozen=True)
class Transcribe:
    item_id: str
    audio: np.ndarray = field(repr=False)  # float32, 16 kHz
    model: str
    language: str | None
    prompt: str | None
    key: tuple[int, int] | None = None  # (start, end) samples: reuses a speculative decode of the same span
    emit_events: bool = True


@dataclass(frozen=True)
class Speculate:
    key: tuple[int, int]
    audio: np.ndarray = field(repr=False)
    model: str
    language: str | None
    prompt: str | None
    #: semantic_vad: the pause end whose words the chat model should judge (`turn_messages` → P(end) →
    #: `turn_verdict`; None there if it cannot). None: no verdict wanted.
    judge_end: int | None = None


@dataclass(frozen=True)
class SpeculateResponse:
    """Prepare the answer to the turn so far (the span `key` of a `Speculate` just before), sending nothing."""

    speculation_id: str
    key: tuple[int, int]


@dataclass(frozen=True)
class DropSpeculation:
    speculation_id: str


@dataclass(frozen=True)
class StartResponse:
    response_id: str
    wait_for: tuple[str, ...]  # user items whose transcripts the LLM context needs
    speculation: str | None = None  # a speculation on the turn this response answers: take it over if it matches


@dataclass(frozen=True)
class CancelResponse:
    response_id: str


Command = Send | Transcribe | Speculate | SpeculateResponse | DropSpeculation | StartResponse | CancelResponse


def event(type: str, route: str | None = None, **data) -> ProtocolEvent:
    """A protocol event whose items are snapshots taken now (they keep changing).
    `route` is the response whose lane the event travels in (None: session-level)."""
    snap = {k: copy.deepcopy(v) if isinstance(v, Item) else v for k, v in data.items()}
    return ProtocolEvent(type, snap, response_id=route)


# ---- the active response --------------------------------------------------------------------------------
@dataclass
class ResponseState:
    info: ResponseInfo
    options: ResponseOptions
    context: list[Item] | None  # explicit `input` items; None = the conversation
    trigger: str  # server_vad | commit | response.create
    trigger_time: float | None  # when the user's turn ended (wall clock), for turn latency
    message: Item | None = None  # the assistant message being produced
    text: str = ""  # its text so far
    spans: list[Span] = field(default_factory=list)
    generated_ms: float = 0.0
    sent_ms: float = 0.0
    first_audio_sent: bool = False

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def in_conversation(self) -> bool:
        return self.options.conversation == "auto"

    @property
    def output_index(self) -> int:
        return len(self.info.output) - 1


class RealtimeSession:
    def __init__(self, session_id: str, vad, config: SessionConfig | None = None, *,
                 max_buffer_seconds: float = 600.0, max_conversation_bytes: int = MAX_CONVERSATION_BYTES,
                 speculation: Speculation = Speculation(), judge_text: bool = False):
        """`judge_text`: semantic_vad asks at each pause for the chat model's verdict on the words so far
        (`Speculate.judge_end`); whoever runs the commands must answer each with `turn_verdict`."""
        self.id = session_id
        self.judge_text = judge_text
        self.vad = vad
        self.config = config or SessionConfig()
        self.speculation = speculation
        self.speculating: tuple[str, tuple[int, int]] | None = None  # (speculation id, span) of the turn so far
        self.conversation = Conversation(max_conversation_bytes)
        self.buffer = InputBuffer(max_buffer_seconds)
        self.decoder = InputDecoder(self.config.input_format)
        self.detector = self._new_detector()
        self.speech_item_id: str | None = None  # announced in speech_started, used when the turn commits
        self.active: ResponseState | None = None
        self.pending_auto_response = False
        self.pending_transcripts: set[str] = set()
        self.audio_sent = False  # the voice is fixed once the assistant has spoken

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> list[Command]:
        conversation = {"id": "conv_default", "object": "realtime.conversation"}
        return [Send(event("session.created", session=self.config)),
                Send(event("conversation.created", conversation=conversation))]

    def _new_detector(self) -> TurnDetector | None:
        td = self.config.turn_detection
        if td is None:
            return None
        return TurnDetector(self.vad, td, self.buffer.total, speculative_ms=self.speculation.pause_ms,
                            judge_text=self.judge_text)

    # ---- client events -----------------------------------------------------------------------------
    def handle(self, ev: ClientEvent, now: float) -> list[Command]:
        """One client event → commands. Bad requests become `error` events; state is left unchanged."""
        try:
            if isinstance(ev, AudioAppend):
                return self._append(ev, now)
            if isinstance(ev, SessionUpdate):
                return self._session_update(ev)
            if isinstance(ev, AudioCommit):
                return self._manual_commit(ev, now)
            if isinstance(ev, AudioClear):
                out = self._drop_speculation()
                self.buffer.clear()
                self.detector = self._new_detector()
                self.speech_item_id = None
                return out + [Send(event("input_audio_buffer.cleared"))]
            if isinstance(ev, ItemCreate):
                return self._item_create(ev)
            if isinstance(ev, ItemTruncate):
                return self._item_truncate(ev)
            if isinstance(ev, ItemDelete):
                return self._item_delete(ev)
            if isinstance(ev, ItemRetrieve):
                item = self.conversation.get(ev.item_id)
                if item is None:
                    raise ProtocolError(f"item {ev.item_id!r} does not exist", code="item_not_found",
                                        param="item_id", event_id=ev.event_id)
                return [Send(event("conversation.item.retrieved", item=item))]
            if isinstance(ev, ResponseCreate):
                return self._response_create(ev, now)
            if isinstance(ev, ResponseCancel):
                active = self.active
                if active is None or (ev.response_id and ev.response_id != active.id):
                    raise ProtocolError("there is no active response to cancel" if active is None else
                                        f"response {ev.response_id!r} is not the active response",
                                        code="response_cancel_not_active", event_id=ev.event_id)
                return self._cancel("client_cancelled")
        except (ConfigError, ItemError) as exc:
            return [Send(error_event(ProtocolError(exc.message, code=exc.code, param=exc.param,
                                                   event_id=ev.event_id)))]
        except ProtocolError as exc:
            if exc.event_id is None:
                exc.event_id = ev.event_id
            return [Send(error_event(exc))]
        raise AssertionError(f"unhandled event {ev!r}")

    def _session_update(self, ev: SessionUpdate) -> list[Command]:
        old = self.config
        self.config = apply_update(old, ev.session, audio_sent=self.audio_sent)
        if self.config.input_format != old.input_format:
            self.decoder = InputDecoder(self.config.input_format)
        out: list[Command] = []
        if self.config.turn_detection != old.turn_detection:
            out += self._drop_speculation()
            self.detector = self._new_detector()
            self.speech_item_id = None
        return out + [Send(event("session.updated", session=self.config))]

    def _append(self, ev: AudioAppend, now: float) -> list[Command]:
        try:
            audio = self.decoder(ev.audio)
        except AudioFormatError as exc:
            raise ProtocolError(str(exc), code="invalid_audio", param="audio") from None
        out: list[Command] = []
        if self.buffer.full(len(audio)):
            if self.detector is None:
                limit = self.buffer.max_samples / INTERNAL_RATE
                raise ProtocolError(f"the input audio buffer is full ({limit:g} s); commit or clear it",
                                    code="input_audio_buffer_full", param="audio")
            out += self._force_turn_end()
        self.buffer.append(audio, now)
        if self.detector is None:
            return out
        for turn in self.detector.push(audio):
            if isinstance(turn, SpeechStarted):
                out += self._speech_started(turn)
            elif isinstance(turn, SpeechPaused):
                out += self._speculate(turn)
            elif isinstance(turn, SpeechResumed):
                out += self._drop_speculation()
            elif isinstance(turn, SpeechStopped):
                out += self._speech_stopped(turn)
        if self.detector is not None:
            self.buffer.drop_before(self.detector.keep_from())
        return out

    def _force_turn_end(self) -> list[Command]:
        """Server VAD heard speech as long as the whole input buffer (noise, or a speaker who never
        pauses): commit that much as a turn now, as if it had ended, rather than grow without bound."""
        detector = self.detector
        assert detector is not None
        out: list[Command] = self._drop_speculation()
        if detector.in_speech and detector.speech_start is not None:
            log.info("[%s] a turn reached the input buffer limit: committed as it is", self.id)
            out = self._speech_stopped(SpeechStopped(detector.speech_start, self.buffer.total))
        self.buffer.clear()
        self.detector = self._new_detector()  # starts at the current end of the buffer
        return out

    # ---- turns -------------------------------------------------------------------------------------
    def _speech_started(self, turn: SpeechStarted) -> list[Command]:
        self.speech_item_id = new_id("item")
        out: list[Command] = self._drop_speculation()
        out.append(Send(SpeechStartedEvent(self.speech_item_id, ms(turn.start))))
        td = self.config.turn_detection
        if self.active is not None and td is not None and td.interrupt_response:
            out += self._cancel("turn_detected")
        return out

    def _tail(self) -> int:
        td = self.config.turn_detection
        silence = td.effective_silence_ms if td else TAIL_MS
        return min(TAIL_MS, silence - VAD_FRAME_MS) * INTERNAL_RATE // 1000  # the tail stays inside the silence

    def _transcription_args(self, item_id: str | None = None) -> tuple[str, str | None, str | None]:
        """Model, language and prompt for the ASR of user item `item_id` (None: the turn still being spoken)."""
        t = self.config.transcription
        model, language, prompt = (t.model, t.language, t.prompt) if t else ("whisper-1", None, None)
        return model, language, transcription_prompt(prompt, self.conversation, before=item_id)

    def _speculate(self, turn: SpeechPaused) -> list[Command]:
        end = min(turn.end + self._tail(), self.buffer.total)
        key = (turn.start, end)
        model, language, prompt = self._transcription_args()
        out: list[Command] = self._drop_speculation()
        judge = turn.end if self.detector is not None and self.detector.judges_text else None
        out.append(Speculate(key, self.buffer.slice(turn.start, end), model, language, prompt, judge_end=judge))
        if self._would_answer_now():
            self.speculating = (new_id("spec"), key)
            out.append(SpeculateResponse(*self.speculating))
        return out

    def _would_answer_now(self) -> bool:
        """Whether a turn ending now would start its response at once: only such a response is speculated on."""
        td = self.config.turn_detection
        return (self.speculation.responses and td is not None and td.create_response and self.active is None
                and not self.pending_auto_response)

    def _drop_speculation(self) -> list[Command]:
        """The turn went another way than the speculation assumed: forget it (it never sent anything)."""
        if self.speculating is None:
            return []
        spec_id, _ = self.speculating
        self.speculating = None
        return [DropSpeculation(spec_id)]

    def _speech_stopped(self, turn: SpeechStopped) -> list[Command]:
        item_id = self.speech_item_id or new_id("item")
        self.speech_item_id = None
        end = min(turn.end + self._tail(), self.buffer.total)
        key = (turn.start, end)
        out: list[Command] = [Send(SpeechStoppedEvent(item_id, ms(turn.end)))]
        audio = self.buffer.slice(turn.start, end)
        self.buffer.drop_before(end)
        out += self._commit(item_id, audio, key=key)
        spec = self.speculating
        self.speculating = None
        td = self.config.turn_detection
        taken = None
        if td is not None and td.create_response:
            # the speculation answered this very span, and its response starts now: it may take that over
            taken = spec[0] if spec is not None and spec[1] == key and self._would_answer_now() else None
            out += self._auto_response(self.buffer.arrival_time(turn.end), speculation=taken)
        if spec is not None and taken is None:
            out.append(DropSpeculation(spec[0]))
        return out

    def _manual_commit(self, ev: AudioCommit, now: float) -> list[Command]:
        if self.buffer.seconds * 1000 < MIN_COMMIT_MS:
            raise ProtocolError(f"buffer too small: expected at least {MIN_COMMIT_MS} ms of audio, have "
                                f"{self.buffer.seconds * 1000:.0f} ms", code="input_audio_buffer_commit_empty")
        item_id = self.speech_item_id or new_id("item")
        self.speech_item_id = None
        audio = self.buffer.slice(self.buffer.t0, self.buffer.total)
        dropped = self._drop_speculation()
        self.buffer.clear()
        self.detector = self._new_detector()
        out = dropped + self._commit(item_id, audio)
        td = self.config.turn_detection
        if td is not None and td.create_response:  # with VAD on, a manual commit also starts the reply
            out += self._auto_response(now, trigger="commit")
        return out

    def _commit(self, item_id: str, audio: np.ndarray, key: tuple[int, int] | None = None) -> list[Command]:
        item = Item(item_id, "message", role="user",
                    content=[Content("input_audio", audio_ms=len(audio) * 1000 / INTERNAL_RATE)])
        previous = self.conversation.add(item)
        self.pending_transcripts.add(item_id)
        model, language, prompt = self._transcription_args(item_id)
        return [Send(event("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)),
                Send(event("conversation.item.added", item=item, previous_item_id=previous)),
                Send(event("conversation.item.done", item=item, previous_item_id=previous)),
                Transcribe(item_id, audio, model, language, prompt, key, self.config.transcription is not None)]

    # ---- transcription results ---------------------------------------------------------------------
    def transcription_done(self, item_id: str, text: str, seconds: float, emit: bool = True) -> list[Command]:
        self.pending_transcripts.discard(item_id)
        item = self.conversation.get(item_id)
        if item is not None:
            for c in item.content:
                if c.type == "input_audio":
                    c.transcript = text
            self.conversation.resized(item)
        if not emit:
            return []
        return [Send(InputTranscriptDelta(item_id, text)), Send(InputTranscriptCompleted(item_id, text, seconds))]

    def transcription_failed(self, item_id: str, message: str, emit: bool = True) -> list[Command]:
        self.pending_transcripts.discard(item_id)
        item = self.conversation.get(item_id)
        if item is not None:
            item.transcription_failed = True
        if not emit:
            return []
        return [Send(InputTranscriptFailed(item_id, message))]

    # ---- items -------------------------------------------------------------------------------------
    def _item_create(self, ev: ItemCreate) -> list[Command]:
        item, audio_b64 = parse_item(ev.item)
        if item.type == "function_call_output" and not self.conversation.has_call(item.call_id or ""):
            raise ProtocolError(f"no function_call with call_id {item.call_id!r} in the conversation",
                                param="item.call_id", code="invalid_value")
        out: list[Command] = []
        audio = None
        if audio_b64 is not None:
            try:
                audio = self._decode_whole(decode_item_audio(audio_b64, ev.event_id))
            except AudioFormatError as exc:
                raise ProtocolError(str(exc), code="invalid_audio", param="item.content.audio") from None
            item.content[0].audio_ms = len(audio) * 1000 / INTERNAL_RATE
        previous = self.conversation.add(item, ev.previous_item_id)
        out += [Send(event("conversation.item.added", item=item, previous_item_id=previous)),
                Send(event("conversation.item.done", item=item, previous_item_id=previous))]
        needs_asr = audio is not None and not any(c.transcript for c in item.content if c.type == "input_audio")
        if needs_asr:
            self.pending_transcripts.add(item.id)
            model, language, prompt = self._transcription_args(item.id)
            out.append(Transcribe(item.id, audio, model, language, prompt, None, self.config.transcription is not None))
        return out

    def _decode_whole(self, data: bytes) -> np.ndarray:
        fmt = self.config.input_format
        return StreamResampler(fmt.rate, INTERNAL_RATE)(decode_bytes(fmt, data), last=True)

    def _item_truncate(self, ev: ItemTruncate) -> list[Command]:
        out: list[Command] = []
        if self.active is not None and self.active.message is not None and self.active.message.id == ev.item_id:
            out += self._cancel("client_cancelled")  # the listener stopped it: end the response first
        try:
            self.conversation.truncate(ev.item_id, ev.content_index, ev.audio_end_ms)
        except ItemError as exc:  # the cancel above has happened: its commands must still be carried out
            return out + [Send(error_event(ProtocolError(exc.message, code=exc.code, param=exc.param,
                                                         event_id=ev.event_id)))]
        return out + [Send(ItemTruncated(ev.item_id, ev.content_index, ev.audio_end_ms))]

    def _item_delete(self, ev: ItemDelete) -> list[Command]:
        if self.active is not None and any(i.id == ev.item_id for i in self.active.info.output):
            raise ProtocolError("the item belongs to the response in progress; cancel the response first",
                                param="item_id")
        self.conversation.delete(ev.item_id)
        self.pending_transcripts.discard(ev.item_id)
        return [Send(event("conversation.item.deleted", item_id=ev.item_id))]

    # ---- responses: decisions ------------------------------------------------------------------------
    def _response_create(self, ev: ResponseCreate, now: float) -> list[Command]:
        if self.active is not None:
            raise ProtocolError(f"conversation already has an active response in progress: {self.active.id}",
                                code="conversation_already_has_active_response")
        options = response_options(self.config, ev.response)
        context = self._explicit_context(options) if options.input is not None else None
        return self._start(options, context, "response.create", now)

    def _explicit_context(self, options: ResponseOptions) -> list[Item]:
        items = []
        for i, raw in enumerate(options.input or ()):
            if isinstance(raw, dict) and raw.get("type") == "item_reference":
                ref = self.conversation.get(str(raw.get("id")))
                if ref is None:
                    raise ProtocolError(f"item_reference {raw.get('id')!r} does not exist", code="item_not_found",
                                        param=f"response.input[{i}].id")
                items.append(ref)
            else:
                item, audio = parse_item(raw, where=f"response.input[{i}]")
                if audio is not None:
                    raise ProtocolError("audio in response.input is not supported; add it with "
                                        "conversation.item.create and reference it", param=f"response.input[{i}]")
                items.append(item)
        return items

    def _auto_response(self, turn_end: float | None, trigger: str = "server_vad",
                       speculation: str | None = None) -> list[Command]:
        if self.active is not None:
            self.pending_auto_response = True  # answer once the current response is over
            return []
        return self._start(response_options(self.config, None), None, trigger, turn_end, speculation)

    def _start(self, options: ResponseOptions, context: list[Item] | None, trigger: str,
               trigger_time: float | None, speculation: str | None = None) -> list[Command]:
        out = self._drop_speculation()  # another response starts first: the turn being spoken will wait for it
        self.pending_auto_response = False
        info = ResponseInfo(new_id("resp"), options.audio_out, options.output_format.ga_object(),
                            options.output_format.beta_name, options.voice, options.max_output_tokens,
                            options.temperature, options.conversation, options.metadata)
        self.active = ResponseState(info, options, context, trigger, trigger_time)
        waits = tuple(i for i in self.pending_transcripts
                      if context is None or any(c.id == i for c in context))
        return out + [Send(ResponseCreated(copy.deepcopy(info)), urgent=False),
                      StartResponse(info.id, waits, speculation)]

    def _cancel(self, reason: str) -> list[Command]:
        st = self.active
        if st is None:
            return []
        return [CancelResponse(st.id)] + self.response_finish(st.id, "cancelled", reason=reason)

    def shutdown(self, code: str, message: str) -> list[Command]:
        """The session is about to end (server shutdown): cancel the response in progress — its
        `response.done{cancelled}` carries `status_details.error{code, message}` (the protocol's reasons
        are all client-side) — and fail every transcription still pending. Afterwards every
        `response.created` has had its `response.done` and every committed item its transcript event."""
        out: list[Command] = self._drop_speculation()
        self.pending_auto_response = False
        st = self.active
        if st is not None:
            out += [CancelResponse(st.id)]
            out += self.response_finish(st.id, "cancelled", error={"type": "server_error", "code": code,
                                                                   "message": message})
        emit = self.config.transcription is not None
        for item_id in sorted(self.pending_transcripts):
            out += self.transcription_failed(item_id, message, emit)
        return out

    # ---- responses: what the pipeline reports --------------------------------------------------------
    def live(self, response_id: str) -> ResponseState | None:
        st = self.active
        return st if st is not None and st.id == response_id else None

    def response_context(self, response_id: str) -> list[Item] | None:
        """What response `response_id` answers (every backend's one selection): its explicit `input` items, else
        the conversation without the response's own output. None once the response is over."""
        st = self.live(response_id)
        if st is None:
            return None
        return st.context if st.context is not None else [i for i in self.conversation.items
                                                          if i not in st.info.output]

    def chat_request(self, response_id: str) -> ChatRequest | None:
        st = self.live(response_id)
        if st is None:
            return None
        return self._chat(st.options, self.response_context(response_id) or [])

    def _chat(self, o: ResponseOptions, context: list[Item]) -> ChatRequest:
        messages = self.conversation.to_messages(o.instructions, context)
        return ChatRequest(messages=messages,
                           tools=tuple(ToolSpec(t.name, t.description, t.parameters) for t in o.tools),
                           tool_choice=o.tool_choice, max_tokens=o.max_tokens, temperature=o.temperature)

    # ---- speculation: what it answers, and whether a response may take it over --------------------------
    def speculation_request(self, speculation_id: str, transcript: str,
                            audio_ms: float) -> tuple[ResponseOptions, list[Item], ChatRequest] | None:
        """What the auto response to the turn so far would answer, if the turn ended now with `transcript`: the
        options, the context (the conversation plus the turn's user item as its commit will make it) and the chat
        request. Nothing is added to the conversation. None once the speculation is dropped."""
        if self.speculating is None or self.speculating[0] != speculation_id:
            return None
        options, context = self._context_with_turn(transcript, audio_ms, speculation_id)
        return options, context, self._chat(options, context)

    def _context_with_turn(self, transcript: str, audio_ms: float,
                           fallback_id: str) -> tuple[ResponseOptions, list[Item]]:
        """The next auto response's options and context if the turn being spoken ended now with `transcript`."""
        turn = Item(self.speech_item_id or fallback_id, "message", role="user",
                    content=[Content("input_audio", transcript=transcript, audio_ms=audio_ms)])
        return response_options(self.config, None), [*self.conversation.items, turn]

    def turn_messages(self, transcript: str) -> tuple[ChatMessage, ...]:
        """The conversation as the next auto response would show it to the model, ending with `transcript` as the
        user's words so far (for the end-of-turn verdict). Nothing is added to the conversation."""
        options, context = self._context_with_turn(transcript, 0.0, "item_turn_so_far")
        return self.conversation.to_messages(options.instructions, context)

    def turn_verdict(self, pause_end: int, p_end: float | None) -> list[Command]:
        """The chat model's P(end) for the words up to the pause that ended at `pause_end` (None: no verdict). The
        detector acts on it at the next append."""
        if self.detector is not None:
            self.detector.text_verdict(pause_end, p_end)
        return []

    def speculation_matches(self, response_id: str, options: ResponseOptions, chat: ChatRequest) -> bool:
        """A speculation prepared with (`options`, `chat`) is exactly what response `response_id` would run now."""
        st = self.live(response_id)
        return st is not None and st.options == options and self.chat_request(response_id) == chat

    def _lane(self, st: ResponseState, type: str, **data) -> Send:
        return Send(event(type, st.id, response_id=st.id, **data), urgent=False)

    def _open_message(self, st: ResponseState) -> list[Command]:
        item = Item(new_id("item"), "message", role="assistant", status="in_progress")
        st.message, st.text, st.spans, st.generated_ms, st.sent_ms = item, "", [], 0.0, 0.0
        previous = None
        if st.in_conversation:
            previous = self.conversation.add(item)
        st.info.output.append(item)
        out: list[Command] = [self._lane(st, "response.output_item.added", output_index=st.output_index, item=item)]
        if st.in_conversation:
            out.append(self._lane(st, "conversation.item.added", item=item, previous_item_id=previous))
        part = Content("audio", transcript="") if st.options.audio_out else Content("text", text="")
        item.content.append(part)
        out.append(self._lane(st, "response.content_part.added", item_id=item.id, output_index=st.output_index,
                              content_index=0, part=part.to_wire()))
        return out

    def response_text(self, response_id: str, text: str) -> list[Command]:
        st = self.live(response_id)
        if st is None or not text:
            return []
        out = self._open_message(st) if st.message is None else []
        st.text += text
        part = st.message.content[0]  # type: ignore[union-attr]
        if not st.options.audio_out:
            part.text = st.text
        out.append(Send(TextDelta(st.id, st.message.id, st.output_index, text,  # type: ignore[union-attr]
                                  spoken=st.options.audio_out), urgent=False))
        return out

    def response_sentence(self, response_id: str, text: str, start_ms: float, end_ms: float) -> None:
        """The pipeline synthesised `text` as the audio between start_ms and end_ms of the current message."""
        st = self.live(response_id)
        if st is not None and st.message is not None:
            st.spans.append(Span(text, start_ms, end_ms))

    def response_audio(self, response_id: str, data: bytes, start_ms: float, duration_ms: float) -> list[Command]:
        """`data`: audio in the response's output format (`options.output_format`), at `start_ms` of the item."""
        st = self.live(response_id)
        if st is None or not st.options.audio_out or not data:
            return []
        out = self._open_message(st) if st.message is None else []
        st.generated_ms = start_ms + duration_ms
        ev = AudioDelta(st.id, st.message.id, st.output_index, data, st.options.output_format,  # type: ignore[union-attr]
                        st.generated_ms)
        return out + [Send(ev, urgent=False)]

    def audio_delta_sent(self, response_id: str, end_ms: float, now: float) -> tuple[float, str] | None:
        """The socket sent an audio delta. For a response's first one with a known turn end, returns
        (turn latency in s, what triggered the response)."""
        self.audio_sent = True
        st = self.live(response_id)
        if st is None:
            return None
        st.sent_ms = max(st.sent_ms, end_ms)
        if st.first_audio_sent:
            return None
        st.first_audio_sent = True
        return (now - st.trigger_time, st.trigger) if st.trigger_time is not None else None

    def response_tool_call(self, response_id: str, call: ToolCall) -> list[Command]:
        st = self.live(response_id)
        if st is None:
            return []
        out = self._close_message(st, "completed", urgent=False)
        item = Item(new_id("item"), "function_call", status="in_progress", call_id=call.id or new_id("call"),
                    name=call.name, arguments="")
        previous = self.conversation.add(item) if st.in_conversation else None
        st.info.output.append(item)
        idx = st.output_index
        out.append(self._lane(st, "response.output_item.added", output_index=idx, item=item))
        if st.in_conversation:
            out.append(self._lane(st, "conversation.item.added", item=item, previous_item_id=previous))
        out.append(self._lane(st, "response.function_call_arguments.delta", item_id=item.id, output_index=idx,
                              call_id=item.call_id, delta=call.arguments))
        item.arguments, item.status = call.arguments, "completed"
        self.conversation.resized(item)
        out.append(self._lane(st, "response.function_call_arguments.done", item_id=item.id, output_index=idx,
                              call_id=item.call_id, name=item.name, arguments=item.arguments))
        out.append(self._lane(st, "response.output_item.done", output_index=idx, item=item))
        if st.in_conversation:
            out.append(self._lane(st, "conversation.item.done", item=item))
        return out

    def _close_message(self, st: ResponseState, status: str, urgent: bool) -> list[Command]:
        item = st.message
        if item is None:
            return []
        st.message = None
        part = item.content[0]
        idx = next(i for i, o in enumerate(st.info.output) if o is item)
        common = dict(response_id=st.id, item_id=item.id, output_index=idx, content_index=0)

        def send(type: str, **data) -> Send:
            return Send(event(type, st.id, **data), urgent=urgent)

        out: list[Command] = []
        if st.options.audio_out:
            if status == "completed":
                part.transcript = st.text.strip()
                part.audio_ms = st.generated_ms
            else:  # keep only what was actually sent as audio: the rest was never spoken
                part.transcript = heard_text(st.spans, st.sent_ms)
                part.audio_ms = st.sent_ms
            part.spans = list(st.spans)
            out += [Send(AudioDone(st.id, item.id, idx), urgent=urgent),
                    send("response.output_audio_transcript.done", transcript=part.transcript, **common)]
        else:
            part.text = st.text
            out.append(send("response.output_text.done", text=part.text, **common))
        item.status = "completed" if status == "completed" else "incomplete"
        self.conversation.resized(item)
        out += [send("response.content_part.done", part=part.to_wire(), **common),
                send("response.output_item.done", response_id=st.id, output_index=idx, item=item)]
        if st.in_conversation:
            out.append(send("conversation.item.done", item=item))
        return out

    def response_finish(self, response_id: str, status: str, *, reason: str | None = None,
                        error: dict | None = None, usage: tuple[int, int] = (0, 0)) -> list[Command]:
        """End the response: completed | cancelled | incomplete | failed. Cancelled ones are urgent."""
        st = self.live(response_id)
        if st is None:
            return []
        urgent = status == "cancelled"
        out = self._close_message(st, status, urgent)
        info = st.info
        info.status, info.reason, info.error = status, reason, error
        info.input_tokens, info.output_tokens = usage
        out.append(Send(ResponseDone(copy.deepcopy(info)), urgent=urgent))
        self.active = None
        if self.pending_auto_response and status != "cancelled":
            out += self._auto_response(None)
        return out
