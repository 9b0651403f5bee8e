"""Reconciling a client's view of a service with a registry snapshot, on demand.

The catalog (natsreg._catalog) says when its view of a service may be wrong: a gap in a
registry node's chain of events, an event from an unknown node, a new instance, a heartbeat
from an instance it does not hold; the client adds an instance it chose that stopped
answering. One forged or lost message must not poison a long-lived process, so each of these
asks for a fresh snapshot of the service, and the catalog is made to match it.

Asked from NATS callbacks, which must not wait: :meth:`Reconciler.request` only starts (or
marks for a rerun) a task of its own, at most one per service at a time and one fetch per
``interval_s``, so that a flood of forged messages costs the registry one query per service
and second per client. :meth:`Reconciler.aclose` ends them with the client.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import nats.errors

from .. import wire
from ..errors import RequestError
from ._catalog import Catalog

#: At most one snapshot fetch per service per this interval, however many reasons arrive.
RECONCILE_INTERVAL_S = 1.0
#: A fetch that fails (no registry, or one still warming up) is tried again this many times,
#: once per interval, before the service waits for its next reason.
RECONCILE_TRIES = 5


class _Job:
    __slots__ = ("again", "task")

    def __init__(self) -> None:
        self.again = False
        self.task: asyncio.Task[None] | None = None


class Reconciler:
    """Fetches a snapshot of a service with ``fetch(service)`` and hands it to
    ``apply(service, snapshot)`` when asked, rate-limited per service."""

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[wire.Snapshot]],
        apply: Callable[[str, wire.Snapshot], None],
        *,
        interval_s: float = RECONCILE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._apply = apply
        self.interval_s = interval_s
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        # service -> when its last fetch started; bounded by the services a client views.
        self._last: dict[str, float] = {}
        self._closed = False
        #: Snapshots applied, per service.
        self.applied: dict[str, int] = {}

    def request(self, service: str) -> None:
        """Reconcile ``service`` soon: now if no fetch of it started within the interval,
        else once the interval has passed. Never waits."""
        if self._closed:
            return
        job = self._jobs.get(service)
        if job is None:
            job = self._jobs[service] = _Job()
        if job.task is not None:
            job.again = True
            return
        job.task = asyncio.get_running_loop().create_task(self._run(service, job))

    async def aclose(self) -> None:
        """Cancel every fetch; no later request starts one."""
        self._closed = True
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    async def _run(self, service: str, job: _Job) -> None:
        failures = 0
        try:
            while True:
                job.again = False
                wait_s = self._last.get(service, float("-inf")) + self.interval_s - self._clock()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                self._last[service] = self._clock()
                if await self._once(service):
                    failures = 0
                else:
                    failures += 1
                    job.again = job.again or failures < RECONCILE_TRIES
                if not job.again:
                    return
        finally:
            job.task = None

    async def _once(self, service: str) -> bool:
        try:
            snapshot = await self._fetch(service)
        except (RequestError, OSError, nats.errors.Error):
            # No registry, a slow one, or the connection closing: the next reason tries again.
            return False
        if snapshot.warming_up:
            # A node that has not heard every instance yet is no reference for removals.
            return False
        self._apply(service, snapshot)
        self.applied[service] = self.applied.get(service, 0) + 1
        return True


class ExpiryWatch:
    """Runs a catalog's expiry on time while ``busy()`` says calls are in flight.

    The catalog expires instances when a call reads it; an instance that expires with calls of
    ours in flight must end them then (``Catalog.on_lost``: outcome unknown), even if no new
    call comes to read the catalog. One timer, armed for the catalog's next expiry, and only
    while there is something in flight to end. A silence the catalog cannot yet tell from
    its own unread queues is handed to ``prove()``, which expires what it proves.
    """

    def __init__(
        self,
        catalog: Catalog,
        busy: Callable[[], bool],
        prove: Callable[[], object],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._catalog = catalog
        self._busy = busy
        self._prove = prove
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def arm(self) -> None:
        """Make sure the next expiry will be run (cheap when it already will)."""
        if self._timer is not None or self._closed:
            return
        when = self._catalog.next_expiry
        if when != math.inf:
            # A millisecond late rather than early: the catalog expires strictly after.
            self._timer = asyncio.get_running_loop().call_later(
                max(when - self._clock(), 0.0) + 0.001, self._tick
            )

    def close(self) -> None:
        """Stop for good."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        self._catalog.expire()
        if self._catalog.unproven:
            self._prove()
        if self._busy():
            self.arm()
