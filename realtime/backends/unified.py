"""The unified backend: turns become audio ids as they are spoken, the audio LLM answers in audio ids, the
streaming vocoder speaks them (`realtime.unified_pipeline`, `realtime.unified_response`).

The answer leaves as `AudioChunk`s through the runner's shared playout. The decode thread may run
`lead_ms + ahead_ms` of audio ahead of what has been played: each `Played` the runner sends back moves that
window on, and names the assistant item, whose ids (what the listener heard of them) the next prompt keeps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from realtime.backends.base import AudioChunk, Finished, Played, ResponseRequest, ResponseStream
from realtime.pipeline import PipelineOptions
from realtime.session import RealtimeSession, Speculate, Transcribe
from realtime.unified_pipeline import UnifiedSession, UnifiedStack
from realtime.unified_response import UnifiedTurnStats, _AudioChannel, decode_answer
from runtime.sampling import SamplingParams
from voxcore.interleave import GROUP_SIZE

log = logging.getLogger(__name__)


class UnifiedBackend:
    """One session's unified work over the process's `UnifiedStack` (`load` returns it, loading on first use)."""

    def __init__(self, session_id: str, load: Callable[[], UnifiedStack], options: PipelineOptions):
        self.id, self.options = session_id, options
        self.unified = UnifiedSession(session_id, load)

    def start(self) -> None:
        self.unified.start()  # no chat engine on this path: load the models instead

    def close(self) -> None:
        self.unified.close()

    # ---- turns ---------------------------------------------------------------------------------------
    def audio_appended(self, session: RealtimeSession) -> None:
        self.unified.audio_appended(session)  # the user's turn is encoded while it is spoken

    def speculate(self, cmd: Speculate) -> None:
        pass  # the encoder already follows the turn as it is spoken

    def transcribe(self, cmd: Transcribe, session: RealtimeSession) -> asyncio.Future[str]:
        self.unified.forget({item.id for item in session.conversation.items})  # deleted or dropped items
        return self.unified.transcribe(cmd, session)  # the turn becomes audio ids, not text

    # ---- responses -----------------------------------------------------------------------------------
    async def respond(self, request: ResponseRequest) -> ResponseStream:
        if not request.options.audio_out:
            yield Finished.failed("audio_only", "the unified pipeline answers in audio only: request output "
                                                "modalities [\"audio\"]")
            return
        try:
            stack = await self.unified.stack()
        except Exception as exc:
            log.exception("[%s] the unified models could not be loaded", self.id)
            yield Finished.failed("models_unavailable",
                                  f"the unified models could not be loaded: {type(exc).__name__}: {exc}")
            return
        opts = stack.options
        client_cap = request.options.max_tokens // GROUP_SIZE * GROUP_SIZE
        max_new = min(opts.max_audio_tokens, client_cap)
        prompt = self.unified.prompt(request.context, stack, max_new)
        stats = UnifiedTurnStats(n_draft=opts.n_draft, sample_rate=stack.sample_rate, prompt_tokens=len(prompt))
        self.unified.record(request.response_id, stats)
        if max_new == 0:
            stats.finish = "length"
        else:
            loop = asyncio.get_running_loop()
            ahead = (self.options.lead_ms + opts.ahead_ms) * stack.sample_rate // 1000
            channel = _AudioChannel(loop, ahead)
            params = SamplingParams(temperature=request.options.temperature)
            generated: list[int] = []
            worker = loop.run_in_executor(self.unified.decode_pool, decode_answer, self.unified, stack, prompt,
                                          max_new, params, self.unified.next_seed(stack), channel, generated, stats)
            item_id: str | None = None
            try:
                while (pcm := await channel.queue.get()) is not None:
                    played = yield AudioChunk(pcm, stack.sample_rate)
                    if isinstance(played, Played) and played.item_id is not None:
                        item_id = played.item_id
                    channel.sent(len(pcm))
                await worker  # raises what the decode thread raised
            finally:
                channel.stop()
                if not worker.done():
                    await asyncio.wait([worker])
                if item_id is not None:  # what the next prompt keeps of this answer (its heard part)
                    self.unified.replies[item_id] = list(generated)
        usage = (stats.prompt_tokens, stats.audio_tokens)
        if stats.finish == "length" and client_cap < opts.max_audio_tokens:  # the client's max_output_tokens
            yield Finished("incomplete", reason="max_output_tokens", usage=usage)
        else:
            yield Finished("completed", usage=usage)
