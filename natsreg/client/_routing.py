"""Routing one call: pick an instance (or the queue group) → send → record what came of it,
and the retry loop around that. Reads the views (:mod:`._views`); owns the per-instance figures
(:class:`InstanceStats`), the circuit breakers and the client-side bulkhead.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from .. import _figures, subjects, wire
from ..errors import (
    BUDGET_HEADER,
    REQUEST_ID_HEADER,
    BulkheadFullError,
    CircuitOpenError,
    NoInstanceError,
    RequestError,
    RequestTimeoutError,
    ServiceError,
)
from ._balance import Balancer, InstanceStats
from ._breaker import Breaker, BreakerConfig
from ._retry import RetryPolicy, is_retryable
from ._target import Select, Target, describe
from ._transport import Reply, Transport
from ._views import Views


class _Route(NamedTuple):
    subject: str
    instance: wire.InstanceView | None
    breaker: Breaker
    #: What the instance that will run the call declares (for the queue group: what every
    #: known instance declares).
    idempotent: bool


class _Matches(NamedTuple):
    instances: list[wire.InstanceView]
    #: Ids of the instances that declare the endpoint idempotent.
    idempotent_ids: frozenset[str]
    #: Every known instance serving the endpoint declares it idempotent (and there is one).
    all_idempotent: bool
    #: Where plain ADR-32 instances that match announced the endpoint (their ``$SRV.INFO``
    #: subject, served in their queue group), when no natsreg instance matches; None if
    #: none does, or if that subject also reaches instances that do not match.
    plain_subject: str | None = None


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
        self.prefix = views.prefix
        self.breaker = breaker
        self.max_in_flight = max_in_flight
        self._views = views
        self._catalog = views.catalog
        self._transport = transport
        self._clock = clock
        # Request ids: 48 random bits per client, then a counter in hex: unique enough, and
        # short, because nats-py's header encoding costs about 0.1 µs per character of value
        # on every request (a 29-character id cost 3.3 µs a call; this one, about 1.3).
        self._id_prefix = secrets.token_urlsafe(6)
        self._ids = itertools.count(1)
        self._balancer = Balancer(clock=clock)
        self._stats: dict[str, InstanceStats] = {}
        self._breakers: dict[tuple[str, str], Breaker] = {}
        self._service_in_flight: dict[str, int] = {}
        # (service, endpoint, subject, constraint, selector) -> (catalog revision, matches)
        self._matches: dict[tuple[Any, ...], tuple[int, _Matches]] = {}
        #: For Prometheus (natsreg._collector): calls by subject, and the service each
        #: breaker's target belongs to.
        self.calls: dict[str, _figures.CallFigures] = {}
        self.breaker_services: dict[tuple[str, str], str] = {}
        self._recording = _figures.enabled()
        if self._recording:
            _figures.LIVE.clients.add(self)

    @property
    def breakers(self) -> dict[tuple[str, str], Breaker]:
        """Every breaker, by (instance id or ``queue``, endpoint or subject)."""
        return self._breakers

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
            "breakers": {f"{a}/{b}": br.snapshot() for (a, b), br in self._breakers.items()},
            # View messages dropped by reason, and reconciles with a registry snapshot.
            "dropped": dict(self._catalog.dropped),
            "reconciled": dict(self._views.reconciler.applied),
        }

    async def call(
        self,
        target: Target,
        data: bytes,
        headers: Mapping[str, str] | None,
        deadline: float,
        policy: RetryPolicy,
        strategy: str,
        key: str | None,
        select: Select,
        idempotent: bool | None,
    ) -> Reply:
        """One call: its attempts, each routed, sent and recorded, until one succeeds, the
        error is not worth retrying, or the attempts or the budget run out."""
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
                    None if fallback else self._route(target, strategy, key, select, tried, False)
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
                sent = _headers(headers, attempt_s, None if retry_timeouts else request_id)
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
    ) -> _Route:
        # Where the next attempt goes when the fast path in call() could not say: the queue
        # group as the last resort, or after waiting for the service's view (its first call).
        if fallback:
            return self._queue_route(target.subject, self._matching(target, select).all_idempotent)
        assert target.service is not None
        await self._views.wait(target.service, deadline)
        route = self._route(target, strategy, key, select, tried, True)
        assert route is not None
        return route

    async def _send(
        self,
        route: _Route,
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

    def _failed(self, route: _Route, stats: InstanceStats | None, exc: RequestError) -> None:
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

    def _route(
        self,
        target: Target,
        strategy: str,
        key: str | None,
        select: Select,
        tried: list[str],
        settled: bool,
    ) -> _Route | None:
        # Decided without awaiting in the common cases: a view in place, or none to be had
        # yet. None when the service's view is still to be fetched (Views.wait); with
        # ``settled`` the view is taken as it is.
        narrowed = target.constraint is not None or bool(select)
        if target.service is None or (strategy == "queue" and not narrowed):
            return self._queue_route(target.subject, False)
        has_view = self._views.ready(target.service, settled)
        if has_view is None:
            return None
        if not has_view:
            if narrowed:
                raise NoInstanceError(
                    f"{target.subject!r}: version constraints and selectors need a registry "
                    f"node on prefix {self.prefix!r} ('natsreg registry')",
                    subject=target.subject,
                )
            return self._queue_route(target.subject, False)
        matches = self._matching(target, select)
        if not matches.instances:
            if matches.plain_subject is not None:
                return self._queue_route(matches.plain_subject, False)
            if narrowed:
                raise NoInstanceError(
                    f"no instance of {target.service!r} matches {describe(target, select)}",
                    subject=target.subject,
                )
            # The registry may not know the instance yet, or it is a plain ADR-32 service
            # (no direct subject): NATS' queue group still knows who serves.
            return self._queue_route(target.subject, matches.all_idempotent)
        return self._instance_route(target, strategy, key, matches, tried)

    def _queue_route(self, subject: str, idempotent: bool) -> _Route:
        breaker = self._breaker("queue", subject, subject.partition(".")[0])
        if not breaker.allow():
            raise CircuitOpenError(
                f"the circuit breaker of {subject!r} is open",
                retry_at=breaker.retry_at,
                retry_in_s=max(0.0, breaker.retry_at - self._clock()),
                subject=subject,
            )
        return _Route(subject, None, breaker, idempotent)

    def _instance_route(
        self, target: Target, strategy: str, key: str | None, found: _Matches, tried: list[str]
    ) -> _Route:
        endpoint = target.endpoint or ""
        matches = found.instances
        usable = [m for m in matches if self._breaker(m.id, endpoint, m.name).available()]
        if not usable:
            retry_at = min(self._breaker(m.id, endpoint, m.name).retry_at for m in matches)
            raise CircuitOpenError(
                f"the circuit breakers of all {len(matches)} matching instances of "
                f"{target.service!r} are open for {endpoint!r}",
                retry_at=retry_at,
                retry_in_s=max(0.0, retry_at - self._clock()),
                subject=target.subject,
            )
        if strategy == "sticky":
            # The key's instance, unless its breaker is open: moving keys away on every
            # doubt would defeat the point of stickiness.
            candidates = usable
        else:
            # Preferred: healthy, not avoided since a failure, not tried in this call. Each
            # rule is dropped in turn when nothing is left: a doubtful instance beats none.
            fresh = [m for m in usable if m.id not in tried] or usable
            now = self._clock()
            candidates = [m for m in fresh if self._sound(m, now)] or fresh
        chosen = self._balancer.pick(
            "auto" if strategy == "queue" else strategy,
            candidates,
            self._stats,
            key=key,
            group=target.subject,
        )
        breaker = self._breaker(chosen.id, endpoint, chosen.name)
        breaker.allow()
        # Idempotence is what the instance that runs the call declares: another instance (a
        # fake one, say) saying so must not make this one's timeouts retried.
        return _Route(
            subjects.direct_subject(self.prefix, chosen.name, chosen.id, endpoint),
            chosen,
            breaker,
            chosen.id in found.idempotent_ids,
        )

    def _sound(self, instance: wire.InstanceView, now: float) -> bool:
        if instance.health == "critical":
            return False
        stats = self._stats.get(instance.id)
        return stats is None or stats.sound(instance.seq, now)

    def _matching(self, target: Target, select: Select) -> _Matches:
        assert target.service is not None
        instances = self._catalog.instances(target.service)
        cache_key = (target.service, target.endpoint, target.subject, target.constraint, select)
        cached = self._matches.get(cache_key)
        if cached is not None and cached[0] == self._catalog.revision:
            return cached[1]
        matches = []
        idempotent_ids = []
        serving = 0
        # Plain ADR-32 subjects: announced for the endpoint by a matching instance, and
        # served by some instance that does not match.
        plain: list[str] = []
        plain_foreign: set[str] = set()
        for i in instances:
            wanted = (target.constraint is None or target.constraint.matches(i.version)) and all(
                i.metadata.get(k) == v for k, v in select
            )
            if not wanted:
                # A request on a subject reaches whichever instance serves there: a plain
                # ADR-32 subject is usable only if none of them is one of these.
                plain_foreign.update(e.subject for e in i.endpoints)
                continue
            if i.kind == "micro":
                # No direct subject: the one it announced, in its queue group.
                for e in i.endpoints:
                    if e.name == target.endpoint:
                        serving += 1
                        plain.append(e.subject)
                        break
                continue
            for e in i.endpoints:
                # A plain subject names the endpoint served there; the constraint form
                # names the endpoint itself.
                if e.name == target.endpoint and (
                    target.constraint is not None or e.subject == target.subject
                ):
                    serving += 1
                    if e.idempotent:
                        idempotent_ids.append(i.id)
                    matches.append(i)
                    break
        if len(self._matches) > 4096:
            self._matches.clear()
        found = _Matches(
            matches,
            frozenset(idempotent_ids),
            serving > 0 and len(idempotent_ids) == serving,
            _plain_subject(plain, plain_foreign),
        )
        self._matches[cache_key] = (self._catalog.revision, found)
        return found

    def _breaker(self, target: str, endpoint: str, service: str) -> Breaker:
        breaker = self._breakers.get((target, endpoint))
        if breaker is None:
            if len(self._breakers) > 10_000:
                # Bounded: a closed breaker holds nothing worth keeping.
                for k in [k for k, b in self._breakers.items() if b.state == "closed"]:
                    del self._breakers[k]
                    self.breaker_services.pop(k, None)
            breaker = Breaker(self.breaker, clock=self._clock)
            self._breakers[(target, endpoint)] = breaker
            self.breaker_services[(target, endpoint)] = service
        return breaker


def _plain_subject(announced: list[str], foreign: set[str]) -> str | None:
    # The subject most matching plain instances announced (the first, on a tie), unless an
    # instance that does not match serves there too.
    usable = [s for s in announced if s not in foreign]
    return max(usable, key=usable.count) if usable else None


def _headers(
    headers: Mapping[str, str] | None, attempt_s: float, request_id: str | None
) -> dict[str, str]:
    # What one attempt sends: the caller's headers, its budget, and the call's id unless the
    # endpoint is idempotent: running it twice does no harm, and the service keeps no memory
    # of such calls, so the id (about 14k instructions a request for nats-py to parse on the
    # service, bench/RESULTS.md) would buy nothing.
    budget = str(int(attempt_s * 1000))
    if request_id is None:
        return {**headers, BUDGET_HEADER: budget} if headers else {BUDGET_HEADER: budget}
    return (
        {**headers, BUDGET_HEADER: budget, REQUEST_ID_HEADER: request_id}
        if headers
        else {BUDGET_HEADER: budget, REQUEST_ID_HEADER: request_id}
    )
