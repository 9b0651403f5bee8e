"""A registry node under its own load: bounded subscription queues, and every message that does
not fit counted and logged, never a silent stop.

A subscription's messages wait between nats-py's read loop and the task that reads them: in
nats-py's queue for a query subscription, in an :class:`~._inbox.Inbox` for a control one
(announcements, heartbeats, goodbyes, handed over by the parser). Unbounded (nats-py's
defaults are 524,288 messages, 128 MB per subscription), a node that falls behind queues
seconds of heartbeats, and the task that reads them never yields while it holds messages: the
read loop stops reading the socket, nats-server's buffer for the node fills, and the server
closes the connection as a slow consumer. The node then hears nothing and answers nothing.

So each of the node's queues holds at most :data:`PENDING_MSGS` messages and
:data:`PENDING_BYTES` bytes; what does not fit is dropped (nats-py tells the connection's error
callback, ``SlowConsumerError``; an inbox tells the node), counted as
``dropped["slow_consumer"]`` and logged at most once per :data:`SLOW_LOG_S`; and its heartbeat
and announcement inboxes, once one overflowed or holds too much, are unsubscribed until read,
then subscribed again (:meth:`Backpressure.relieve`), so that nats-server drops what is sent
meanwhile rather than the node reading each message to drop it. An inbox's task yields to the
event loop every :data:`YIELD_EVERY` messages, so the read loop keeps reading (and dropping,
when it must) and queries are answered while a backlog drains; and
while a backlog is deep, or it dropped or shed messages lately, the node expires nothing, as
while it is disconnected. A dropped heartbeat costs nothing (the next one comes within an
interval); a dropped announcement is asked again (the instance's next heartbeat is from an
unknown id, docs/protocol.md rule 4).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError

from .. import _natspy
from ._inbox import Handler, Inbox
from ._log import log, unsubscribe_all

#: Messages one subscription may queue: at ~13 µs a heartbeat, about 0.85 s of work, under the
#: 2.5 s of silence that expires an instance; and above a 50k fleet's whole re-announce round
#: (docs/protocol.md rule 5) as it queues while the node works through it.
PENDING_MSGS = 65_536
#: Bytes one subscription may queue: a thousand full-size (64 KiB) announcements.
PENDING_BYTES = 64 * 1024 * 1024
#: Announcements are shed (:meth:`Backpressure.relieve`) once this much of them waits, before
#: their queue is full: 10,000 announcements (a second of the node's work), where a full
#: queue of them (65,536, about 25 MB) is more than nats-server holds for a node that does not
#: read (64 MB by default, less on a tight server) once what it sent meanwhile is added.
#: Heartbeats, a fifth of an announcement's size, are shed once their queue is full.
SHED_ANNOUNCEMENTS_BYTES = 4 * 1024 * 1024
#: An inbox's task lets other tasks run after this many messages.
YIELD_EVERY = 16
#: A node with more messages than this waiting in its queues is behind: it expires nothing
#: until it has read them, since the heartbeats it has not read yet may be the ones due.
BEHIND_MSGS = 4096
#: Nor does it expire anything for this long after it dropped a message: a heartbeat it
#: dropped is no silence of its instance (two missed 1 s heartbeats and the half-interval).
QUIET_AFTER_DROP_S = 3.0
#: A slow-consumer drop is logged at most once per this interval (the count is in stats).
SLOW_LOG_S = 10.0

_ErrorCallback = Callable[[Exception], Awaitable[None]]


def control_inbox(subject: str, handler: Handler, overflow: Callable[[Inbox], None]) -> Inbox:
    """An :class:`Inbox` for the control messages on ``subject``, within the node's queue
    limits, yielding every :data:`YIELD_EVERY` messages; ``overflow(inbox)`` hears of each
    message it drops."""
    return Inbox(
        subject,
        handler,
        overflow,
        max_msgs=PENDING_MSGS,
        max_bytes=PENDING_BYTES,
        yield_every=YIELD_EVERY,
    )


class Backpressure:
    """The node's subscriptions on ``nc``, with bounded queues; :meth:`installed` while the
    node runs, so that the connection's slow-consumer errors for them are counted."""

    def __init__(
        self, nc: NATS, dropped: Counter[str], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._nc = nc
        self._dropped = dropped
        self._clock = clock
        self._subs: set[Subscription] = set()
        # The control inboxes, each read by its own task; those it may shed, above how many
        # bytes; and those that overflowed.
        self._readers: dict[Inbox, asyncio.Task[None]] = {}
        self._shed_above: dict[Inbox, int] = {}
        self._overflowed: set[Inbox] = set()
        self._logged_at = float("-inf")
        self._dropped_at = float("-inf")

    async def subscribe(
        self, subject: str, cb: Callable[[Msg], Awaitable[None]], queue: str = ""
    ) -> Subscription:
        """``nc.subscribe`` with the node's queue limits, its drops counted."""
        sub = await self._nc.subscribe(
            subject,
            queue=queue,
            cb=cb,
            pending_msgs_limit=PENDING_MSGS,
            pending_bytes_limit=PENDING_BYTES,
        )
        self._subs.add(sub)
        return sub

    async def take(self, subject: str, handler: Handler, *, shed_above: int | None = None) -> Inbox:
        """Control messages on ``subject``, handed to ``handler(subject, payload)`` in the
        order read, from an :class:`Inbox` within the node's queue limits, its drops counted.
        One with ``shed_above`` (bytes) :meth:`relieve` sheds once its queue overflowed or
        holds more than that."""
        inbox = control_inbox(subject, handler, self._overflow)
        await self._feed(inbox)
        self._readers[inbox] = asyncio.get_running_loop().create_task(inbox.read())
        if shed_above is not None:
            self._shed_above[inbox] = shed_above
        return inbox

    async def _feed(self, inbox: Inbox) -> None:
        # A subscription without a callback (nats-py makes no task for it) whose messages
        # its parser hands to the inbox.
        sub = await self._nc.subscribe(inbox.subject)
        _natspy.hand_over(self._nc, sub, inbox.put)
        inbox.sub = sub

    async def _starve(self, inbox: Inbox) -> None:
        sub, inbox.sub = inbox.sub, None
        if sub is not None:
            await unsubscribe_all([sub])
            _natspy.take_back(self._nc, sub)

    async def unsubscribe(self, subs: Iterable[Subscription | Inbox]) -> None:
        """Unsubscribe ``subs``, taken with :meth:`subscribe` or :meth:`take`, and stop
        watching them; what an inbox still holds is not read."""
        plain = []
        for sub in subs:
            if isinstance(sub, Inbox):
                self._shed_above.pop(sub, None)
                self._overflowed.discard(sub)
                reader = self._readers.pop(sub, None)
                if reader is not None:
                    reader.cancel()
                sub.close()  # a shedding that waits for it to be read waits no more
                await self._starve(sub)
            else:
                self._subs.discard(sub)
                plain.append(sub)
        await unsubscribe_all(plain)

    def queued(self, subject: str) -> int:
        """Messages waiting in the inbox of ``subject``."""
        for inbox in self._readers:
            if inbox.subject == subject:
                return inbox.pending_msgs
        return 0

    async def relieve(self) -> None:
        """Called regularly: a sheddable inbox that overflowed, or holds more than its
        ``shed_above``, is unsubscribed until it has been read, then subscribed again.
        Meanwhile nats-server drops what comes for it, where the node would have had to read
        each message to drop it: a node that cannot even read what it is sent would fall
        behind its socket until nats-server cut it off."""
        due = [
            inbox
            for inbox, above in self._shed_above.items()
            if inbox in self._overflowed or inbox.pending_bytes > above
        ]
        for inbox in due:
            self._overflowed.discard(inbox)
            self._dropped["shed"] += 1
            self._warn(
                f"shedding {inbox.subject} until it has caught up ({inbox.pending_msgs} "
                f"messages queued); {self._dropped['shed']} times since start"
            )
            await self._starve(inbox)
            await inbox.emptied()
            # What was sent meanwhile is gone: silence proves nothing for a while.
            self._dropped_at = self._clock()
            if inbox in self._readers:  # not unsubscribed meanwhile
                await self._feed(inbox)

    async def close(self) -> None:
        """Unsubscribe every inbox (the plain subscriptions are their subscriber's)."""
        await self.unsubscribe(list(self._readers))

    def behind(self) -> bool:
        """Whether the node has fallen behind what it was sent (:data:`BEHIND_MSGS`), in all
        its queues together: a sharded node's heartbeats wait in one queue per service."""
        waiting = sum(inbox.pending_msgs for inbox in self._readers)
        return waiting + sum(sub.pending_msgs for sub in self._subs) > BEHIND_MSGS

    def silence_proves_nothing(self) -> bool:
        """Whether the node may have missed heartbeats: behind, or it dropped one lately."""
        return self.behind() or self._clock() - self._dropped_at < QUIET_AFTER_DROP_S

    @contextmanager
    def installed(self) -> Iterator[None]:
        # nats-py takes its error callback only at connect; the connection is the caller's,
        # so the node chains its own in front for as long as it runs, and passes on every
        # error that is not a drop from one of its subscriptions.
        previous: _ErrorCallback = self._nc._error_cb

        async def on_error(exc: Exception) -> None:
            if isinstance(exc, SlowConsumerError) and exc.sub in self._subs:
                self._slow(exc)
            else:
                await previous(exc)

        self._nc._error_cb = on_error
        try:
            yield
        finally:
            self._nc._error_cb = previous

    def _slow(self, exc: SlowConsumerError) -> None:
        self._drop(exc.subject)

    def _overflow(self, inbox: Inbox) -> None:
        self._overflowed.add(inbox)
        self._drop(inbox.subject)

    def _drop(self, subject: str) -> None:
        self._dropped["slow_consumer"] += 1
        self._dropped_at = self._clock()
        self._warn(
            f"dropped a message on {subject[:200]}, its queue full ({PENDING_MSGS} "
            f"messages or {PENDING_BYTES // (1024 * 1024)} MB); "
            f"{self._dropped['slow_consumer']} dropped since start"
        )

    def _warn(self, what: str) -> None:
        """One warning line at most every :data:`SLOW_LOG_S` (the counts are in stats)."""
        now = self._clock()
        if now - self._logged_at >= SLOW_LOG_S:
            self._logged_at = now
            log.warning(
                "registry node falling behind: %s. It takes no heartbeats until it has caught "
                "up, and stays connected; give it a core of its own",
                what,
            )
