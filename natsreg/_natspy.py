"""What natsreg sets on every nats-py connection it is given (:func:`adopt`).

- nats-py's parser of received headers, replaced by natsreg's faster one (:mod:`._headers`).
- A PONG that comes after its flush gave up no longer stops the connection. nats-py 2.16's
  ``Client.flush(timeout)`` queues a future for its PING's PONG and, when the timeout fires or
  the caller is cancelled, cancels that future but leaves it queued. When the late PONG comes,
  ``_process_pong`` sets the result of the cancelled future; the InvalidStateError this raises
  ends the read loop for good, while the client still says it is connected: nothing reaches the
  process again, and nats-server cuts it off a write deadline later (a registry node under load
  whose PONG came after a 1 s flush timeout was lost so). natsreg's ``_process_pong`` takes the
  PONG's future off the queue as nats-py does, and sets its result only if nobody gave up on it.

Both are set only where the installed nats-py has what they replace.

And, asked for one subscription at a time (:func:`hand_over`), its messages handed straight
from nats-py's parser to a function of natsreg's, as ``(subject, payload)``: no ``Msg`` made,
no queue of nats-py's and no task of its own. A registry node takes its heartbeats so; nats-py's
way of handing a message to a callback cost more than the node's whole handling of it
(bench/RESULTS.md, "Heartbeats handed over by the parser").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from . import _headers

__all__ = ["adopt", "hand_over", "take_back"]

#: What takes a handed-over subscription's messages: ``(subject, payload)``, as read.
Taker = Callable[[bytes, bytes], None]
# nats-py's Client._process_msg(sid, subject, reply, payload, headers), as it types it.
_ProcessMsg = Callable[[int, bytes, bytes, bytes, bytes], Coroutine[Any, Any, None]]


def adopt(nc: NATS) -> None:
    """Set natsreg's header parser and PONG handling on ``nc``; nothing else changes."""
    _headers.install(nc)
    if callable(getattr(nc, "_process_pong", None)) and isinstance(
        getattr(nc, "_pongs", None), list
    ):
        nc._process_pong = functools.partial(_process_pong, nc)  # type: ignore[method-assign]


async def _process_pong(nc: NATS) -> None:
    pongs = nc._pongs
    if pongs:
        future = pongs.pop(0)
        if not future.done():  # a flush that timed out or was cancelled gave up on it
            future.set_result(True)
        nc._pongs_received += 1
        nc._pings_outstanding = 0


def hand_over(nc: NATS, sub: Subscription, take: Taker) -> None:
    """From now on, each message nats-py's parser reads for ``sub`` goes to ``take(subject,
    payload)`` at once, in the read loop (which must not block on it); headers are not read.
    Any message nats-py queued for ``sub`` before goes to ``take`` first. ``sub`` must have
    no callback; :func:`take_back` once it is unsubscribed."""
    takers = _takers(nc)
    takers[sub._id] = take
    queued = sub._pending_queue
    while not queued.empty():
        msg = queued.get_nowait()
        sub._pending_size -= len(msg.data)
        take(msg.subject.encode(), msg.data)


def take_back(nc: NATS, sub: Subscription) -> None:
    """``sub``, unsubscribed, is forgotten (nats-py drops what still comes for it)."""
    _takers(nc).pop(sub._id, None)


def _takers(nc: NATS) -> dict[int, Taker]:
    """The connection's handed-over subscriptions by id; natsreg's ``_process_msg`` in
    front of nats-py's from the first one on."""
    takers: dict[int, Taker] | None = getattr(nc, "_natsreg_takers", None)
    if takers is None:
        takers = {}
        nc._natsreg_takers = takers  # type: ignore[attr-defined]
        process = _process_msg(nc, takers, nc._process_msg)
        nc._process_msg = process  # type: ignore[method-assign,assignment]
    return takers


def _process_msg(nc: NATS, takers: dict[int, Taker], process: _ProcessMsg) -> _ProcessMsg:
    stats = nc.stats

    async def process_msg(
        sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        take = takers.get(sid)
        if take is None:
            await process(sid, subject, reply, data, headers)
            return
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        take(subject, data)

    return process_msg
