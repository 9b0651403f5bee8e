"""Routing one call: pick an instance or the queue group (:mod:`._chooser`) → send → record
what came of it, and the retry loop around that. Owns the per-instance figures
(:class:`InstanceStats`) and the client-side bulkhead.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from nats.aio.client import Client as NATS

from .. import _figures, _probes
from .._trace import TRACEPARENT
from ..errors import (
    BUDGET_HEADER,
    REQUEST_ID_HEADER,
    BulkheadFullError,
    NoInstanceError,
    RequestError,
    RequestTimeoutError,
    ServiceError,
)
from ._balance import InstanceStats
from ._breaker import Breaker, BreakerConfig
from ._chooser import Route, RouteChooser
from ._mux import HeaderLines
from ._retry import RetryPolicy, is_retryable
from ._target import Select, Target
from ._transport import Reply, Transport
from ._views import Views


class Router:
    """Routes and sends the calls of one client (see :meth:`natsreg.Client.request`)."""

    def __init__(
        self,
        views: Views,
        transport: Transport,
        *,
        breaker: BreakerConfig,
        max_in_flight: int | None,
        clock: Callable[[], float],
    ) -> None:
        self.breaker = breaker
        self.max_in_flight = max_in_flight
        self._views = views
        self._catalog = views.catalog
        self._transport = transport
        self._clock = clock
        self._stats: dict[str, InstanceStats] = {}
        self._chooser = RouteChooser(views, self._stats, breaker=breaker, clock=clock)
        # Request ids: 48 random bits per client, then a counter in hex: unique enough, and
        # short, because nats-py's header encoding costs about 0.1 µs per character of value
        # on every request (a 29-character id cost 3.3 µs a call; this one, about 1.3).
        self._id_prefix = secrets.token_urlsafe(6)
        self._ids = itertools.count(1)
        self._service_in_flight: dict[str, int] = {}
        #: For Prometheus (natsreg._collector): calls by subject, and the service each
        #: breaker's target belongs to (the chooser's, which it keeps up to date).
        self.calls: dict[str, _figures.CallFigures] = {}
        self.breaker_services = self._chooser.breaker_services
        self._recording = _figures.enabled()
        if self._recording:
            _figures.LIVE.clients.add(self)

    @property
    def nc(self) -> NATS:
        """The connection the calls are sent on."""
        return self._transport.nc

    @property
    def closed(self) -> bool:
        """Whether the client was closed (:meth:`natsreg.Client.aclose`)."""
        return self._views.closed

    def readiness(self) -> str | None:
        """See :meth:`natsreg.Client.readiness`."""
        return _probes.nats_problem(self._transport.nc) or self._views.stale()

    @property
    def breakers(self) -> dict[tuple[str, str], Breaker]:
        """Every breaker, by (instance id or ``queue``, endpoint or subject)."""
        return self._chooser.breakers

    def stats(self) -> dict[str, Any]:
        """See :meth:`natsreg.Client.stats`."""
        return {
            "in_flight": dict(self._service_in_flight),
            "instances": {
                i: {
                    "in_flight": s.in_flight,
                    "ewma_ms": round(s.ewma_s * 1000, 3),
                    "calls": s.calls,
                    "failures": s.failures,
                }
                for i, s in self._stats.items()
            },
            "breakers": {f"{a}/{b}": br.snapshot() for (a, b), br in self.breakers.items()},
            # View messages dropped by reason, and reconciles with a registry snapshot.
            "dropped": dict(self._catalog.dropped),
            "reconciled": dict(self._views.reconciler.applied),
        }

    async def call(
        self,
        target: Target,
        data: bytes,
        headers: Mapping[str, str] | None,
        traceparent: str | None,
        deadline: float,
        policy: RetryPolicy,
        strategy: str,
        key: str | None,
        select: Select,
        idempotent: bool | None,
    ) -> Reply:
        """One call: its attempts, each routed, sent and recorded, until one succeeds, the
        error is not worth retrying, or the attempts or the budget run out. ``traceparent``:
        the header natsreg made for the call, if any (the caller's own is in ``headers``)."""
        figures = None
        if self._recording:
            # The look-up first: the call that makes them runs once per subject.
            figures = self.calls.get(target.subject) or _figures.call_figures(
                self.calls, target.subject, target.service, target.endpoint
            )
        began = self._clock()
        bulkhead = target.service or target.subject
        in_flight = self._service_in_flight.get(bulkhead, 0)
        if self.max_in_flight is not None and in_flight >= self.max_in_flight:
            if figures is not None:
                figures.failures["rejected"] += 1
                figures.bulkhead += 1
            raise BulkheadFullError(
                f"{in_flight} calls to {bulkhead!r} are already in flight from this client "
                f"(max_in_flight={self.max_in_flight}); not sent",
                subject=target.subject,
            )
        self._service_in_flight[bulkhead] = in_flight + 1
        request_id = headers.get(REQUEST_ID_HEADER) if headers else None
        if not request_id:
            request_id = f"{self._id_prefix}{next(self._ids):x}"
        tried: list[str] = []
        attempt = 0
        # Every direct attempt so far found nobody subscribed: the queue group is the last try.
        unserved = True
        fallback = False
        try:
            while True:
                attempt += 1
                # Decided without a coroutine in the common case (a view in place, or none to
                # be had): this runs on every call.
                route = (
                    None
                    if fallback
                    else self._chooser.route(target, strategy, key, select, tried, False)
                )
                if route is None:
                    route = await self._pick(
                        target, strategy, key, select, tried, fallback, deadline
                    )
                retry_timeouts = route.idempotent if idempotent is None else idempotent
                started = self._clock()
                remaining = deadline - started
                if remaining <= 0:
                    route.breaker.release()
                    raise RequestTimeoutError(
                        f"no reply on {target.subject!r} within the call's budget",
                        subject=target.subject,
                    )
                attempt_s = policy.attempt_timeout(remaining, attempt, retry_timeouts)
                sent = _headers(
                    headers, attempt_s, None if retry_timeouts else request_id, traceparent
                )
                try:
                    reply = await self._send(route, data, sent, attempt_s, started, tried)
                    if figures is not None:
                        figures.ok += 1
                        figures.latency.observe(self._clock() - began)
                    return reply
                except RequestError as exc:
                    unserved = (
                        unserved and route.instance is not None and isinstance(exc, NoInstanceError)
                    )
                    if (
                        unserved
                        and attempt >= policy.attempts
                        and target.constraint is None
                        and not select
                    ):
                        # Nobody subscribed on any direct subject tried (instances that
                        # announce but never serve): nothing ran, and the queue group
                        # reaches whoever truly serves.
                        fallback, unserved = True, False
                    elif attempt >= policy.attempts or not is_retryable(exc, retry_timeouts):
                        raise
                    delay = policy.backoff(attempt)
                    if self._clock() + delay >= deadline:
                        raise
                    if figures is not None:
                        figures.retries += 1
                    if delay:
                        await asyncio.sleep(delay)
        except RequestError as exc:
            if figures is not None:
                outcome = _figures.client_outcome(exc)
                figures.failures[outcome] += 1
                if outcome != "rejected":
                    figures.latency.observe(self._clock() - began)
            raise
        finally:
            self._service_in_flight[bulkhead] -= 1

    async def _pick(
        self,
        target: Target,
        strategy: str,
        key: str | None,
        select: Select,
        tried: list[str],
        fallback: bool,
        deadline: float,
    ) -> Route:
        # Where the next attempt goes when the fast path in call() could not say: the queue
        # group as the last resort, or after waiting for the service's view (its first call).
        if fallback:
            return self._chooser.fallback(target, select)
        assert target.service is not None
        await self._views.wait(target.service, deadline)
        if self._views.catalog.unproven:
            # Is an instance silent, or has this client not read what it said? Known after
            # one round trip to the server.
            await self._views.caught_up(deadline)
        route = self._chooser.route(target, strategy, key, select, tried, True)
        assert route is not None
        return route

    async def _send(
        self,
        route: Route,
        data: bytes,
        sent: dict[str, str],
        attempt_s: float,
        started: float,
        tried: list[str],
    ) -> Reply:
        # One attempt on ``route``, and what it says of the target: its breaker and figures.
        instance = route.instance
        stats = None
        if instance is not None:
            stats = self._stats.get(instance.id)
            if stats is None:
                stats = self._stats[instance.id] = InstanceStats()
            stats.in_flight += 1
            tried.append(instance.id)
            self._views.expiry.arm()
        try:
            reply = await self._transport.request(
                route.subject, data, attempt_s, sent, None if instance is None else instance.id
            )
        except RequestError as exc:
            self._failed(route, stats, exc)
            raise
        finally:
            if stats is not None:
                stats.in_flight -= 1
        route.breaker.record(True)
        if stats is not None:
            stats.calls += 1
            stats.observe(self._clock() - started)
        return reply

    def _failed(self, route: Route, stats: InstanceStats | None, exc: RequestError) -> None:
        # What the failure says about the target: a timeout, "no responders" or a 5xx count
        # against it; a 4xx is the caller's fault and counts as a working target.
        silent = isinstance(exc, (RequestTimeoutError, NoInstanceError))
        if isinstance(exc, ServiceError):
            route.breaker.record(exc.code < 500)
        elif silent:
            route.breaker.record(False)
        else:
            route.breaker.release()
        if stats is not None and route.instance is not None:
            stats.calls += 1
            if silent or (isinstance(exc, ServiceError) and exc.code >= 500):
                stats.failures += 1
            if isinstance(exc, NoInstanceError):
                stats.unserved(self._clock())
            elif silent:
                # Not chosen again until it proves it is alive with a heartbeat newer than
                # what we knew: a frozen or killed instance never does, and leaves the view at
                # expiry; a merely slow one is back within one heartbeat.
                stats.avoid_seq = route.instance.seq
            if silent:
                # It may have gone without the view hearing of it (a lost event).
                self._views.heal(route.instance.name)


def _headers(
    headers: Mapping[str, str] | None,
    attempt_s: float,
    request_id: str | None,
    traceparent: str | None,
) -> dict[str, str]:
    # What one attempt sends: the caller's headers, its budget, the call's id unless the
    # endpoint is idempotent (running it twice does no harm, and the service keeps no memory
    # of such calls, so the id, about 14k instructions a request for nats-py to parse on the
    # service, bench/RESULTS.md, would buy nothing), and the trace natsreg continues. What
    # natsreg writes itself goes as the lines of one header (HeaderLines).
    lines = str(int(attempt_s * 1000))
    if request_id is not None and headers and headers.get(REQUEST_ID_HEADER) == request_id:
        request_id = None  # the caller's own: it goes in their headers, as they wrote it
    if request_id is not None:
        lines = f"{lines}\r\n{REQUEST_ID_HEADER}: {request_id}"
    if traceparent is not None:
        lines = f"{lines}\r\n{TRACEPARENT}: {traceparent}"
    if not headers:
        return {BUDGET_HEADER: HeaderLines(lines)}
    if BUDGET_HEADER in headers or (request_id is not None and REQUEST_ID_HEADER in headers):
        # The lines say these now: sent twice, which one a service read would depend on
        # their order.
        carried = {BUDGET_HEADER} if request_id is None else {BUDGET_HEADER, REQUEST_ID_HEADER}
        headers = {k: v for k, v in headers.items() if k not in carried}
    return {BUDGET_HEADER: HeaderLines(lines), **headers}
