"""OpenAI-compatible text/vision endpoints on the shared chat engine: ``/v1/chat/completions``, ``/v1/completions``.

The wire format is translated here, once, into :mod:`runtime.chat_api` types; the engine behind
``app.state.chat_engines(model)`` (the process-wide engine of that model) does the rest. Streaming uses
SSE (``chat.completion.chunk`` objects, then ``data: [DONE]``). The first delta is awaited before the
response starts, so a request the engine refuses still gets a proper 4xx JSON error, and closing the
connection closes the engine stream (the request's slot is freed before the next decode step).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import aclosing
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from audio_server.errors import APIError
from runtime.chat_api import ChatDelta, ChatMessage, ChatRequest, ImagePart, ToolCall, ToolSpec

router = APIRouter()
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
MAX_TOKENS_LIMIT = 8192


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[Any]
    stream: bool = False
    stream_options: dict | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict | None = None
    response_format: dict | None = None
    n: int | None = None
    seed: int | None = None


class CompletionBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | list[str]
    stream: bool = False
    stream_options: dict | None = None
    max_tokens: int | None = 16
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    seed: int | None = None


# ---- wire -> runtime types ----------------------------------------------------------------------------
def _content(raw: Any, where: str) -> str | tuple[str | ImagePart, ...]:
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise APIError(400, f"{where}.content must be a string or a list of content parts", param=f"{where}.content")
    parts: list[str | ImagePart] = []
    for i, part in enumerate(raw):
        p = f"{where}.content[{i}]"
        if not isinstance(part, dict):
            raise APIError(400, f"{p} must be an object", param=p)
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise APIError(400, f"{p}.text must be a string", param=f"{p}.text")
            parts.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise APIError(400, f"{p}.image_url.url must be a string", param=f"{p}.image_url")
            if not url.startswith("data:"):
                raise APIError(400, "only data: URLs are accepted for images (the server fetches nothing)",
                               param=f"{p}.image_url", code="invalid_image_url")
            parts.append(ImagePart(url))
        else:
            raise APIError(400, f"{p}.type {kind!r} is not supported (use 'text' or 'image_url')", param=f"{p}.type")
    return tuple(parts)


def _message(raw: Any, i: int) -> ChatMessage:
    where = f"messages[{i}]"
    if not isinstance(raw, dict):
        raise APIError(400, f"{where} must be an object", param=where)
    role = _ROLES.get(raw.get("role"))
    if role is None:
        raise APIError(400, f"{where}.role must be one of {', '.join(_ROLES)}", param=f"{where}.role")
    calls = []
    for j, c in enumerate(raw.get("tool_calls") or ()):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise APIError(400, f"{where}.tool_calls[{j}].function.name is required", param=f"{where}.tool_calls")
        args = fn.get("arguments", "{}")
        calls.append(ToolCall(id=str(c.get("id") or f"call_{i}_{j}"), name=fn["name"],
                              arguments=args if isinstance(args, str) else json.dumps(args)))
    return ChatMessage(role=role, content=_content(raw.get("content"), where), tool_calls=tuple(calls),
                       tool_call_id=raw.get("tool_call_id"))


def _tools(raw: list | None) -> tuple[ToolSpec, ...]:
    out = []
    for i, t in enumerate(raw or ()):
        fn = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise APIError(400, f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}",
                           param=f"tools[{i}]")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        out.append(ToolSpec(name=fn["name"], description=fn.get("description") or "", parameters=params))
    return tuple(out)


def _tool_choice(raw: str | dict | None, tools: tuple[ToolSpec, ...]) -> str:
    if raw is None:
        return "auto" if tools else "none"
    if isinstance(raw, str):
        if raw not in ("auto", "none", "required"):
            raise APIError(400, "tool_choice must be 'auto', 'none', 'required' or a function", param="tool_choice")
        if raw == "required" and not tools:
            raise APIError(400, "tool_choice 'required' needs tools", param="tool_choice")
        return raw
    name = (raw.get("function") or {}).get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str) or name not in {t.name for t in tools}:
        raise APIError(400, f"tool_choice names a function that is not in tools: {name!r}", param="tool_choice")
    return name


def _response_format(raw: dict | None) -> dict | None:
    """OpenAI's ``response_format`` -> the JSON schema the answer must match (None: free text)."""
    if raw is None:
        return None
    kind = raw.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = raw.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise APIError(400, "response_format.json_schema.schema must be a JSON schema object",
                           param="response_format.json_schema.schema")
        return schema
    raise APIError(400, "response_format.type must be 'text', 'json_object' or 'json_schema'",
                   param="response_format.type")


def _sampling(body: ChatBody | CompletionBody, max_tokens: int | None) -> dict:
    if body.n not in (None, 1):
        raise APIError(400, "only n=1 is supported", param="n")
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if not 0.0 <= temperature <= 2.0:
        raise APIError(400, "temperature must be between 0 and 2", param="temperature")
    if not 0.0 < top_p <= 1.0:
        raise APIError(400, "top_p must be in (0, 1]", param="top_p")
    limit = 512 if max_tokens is None else max_tokens
    if not 1 <= limit <= MAX_TOKENS_LIMIT:
        raise APIError(400, f"max_tokens must be between 1 and {MAX_TOKENS_LIMIT}", param="max_tokens")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or ())
    if len(stop) > 4:
        raise APIError(400, "at most 4 stop sequences", param="stop")
    return dict(max_tokens=limit, temperature=temperature, top_p=top_p, stop=tuple(stop), seed=body.seed)


async def _engine(request: Request, model: str | None):
    from runtime.llm import resolve

    try:
        model_id = resolve(model)
    except ValueError as exc:
        raise APIError(404, str(exc), param="model", code="model_not_found") from exc
    get = request.app.state.chat_engines
    try:
        return await asyncio.get_running_loop().run_in_executor(None, get, model_id)
    except Exception as exc:
        raise APIError(503, f"chat model {model_id!r} could not be loaded: {exc}", code="model_unavailable",
                       type="server_error") from exc


async def _first(stream: AsyncIterator[ChatDelta]) -> ChatDelta:
    """The first delta; engine refusals (ValueError subclasses) become 400s with the refusal's code (a
    prompt too long for the model: `context_length_exceeded`, checked before it is tokenized)."""
    try:
        return await stream.__anext__()
    except ValueError as exc:
        await stream.aclose()
        code = getattr(exc, "code", None) or "invalid_request"
        raise APIError(400, str(exc), code=code,
                       param="messages" if code == "context_length_exceeded" else None) from exc
    except StopAsyncIteration:
        raise APIError(500, "the engine produced no output", code="internal_error", type="server_error") from None


def _sse(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def _usage(delta: ChatDelta) -> dict:
    return {"prompt_tokens": delta.prompt_tokens, "completion_tokens": delta.completion_tokens,
            "total_tokens": delta.prompt_tokens + delta.completion_tokens}


def _call_json(call: ToolCall, index: int | None = None) -> dict:
    out = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return out if index is None else {"index": index, **out}


# ---- /v1/chat/completions -----------------------------------------------------------------------------
@router.post("/v1/chat/completions")
async def chat_completions(body: ChatBody, request: Request):
    if not body.messages:
        raise APIError(400, "messages must contain at least one message", param="messages")
    messages = tuple(_message(m, i) for i, m in enumerate(body.messages))
    tools = _tools(body.tools)
    choice = _tool_choice(body.tool_choice, tools)
    req = ChatRequest(messages=messages, tools=tools, tool_choice=choice,
                      json_schema=_response_format(body.response_format),
                      **_sampling(body, body.max_completion_tokens or body.max_tokens))
    engine = await _engine(request, body.model)
    if not engine.supports_vision and any(not isinstance(m.content, str) and
                                          any(isinstance(p, ImagePart) for p in m.content) for m in messages):
        raise APIError(400, f"model {engine.model_id!r} does not accept image input (it has no vision "
                            f"encoder); send text only, or use a vision model", param="messages",
                       code="image_input_not_supported")
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    stream = engine.stream(req)
    first = await _first(stream)
    if body.stream:
        usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_chat_sse(stream, first, rid, created, engine.model_id, usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    text, calls, last = [], [], first
    async with aclosing(stream):
        delta = first
        while True:
            text.append(delta.text)
            if delta.tool_call:
                calls.append(delta.tool_call)
            if delta.finish_reason is not None:
                last = delta
                break
            delta = await stream.__anext__()
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or (None if calls else "")}
    if calls:
        message["tool_calls"] = [_call_json(c) for c in calls]
    return JSONResponse({
        "id": rid, "object": "chat.completion", "created": created, "model": engine.model_id,
        "choices": [{"index": 0, "message": message, "finish_reason": last.finish_reason, "logprobs": None}],
        "usage": _usage(last), "system_fingerprint": None,
    })


async def _chat_sse(stream, first: ChatDelta, rid: str, created: int, model: str, usage: bool):
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None}

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    async with aclosing(stream):
        yield chunk({"role": "assistant", "content": ""})
        delta, n_calls = first, 0
        while True:
            if delta.text:
                yield chunk({"content": delta.text})
            if delta.tool_call:
                yield chunk({"tool_calls": [_call_json(delta.tool_call, n_calls)]})
                n_calls += 1
            if delta.finish_reason is not None:
                yield chunk({}, delta.finish_reason)
                if usage:
                    yield _sse({**base, "choices": [], "usage": _usage(delta)})
                break
            delta = await stream.__anext__()
    yield _sse("[DONE]")


# ---- /v1/completions ------------------------------------------------------------------------------------
@router.post("/v1/completions")
async def completions(body: CompletionBody, request: Request):
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1 or not isinstance(prompts[0], str) or not prompts[0]:
        raise APIError(400, "prompt must be one non-empty string", param="prompt")
    req = ChatRequest(messages=(ChatMessage("user", prompts[0]),), **_sampling(body, body.max_tokens))
    engine = await _engine(request, body.model)
    if not hasattr(engine, "stream_prompt"):
        raise APIError(400, f"model {engine.model_id!r} serves chat completions only", param="model")
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    stream = engine.stream_prompt(prompts[0], req)
    first = await _first(stream)

    def obj(text: str, finish: str | None) -> dict:
        return {"id": rid, "object": "text_completion", "created": created, "model": engine.model_id,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

    if body.stream:
        usage = bool((body.stream_options or {}).get("include_usage"))

        async def sse():
            async with aclosing(stream):
                delta = first
                while True:
                    if delta.text or delta.finish_reason:
                        yield _sse(obj(delta.text, delta.finish_reason))
                    if delta.finish_reason is not None:
                        if usage:
                            yield _sse({**obj("", None), "choices": [], "usage": _usage(delta)})
                        break
                    delta = await stream.__anext__()
            yield _sse("[DONE]")

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    parts, delta = [], first
    async with aclosing(stream):
        while True:
            parts.append(delta.text)
            if delta.finish_reason is not None:
                break
            delta = await stream.__anext__()
    return JSONResponse({**obj("".join(parts), delta.finish_reason), "usage": _usage(delta)})
