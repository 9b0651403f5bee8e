"""A registry node under its own load: bounded subscription queues, and every message that does
not fit counted and logged, never a silent stop.

nats-py hands each callback subscription's messages from its read loop to one task through a
queue. At nats-py's defaults (524,288 messages, 128 MB per subscription) a node that falls
behind queues seconds of heartbeats, and the task that drains the queue never yields while it
holds messages (``asyncio.Queue.get()`` returns at once when the queue is not empty): the read
loop stops reading the socket, nats-server's buffer for the node fills, and the server closes
the connection as a slow consumer. The node then hears nothing and answers nothing.

So each of the node's subscriptions holds at most :data:`PENDING_MSGS` messages and
:data:`PENDING_BYTES` bytes; nats-py drops what does not fit and tells the connection's error
callback (``SlowConsumerError``), which the node counts as ``dropped["slow_consumer"]`` and
logs at most once per :data:`SLOW_LOG_S`; and its heartbeat subscription, once it overflowed,
is drained and taken again (:meth:`Backpressure.relieve`), so that nats-server drops the
heartbeats sent meanwhile rather than the node reading each one to drop it. The control
handler yields to the event loop every :data:`YIELD_EVERY` messages, so the read loop keeps
reading (and dropping, when it must) and queries are answered while a backlog drains; and
while a backlog is deep, or it dropped or shed messages lately, the node expires nothing, as
while it is disconnected. A dropped heartbeat costs nothing (the next one comes within an
interval); a dropped announcement is asked again (the instance's next heartbeat is from an
unknown id, docs/protocol.md rule 4).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError

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
#: The control handler lets other tasks run after this many messages.
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
        # Those it may shed, with what it takes to subscribe again; and those that overflowed.
        self._sheddable: dict[Subscription, tuple[str, Callable[[Msg], Awaitable[None]], int]] = {}
        self._overflowed: set[Subscription] = set()
        self._logged_at = float("-inf")
        self._since_yield = 0
        self._dropped_at = float("-inf")

    async def subscribe(
        self,
        subject: str,
        cb: Callable[[Msg], Awaitable[None]],
        queue: str = "",
        *,
        shed_above: int | None = None,
    ) -> Subscription:
        """``nc.subscribe`` with the node's queue limits, its drops counted. One with
        ``shed_above`` (bytes) is the node's to unsubscribe (:meth:`close`): :meth:`relieve`
        replaces it once its queue overflowed or holds more than that."""
        sub = await self._nc.subscribe(
            subject,
            queue=queue,
            cb=cb,
            pending_msgs_limit=PENDING_MSGS,
            pending_bytes_limit=PENDING_BYTES,
        )
        self._subs.add(sub)
        if shed_above is not None:
            self._sheddable[sub] = (subject, cb, shed_above)
        return sub

    async def unsubscribe(self, subs: list[Subscription]) -> None:
        """Unsubscribe ``subs``, taken with :meth:`subscribe`, and stop watching them."""
        for sub in subs:
            self._subs.discard(sub)
            self._sheddable.pop(sub, None)
            self._overflowed.discard(sub)
        await unsubscribe_all(subs)

    def queued(self, subject: str) -> int:
        """Messages waiting on the sheddable subscription to ``subject`` (0 while it sheds)."""
        for sub, (sheddable, _, _) in self._sheddable.items():
            if sheddable == subject:
                return int(sub.pending_msgs)
        return 0

    async def relieve(self) -> None:
        """Called regularly: a sheddable subscription whose queue overflowed, or holds more
        than its ``shed_above``, is drained, then taken again. While it drains, nats-server
        drops what comes for it, where the node would have had to read each message to drop
        it: a node that cannot even read what it is sent would fall behind its socket until
        nats-server cut it off."""
        due = [
            sub
            for sub, (_, _, above) in self._sheddable.items()
            if sub in self._overflowed or sub.pending_bytes > above
        ]
        for sub in due:
            subject, cb, above = self._sheddable.pop(sub)
            self._overflowed.discard(sub)
            self._dropped["shed"] += 1
            self._warn(
                f"shedding {subject} until it has caught up ({sub.pending_msgs} messages "
                f"queued); {self._dropped['shed']} times since start"
            )
            try:
                await sub.drain()  # type: ignore[no-untyped-call]  # untyped in nats-py
            except nats.errors.Error as exc:
                log.debug("drain failed: %s", exc)
            self._subs.discard(sub)
            # What was sent meanwhile is gone: silence proves nothing for a while.
            self._dropped_at = self._clock()
            await self.subscribe(subject, cb, shed_above=above)

    async def close(self) -> None:
        """Unsubscribe the sheddable subscriptions (the others are their subscriber's)."""
        subs, self._sheddable = list(self._sheddable), {}
        await unsubscribe_all(subs)

    def behind(self) -> bool:
        """Whether the node has fallen behind what it was sent (:data:`BEHIND_MSGS`), in all
        its queues together: a sharded node's heartbeats wait in one queue per service."""
        return sum(sub.pending_msgs for sub in self._subs) > BEHIND_MSGS

    def silence_proves_nothing(self) -> bool:
        """Whether the node may have missed heartbeats: behind, or it dropped one lately."""
        return self.behind() or self._clock() - self._dropped_at < QUIET_AFTER_DROP_S

    def pace(self) -> bool:
        """Called once per message handled: True every :data:`YIELD_EVERY` messages, when
        the handler must yield to the event loop (``anyio.lowlevel.checkpoint``)."""
        self._since_yield += 1
        if self._since_yield < YIELD_EVERY:
            return False
        self._since_yield = 0
        return True

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
        self._dropped["slow_consumer"] += 1
        if exc.sub in self._sheddable:
            self._overflowed.add(exc.sub)
        self._dropped_at = self._clock()
        self._warn(
            f"dropped a message on {exc.subject[:200]}, its queue full ({PENDING_MSGS} "
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
