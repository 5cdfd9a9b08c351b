"""Bridge blocking model generators (Piper sentences, Whisper segments) into asyncio.

`iterate_in_thread` runs a generator on the model thread pool and hands items to the event loop through a
bounded queue. If the consumer goes away (client disconnect, cancel), the producer sees the stop flag and
ends after its current item, so no synthesis keeps burning CPU for a socket that is gone.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Executor
from typing import AsyncIterator, Callable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


async def iterate_in_thread(executor: Executor, make: Callable[[], Iterator[T]], maxsize: int = 4) -> AsyncIterator[T]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=maxsize)
    stop = threading.Event()

    def put(item) -> None:
        # Blocks the producer thread while the queue is full (backpressure), wakes up on stop.
        fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while not stop.is_set():
            try:
                fut.result(timeout=0.1)
                return
            except TimeoutError:
                continue
        fut.cancel()

    def produce() -> None:
        try:
            for item in make():
                if stop.is_set():
                    return
                put(item)
        except BaseException as exc:  # delivered to the consumer, re-raised there
            put(_Failure(exc))
        finally:
            if not stop.is_set():
                put(_DONE)

    producer = loop.run_in_executor(executor, produce)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        # Drain so a producer blocked on put() can finish; do not wait for the current item.
        while not queue.empty():
            queue.get_nowait()
        producer.add_done_callback(lambda f: f.exception())


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc
