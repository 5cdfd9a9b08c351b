"""The background tasks of one session (a realtime runner's writer and responses, a WebRTC call's pumps):
named for logs, forgotten once done, a failure logged rather than lost, and all of them cancelled and
awaited when the session closes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator

log = logging.getLogger(__name__)


class TaskSet:
    """Tasks named `{prefix}:{what}`; `owner` is the id that starts their log lines (`[owner] ...`)."""

    def __init__(self, prefix: str, owner: str) -> None:
        self.prefix, self.owner = prefix, owner
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine, what: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"{self.prefix}:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("[%s] task %s failed", self.owner, task.get_name(), exc_info=task.exception())

    async def cancel_all(self) -> None:
        """Cancel every task but the caller's own (a task may close its session) and wait for them to end."""
        current = asyncio.current_task()
        others = [t for t in self._tasks if t is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task]:
        return iter(list(self._tasks))
