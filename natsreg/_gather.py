"""Broadcast-and-gather: one request that many answer, replies collected for a moment.

ADR-32's ``$SRV.PING/INFO/STATS`` are answered by every instance that hears them, so a plain
request would keep only the first reply. The registry polls ``$SRV.INFO`` this way and
``natsreg info`` gathers ``$SRV.STATS``.
"""

from __future__ import annotations

import anyio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from . import subjects, wire
from .errors import NO_RESPONDERS_STATUS, STATUS_HEADER


async def gather(nc: NATS, subject: str, wait_s: float) -> list[bytes]:
    """Publish an empty request on ``subject`` and return the body of every reply heard
    within ``wait_s``, in arrival order. The server's "no responders" status (nobody
    listens) is not a reply, and neither is an empty body: both are left out."""
    inbox = nc.new_inbox()
    replies: list[bytes] = []

    async def collect(msg: Msg) -> None:
        if msg.headers and msg.headers.get(STATUS_HEADER) == NO_RESPONDERS_STATUS:
            return
        if msg.data:
            replies.append(msg.data)

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await anyio.sleep(wait_s)
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
