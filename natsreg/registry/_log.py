"""The registry's logger, and the one way it lets go of subscriptions on its way out."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from nats.aio.subscription import Subscription

log = logging.getLogger("natsreg.registry")


async def unsubscribe_all(subs: Iterable[Subscription]) -> None:
    # On the way out the connection may be closing or closed already: a failure is no
    # reason to keep the other subscriptions, and says nothing the user must act on.
    for sub in subs:
        try:
            await sub.unsubscribe()
        except Exception as exc:
            log.debug("unsubscribe failed: %s", exc)
