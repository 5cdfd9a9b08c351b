"""A graceful close sends everything the session said: `drain()` waits for the writer's send in progress,
not only for the queues (issue 16: the final `response.done` of a shutdown was lost when the socket closed
right after it had left the queue but not yet the writer)."""

from __future__ import annotations

import asyncio
import json

from realtime.events import ProtocolEvent, ResponseDone, ServerEvent, TextDelta
from realtime.host import RealtimeHost
from realtime.outbox import DROPPED_REMEMBERED, Outbox
from tests.realtime.fakes import FakeEngine, FakeModels, Script


def test_the_last_response_done_is_on_the_wire_before_close():
    async def scenario() -> list[ServerEvent]:
        sent: list[ServerEvent] = []

        async def slow_socket(event: ServerEvent) -> None:
            await asyncio.sleep(0.05)  # a write takes a while on the wire; the event counts once it is out
            sent.append(event)

        engine = FakeEngine(Script(tuple("word " for _ in range(200)), delay_s=0.02))
        models = FakeModels()
        host = RealtimeHost("sess_drain", models.vad(), None, models, engine, slow_socket)
        await host.start()
        await host.client_event(json.dumps({"type": "response.create"}))
        async with asyncio.timeout(10):
            while not any(isinstance(e, TextDelta) for e in sent):
                await asyncio.sleep(0.01)
        host.shutdown()  # the response in flight ends cancelled: its closing events, response.done last
        await host.drain(5.0)
        await host.close()
        return sent

    sent = asyncio.run(scenario())
    assert isinstance(sent[-1], ResponseDone), [e.type for e in sent[-3:]]
    assert sent[-1].status == "cancelled" and sent[-1].response.error["code"] == "server_shutdown"


def test_the_outbox_refuses_late_events_of_cancelled_responses_in_bounded_memory():
    async def scenario() -> Outbox:
        async def send(_event: ServerEvent) -> None:
            pass

        box = Outbox(send)
        for i in range(10 * DROPPED_REMEMBERED):  # a long session: many barge-ins
            box.drop(f"resp_{i}")
        box.put(ProtocolEvent("response.output_text.delta", response_id=f"resp_{10 * DROPPED_REMEMBERED - 1}"),
                urgent=False)
        return box

    box = asyncio.run(scenario())
    assert box.queued == 0 and box.dropped_events == 1  # the latest cancelled response is still refused
    assert len(box._dropped) == DROPPED_REMEMBERED  # and the session does not remember every one it had
