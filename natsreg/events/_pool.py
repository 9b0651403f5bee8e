"""A bounded pool of worker tasks for the events of one balanced handler.

A task per event cost 21k of an event's 312k instructions (bench/events.py --instructions). Here
a worker takes the next event as soon as it is done with one, without a trip through the event
loop, and wakes (or starts) another worker before it handles an event while more are waiting:
events whose handler never waits run back to back in one task, and handlers that wait spread
over up to ``size`` tasks, as many as a task per event would have run at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

__all__ = ["Pool"]

log = logging.getLogger("natsreg.events")

T = TypeVar("T")


class Pool(Generic[T]):
    """Up to ``size`` tasks running ``work`` on the items given to ``put``, each item once."""

    def __init__(self, work: Callable[[T], Awaitable[None]], size: int) -> None:
        self._work = work
        self._size = size
        self._items: deque[T] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        # The wake-up of each worker waiting for an item, oldest first.
        self._waiting: deque[asyncio.Future[None]] = deque()

    def put(self, items: Iterable[T]) -> None:
        self._items.extend(items)
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        if len(self._workers) < self._size:
            task = asyncio.create_task(self._run())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._items:
                waiter = loop.create_future()
                self._waiting.append(waiter)
                await waiter
            item = self._items.popleft()
            if self._items:
                self._wake()
            try:
                await self._work(item)
            except Exception:
                # ``work`` handles its own failures; a bug there must not cost a worker.
                log.exception("events: an event's handling failed")

    async def close(self) -> list[T]:
        """Cancel the workers (``work`` sees CancelledError where it waits) and return the
        items none of them had started."""
        workers = list(self._workers)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        left = list(self._items)
        self._items.clear()
        return left
