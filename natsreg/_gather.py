"""Broadcast-and-gather: one request that many answer, replies collected for a moment.

ADR-32's ``$SRV.PING/INFO/STATS`` are answered by every instance that hears them, so a plain
request would keep only the first reply. The registry polls ``$SRV.INFO`` this way and
``natsreg info`` gathers ``$SRV.STATS``.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from . import subjects, wire
from .errors import NO_RESPONDERS_STATUS, STATUS_HEADER


async def gather(
    nc: NATS, subject: str, wait_s: float, *, until: Callable[[bytes], bool] | None = None
) -> list[bytes]:
    """Publish an empty request on ``subject`` and return the body of every reply heard
    within ``wait_s``, in arrival order; or sooner, once ``until(reply)`` is true (every
    awaited answerer is in). The server's "no responders" status (nobody listens) is not a
    reply, and neither is an empty body: both are left out."""
    inbox = nc.new_inbox()
    replies: list[bytes] = []
    done = anyio.Event()

    async def collect(msg: Msg) -> None:
        if msg.headers and msg.headers.get(STATUS_HEADER) == NO_RESPONDERS_STATUS:
            return
        if msg.data and not done.is_set():
            replies.append(msg.data)
            if until is not None and until(msg.data):
                done.set()

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subject, b"", reply=inbox)
        with anyio.move_on_after(wait_s):
            await done.wait()
    finally:
        await sub.unsubscribe()
    return replies


async def gather_stats(nc: NATS, service: str | None, wait_s: float) -> list[wire.SrvStats]:
    """The ``$SRV.STATS`` replies of every instance of ``service`` (of every service if
    None) heard within ``wait_s``; a reply that is not ADR-32 stats is left out."""
    stats: list[wire.SrvStats] = []
    for data in await gather(nc, subjects.srv_subject("STATS", service), wait_s):
        try:
            stats.append(wire.decode_srv_stats(data))
        except wire.MALFORMED:
            continue
    return stats
