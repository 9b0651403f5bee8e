"""What natsreg's users of JetStream share (events, sagas): waiting for a starting cluster's
JetStream, and creating a stream with as many replicas as the cluster has."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import nats.errors
from nats.js.errors import APIError, ServiceUnavailableError

__all__ = [
    "ALREADY_EXISTS",
    "REPLICAS_UNAVAILABLE",
    "STARTING_S",
    "create_replicated",
    "no_jetstream",
    "when_ready",
]

log = logging.getLogger("natsreg.jetstream")

T = TypeVar("T")

# JetStream's error codes for "not that many replicas here": a single server, or a cluster
# with fewer nodes than asked.
REPLICAS_UNAVAILABLE = (10074, 10005, 10023)
#: "stream name already in use": another process created it meanwhile.
ALREADY_EXISTS = 10058
#: How long a start-up waits for a cluster's JetStream to elect its leader.
STARTING_S = 30.0


async def when_ready(
    probe: Callable[[], Awaitable[T]], *, starting_s: float = STARTING_S, retry_s: float = 0.25
) -> T:
    """``probe()``'s answer. A cluster that has just started answers "unavailable", or not
    at all, until it has elected its JetStream leader: ``probe`` is asked again meanwhile
    (every ``retry_s``, for up to ``starting_s``, saying so once) rather than fail a
    start-up. Any other error is ``probe``'s own, raised at once; past the wait, the last
    "unavailable". No answer at all ("no responders": no server here runs JetStream) is
    not waited for: no cluster still electing says that.
    """
    deadline = time.monotonic() + starting_s
    said = False
    while True:
        try:
            return await probe()
        except (ServiceUnavailableError, nats.errors.TimeoutError) as exc:
            if time.monotonic() > deadline or no_jetstream(exc):
                raise
            if not said:
                log.warning(
                    "JetStream is not ready yet (%s); waiting up to %.0f s", exc, starting_s
                )
                said = True
            await anyio.sleep(retry_s)


def no_jetstream(exc: BaseException) -> bool:
    """Whether ``exc`` says that no server answers the JetStream API at all: nats-py turns
    "no responders" on ``$JS.API`` into a ServiceUnavailableError with no status code, where
    JetStream's own "unavailable" answers carry 503."""
    return isinstance(exc, ServiceUnavailableError) and exc.code is None


async def create_replicated(
    create: Callable[[int], Awaitable[object]], replicas: int | None
) -> int | None:
    """``create(count)`` with ``replicas`` copies, or with None min(3, the cluster's size):
    asked as 3, then fewer where the cluster says it cannot. Returns the count it was created
    with, or None when it already existed (created meanwhile by another process); raises
    JetStream's APIError otherwise."""
    counts = (replicas,) if replicas is not None else (3, 2, 1)
    for count in counts:
        try:
            await create(count)
            return count
        except APIError as exc:
            if replicas is None and exc.err_code in REPLICAS_UNAVAILABLE and count > 1:
                continue
            if exc.err_code == ALREADY_EXISTS:
                return None
            raise
    raise AssertionError("unreachable: the last count returns or raises")
