"""Conversation items and the conversation: ordering, create/delete/retrieve, truncation, LLM context.

Items are stored dialect-neutral. Content types inside: `input_text`, `input_audio` (user), `text`,
`audio` (assistant); the serializer writes the GA names (`output_text`, `output_audio`) where needed.

An assistant audio part keeps an alignment of its transcript to its audio (`spans`: one per synthesised
sentence, with start/end in ms). `truncate(audio_end_ms)` keeps the text the listener actually heard —
whole sentences before the cut, the heard fraction of the sentence being played (by words) — so text the
user never heard does not reach the model's context (OpenAI's `conversation.item.truncate` contract).
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass, field

from runtime.chat_api import ChatMessage, ToolCall

MAX_ITEMS = 2000  # per conversation; the oldest are dropped beyond this
#: memory the items' text may take per conversation (VOXLINE_MAX_CONVERSATION_BYTES); the oldest are dropped
#: beyond it, like a context window, and one item larger than it all is refused (`item_too_large`)
MAX_CONVERSATION_BYTES = 4 * 1024 * 1024
CONTEXT_CHARS = 8000  # text sent to the LLM per response (~2k tokens); the oldest turns are left out first


def new_id(prefix: str) -> str:
    """OpenAI-style ids: `item_…`, `resp_…`, `call_…` (prefix + 20 random url-safe characters)."""
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass
class Span:
    """A piece of assistant transcript and where its audio lies in the item's audio (ms)."""

    text: str
    start_ms: float
    end_ms: float


@dataclass
class Content:
    type: str  # input_text | input_audio | text | audio
    text: str | None = None
    transcript: str | None = None
    audio_ms: float = 0.0  # duration of this part's audio (input_audio / audio)
    spans: list[Span] = field(default_factory=list)

    def to_wire(self) -> dict:
        out: dict = {"type": self.type}
        if self.type in ("input_text", "text"):
            out["text"] = self.text or ""
        else:
            out["transcript"] = self.transcript
        return out


@dataclass
class Item:
    id: str
    type: str  # message | function_call | function_call_output
    role: str | None = None  # user | assistant | system (messages)
    status: str = "completed"  # completed | incomplete | in_progress
    content: list[Content] = field(default_factory=list)
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    transcription_failed: bool = False

    def memory_bytes(self) -> int:
        """What the item's strings take in memory (`sys.getsizeof`: 1–4 bytes a character, plus the object)."""
        strings = [self.id, self.call_id, self.name, self.arguments, self.output]
        for c in self.content:
            strings += [c.text, c.transcript, *(span.text for span in c.spans)]
        return sum(sys.getsizeof(x) for x in strings if x is not None)

    def text_for_model(self) -> str:
        parts = []
        for c in self.content:
            if c.type in ("input_text", "text"):
                parts.append(c.text or "")
            elif c.transcript:
                parts.append(c.transcript)
        return " ".join(p for p in parts if p).strip()


class ItemError(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def parse_item(raw: object, *, where: str = "item") -> tuple[Item, bytes | None]:
    """A client item (either dialect) → (Item, input audio bytes or None). Audio is decoded by the caller,
    which knows the session's input format."""
    if not isinstance(raw, dict):
        raise ItemError(f"'{where}' must be an object", where)
    item_id = raw.get("id") or new_id("item")
    if not isinstance(item_id, str) or len(item_id) > 64:
        raise ItemError("an item 'id' must be a string of at most 64 characters", f"{where}.id")
    kind = raw.get("type", "message")
    audio: bytes | None = None
    if kind == "message":
        role = raw.get("role")
        if role not in ("user", "assistant", "system"):
            raise ItemError("a message item needs 'role': user, assistant or system", f"{where}.role")
        content = raw.get("content")
        if not isinstance(content, list) or not content:
            raise ItemError("a message item needs a non-empty 'content' list", f"{where}.content")
        parts = []
        for i, part in enumerate(content):
            p = part if isinstance(part, dict) else {}
            ptype = p.get("type")
            allowed = {"user": ("input_text", "input_audio"), "system": ("input_text",),
                       "assistant": ("text", "output_text", "audio", "output_audio")}[role]
            if ptype not in allowed:
                raise ItemError(f"{role} messages take content of type {', '.join(allowed)} (got {ptype!r})",
                                f"{where}.content[{i}].type")
            if ptype in ("input_text", "text", "output_text"):
                text = p.get("text")
                if not isinstance(text, str):
                    raise ItemError("text content needs a string 'text'", f"{where}.content[{i}].text")
                parts.append(Content("input_text" if ptype == "input_text" else "text", text=text))
            elif ptype == "input_audio":
                if audio is not None:
                    raise ItemError("one input_audio part per item is supported", f"{where}.content[{i}]")
                transcript = p.get("transcript")
                if p.get("audio") is None and not isinstance(transcript, str):
                    raise ItemError("input_audio content needs 'audio' (base64) or a 'transcript'",
                                    f"{where}.content[{i}].audio")
                audio = p.get("audio")  # type: ignore[assignment]
                parts.append(Content("input_audio", transcript=transcript if isinstance(transcript, str) else None))
            else:  # assistant audio given as text history
                transcript = p.get("transcript")
                if not isinstance(transcript, str):
                    raise ItemError("assistant audio content needs a 'transcript'", f"{where}.content[{i}].transcript")
                parts.append(Content("audio", transcript=transcript))
        return Item(item_id, "message", role=role, content=parts), audio
    if kind == "function_call":
        name, args = raw.get("name"), raw.get("arguments", "")
        if not isinstance(name, str) or not name or not isinstance(args, str):
            raise ItemError("a function_call item needs 'name' and string 'arguments'", where)
        return Item(item_id, "function_call", call_id=raw.get("call_id") or new_id("call"), name=name,
                    arguments=args), None
    if kind == "function_call_output":
        call_id, output = raw.get("call_id"), raw.get("output")
        if not isinstance(call_id, str) or not call_id:
            raise ItemError("a function_call_output item needs the 'call_id' of the call it answers",
                            f"{where}.call_id")
        if not isinstance(output, str):
            raise ItemError("'output' must be a string (JSON text, usually)", f"{where}.output")
        return Item(item_id, "function_call_output", call_id=call_id, output=output), None
    raise ItemError(f"unsupported item type {kind!r}; use message, function_call or function_call_output",
                    f"{where}.type")


class Conversation:
    """The session's ordered items, within MAX_ITEMS and a memory budget (`max_bytes` of text).

    Items are measured when added and when their text changes (`resized`); beyond the budget the oldest
    are dropped, as a context window drops them. An item that alone exceeds the budget is refused."""

    def __init__(self, max_bytes: int = MAX_CONVERSATION_BYTES) -> None:
        self.items: list[Item] = []
        self._by_id: dict[str, Item] = {}
        self.max_bytes = max_bytes
        self.bytes = 0  # what the items take, as last measured
        self._sizes: dict[str, int] = {}

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._by_id

    def get(self, item_id: str) -> Item | None:
        return self._by_id.get(item_id)

    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Append (or insert after `previous_item_id`; "root" = at the start). Returns the predecessor's id."""
        if item.id in self._by_id:
            raise ItemError(f"an item with id {item.id!r} already exists", "item.id", code="duplicate_item_id")
        size = item.memory_bytes()
        if size > self.max_bytes:
            raise ItemError(f"the item takes {size} bytes; a conversation holds at most {self.max_bytes} bytes "
                            "of text (max_conversation_bytes)", "item", code="item_too_large")
        if previous_item_id is None:
            previous = self.last_id()
            self.items.append(item)
        elif previous_item_id == "root":
            previous = None
            self.items.insert(0, item)
        else:
            if previous_item_id not in self._by_id:
                raise ItemError(f"previous_item_id {previous_item_id!r} does not exist", "previous_item_id",
                                code="item_not_found")
            index = next(i for i, it in enumerate(self.items) if it.id == previous_item_id)
            self.items.insert(index + 1, item)
            previous = previous_item_id
        self._by_id[item.id] = item
        self._sizes[item.id] = size
        self.bytes += size
        self._drop_oldest(keep=item)
        return previous

    def resized(self, item: Item) -> None:
        """`item`'s text changed (a transcript arrived, a response finished): measure it again, and drop the
        oldest items if the conversation is now over its budget."""
        if self._by_id.get(item.id) is not item:
            return
        size = item.memory_bytes()
        self.bytes += size - self._sizes[item.id]
        self._sizes[item.id] = size
        self._drop_oldest(keep=item)

    def _drop_oldest(self, keep: Item) -> None:
        while len(self.items) > MAX_ITEMS or (self.bytes > self.max_bytes and len(self.items) > 1):
            oldest = self.items[0] if self.items[0] is not keep else self.items[1]
            self._remove(oldest)

    def _remove(self, item: Item) -> None:
        self.items.remove(item)
        del self._by_id[item.id]
        self.bytes -= self._sizes.pop(item.id)

    def delete(self, item_id: str) -> None:
        item = self._by_id.get(item_id)
        if item is None:
            raise ItemError(f"item {item_id!r} does not exist", "item_id", code="item_not_found")
        self._remove(item)

    def has_call(self, call_id: str) -> bool:
        return any(it.type == "function_call" and it.call_id == call_id for it in self.items)

    def truncate(self, item_id: str, content_index: int, audio_end_ms: int) -> Item:
        item = self._by_id.get(item_id)
        if item is None:
            raise ItemError(f"item {item_id!r} does not exist", "item_id", code="item_not_found")
        if item.type != "message" or item.role != "assistant":
            raise ItemError("only assistant message items can be truncated", "item_id")
        if not 0 <= content_index < len(item.content) or item.content[content_index].type != "audio":
            raise ItemError(f"content_index {content_index} is not an audio part of {item_id}", "content_index")
        part = item.content[content_index]
        if audio_end_ms < 0 or audio_end_ms > part.audio_ms + 1:
            raise ItemError(f"audio_end_ms {audio_end_ms} is outside the item's audio (0..{int(part.audio_ms)} ms)",
                            "audio_end_ms")
        part.transcript = heard_text(part.spans, audio_end_ms)
        part.spans = [s for s in part.spans if s.start_ms < audio_end_ms]
        if part.spans:
            last = part.spans[-1]
            if last.end_ms > audio_end_ms:
                part.spans[-1] = Span(_heard_words(last, audio_end_ms), last.start_ms, float(audio_end_ms))
        part.audio_ms = float(audio_end_ms)
        self.resized(item)
        return item

    def to_messages(self, instructions: str, items: list[Item] | None = None) -> tuple[ChatMessage, ...]:
        """The LLM context: instructions as the system message, then the items (oldest dropped first to fit
        CONTEXT_CHARS). A run of function calls becomes one assistant message with several tool calls."""
        messages: list[ChatMessage] = []
        for item in self.items if items is None else items:
            if item.type == "message":
                text = item.text_for_model()
                if not text:
                    continue
                messages.append(ChatMessage(item.role, text))  # type: ignore[arg-type]
            elif item.type == "function_call":
                call = ToolCall(item.call_id or item.id, item.name or "", item.arguments or "{}")
                prev = messages[-1] if messages else None
                if prev is not None and prev.role == "assistant" and prev.tool_calls:
                    messages[-1] = ChatMessage("assistant", prev.content, prev.tool_calls + (call,))
                else:
                    messages.append(ChatMessage("assistant", "", (call,)))
            elif item.type == "function_call_output":
                messages.append(ChatMessage("tool", item.output or "", tool_call_id=item.call_id))
        kept: list[ChatMessage] = []
        budget = CONTEXT_CHARS
        for m in reversed(messages):
            size = len(m.content if isinstance(m.content, str) else "") + sum(len(c.arguments) for c in m.tool_calls)
            if kept and size > budget:
                break
            kept.append(m)
            budget -= size
        kept.reverse()
        while kept and kept[0].role == "tool":  # never start with an answer whose call was cut off
            kept.pop(0)
        system = (ChatMessage("system", instructions),) if instructions else ()
        return system + tuple(kept)


def heard_text(spans: list[Span], audio_end_ms: float) -> str:
    words = []
    for s in spans:
        if s.end_ms <= audio_end_ms:
            words.append(s.text)
        elif s.start_ms < audio_end_ms:
            words.append(_heard_words(s, audio_end_ms))
    return " ".join(w for w in words if w).strip()


def _heard_words(span: Span, audio_end_ms: float) -> str:
    """The words of a sentence heard by `audio_end_ms`, assuming words spread evenly over its audio."""
    words = span.text.split()
    length = max(1.0, span.end_ms - span.start_ms)
    n = int(len(words) * max(0.0, min(1.0, (audio_end_ms - span.start_ms) / length)))
    return " ".join(words[:n])


def item_to_wire(item: Item, ga: bool) -> dict:
    """An item as the protocol writes it (audio bytes are never echoed back)."""
    out: dict = {"id": item.id, "object": "realtime.item", "type": item.type, "status": item.status}
    if item.type == "message":
        out["role"] = item.role
        parts = []
        for c in item.content:
            wire = c.to_wire()
            if ga and item.role == "assistant":
                wire["type"] = {"text": "output_text", "audio": "output_audio"}[c.type]
            parts.append(wire)
        out["content"] = parts
    elif item.type == "function_call":
        out.update(call_id=item.call_id, name=item.name, arguments=item.arguments or "")
    else:
        out.update(call_id=item.call_id, output=item.output)
    return out
