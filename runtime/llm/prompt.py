"""A :class:`ChatRequest` → prompt ids + an :class:`OutputParser`, shared by the torch and vLLM engines,
so both render, prefill forced tool calls and parse output the same way."""
from __future__ import annotations

import json
from typing import Callable

from runtime.chat_api import ChatRequest
from runtime.llm.chat_format import TOOL_OPEN, TOOL_RESULT_NOTE, ChatFormat, has_images
from runtime.llm.output import OutputParser
from runtime.llm.tool_constraint import constraint_for


class ChatRequestError(ValueError):
    """A request an engine cannot serve as sent (too long, images to a text model, bad image ...).
    The HTTP layer answers it with a 400, this message and `code`."""

    code = "invalid_request"


class PromptTooLong(ChatRequestError):
    """The prompt does not fit the model's context (OpenAI's `context_length_exceeded`)."""

    code = "context_length_exceeded"


def prompt_chars(request: ChatRequest) -> int:
    """Characters of text the prompt will hold (messages, tool calls, tool specs; images not counted).
    Cheap: `len` of each string, one `json.dumps` per tool schema."""
    total = 0
    for m in request.messages:
        parts = (m.content,) if isinstance(m.content, str) else m.content
        total += sum(len(p) for p in parts if isinstance(p, str))
        total += sum(len(c.name) + len(c.arguments) for c in m.tool_calls)
    for t in request.tools:
        total += len(t.name) + len(t.description) + len(json.dumps(t.parameters))
    return total


def check_prompt_size(chars: int, max_tokens: int, max_token_bytes: int) -> None:
    """Refuse, before tokenizing, a prompt that cannot fit `max_tokens`: no token covers more than
    `max_token_bytes` bytes (and a character is at least one byte), so it needs at least
    chars / max_token_bytes tokens. Never refuses a prompt that would fit; tokenizing a 30 MB prompt to
    find out took 27 s of CPU."""
    if chars > max_tokens * max_token_bytes:
        raise PromptTooLong(f"the prompt holds {chars} characters, more than this model's context of "
                            f"{max_tokens} tokens can take; shorten the messages")


def check_prompt_tokens(n: int, max_tokens: int) -> None:
    if n > max_tokens:
        raise PromptTooLong(f"the prompt is {n} tokens; this model serves at most {max_tokens} prompt tokens")


def build_prompt(request: ChatRequest, fmt: ChatFormat, tokenizer, model_id: str, vision=None, *,
                 max_prompt_tokens: int, constrain: bool = False
                 ) -> tuple[list[int], OutputParser, Callable[[], None] | None]:
    """Prompt ids, the request's output parser, and (VLM only) a closure to run just before prefill.
    CPU work in proportion to the request (tokenizing, decoding images): engines call it in a worker
    thread, never on the event loop. Sizes are checked before the work (`check_prompt_size`).

    ``tool_choice`` naming a function (or ``"required"``) appends the opening of the call to the prompt
    (``<tool_call>\\n{"name": "get_weather", "arguments": ``), so the model can only complete a call.

    ``constrain`` (an engine that decodes under :attr:`OutputParser.constraint`): the parser carries the
    request's :class:`runtime.llm.tool_constraint.OutputConstraint`, and a forced call's prefill is just
    ``<tool_call>\\n`` — the grammar then writes the whole call, name included.

    Tools shown: the system turn is the template's, plus :data:`runtime.llm.chat_format.TOOL_RESULT_NOTE`."""
    if not request.messages:
        raise ChatRequestError("messages must contain at least one message")
    check_prompt_size(prompt_chars(request), max_prompt_tokens, tokenizer.max_token_bytes)
    prepare = image_pieces = None
    if has_images(request.messages):
        if vision is None:
            raise ChatRequestError(f"model {model_id!r} does not accept image input (it has no vision "
                                   f"encoder); send text only or use a vision model")
        image_pieces, prepare = vision.prepare(request.messages)
    tools = request.tools if request.tool_choice != "none" else ()
    choice = request.tool_choice
    if tools and choice not in ("auto", "none", "required") and choice not in {t.name for t in tools}:
        raise ChatRequestError(f"tool_choice names {choice!r}, which is not in tools")
    forced = None
    if tools and choice not in ("auto", "none", "required"):
        shown, tools = tools, tuple(t for t in tools if t.name == choice)
    else:
        shown = tools
    constraint = constraint_for(request.messages, tools, choice, request.json_schema) if constrain else None
    # The tools stay listed on the turn after their results too, as the model's template has it (see
    # runtime.llm.chat_format; the `text` grammar keeps that turn from calling again).
    pieces = fmt.render(request.messages, shown, image_pieces=image_pieces,
                        tool_note=TOOL_RESULT_NOTE if shown else "")
    if tools and choice not in ("auto", "none"):
        forced = "" if constrain else (f'{{"name": "{tools[0].name}", "arguments": ' if len(tools) == 1
                                       else '{"name": "')
        pieces.append(TOOL_OPEN + "\n" + forced)
    parser = OutputParser(stop=request.stop, tools=tools, parse_tools=bool(tools), forced_prefix=forced)
    parser.constraint = constraint
    parser.unfence = request.json_schema is not None and constraint is None and not tools
    ids = tokenizer.encode_pieces(pieces)
    check_prompt_tokens(len(ids), max_prompt_tokens)
    return ids, parser, prepare


def encode_raw_prompt(prompt: str, tokenizer, max_prompt_tokens: int) -> list[int]:
    """A raw completion prompt's ids (``/v1/completions``), size-checked like `build_prompt`; a worker thread's job."""
    check_prompt_size(len(prompt), max_prompt_tokens, tokenizer.max_token_bytes)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ChatRequestError("prompt must not be empty")
    check_prompt_tokens(len(ids), max_prompt_tokens)
    return ids
