"""Pulling a balanced handler's events: pull requests kept open on a private inbox.

This is how JetStream's own clients consume (``Consume`` in nats.go): the instance asks the
consumer for as many events as it has room for (``$JS.API.CONSUMER.MSG.NEXT``, a batch that
waits on the server up to ``EXPIRES_S``), and the events arrive by callback on one inbox
subscription as they are stored; it asks again whenever half its room is free, before the
earlier request is used up. nats-py's ``fetch()`` awaits each message of a batch with a timer
of its own and sends a request per batch; reading the inbox directly cost a third less per
event (bench/events.py --instructions).

What the server says on the inbox besides events is a status (ADR-13): ``408`` a request
that expired, with how many of its events were never sent (``Nats-Pending-Messages``); ``409``
a request ended early (the consumer deleted, its leader moved, too many waiting requests); ``100``
an idle heartbeat. A request the server forgets without a word (it restarted) is written off
``LOST_AFTER_S`` after the instance last heard anything while it waited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["EXPIRES_S", "LOST_AFTER_S", "Puller", "pending_of"]

log = logging.getLogger("natsreg.events")

#: How long a pull request waits on the server for events: an idle instance asks once per
#: this interval, never in a loop.
EXPIRES_S = 5.0
#: With events asked for and nothing at all heard for this long (no event, no expiry), the
#: requests are gone (a server restarted) and the instance asks again: a request's wait and
#: two seconds for its expiry to arrive.
LOST_AFTER_S = EXPIRES_S + 2.0

_STATUS = "Status"
_PENDING = "Nats-Pending-Messages"
_EXPIRED = ("404", "408")
_ENDED = "409"


class _Request(msgspec.Struct, omit_defaults=True):
    batch: int
    expires: int  # nanoseconds


_encode = msgspec.json.Encoder().encode


class Puller:
    """Pull requests for one consumer, and the events they bring, given to ``deliver``.

    ``outstanding`` is the number of events asked for and neither received nor expired; a
    caller asks for more only while its room exceeds it. ``on_change`` is called whenever
    ``outstanding`` falls for a reason other than an event arriving (an expiry, an ending).
    """

    def __init__(
        self,
        nc: NATS,
        stream: str,
        consumer: str,
        deliver: Callable[[Msg], None],
        on_change: Callable[[], None],
        expires_s: float = EXPIRES_S,
    ) -> None:
        self._nc = nc
        self._expires_ns = int(expires_s * 1e9)
        self._lost_after_s = expires_s + LOST_AFTER_S - EXPIRES_S
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._deliver = deliver
        self._on_change = on_change
        self._sub: Subscription | None = None
        self.outstanding = 0
        self._heard = time.monotonic()
        #: Events not yet delivered to any instance, as the last event or expiry said.
        self.pending: int | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)

    async def stop(self) -> None:
        """Stop listening: the server drops open requests once their inbox has no
        subscriber, so no event is sent to an instance that stopped."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def ask(self, batch: int) -> None:
        if not self.outstanding:
            self._heard = time.monotonic()  # the wait for this request starts now
        body = _encode(_Request(batch=batch, expires=self._expires_ns))
        await self._nc.publish(self._next, body, reply=self._inbox)
        self.outstanding += batch

    def write_off_lost(self) -> bool:
        """Forget requests the server has said nothing about for ``LOST_AFTER_S``."""
        if self.outstanding and time.monotonic() - self._heard > self._lost_after_s:
            log.debug("events: %d asked of %s never came", self.outstanding, self._next)
            self.outstanding = 0
            return True
        return False

    async def _on_msg(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        headers = msg.headers
        status = headers.get(_STATUS) if headers else None
        if status is None:
            self.outstanding = max(0, self.outstanding - 1)
            self.pending = pending_of(msg.reply)
            self._deliver(msg)
            return
        assert headers is not None
        if status in _EXPIRED:
            try:
                unsent = int(headers.get(_PENDING, ""))
            except ValueError:
                unsent = self.outstanding
            self.outstanding = max(0, self.outstanding - unsent)
            # Expired with room to spare: nothing was waiting for this instance.
            self.pending = 0
        elif status == _ENDED:
            log.debug("events: %s ended a pull request: %s", self._next, headers)
            self.outstanding = 0
        else:
            return  # an idle heartbeat: heard, nothing else
        self._on_change()


def pending_of(reply: str | None) -> int | None:
    """The last token of a JetStream reply subject without a domain,
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``,
    or the 11th of one with (``$JS.ACK.<domain>.<account>.<stream>...<pending>.<token>``)."""
    tokens = (reply or "").split(".")
    index = {9: 8, 12: 10}.get(len(tokens))
    if index is None:
        return None
    try:
        return int(tokens[index])
    except ValueError:
        return None
