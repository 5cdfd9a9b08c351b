"""The Step-Audio 2 backend: the user's audio goes into the model as audio-encoder rows, the model answers in the
1:4 text:audio interleave, token2wav speaks the codes as they come (`realtime.step_audio2_stack`).

Per session: the committed turns' audio (16 kHz, by item id), the ids of past answers (what the listener heard of
them goes back into the next prompt, SPEC2 §2 TA4), one decode thread. A response is one slot of the stack's shared
loop; the decode thread turns its ids into transcript deltas (text side) and PCM (audio side, streamed through the
session's own token2wav state) and hands them to the event loop, `lead_ms + ahead_ms` of audio ahead of the
listener at most (`realtime.unified_response._AudioChannel`, the unified path's back-pressure).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from realtime.backends.base import AudioChunk, Finished, Played, ResponseRequest, ResponseStream, TextDelta
from realtime.items import Item
from realtime.pipeline import PipelineOptions
from realtime.session import RealtimeSession, Speculate, Transcribe
from realtime.step_audio2_stack import StepAudio2Stack
from realtime.unified_response import _AudioChannel, _Stopped
from runtime.sampling import SamplingParams
from runtime.step_audio2.prompt import chat_prompt
from runtime.step_audio2.tokens import TOKEN_CONTENTS

log = logging.getLogger(__name__)
PLACEHOLDER = "[step-audio 2: the turn is read as audio; no text transcript]"
AHEAD_MS = 1000


@dataclass
class StepAudio2TurnStats:
    prompt_tokens: int = 0
    output_ids: int = 0
    audio_codes: int = 0
    audio_samples: int = 0
    first_audio_s: float | None = None  # response start → first PCM handed over
    finish: str = ""


class StepAudio2Backend:
    """One session's Step-Audio 2 work over the process's stack (`load` returns it, loading on first use)."""

    def __init__(self, session_id: str, load: Callable[[], StepAudio2Stack], options: PipelineOptions):
        self.id, self.options, self._load = session_id, options, load
        self.turns: dict[str, np.ndarray] = {}  # user item id -> its audio (16 kHz float32)
        self.replies: dict[str, list[int]] = {}  # assistant item id -> the answer's generated ids
        self.decode_pool = ThreadPoolExecutor(1, thread_name_prefix=f"sa2-{session_id[-6:]}")
        self.stats: dict[str, StepAudio2TurnStats] = {}
        self.responses = 0

    def start(self) -> None:
        self.decode_pool.submit(self._load)  # begin loading what the first answer needs

    def close(self) -> None:
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    def audio_appended(self, session: RealtimeSession) -> None:
        pass  # the encoder reads the whole turn at the response (its rows enter the prompt in one prefill)

    def speculate(self, cmd: Speculate) -> None:
        pass

    def transcribe(self, cmd: Transcribe, session: RealtimeSession) -> asyncio.Future[str]:
        present = {item.id for item in session.conversation.items} | {cmd.item_id}
        for store in (self.turns, self.replies):
            for gone in [i for i in store if i not in present]:
                del store[gone]
        self.turns[cmd.item_id] = np.asarray(cmd.audio, np.float32)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        fut.set_result(PLACEHOLDER)
        return fut

    # ---- the prompt --------------------------------------------------------------------------------------
    def messages(self, request: ResponseRequest, stack: StepAudio2Stack) -> list[dict]:
        msgs: list[dict] = []
        if request.options.instructions:
            msgs.append({"role": "system", "content": request.options.instructions})
        for item in request.context:
            msg = self._message(item, stack)
            if msg is not None:
                msgs.append(msg)
        msgs.append({"role": "assistant", "content": TOKEN_CONTENTS["tts_start"], "eot": False})
        return msgs

    def _message(self, item: Item, stack: StepAudio2Stack) -> dict | None:
        if item.type != "message":
            return None
        if item.role == "user":
            content: list[dict] = []
            if item.id in self.turns:
                content.append({"type": "audio", "audio": torch.from_numpy(self.turns[item.id])})
            text = " ".join(c.text or "" for c in item.content if c.type == "input_text").strip()
            if text:
                content.append({"type": "text", "text": text})
            return {"role": "user", "content": content} if content else None
        if item.role == "assistant" and item.id in self.replies:
            # What the listener heard: 4 codes are 160 ms; keep whole 5-id periods up to the heard audio.
            heard_ms = next((c.audio_ms for c in item.content if c.type == "audio"), 0.0)
            periods = int(heard_ms / 160.0 + 1e-6)
            ids = self.replies[item.id][:5 * periods]
            sp = stack.special
            return {"role": "assistant", "content": [{"type": "token", "token": [sp.tts_start, *ids, sp.tts_end]}]}
        if item.role in ("assistant", "system"):
            text = item.text_for_model().strip()
            return {"role": item.role, "content": text} if text else None
        return None

    # ---- a response ----------------------------------------------------------------------------------------
    async def respond(self, request: ResponseRequest) -> ResponseStream:
        if not request.options.audio_out:
            yield Finished.failed("audio_only", "the step-audio pipeline answers in speech: request output "
                                                "modalities [\"audio\"]")
            return
        loop = asyncio.get_running_loop()
        try:
            stack = await loop.run_in_executor(self.decode_pool, self._load)
        except Exception as exc:
            log.exception("[%s] the Step-Audio 2 models could not be loaded", self.id)
            yield Finished.failed("models_unavailable", f"the Step-Audio 2 models could not be loaded: "
                                                        f"{type(exc).__name__}: {exc}")
            return
        stats = StepAudio2TurnStats()
        self.stats[request.response_id] = stats
        ahead = (self.options.lead_ms + AHEAD_MS) * stack.sample_rate // 1000
        channel = _AudioChannel(loop, ahead)
        texts: asyncio.Queue[str] = asyncio.Queue()
        generated: list[int] = []
        params = SamplingParams(temperature=request.options.temperature)
        self.responses += 1
        seed = self.responses
        max_new = min(stack.options.max_spoken_ids, max(5, request.options.max_tokens))
        worker = loop.run_in_executor(self.decode_pool, self._decode, stack, self.messages(request, stack), params,
                                      max_new, seed, channel, texts, generated, stats)
        item_id: str | None = None
        try:
            while (pcm := await channel.queue.get()) is not None:
                while not texts.empty():
                    yield TextDelta(texts.get_nowait())
                played = yield AudioChunk(pcm, stack.sample_rate)
                if isinstance(played, Played) and played.item_id is not None:
                    item_id = played.item_id
                channel.sent(len(pcm))
            await worker
            while not texts.empty():
                yield TextDelta(texts.get_nowait())
        except Exception as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.exception("[%s] Step-Audio 2 response failed", self.id)
            yield Finished.failed("generation_failed", f"{type(exc).__name__}: {exc}")
            return
        finally:
            channel.stop()
            if not worker.done():
                await asyncio.wait([worker])
            if item_id is not None:
                self.replies[item_id] = list(generated)
        usage = (stats.prompt_tokens, stats.output_ids)
        if stats.finish == "length" and max_new < stack.options.max_spoken_ids:
            yield Finished("incomplete", reason="max_output_tokens", usage=usage)
        else:
            yield Finished("completed", usage=usage)

    def _decode(self, stack: StepAudio2Stack, messages: list[dict], params: SamplingParams, max_new: int, seed: int,
                channel: _AudioChannel, texts: asyncio.Queue, generated: list[int],
                stats: StepAudio2TurnStats) -> None:
        """Decode thread: the prompt (encoder rows) is built here, the answer runs in the stack's loop, and its ids
        become transcript text and streamed PCM."""
        t0 = time.perf_counter()
        sp = stack.special
        arrivals: queue.SimpleQueue[list[int] | str] = queue.SimpleQueue()
        prompt = chat_prompt(messages, stack.text)
        stats.prompt_tokens = int(prompt.ids.shape[1])

        def may_run() -> bool:
            if channel.stopped:  # cancelled while paused: end it, or this thread would wait for ids forever
                gen.cancel()
                return False
            return channel.produced - channel.consumed <= channel.ahead and arrivals.qsize() < 4

        gen = stack.submit(prompt, spoken=True, on_tokens=arrivals.put, on_finish=arrivals.put, params=params,
                           max_new=max_new, may_run=may_run, seed=seed)
        channel.on_consumed = stack.loop.wake
        speech = stack.speech_stream()
        spoken_text: list[int] = []
        said = ""

        def emit(pcm: np.ndarray) -> None:
            if len(pcm):
                if stats.first_audio_s is None:
                    stats.first_audio_s = time.perf_counter() - t0
                stats.audio_samples += len(pcm)
                channel.put(pcm)

        try:
            while not isinstance(item := arrivals.get(), str):
                channel.check()
                stack.loop.wake()
                generated.extend(t for t in item if t not in (sp.eot, sp.tts_end))
                stats.output_ids = len(generated)
                spoken_text += [t for t in item if sp.is_text(t)]
                text = stack.text.decode(spoken_text)
                if len(text) > len(said) and not text.endswith("\ufffd"):  # whole characters only
                    channel.loop.call_soon_threadsafe(texts.put_nowait, text[len(said):])
                    said = text
                codes = [t - sp.audio_first for t in item if sp.is_audio(t)]
                stats.audio_codes += len(codes)
                for pcm in speech.push(codes):
                    emit(pcm)
            if item == "error":
                raise RuntimeError("the shared decode loop failed on this answer (see the log)")
            stats.finish = item
            if item != "cancelled":
                emit(speech.finish())
        except _Stopped:
            stats.finish = "cancelled"
        finally:
            gen.cancel()
            stack.loop.wake()
            channel.close()
