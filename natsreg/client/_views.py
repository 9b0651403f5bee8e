"""The client's live views of the services it calls: one per service, started on its first
call, kept in NATS subscriptions (events, heartbeats, goodbyes) feeding the :class:`Catalog`,
and healed with registry snapshots (:mod:`._healing`) when a message says it must be.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .. import subjects, wire
from ..errors import RequestError
from ._catalog import Catalog
from ._healing import ExpiryWatch, Reconciler
from ._transport import Transport

#: Services whose view one client keeps; calls to further services ride the queue group.
MAX_VIEWED_SERVICES = 256
#: The first call to a service waits for the registry's snapshot at most this share of its
#: remaining budget (and at most ``view_wait_s``): the view only picks the instance, the
#: request itself needs the rest.
VIEW_WAIT_SHARE = 0.25
#: A view taken from a warming node's answer is taken again when that node says it will be
#: warm, but no later than this (a forged answer must not put it off for long).
MAX_WARM_WAIT_S = 10.0
#: Proving the client has read what the bus sent it (a round trip to the server, then its
#: queues read that far) takes at most this long; else silence stays unproven for now.
PROOF_TIMEOUT_S = 1


class _Tracker:
    """The subscriptions and bootstrap state of one service's view."""

    __slots__ = ("available", "retry_at", "subs", "task", "warming")

    def __init__(self) -> None:
        self.available = False
        #: The view was taken from a warming node's answer, and from no warm one since.
        self.warming = False
        self.retry_at = 0.0
        self.subs: list[Subscription] = []
        self.task: asyncio.Task[None] | None = None


class Views:
    """The views of one client: ``catalog`` holds their instances; ``fetch`` asks the
    registry for a service's snapshot; ``transport`` is told when an instance dies."""

    def __init__(
        self,
        nc: NATS,
        prefix: str,
        *,
        fetch: Callable[[str], Awaitable[wire.Snapshot]],
        transport: Transport,
        missed_heartbeats: float,
        view_wait_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.prefix = prefix
        self.view_wait_s = view_wait_s
        self._nc = nc
        self._clock = clock
        self._fetch = fetch
        self.catalog = Catalog(
            missed_heartbeats=missed_heartbeats, clock=clock, on_lost=transport.abandon
        )
        # Silence counts from here on only as far as a proof says (caught_up).
        self.catalog.heard_through = clock()
        self.reconciler = Reconciler(fetch, self._reconciled, clock=clock)
        self.expiry = ExpiryWatch(self.catalog, transport.busy, self.prove, clock=clock)
        self._trackers: dict[str, _Tracker] = {}
        self._proof: asyncio.Task[None] | None = None
        self._closed = False

    def ready(self, service: str, settled: bool) -> bool | None:
        """Whether a view of ``service`` is in place; None when it is still to be fetched
        (:meth:`wait`). With ``settled``, never None: the view is taken as it is."""
        tracker = self._trackers.get(service)
        if tracker is not None and tracker.available:
            return True
        if (
            settled
            or (tracker is None and (self._closed or len(self._trackers) >= MAX_VIEWED_SERVICES))
            or (tracker is not None and tracker.task is None and self._clock() < tracker.retry_at)
        ):
            return False
        return None

    async def wait(self, service: str, deadline: float) -> None:
        """Start the view of ``service`` if need be and wait a while for the registry's
        snapshot (see ``VIEW_WAIT_SHARE``); :meth:`ready` tells what came of it."""
        tracker = self._trackers.get(service)
        if tracker is None:
            if self._closed or len(self._trackers) >= MAX_VIEWED_SERVICES:
                return
            tracker = self._trackers[service] = _Tracker()
            self.catalog.track(service)
        if tracker.available:
            return
        if tracker.task is None:
            if self._clock() < tracker.retry_at:
                return
            tracker.task = asyncio.get_running_loop().create_task(self._bootstrap(service, tracker))
        task = tracker.task
        wait_s = min(self.view_wait_s, (deadline - self._clock()) * VIEW_WAIT_SHARE)
        if wait_s > 0:
            # asyncio.wait, not wait_for: giving up on the view must leave the bootstrap
            # running for later calls, and its end (aclose() cancels it) is not ours to raise.
            await asyncio.wait((task,), timeout=wait_s)
        if task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                raise error  # a bug, not a missing registry

    @property
    def closed(self) -> bool:
        return self._closed

    def stale(self) -> str | None:
        """Why this client's views cannot be trusted now, or None: they are closed, or one
        was taken from a warming registry node's answer only (which may miss instances)."""
        if self._closed:
            return "the client is closed"
        warming = [service for service, tracker in self._trackers.items() if tracker.warming]
        if warming:
            return f"the view of {warming[0]!r} comes from a registry node still warming up"
        return None

    def prove(self) -> asyncio.Task[None]:
        """Prove, soon, that the client has read everything the bus sent it until now, and
        then expire the instances whose silence that proves (:attr:`Catalog.heard_through`):
        a server round trip, then every view's queue read as far as it had come. One proof
        at a time; this returns the one under way."""
        if self._proof is None:
            self._proof = asyncio.get_running_loop().create_task(self._caught_up())
        return self._proof

    async def _caught_up(self) -> None:
        since = self._clock()
        try:
            # Whatever the server sent before its PONG has been read off the socket and
            # queued by then; each queue is then read that far.
            await self._nc.flush(timeout=PROOF_TIMEOUT_S)
            queued = [(sub, sub.delivered) for t in self._trackers.values() for sub in t.subs]
            give_up = self._clock() + PROOF_TIMEOUT_S
            while any(sub.delivered - sub.pending_msgs < n for sub, n in queued):
                if self._clock() > give_up:
                    return  # too busy to prove it now: silence stays unproven
                await asyncio.sleep(0.001)
        except (TimeoutError, nats.errors.Error):
            return  # not connected: what it does not hear proves nothing
        finally:
            self._proof = None
        self.catalog.heard_through = max(self.catalog.heard_through, since)
        self.catalog.expire()

    async def caught_up(self, deadline: float) -> None:
        """Wait, until ``deadline`` at most, for a proof (:meth:`prove`) to be done."""
        wait_s = deadline - self._clock()
        if wait_s > 0:
            # asyncio.wait: a caller that gives up leaves the proof running for the others.
            await asyncio.wait((self.prove(),), timeout=wait_s)

    def heal(self, service: str) -> None:
        """Reconcile the view of ``service`` with a registry snapshot, soon (rate-limited)."""
        if not self._closed and service in self._trackers:
            self.reconciler.request(service)

    async def aclose(self, drain: Callable[[], Awaitable[None]]) -> None:
        """End every view's subscriptions and bootstrap; safe to call twice. ``drain`` (the
        transport's close) runs once healing has stopped and before the views end: the calls
        still in flight go on learning of the deaths of their instances."""
        self._closed = True
        await self.reconciler.aclose()
        await drain()
        self.expiry.close()
        if self._proof is not None:
            self._proof.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._proof
        trackers, self._trackers = self._trackers, {}
        for tracker in trackers.values():
            if tracker.task is not None:
                tracker.task.cancel()
                try:
                    await tracker.task
                except asyncio.CancelledError:
                    # The cancellation we asked for ends here; one aimed at aclose()'s own
                    # caller goes on. Anything else the task raised is a bug, and surfaces.
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
            for sub in tracker.subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        for service in self.catalog.services():
            self.catalog.forget(service)

    async def _bootstrap(self, service: str, tracker: _Tracker) -> None:
        try:
            if not tracker.subs:
                on_message = functools.partial(self._on_view_message, tracker)
                for verb, tokens in (
                    ("events", (service,)),
                    ("hb", (service, "*")),
                    ("bye", (service, "*")),
                ):
                    tracker.subs.append(
                        await self._nc.subscribe(
                            subjects.control_subject(self.prefix, verb, *tokens), cb=on_message
                        )
                    )
            # Subscribed first, then asked: no change between the two can be missed.
            snapshot = await self._fetch(service)
            self.catalog.apply_snapshot(snapshot, service)
            tracker.available = True
            if snapshot.warming_up:
                # No warm node answered, and a warming one may not know everyone yet: the
                # view is taken again from a warm answer once the node says it will be warm
                # (and again each second after, should it not be: Reconciler), unless one
                # came meanwhile.
                tracker.warming = True
                warm_in_s = snapshot.warm_in_s
                if not 0.0 <= warm_in_s <= MAX_WARM_WAIT_S:  # NaN too
                    warm_in_s = MAX_WARM_WAIT_S
                asyncio.get_running_loop().call_later(
                    warm_in_s + 0.05, self._heal_if_warming, service, tracker
                )
        except (RequestError, OSError, nats.errors.Error):
            # No registry (or a slow one), or the connection closed meanwhile: plain
            # queue-group requests until an event shows one, or until the next try.
            tracker.retry_at = self._clock() + 5.0
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # nats-py turns a cancellation into ConnectionClosedError when the
                # connection is closed; aclose() or the loop's shutdown asked us to stop.
                raise asyncio.CancelledError from None
        finally:
            tracker.task = None

    async def _on_view_message(self, tracker: _Tracker, msg: Msg) -> None:
        # Subscribed to <prefix>.events.<name>, <prefix>.hb.<name>.* and <prefix>.bye.<name>.*:
        # what follows the prefix is the verb and the identity the message must match.
        verb, *tokens = msg.subject[len(self.prefix) + 1 :].split(".")
        heard = self.catalog.hear(verb, tokens, msg.data)
        if heard == "dropped":
            return
        if verb == "events":
            # An event shows a registry runs: the view fills in from its events.
            tracker.available = True
        if heard == "reconcile" and (tracker.available or verb == "events"):
            self.heal(tokens[0])

    def _heal_if_warming(self, service: str, tracker: _Tracker) -> None:
        if tracker.warming:
            self.heal(service)

    def _reconciled(self, service: str, snapshot: wire.Snapshot) -> None:
        tracker = self._trackers.get(service)
        if tracker is not None:
            self.catalog.reconcile(service, snapshot)
            tracker.available = True
            tracker.warming = False
