"""The service's logger, and the one way to take a step that may fail on a closing connection."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

log = logging.getLogger("natsreg.service")


async def quietly(step: Awaitable[object], what: str) -> None:
    # Used where the connection may already be closed (shutdown, a reply to a caller that is
    # gone): the failure is logged, and the steps after it still run.
    try:
        await step
    except Exception as exc:
        log.warning("could not %s: %s", what, exc)
