"""A :class:`ChatRequest` → prompt ids + an :class:`OutputParser`, shared by the torch and vLLM engines,
so both render, prefill forced tool calls and parse output the same way."""
from __future__ import annotations

from typing import Callable

from runtime.chat_api import ChatRequest
from runtime.llm.chat_format import TOOL_OPEN, ChatFormat, has_images
from runtime.llm.output import OutputParser


class ChatRequestError(ValueError):
    """A request an engine cannot serve as sent (too long, images to a text model, bad image ...).
    The HTTP layer answers it with a 400 and this message."""


def build_prompt(request: ChatRequest, fmt: ChatFormat, tokenizer, model_id: str, vision=None
                 ) -> tuple[list[int], OutputParser, Callable[[], None] | None]:
    """Prompt ids, the request's output parser, and (VLM only) a closure to run just before prefill.

    ``tool_choice`` naming a function (or ``"required"``) appends the opening of the call to the prompt
    (``<tool_call>\\n{"name": "get_weather", "arguments": ``), so the model can only complete a call."""
    if not request.messages:
        raise ChatRequestError("messages must contain at least one message")
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
    pieces = fmt.render(request.messages, tools, image_pieces=image_pieces)
    forced = None
    if tools and choice not in ("auto", "none"):
        if choice != "required":
            tools = tuple(t for t in tools if t.name == choice)
        forced = f'{{"name": "{tools[0].name}", "arguments": ' if len(tools) == 1 else '{"name": "'
        pieces.append(TOOL_OPEN + "\n" + forced)
    parser = OutputParser(stop=request.stop, tools=tools, parse_tools=bool(tools), forced_prefix=forced)
    return tokenizer.encode_pieces(pieces), parser, prepare
