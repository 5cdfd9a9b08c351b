"""The pure-torch :class:`ChatEngine`: one model, a few batch slots, one scheduler thread.

Requests are *batched*, not serialised: each request takes a slot of a :class:`runtime.engine.DecodeEngine`
(continuous batching — a request joins between decode steps and leaves when done), and one background
thread runs the loop ``admit (prefill new requests) → step every live slot → hand out tokens``. The
parts are separate: :class:`runtime.llm.scheduler.SlotScheduler` decides admission (queue, slot choice,
cancel), the ``DecodeEngine`` keeps the KV bookkeeping (``reset(slot, keep=n)``, ``park``, ``attend_over``)
and :class:`runtime.llm.output_stream.OutputStream` turns tokens into text and tool calls; this class wires
them. The event loop never runs a model call: :meth:`TorchChatEngine.stream` only waits on an
``asyncio.Queue`` that the thread fills. Closing the stream (``aclose()``, leaving ``async for``, a client disconnect) sets
the request's cancel flag; the thread frees the slot before its next step.

Two things are applied from outside the runtime's model, without changing it:

* *Length buckets*: the KV cache is allocated once at ``capacity``, but each call sees a view cut to the
  longest live slot rounded up to :data:`BUCKET` (``DecodeEngine.attend_over``), so attention costs what
  the conversation needs.
* *Prefix reuse*: a finished slot keeps its cache (``DecodeEngine.park``); a new request goes to the free
  slot that shares the longest token prefix with its prompt (the scheduler) and only the rest is prefilled (a voice conversation re-sends
  its history every turn, so this is what keeps time-to-first-token flat as the conversation grows).
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from runtime.chat_api import ChatDelta, ChatRequest
from runtime.engine import DecodeEngine
from runtime.llm.chat_format import ChatFormat
from runtime.llm.output import OutputParser
from runtime.llm.queued_engine import QueuedChatEngine, QueuedJob, checked_sampling
from runtime.llm.output_stream import OutputStream
from runtime.llm import tool_masks
from runtime.llm.tokenizer import TextTokenizer
from runtime.llm.tool_masks import SlotGrammars
from runtime.llm.scheduler import Admission, SlotScheduler
from runtime.sampling import SamplingParams

log = logging.getLogger(__name__)

BUCKET = 256


@dataclass(frozen=True)
class EngineOptions:
    """Service-level knobs of one engine (bounded; a bad combination says how to fix it)."""

    #: concurrent requests decoded together (batch slots)
    slots: int = 2
    #: KV positions per slot: prompt + completion must fit
    capacity: int = 4096
    #: MTP drafts per step (0 = plain decoding; needs a model with trained MTP modules)
    n_draft: int = 0
    #: prompt positions per prefill forward (bounds peak memory of long prompts)
    prefill_chunk: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.slots <= 64:
            raise ValueError("slots must be between 1 and 64")
        if not 256 <= self.capacity <= 131072:
            raise ValueError("capacity must be between 256 and 131072 positions")
        if not 0 <= self.n_draft <= 8:
            raise ValueError("n_draft must be between 0 and 8")
        if self.prefill_chunk < 16:
            raise ValueError("prefill_chunk must be at least 16")


@dataclass(kw_only=True)
class _Job(QueuedJob):
    params: SamplingParams
    output: OutputStream
    prepare: Callable[[], None] | None = None      # runs in the thread just before prefill (VLM images)
    slot: int = -1
    t_submit: float = field(default_factory=time.perf_counter)


class TorchChatEngine(QueuedChatEngine):
    """:class:`runtime.chat_api.ChatEngine` over a :class:`runtime.model.AudioLM`-shaped decoder."""

    def __init__(self, model, tokenizer: TextTokenizer, fmt: ChatFormat, model_id: str,
                 options: EngineOptions = EngineOptions(), vision=None, description: str = "") -> None:
        self.model_id = model_id
        self.description = description
        self.model = model
        self.tokenizer = tokenizer
        self.format = fmt
        self.options = options
        self.vision = vision
        self.supports_vision = vision is not None
        cap = min(options.capacity, model.config.max_seq_len)
        self.engine = DecodeEngine(model, batch=options.slots, capacity=cap, n_draft=options.n_draft,
                                   seed=options.seed)
        #: tool calls / JSON output decoded under their grammar (runtime.llm.tool_masks): plain decoding with
        #: the llguidance package installed; otherwise left to the model and the parser, as before
        self.grammars: SlotGrammars | None = None
        if options.n_draft == 0 and tool_masks.available():
            try:
                self.grammars = SlotGrammars(tokenizer, options.slots)
            except Exception:
                log.exception("llguidance could not load this tokenizer; tool calls and JSON are not constrained")
            else:
                model.logits = self.grammars.wrap_logits(model.logits)
        self.constrains_output = self.grammars is not None
        self.scheduler: SlotScheduler[_Job] = SlotScheduler(options.slots, self._reusable)
        self._queue: "queue.Queue[_Job | None]" = queue.Queue()
        self._closed = False
        self.stats = {"requests": 0, "steps": 0, "tokens": 0, "prefill_tokens": 0, "reused_tokens": 0}
        self._thread = threading.Thread(target=self._run, name=f"llm-{model_id}", daemon=True)
        self._thread.start()

    # ---- public API (stream, stream_prompt: QueuedChatEngine) ----------------------------------
    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt that leaves room for one generated token (and the drafts' verify window)."""
        return self.engine.capacity - 2 * self.options.n_draft - 4

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)

    # ---- request -> job ----------------------------------------------------------------------------
    def _job(self, ids: list[int], request: ChatRequest, parser: OutputParser,
             prepare: Callable[[], None] | None = None) -> _Job:
        params = checked_sampling(ids, request, self.max_prompt_tokens)
        room = self.engine.capacity - 2 * self.options.n_draft - 3 - len(ids)
        loop = asyncio.get_running_loop()
        output = OutputStream(self.tokenizer.detokenizer(), parser, self.tokenizer.stop_ids,
                              max_tokens=min(request.max_tokens, room))
        return _Job(prompt=ids, params=params, output=output, loop=loop, prepare=prepare)

    # ---- the engine thread: admit -> step -> hand out ---------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        sched = self.scheduler
        while not self._closed:
            if not self._collect(block=sched.idle):
                break
            while (admission := sched.admit()) is not None:
                self._prefill(admission)
            try:
                self._step()
            except Exception as exc:  # a failed step ends the requests in it, never the thread
                log.exception("chat engine step failed")
                for slot in sched.live():
                    sched.running[slot].send(exc)
                    self._release(slot, keep_cache=False)
        gone = RuntimeError("the chat engine was closed")
        for j in sched.drain():
            j.send(gone)

    def _collect(self, block: bool) -> bool:
        """Move newly submitted requests to the scheduler; waits for one only when ``block`` (idle).
        False once :meth:`close` was called."""
        try:
            item = self._queue.get(timeout=None if block else 0)
            while item is not None:
                self.scheduler.submit(item)
                item = self._queue.get_nowait()
            return not self._closed
        except queue.Empty:
            return True

    def _reusable(self, prompt: Sequence[int]) -> int:
        """Prompt positions whose KV depends on the token ids alone (a VLM's image rows do not);
        the last prompt token is always fed again so that the prefill samples the first token."""
        limit = len(prompt) - 1
        if self.vision is not None:
            limit = min(limit, next((i for i, t in enumerate(prompt) if t >= self.vision.image_offset), limit))
        return max(limit, 0)

    def _prefill(self, admission: Admission[_Job]) -> None:
        job, slot, reuse = admission.job, admission.slot, admission.reuse
        job.slot = slot
        self.stats["requests"] += 1
        eng = self.engine
        eng.reset(slot, job.params, keep=reuse)
        self.stats["reused_tokens"] += reuse
        self.stats["prefill_tokens"] += len(job.prompt) - reuse
        try:
            if job.prepare is not None:
                job.prepare()
            self._set_bucket(extra=len(job.prompt) + 1)
            if self.grammars is not None:
                self.grammars.start(slot, job.output.parser.constraint)
                self.grammars.prefilling = slot
            first = eng.extend(slot, job.prompt[reuse:], chunk=self.options.prefill_chunk)
        except Exception as exc:
            log.exception("prefill failed")
            job.send(exc)
            self._release(slot, keep_cache=False)
            return
        finally:
            if self.grammars is not None:
                self.grammars.prefilling = None
            if self.vision is not None:
                self.vision.clear()
        self._emit(job, [first])

    def _step(self) -> None:
        for s in self.scheduler.cancelled():
            self._finish(s, "cancelled")
        live = self.scheduler.live()
        if not live:
            return
        eng = self.engine
        active = torch.zeros(eng.batch, dtype=torch.bool)
        active[live] = True
        self._set_bucket()
        new, num = eng.step(active)
        new_l, num_l = new.tolist(), num.tolist()
        eng.commit(num_l)
        self.stats["steps"] += 1
        for s in live:
            self._emit(self.scheduler.running[s], new_l[s][:num_l[s]])

    def _emit(self, job: _Job, tokens: Sequence[int]) -> None:
        """Hand ``tokens`` (just decoded for ``job``) to its output stream and its client; finish if due."""
        if self.grammars is not None:
            self.grammars.advance(job.slot, tokens)     # before the next step computes this slot's mask
        emission = job.output.push(tokens)
        self.stats["tokens"] += emission.used
        if emission.text:
            job.send(ChatDelta(text=emission.text))
        for c in emission.calls:
            job.send(ChatDelta(tool_call=c))
        if emission.finish is not None:
            self._finish(job.slot, emission.finish)

    def _finish(self, slot: int, reason: str) -> None:
        job = self.scheduler.running[slot]
        job.send(ChatDelta(finish_reason=reason, prompt_tokens=len(job.prompt),
                           completion_tokens=job.output.generated))
        self._release(slot, keep_cache=True)

    def _release(self, slot: int, keep_cache: bool) -> None:
        eng = self.engine
        if self.grammars is not None:
            self.grammars.stop(slot)
        if keep_cache:
            # Parked at length 0 with greedy params (bucket views never need its old positions, and a
            # finished sampling request does not keep the batch on the sampling path); the cache stays.
            eng.park(slot)
            self.scheduler.release(slot, eng.cached_tokens(slot))
        else:
            eng.reset(slot)
            self.scheduler.release(slot, [])

    def _set_bucket(self, extra: int = 0) -> None:
        """Let the engine attend over just enough positions for every live slot (see module doc)."""
        eng, k = self.engine, self.options.n_draft
        need = max([eng.slots[s].length + 2 * k + 2 for s in self.scheduler.live()] + [extra + 2 * k + 2])
        eng.attend_over(min(eng.capacity, -(-need // BUCKET) * BUCKET))
