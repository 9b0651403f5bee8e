"""A control subscription's own queue: what nats-py's parser reads for it, handed over as it is
read (``_natspy.hand_over``), bounded, and read in order by one task.

A registry node's control messages (announcements, heartbeats, goodbyes) come here rather than
through nats-py's way of feeding a callback (a ``Msg`` made for each, an ``asyncio.Queue``, a
task per subscription), which cost more than the node's own handling of a heartbeat. The
bounds and what overflows them are the node's (``_backpressure.py``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from nats.aio.subscription import Subscription

from ._log import log

__all__ = ["Handler", "Inbox"]

#: What reads an inbox's messages: ``(subject, payload)``.
Handler = Callable[[str, bytes], Awaitable[None]]


class Inbox:
    """The messages on ``subject``, at most ``max_msgs`` and ``max_bytes`` waiting; one that
    does not fit is dropped and ``overflow(inbox)`` told. :meth:`read` hands each to
    ``handler`` in the order read, yielding to the event loop every ``yield_every``."""

    def __init__(
        self,
        subject: str,
        handler: Handler,
        overflow: Callable[[Inbox], None],
        *,
        max_msgs: int,
        max_bytes: int,
        yield_every: int,
    ) -> None:
        self.subject = subject
        self._handler = handler
        self._overflow = overflow
        self._max_msgs = max_msgs
        self._max_bytes = max_bytes
        self._yield_every = yield_every
        self._queue: deque[tuple[bytes, bytes]] = deque()
        #: Bytes of payload waiting.
        self.pending_bytes = 0
        #: The NATS subscription that feeds it, while it is fed.
        self.sub: Subscription | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._emptied = asyncio.Event()

    @property
    def pending_msgs(self) -> int:
        """Messages waiting."""
        return len(self._queue)

    def put(self, subject: bytes, payload: bytes) -> None:
        """Called by nats-py's parser for each message read: queued, or dropped if it does
        not fit. Never blocks."""
        queue = self._queue
        if len(queue) >= self._max_msgs or self.pending_bytes + len(payload) > self._max_bytes:
            self._overflow(self)
            return
        queue.append((subject, payload))
        self.pending_bytes += len(payload)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)

    async def read(self) -> None:
        """Hand every message to the handler, in order, until cancelled. A handler's error is
        logged and the next message read."""
        queue, handler, yield_every = self._queue, self._handler, self._yield_every
        loop = asyncio.get_running_loop()
        handled = 0
        while True:
            if not queue:
                self._emptied.set()
                self._wakeup = loop.create_future()
                await self._wakeup
                continue
            subject, payload = queue.popleft()
            self.pending_bytes -= len(payload)
            try:
                await handler(subject.decode(), payload)
            except Exception:
                log.exception("a control message on %s could not be handled", self.subject)
            handled += 1
            if handled == yield_every:
                # A handler that never waits would keep the read loop from the socket.
                handled = 0
                await asyncio.sleep(0)

    def close(self) -> None:
        """Nothing more is read (its reader is stopped): what waits is dropped."""
        self._queue.clear()
        self.pending_bytes = 0
        self._emptied.set()

    async def emptied(self) -> None:
        """Once every message waiting has been read (and those that come meanwhile)."""
        if self._queue:
            self._emptied.clear()
            await self._emptied.wait()
