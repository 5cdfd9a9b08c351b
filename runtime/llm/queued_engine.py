"""What every threaded :class:`runtime.chat_api.ChatEngine` shares: a request becomes a job on a thread-side
queue, the engine's own thread(s) hand its deltas back to the event loop, and the loop only awaits them.

:class:`QueuedChatEngine` is the public half (``stream``, ``stream_prompt``, the request checks); an engine
(torch, llama.cpp) adds how a job is built (``_job``) and run (its threads). The event loop never renders,
tokenizes or decodes: those run in a worker thread or the engine's own.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from runtime.chat_api import ChatDelta, ChatRequest
from runtime.llm.output import OutputParser
from runtime.llm.prompt import ChatRequestError, build_prompt, check_prompt_tokens, encode_raw_prompt
from runtime.sampling import SamplingParams


@dataclass(kw_only=True)
class QueuedJob:
    """One request in flight: the engine's thread sends to ``out`` through ``loop``; ``cancelled`` is set when the
    caller stops listening (the thread drops the request at its next token)."""

    prompt: list[int]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:                       # the loop is gone: nobody is listening
            self.cancelled.set()


def checked_sampling(ids: list[int], request: ChatRequest, max_prompt_tokens: int) -> SamplingParams:
    """The request's sampling parameters, once its prompt length and limits are known to be servable."""
    check_prompt_tokens(len(ids), max_prompt_tokens)
    if request.max_tokens < 1:
        raise ChatRequestError("max_tokens must be at least 1")
    try:
        return SamplingParams(temperature=float(request.temperature), top_p=float(request.top_p))
    except ValueError as exc:
        raise ChatRequestError(str(exc)) from None


class QueuedChatEngine:
    """Subclasses set ``format``, ``tokenizer``, ``model_id``, ``vision`` (or None), ``_queue`` (a
    ``queue.Queue`` their threads take jobs from), ``_closed``, and implement ``max_prompt_tokens`` and
    ``_job(ids, request, parser, prepare)``."""

    vision = None
    #: whether the engine decodes under the request's grammar (``OutputParser.constraint``, see
    #: :mod:`runtime.llm.tool_constraint`); False = tool calls and JSON are left to the model and the parser
    constrains_output = False
    _queue: "queue.Queue"
    _closed: bool

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """Yield text / tool-call deltas, then one delta with ``finish_reason`` and token counts.
        The prompt is rendered, tokenized and its images decoded in a worker thread: the loop is for I/O."""
        ids, parser, prepare = await asyncio.to_thread(build_prompt, request, self.format, self.tokenizer,
                                                       self.model_id, self.vision,
                                                       max_prompt_tokens=self.max_prompt_tokens,
                                                       constrain=self.constrains_output)
        # aclosing: closing this stream closes the job's at once (its `finally` cancels the job), not when the
        # garbage collector gets to it — a reference cycle can keep a suspended generator alive for seconds.
        async with aclosing(self._consume(self._job(ids, request, parser, prepare))) as deltas:
            async for delta in deltas:
                yield delta

    async def stream_prompt(self, prompt: str, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """Raw completion of ``prompt`` (``/v1/completions``); messages/tools of ``request`` are ignored."""
        ids = await asyncio.to_thread(encode_raw_prompt, prompt, self.tokenizer, self.max_prompt_tokens)
        async with aclosing(self._consume(self._job(ids, request, OutputParser(stop=request.stop)))) as deltas:
            async for delta in deltas:
                yield delta

    def _job(self, ids: list[int], request: ChatRequest, parser: OutputParser,
             prepare: Callable[[], None] | None = None) -> QueuedJob:
        raise NotImplementedError

    async def _consume(self, job: QueuedJob) -> AsyncIterator[ChatDelta]:
        if self._closed:
            raise RuntimeError("the chat engine is closed")
        self._queue.put(job)
        try:
            while True:
                item = await job.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled.set()
