"""The llama.cpp :class:`ChatEngine` (``xllamacpp``): the packaged GGUF run as it is, quantised blocks and all.

``xllamacpp.Server`` is llama.cpp's own server engine in this process: ``n_parallel`` slots decoded together
(continuous batching), each slot keeping its KV cache between requests and a new request going to the slot
whose cached tokens share the most with its prompt (``cache_prompt``) — so a voice conversation, which
re-sends its history every turn, prefills only the new turn.

What stays ours, so the engines answer alike: the prompt is rendered and tokenized by
:func:`runtime.llm.prompt.build_prompt` and sent as *token ids* (llama.cpp never parses our prompt text,
so user text cannot smuggle in control tokens), and the generated text goes through our
:class:`runtime.llm.output.OutputParser` (stop strings, ``<tool_call>`` blocks, forced calls). llama.cpp's
completion stream carries text, not ids (it holds back a split UTF-8 character itself) and stops at the
model's end-of-turn tokens (``<|im_end|>``, ``<|endoftext|>``: the ones our tokenizer stops at).

Tools offered or a JSON ``response_format``: the request also carries its grammar
(:mod:`runtime.llm.tool_constraint`, llguidance's Lark with llama.cpp's own ``%json`` schema compiler) in
llama.cpp's ``grammar`` field, so the sampler can only produce plain text or a call valid against the tools'
schemas (or the JSON asked for). Under ``tool_choice: "auto"`` the request also asks for each token's top-k
probabilities (``n_probs``; measured 3% slower decoding) and a :class:`runtime.llm.tool_constraint.CallGate`
reads them: a call the model is unsure of (it would rather name a tool that is not offered, or it guesses the
arguments) is stopped before anything is sent, and the turn is decoded again under the ``text`` grammar (the
prompt is cached: only the few tokens of the dropped call are lost).

Threads: ``Server.handle_completions`` blocks until its request ends, calling back once per streamed chunk.
One worker thread per slot takes requests from a queue and makes that call; the callback turns each chunk
into :class:`ChatDelta` items on the request's ``asyncio.Queue`` (``call_soon_threadsafe``). The event loop
only awaits that queue. Closing the stream sets the request's cancel flag; the next callback (the next
token) answers "stop", and llama.cpp releases the slot.

The wheel is a generic x86-64 build: compiled for AVX2/FMA/F16C/BMI2 (``get_system_info()``), one
code path, no run-time dispatch to AVX-512; :func:`cpu_supported` checks those flags before anything
imports it (``runtime.llm.loader``), because a CPU without them would die of an illegal instruction.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from runtime.chat_api import ChatDelta, ChatRequest
from runtime.llm.chat_format import ChatFormat
from runtime.llm.output import OutputParser
from runtime.llm.tool_constraint import GATE_TOP_K, CallGate, OutputConstraint
from runtime.llm.queued_engine import QueuedChatEngine, QueuedJob, checked_sampling
from runtime.llm.prompt import ChatRequestError, PromptTooLong
from runtime.llm.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

#: CPU features the xllamacpp CPU wheel is compiled for (its ``get_system_info()``: AVX, AVX2, F16C, FMA, BMI2)
WHEEL_CPU_FLAGS = frozenset({"avx", "avx2", "f16c", "fma", "bmi2"})
#: host-memory cache of evicted slots' prompts (llama.cpp's default is 8 GiB)
PROMPT_CACHE_MIB = 256


def cpu_supported(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU runs the xllamacpp wheel (x86-64 with :data:`WHEEL_CPU_FLAGS`; True where unknown)."""
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if line.startswith("flags"):
                    return WHEEL_CPU_FLAGS <= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return True


@dataclass(kw_only=True)
class _Job(QueuedJob):
    body: dict                      # the llama.cpp request (sampling, limits) without the prompt
    max_tokens: int
    parser: OutputParser
    generated: int = 0
    any_call: bool = False
    done: bool = False
    #: ``tools`` requests: judges the call from the model's top-k probabilities (None: no gate)
    gate: CallGate | None = None
    #: the gate refused the call being written
    refused: bool = False
    #: text or a call has gone to the client
    sent: bool = False


class LlamaCppChatEngine(QueuedChatEngine):
    """:class:`runtime.chat_api.ChatEngine` over ``xllamacpp.Server`` on one GGUF file."""

    supports_vision = False

    def __init__(self, model_id: str, gguf: str | Path, tokenizer: TextTokenizer, fmt: ChatFormat, options,
                 threads: int | None = None, description: str = "") -> None:
        import xllamacpp

        self.model_id = model_id
        self.description = description
        self.tokenizer = tokenizer
        self.format = fmt
        #: ``slots`` (requests decoded together) and ``capacity`` (positions per request), as the torch engine's
        self.options = options
        self.capacity = options.capacity
        threads = threads or len(os.sched_getaffinity(0))
        params = xllamacpp.CommonParams()
        params.model.path = str(gguf)
        params.n_parallel = options.slots
        params.n_ctx = options.capacity * options.slots          # split evenly: `capacity` per slot
        params.fit_params = False                                # exactly the context asked for, no resizing
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
        # Threads sleep between graph ops instead of spinning: the cores are shared with ASR, TTS and the
        # other sessions, and spinning workers are what made llama.cpp collapse under load (RESULTS.md).
        params.cpuparams.poll = params.cpuparams_batch.poll = 0
        params.cache_ram_mib = PROMPT_CACHE_MIB
        params.ctx_shift = False                                 # a full context ends the request ("length")
        # llama.cpp always opens its HTTP server too (loopback, a random port): a random key nobody is told
        # shuts that door; our calls go straight to the handlers.
        params.api_keys = [secrets.token_urlsafe(32)]
        params.endpoint_slots = params.endpoint_metrics = params.endpoint_props = False
        params.ui = False
        params.n_threads_http = 1
        params.verbosity = -1 if not log.isEnabledFor(logging.DEBUG) else 3
        self.server = xllamacpp.Server(params)
        # Tool calls and JSON output are constrained by llguidance grammars (runtime.llm.tool_constraint); a
        # wheel built without llguidance answers json_schema_to_grammar in GBNF instead, and is left unconstrained.
        self.constrains_output = xllamacpp.json_schema_to_grammar("{}").startswith("%llguidance")
        if not self.constrains_output:
            log.warning("this xllamacpp build has no llguidance: tool calls and JSON output are not constrained")
        self.stats = {"requests": 0, "steps": 0, "tokens": 0, "prefill_tokens": 0, "reused_tokens": 0,
                      "refused_calls": 0}
        #: the request each worker (one per slot) is serving, None while it waits
        self._jobs: list[_Job | None] = [None] * options.slots
        self._queue: "queue.Queue[_Job | None]" = queue.Queue()
        self._closed = False
        self._workers = [threading.Thread(target=self._work, args=(i,), name=f"llm-{model_id}-{i}", daemon=True)
                         for i in range(options.slots)]
        for w in self._workers:
            w.start()

    # ---- public API (stream, stream_prompt: QueuedChatEngine) ----------------------------------
    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt that leaves room for one generated token."""
        return self.capacity - 4

    def live(self) -> list[int]:
        """The slots serving a request now (as the torch engine's ``scheduler.live()``)."""
        return [i for i, j in enumerate(self._jobs) if j is not None]

    def close(self) -> None:
        """Stop the workers (a request in flight stops at its next token) and let llama.cpp's server go."""
        self._closed = True
        for j in self._jobs:
            if j is not None:
                j.cancelled.set()
        for _ in self._workers:
            self._queue.put(None)
        for w in self._workers:
            w.join(timeout=5)
        self.server = None          # the last reference: its destructor stops llama.cpp's threads

    # ---- request -> job ----------------------------------------------------------------------------
    def _job(self, ids: list[int], request: ChatRequest, parser: OutputParser, prepare=None) -> _Job:
        params = checked_sampling(ids, request, self.max_prompt_tokens)  # (`prepare` is for images: none here)
        max_tokens = min(request.max_tokens, self.capacity - 3 - len(ids))
        # Temperature then top-p, nothing else (llama.cpp's defaults add top-k 40 and min-p 0.05): the
        # same distribution the torch engine samples. Stop strings stay with our parser.
        body = {"stream": True, "timings_per_token": True, "cache_prompt": True,
                "n_predict": max_tokens,
                "temperature": params.temperature, "top_p": params.top_p, "top_k": 0, "min_p": 0.0,
                "samplers": ["temperature", "top_p"], "repeat_penalty": 1.0}
        if request.seed is not None:
            body["seed"] = int(request.seed) & 0xFFFFFFFF
        gate = None
        if parser.constraint is not None:
            body["grammar"] = parser.constraint.lark()
            if parser.constraint.kind == "tools":
                body["n_probs"] = GATE_TOP_K            # the model's own probabilities, before the grammar
                gate = CallGate(tuple(t.name for t in parser.tools))
        return _Job(prompt=ids, body=body, max_tokens=max_tokens, parser=parser, gate=gate,
                    loop=asyncio.get_running_loop())

    def next_token_candidates(self, ids: list[int], k: int) -> list[tuple[str, int, float]]:
        """The `k` most likely tokens after `ids`, as (text, id, log-prob): one llama.cpp step, no sampling.
        Blocking (call it off the event loop); the prompt is cached like any request's."""
        chunks: list[dict] = []
        body = {"prompt": ids, "n_predict": 1, "n_probs": k, "stream": False, "cache_prompt": True,
                "temperature": 0.0, "post_sampling_probs": False}
        result = self.server.handle_completions(body, lambda chunk: chunks.append(chunk) and False)
        if isinstance(result, dict) and "error" in result:
            raise request_error(result["error"])
        content = chunks[-1]["choices"][0]["logprobs"]["content"] if chunks else []
        if not content:
            return []
        return [(c["token"], int(c["id"]), float(c["logprob"])) for c in content[0]["top_logprobs"]]

    # ---- the workers -------------------------------------------------------------------------------
    def _work(self, slot: int) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            self._jobs[slot] = job
            self.stats["requests"] += 1
            try:
                if not self._closed:
                    self._run(job)
            except Exception as exc:  # a failed request ends that request, never the worker
                log.exception("llama.cpp request failed")
                job.done = True
                job.send(exc)
            finally:
                self._jobs[slot] = None
                if self._closed and not job.done:
                    job.send(RuntimeError("the chat engine was closed"))

    def _run(self, job: _Job) -> None:
        state = {"timings": None}

        def on_chunk(chunk: dict) -> bool:
            """True = stop: llama.cpp then cancels the request and frees its slot."""
            if job.cancelled.is_set():
                return True
            try:
                if "error" in chunk:
                    job.done = True
                    job.send(request_error(chunk["error"]))
                    return True
                if state["timings"] is None and chunk.get("timings"):
                    state["timings"] = chunk["timings"]
                    self.stats["reused_tokens"] += int(chunk["timings"].get("cache_n", 0))
                    self.stats["prefill_tokens"] += int(chunk["timings"].get("prompt_n", 0))
                self.stats["steps"] += 1
                if job.gate is not None and self._refuse(job, chunk):
                    return True
                self._chunk(job, chunk)
            except Exception as exc:    # xllamacpp would swallow it and just stop: hand it to the request
                log.exception("llama.cpp chunk could not be handled")
                job.done = True
                job.send(exc)
            return job.done

        result = self.server.handle_completions({**job.body, "prompt": job.prompt}, on_chunk)
        if (isinstance(result, dict) and "error" in result and not job.done and "grammar" in job.body
                and job.generated == 0):
            # A schema llguidance cannot compile (a keyword it does not know): answer unconstrained, as before.
            log.warning("llama.cpp refused the output grammar (%s); decoding this request unconstrained",
                        result["error"])
            job.body = {k: v for k, v in job.body.items() if k != "grammar"}
            result = self.server.handle_completions({**job.body, "prompt": job.prompt}, on_chunk)
        if job.refused and not job.done and not job.cancelled.is_set():
            result = self._answer_in_text(job, on_chunk)
        if isinstance(result, dict) and "error" in result and not job.done:
            job.done = True
            job.send(request_error(result["error"]))
        if not job.done and not job.cancelled.is_set():
            # llama.cpp ended the request without a final chunk we recognised: end it ourselves.
            self._chunk(job, {"choices": [{"text": "", "finish_reason": "length"}]})

    def _refuse(self, job: _Job, chunk: dict) -> bool:
        """Feed the chunk's tokens and their top-k probabilities to the job's gate; True = the call is refused."""
        choice = (chunk.get("choices") or [{}])[0]
        for entry in (choice.get("logprobs") or {}).get("content") or ():
            top = [(t.get("token", ""), math.exp(t["logprob"])) for t in entry.get("top_logprobs", ())]
            if job.gate.feed(entry.get("token", ""), top) is False:
                job.refused = True
                self.stats["refused_calls"] += 1
                log.info("tool call refused: the model's confidence in it is %.2f (< %.2f); answering in text",
                         job.gate.prob, job.gate.min_prob)
                return True
        return False

    def _answer_in_text(self, job: _Job, on_chunk):
        """After a refused call: decode the turn again as text (no call). If text already went out, that text is
        the answer and the request ends there."""
        if job.sent:
            self._chunk(job, {"choices": [{"text": "", "finish_reason": "stop"}]})
            return None
        old = job.parser
        job.parser = OutputParser(stop=old.stop, tools=old.tools, parse_tools=old.parse_tools)
        job.parser.constraint = OutputConstraint("text", old.constraint.schema)
        job.gate, job.generated = None, 0
        job.body = {k: v for k, v in job.body.items() if k != "n_probs"}
        job.body["grammar"] = job.parser.constraint.lark()
        return self.server.handle_completions({**job.body, "prompt": job.prompt}, on_chunk)

    def _chunk(self, job: _Job, chunk: dict) -> None:
        """One streamed llama.cpp chunk (OpenAI ``text_completion`` shape: text, no ids) -> deltas; finish if due.

        Token counts come from ``timings.predicted_n`` (cumulative); llama.cpp counts the end-of-turn token it
        stopped at, the torch engine does not, so a ``stop`` from llama.cpp counts one fewer."""
        choice = (chunk.get("choices") or [{}])[0]
        reason = choice.get("finish_reason")
        n = int((chunk.get("timings") or {}).get("predicted_n", job.generated))
        if reason == "stop":
            n -= 1
        n = min(max(n, job.generated), job.max_tokens)
        self.stats["tokens"] += n - job.generated
        job.generated = n
        parsed = job.parser.feed(choice.get("text") or "")
        text, calls = parsed.text, list(parsed.calls)
        finish = "stop" if parsed.done else ({"length": "length"}.get(reason, "stop") if reason else None)
        if finish is not None:
            end = job.parser.finish()
            text += end.text
            calls += end.calls
        if text:
            job.sent = True
            job.send(ChatDelta(text=text))
        for c in calls:
            job.any_call = job.sent = True
            job.send(ChatDelta(tool_call=c))
        if finish is not None:
            job.done = True
            job.send(ChatDelta(finish_reason="tool_calls" if job.any_call else finish,
                               prompt_tokens=len(job.prompt), completion_tokens=job.generated))


def request_error(error) -> Exception:
    """A llama.cpp error object -> the exception the torch engine raises for the same fault."""
    if not isinstance(error, dict):
        return RuntimeError(f"llama.cpp: {error}")
    message = f"{error.get('message', 'request failed')}"
    kind = error.get("type", "")
    if kind == "exceed_context_size_error":
        return PromptTooLong(message)
    if kind in ("invalid_request_error", "not_supported_error") or error.get("code") == 400:
        return ChatRequestError(message)
    return RuntimeError(f"llama.cpp: {message}")
