"""The chat engine interface every LLM backend implements (vLLM, the pure-torch engine, test doubles).

The realtime session and the OpenAI-compatible chat routes depend only on this file, so the engine can be
swapped without touching them. Cancellation is by closing the stream: `await stream.aclose()` (or leaving
an `async for` early) must stop generation within one decode step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Literal, Protocol, runtime_checkable


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call (OpenAI `tools[].function`)."""

    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True)
class ImagePart:
    """An image in a user message: a data: URL or raw bytes (no fetching of remote URLs)."""

    url: str


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str | tuple[str | ImagePart, ...] = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    #: "auto" | "none" | "required" | a tool name (forces that function)
    tool_choice: str = "auto"
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    #: the output must be one JSON value valid against this schema (``{"type": "object"}`` for OpenAI's
    #: ``response_format: json_object``); None = free text. Engines that constrain decoding enforce it.
    json_schema: dict | None = None


@dataclass(frozen=True)
class ChatDelta:
    """One streamed piece: text, or a complete tool call, or the finish reason (last delta)."""

    text: str = ""
    tool_call: ToolCall | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "cancelled"] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@runtime_checkable
class ChatEngine(Protocol):
    model_id: str
    supports_vision: bool

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """Yield deltas as tokens are decoded; the last delta carries `finish_reason`."""
        ...
