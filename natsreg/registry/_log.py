"""The registry's logger, the one way it lets go of subscriptions on its way out, and the one
way it waits for the server to have what it sent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

#: How long the flush behind :func:`flush_within` may wait: as long as the connection lives.
_FLUSH_FOR_EVER_S = 24 * 3600

log = logging.getLogger("natsreg.registry")


async def unsubscribe_all(subs: Iterable[Subscription]) -> None:
    # On the way out the connection may be closing or closed already: a failure is no
    # reason to keep the other subscriptions, and says nothing the user must act on.
    for sub in subs:
        try:
            await sub.unsubscribe()
        except Exception as exc:
            log.debug("unsubscribe failed: %s", exc)


async def flush_within(nc: NATS, timeout_s: float) -> bool:
    """Whether what ``nc`` sent so far reached the server within ``timeout_s``.

    Not ``nc.flush(timeout=...)``: a nats-py flush that times out cancels its PONG's future
    but leaves it queued, and the PONG that comes later raises ``InvalidStateError`` in
    nats-py's read loop, which then stops reading for good; nats-server cuts the connection
    ``write_deadline`` later (a node under load, whose PONG came after its 1 s flush timeout,
    was cut so). Here the flush itself waits as long as the connection lives; only this wait
    gives up."""
    flush = asyncio.ensure_future(nc.flush(timeout=_FLUSH_FOR_EVER_S))
    flush.add_done_callback(_retrieve)
    done, _ = await asyncio.wait({flush}, timeout=timeout_s)
    return bool(done) and not flush.cancelled() and flush.exception() is None


def _retrieve(flush: asyncio.Future[None]) -> None:
    # A flush given up on may fail later (the connection closed): nothing to report.
    if not flush.cancelled():
        flush.exception()
