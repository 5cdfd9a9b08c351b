"""Chat templates (ChatML as Qwen2.5 and SmolLM2 use it) and the ``<tool_call>`` parser.

The prompt is rendered as *pieces* — ``int`` control-token ids and ``str`` text — rather than one string,
so message text is always tokenized as text: a user typing ``<|im_start|>`` cannot open a new turn.

Qwen2.5 (the GGUF's own ``tokenizer.chat_template``, rendered in Python)::

    <|im_start|>system\\n{system}\\n\\n# Tools\\n\\nYou may call one or more functions ...<tools>\\n{tool json}
    </tools>\\n\\nFor each function call, return a json object ... </tool_call><|im_end|>\\n
    <|im_start|>user\\n{text}<|im_end|>\\n
    <|im_start|>assistant\\n{text}\\n<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call><|im_end|>\\n
    <|im_start|>user\\n<tool_response>\\n{result}\\n</tool_response><|im_end|>\\n   (consecutive tool
    <|im_start|>assistant\\n                                                       results share one turn)

The tool list stays in the system turn on every turn, the one right after tool results included, as the
template has it (and the prompt cache wants: the system turn is then the same on every turn). Measured on the
0.5B model (bench/llm_eval.py): with the list left out of the result turn, 2 of 6 answers used the result
(the others described the tool or refused); with it shown, 6 of 6.

``tool_note`` (``render``): one sentence :func:`runtime.llm.prompt.build_prompt` appends after the template's
tool instructions (:data:`TOOL_RESULT_NOTE`); the rest of the system turn is the template's own text.

SmolLM2's template is the same ChatML with its own default system prompt; it declares no tool format,
so tools are offered to it the Qwen way (a 135M model follows it poorly; forced calls still work
because the engine prefills the call).
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Sequence

from runtime.chat_api import ChatMessage, ImagePart, ToolCall, ToolSpec

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SMOLLM_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
#: After the template's tool instructions. Without it the 0.5B model answered a result with "This response
#: indicates that ..." or "Mark the city as ..."; with it, "The temperature in Paris is 18 degrees ...".
TOOL_RESULT_NOTE = "When a <tool_response> comes back, answer the user's question using the tool result."


@dataclass(frozen=True)
class ChatFormat:
    """How one model family lays out a conversation."""

    name: str
    default_system: str
    im_start: int
    im_end: int

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = (),
               image_pieces=None, add_generation_prompt: bool = True, tool_note: str = "") -> list[str | int]:
        """Prompt pieces for ``messages``. ``image_pieces(ImagePart) -> pieces`` expands images (a VLM);
        without it an image part is an error (callers check vision support before rendering). ``tool_note``
        (only with ``tools``) goes after the template's tool instructions, in the system turn."""
        out: list[str | int] = []
        msgs = list(messages)
        system = self.default_system
        if msgs and msgs[0].role == "system":
            system = text_of(msgs[0].content)
            msgs = msgs[1:]
        if tools:
            system += ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                       "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
            for t in tools:
                system += "\n" + json.dumps({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}},
                    ensure_ascii=False)
            system += ("\n</tools>\n\nFor each function call, return a json object with function name and "
                       "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                       "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>")
            if tool_note:
                system += "\n\n" + tool_note
        out += [self.im_start, "system\n" + system, self.im_end, "\n"]
        for i, m in enumerate(msgs):
            if m.role == "tool":
                if i == 0 or msgs[i - 1].role != "tool":
                    out += [self.im_start, "user"]
                out += ["\n<tool_response>\n" + text_of(m.content) + "\n</tool_response>"]
                if i == len(msgs) - 1 or msgs[i + 1].role != "tool":
                    out += [self.im_end, "\n"]
                continue
            out += [self.im_start, m.role]
            if m.role == "assistant" and m.tool_calls:
                if text_of(m.content):
                    out.append("\n" + text_of(m.content))
                for call in m.tool_calls:
                    out.append(f"\n{TOOL_OPEN}\n{{\"name\": \"{call.name}\", \"arguments\": "
                               f"{_json_arguments(call.arguments)}}}\n{TOOL_CLOSE}")
            else:
                out.append("\n")
                out += content_pieces(m.content, image_pieces)
            out += [self.im_end, "\n"]
        if add_generation_prompt:
            out += [self.im_start, "assistant\n"]
        return out


def text_of(content: str | tuple) -> str:
    """The text of a message's content (image parts dropped)."""
    if isinstance(content, str):
        return content
    return "".join(p for p in content if isinstance(p, str))


def has_images(messages: Sequence[ChatMessage]) -> bool:
    return any(not isinstance(m.content, str) and any(isinstance(p, ImagePart) for p in m.content)
               for m in messages)


def content_pieces(content: str | tuple, image_pieces=None) -> list[str | int]:
    if isinstance(content, str):
        return [content]
    out: list[str | int] = []
    for part in content:
        if isinstance(part, ImagePart):
            if image_pieces is None:
                raise ValueError("this model has no vision input; send text only")
            out += image_pieces(part)
        else:
            out.append(part)
    return out


def _json_arguments(arguments: str) -> str:
    # History carries OpenAI's JSON text; re-serialise compactly when it parses, as the template does.
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)
    except (TypeError, ValueError):
        return json.dumps(arguments, ensure_ascii=False)


def chat_format(name: str, tokenizer) -> ChatFormat:
    """The :class:`ChatFormat` registered as ``name`` (``qwen2.5`` | ``smollm2``) for ``tokenizer``."""
    defaults = {"qwen2.5": QWEN_DEFAULT_SYSTEM, "smollm2": SMOLLM_DEFAULT_SYSTEM}
    if name not in defaults:
        raise ValueError(f"unknown chat format {name!r}; known: {', '.join(defaults)}")
    return ChatFormat(name, defaults[name], tokenizer.token_id("<|im_start|>"), tokenizer.token_id("<|im_end|>"))


# ---- tool calls --------------------------------------------------------------------------------------
_CALL_RE = re.compile(re.escape(TOOL_OPEN) + r"\s*(.*?)\s*" + re.escape(TOOL_CLOSE), re.S)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def parse_tool_call(body: str, tools: Sequence[ToolSpec]) -> ToolCall | None:
    """``{"name": ..., "arguments": {...}}`` (the text between the tags) -> a ToolCall, or None when
    it is not valid JSON naming a declared tool."""
    try:
        obj, _ = json.JSONDecoder().raw_decode(body.strip())
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    names = {t.name for t in tools}
    if names and obj["name"] not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(id=new_call_id(), name=obj["name"], arguments=json.dumps(args, ensure_ascii=False))


def json_object_end(text: str) -> int:
    """Index just past the first complete top-level JSON object in ``text`` (-1 while incomplete).

    Tracks strings and escapes, so braces inside string values do not count."""
    depth, in_str, esc, started = 0, False, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
            started = True
        elif ch == "}":
            depth -= 1
            if started and depth == 0:
                return i + 1
        elif not started and not ch.isspace():
            return -2                       # not an object at all
    return -1
