"""The caller's side: requests to endpoints, and questions to the registry.

    client = natsreg.Client(nc)
    reply = await client.request("user-service.users", {"id": 1}, timeout_s=2.0)
    user = reply.json()

Resilient calls (docs/operations.md, "Resilient calls"): every request carries its remaining
budget; failures that are safe to repeat are retried on another instance; when a registry
node answers, the client keeps a live local view of each service it calls and addresses a
chosen instance directly, avoiding instances that are critical, silent or behind an open
circuit breaker. Without a registry, requests ride the queue group as plain NATS requests.

The view is started lazily, on the first call to a service, and lives in NATS subscriptions
(no task of ours runs between calls), so ``natsreg.Client(nc)`` works without ``async with``;
``async with natsreg.Client(nc) as client`` (or :meth:`Client.aclose`) ends those
subscriptions when the client is done, rather than when the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, cast

import anyio
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from . import _deadline, errors, subjects, wire
from ._balance import STRATEGIES, Balancer, InstanceStats, check_strategy
from ._breaker import Breaker, BreakerConfig
from ._catalog import Catalog
from ._codec import Message, to_bytes
from ._healing import ExpiryWatch, Reconciler
from ._mux import Abandoned, ReplyMux
from ._retry import RetryPolicy, is_retryable
from ._semver import Constraint, parse_constraint
from .errors import (BUDGET_HEADER, REQUEST_ID_HEADER, BulkheadFullError, CircuitOpenError,
                     ConfigError, NoInstanceError, OutcomeUnknownError, RequestError,
                     RequestTimeoutError, ServiceError)

__all__ = ["STRATEGIES", "BreakerConfig", "Client", "Reply", "RetryPolicy"]

#: Services whose view one client keeps; calls to further services ride the queue group.
MAX_VIEWED_SERVICES = 256
#: Set on a reply that a ``fallback=`` callable produced instead of the service.
FALLBACK_HEADER = "Natsreg-Fallback"
#: The first call to a service waits for the registry's snapshot at most this share of its
#: remaining budget (and at most ``view_wait_s``): the view only picks the instance, the
#: request itself needs the rest.
VIEW_WAIT_SHARE = 0.25


class Reply(Message):
    """A successful reply: ``data``, ``headers``, ``json()``, ``decode(Type)``, ``text()``."""

    __slots__ = ()


class _Target(NamedTuple):
    subject: str
    service: str | None
    endpoint: str | None
    constraint: Constraint | None


@functools.lru_cache(maxsize=4096)
def _parse_target(text: str) -> _Target:
    # ``service.endpoint`` or ``service@constraint.endpoint``; the constraint may hold dots
    # (``^1.2``), so the endpoint is what follows the last one.
    if "@" in text:
        service, _, rest = text.partition("@")
        constraint, _, endpoint = rest.rpartition(".")
        if not (subjects.is_valid_token(service) and subjects.is_valid_token(endpoint)
                and constraint):
            raise ConfigError(f"{text!r} is not '<service>@<version constraint>.<endpoint>' "
                              "(e.g. 'user-service@^1.2.users')")
        subject = _checked_subject(subjects.endpoint_subject(service, endpoint))
        return _Target(subject, service, endpoint, parse_constraint(constraint))
    subject = _checked_subject(text)
    tokens = subject.split(".")
    if len(tokens) == 2:
        return _Target(subject, tokens[0], tokens[1], None)
    return _Target(subject, None, None, None)


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


class _Tracker:
    """The subscriptions and bootstrap state of one service's view."""

    __slots__ = ("available", "retry_at", "subs", "task")

    def __init__(self) -> None:
        self.available = False
        self.retry_at = 0.0
        self.subs: list[Subscription] = []
        self.task: asyncio.Task[None] | None = None


@functools.lru_cache(maxsize=4096)
def _checked_subject(subject: str) -> str:
    # Cached: the same few subjects are requested over and over, and a bad one raises anyway.
    if not subjects.is_valid_subject(subject) or subjects.is_reserved(subject):
        raise ConfigError(
            f"{subject!r} is not a subject natsreg can request: use '<service>.<endpoint>' "
            "with letters, digits, '-' and '_' (no spaces, '*', '>' or leading '$')"
        )
    return subject


class Client(anyio.AsyncContextManagerMixin):
    """Sends requests on ``nc``. The connection stays the caller's to close.

    ``timeout_s`` is the default for :meth:`request`; ``prefix`` must match the registry
    nodes' when asking them questions. ``strategy``, ``retry`` and ``breaker`` are the
    defaults of every call (see :meth:`request`); ``max_in_flight`` caps the calls in flight
    from this client to one service (the client-side bulkhead; None: no cap).
    ``missed_heartbeats`` must match the registry's: an instance this client has not heard
    from for that many heartbeat intervals (plus half of one) gets no more calls.
    ``view_wait_s`` is how long the first call to a service waits for the registry's
    snapshot of it before going to the queue group instead (never more than a quarter of
    that call's remaining budget).
    """

    def __init__(
        self,
        nc: NATS,
        *,
        timeout_s: float = 5.0,
        prefix: str = subjects.DEFAULT_PREFIX,
        strategy: str = "auto",
        retry: RetryPolicy | None = None,
        breaker: BreakerConfig | None = None,
        max_in_flight: int | None = None,
        missed_heartbeats: float = 2.0,
        view_wait_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        subjects.check_prefix(prefix)
        if max_in_flight is not None and max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.timeout_s = timeout_s
        self.prefix = prefix
        self.strategy = check_strategy(strategy)
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or BreakerConfig()
        self.max_in_flight = max_in_flight
        self.view_wait_s = view_wait_s
        self._nc = nc
        self._clock = clock
        self._catalog = Catalog(missed_heartbeats=missed_heartbeats, clock=clock,
                                on_lost=self._lost)
        self._reconciler = Reconciler(
            functools.partial(self.instances, timeout_s=2.0), self._reconciled, clock=clock)
        # Request ids: 48 random bits per client, then a counter in hex: unique enough, and
        # short, because nats-py's header encoding costs about 0.1 µs per character of value
        # on every request (a 29-character id cost 3.3 µs a call; this one, about 1.3).
        self._id_prefix = secrets.token_urlsafe(6)
        self._ids = itertools.count(1)
        self._balancer = Balancer(clock=clock)
        self._trackers: dict[str, _Tracker] = {}
        self._stats: dict[str, InstanceStats] = {}
        self._breakers: dict[tuple[str, str], Breaker] = {}
        self._service_in_flight: dict[str, int] = {}
        # (service, endpoint, subject, constraint, selector) -> (catalog revision, matches)
        self._matches: dict[tuple[Any, ...], tuple[int, _Matches]] = {}
        self._mux = ReplyMux(nc)
        self._expiry = ExpiryWatch(self._catalog, lambda: self._mux.groups() > 0, clock=clock)
        self._closed = False

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Client]:
        try:
            yield self
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        """End the registry-view subscriptions and the reply inbox (after the calls in flight
        on it end, each within its own timeout); safe to call twice. Calls still work after,
        on the queue group and nats-py's own request inbox."""
        self._closed = True
        await self._reconciler.aclose()
        await self._mux.aclose()
        self._expiry.close()
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
        for service in self._catalog.services():
            self._catalog.forget(service)

    async def request(
        self,
        subject: str,
        payload: Any = None,
        *,
        timeout_s: float | None = None,
        headers: Mapping[str, str] | None = None,
        strategy: str | None = None,
        key: str | None = None,
        select: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        idempotent: bool | None = None,
        fallback: Callable[[Exception], Any] | None = None,
    ) -> Reply:
        """Send ``payload`` to ``subject`` and return the reply.

        ``payload`` may be bytes (sent untouched), str, None, or anything msgspec encodes
        to JSON (dict, list, Struct, dataclass). Raises :class:`~natsreg.NoInstanceError`,
        :class:`~natsreg.RequestTimeoutError`, :class:`~natsreg.ServiceError`,
        :class:`~natsreg.CircuitOpenError`, :class:`~natsreg.BulkheadFullError` or
        :class:`~natsreg.OutcomeUnknownError` (the instance went down before it answered).

        ``subject`` is ``service.endpoint``, or ``service@constraint.endpoint`` to reach only
        instances whose version satisfies the constraint (``user-service@^1.2.users``);
        ``select`` keeps only instances whose metadata holds every given pair. ``strategy``
        is one of :data:`STRATEGIES` (``key`` is the sticky key); ``retry`` replaces the
        client's policy for this call; ``idempotent`` overrides what the instance that runs
        the call declares for the endpoint. Every attempt carries the same
        ``Natsreg-Request-Id`` header (``headers`` may set it; else a fresh one per call), by
        which a service answers a repeat with its first result.
        ``timeout_s`` bounds the whole call, retries included, and never exceeds the deadline
        of the request being handled when called from inside a handler. ``fallback(error)``
        runs instead of failing fast (open breaker, full bulkhead); its return value becomes
        the reply's payload.
        """
        target = _parse_target(subject)
        if strategy is not None:
            check_strategy(strategy)
        now = self._clock()
        deadline = now + (self.timeout_s if timeout_s is None else timeout_s)
        inherited = _deadline.current.get()
        if inherited is not None and inherited < deadline:
            deadline = inherited
            if deadline <= now:
                raise RequestTimeoutError(
                    f"the deadline of the request being handled has passed; {subject!r} "
                    "was not sent", subject=target.subject)
        policy = retry or self.retry
        if policy.budget_s is not None:
            deadline = min(deadline, now + policy.budget_s)
        try:
            return await self._call(
                target, to_bytes(payload), headers, deadline, policy,
                strategy or self.strategy, key,
                tuple(sorted(select.items())) if select else (), idempotent)
        except (CircuitOpenError, BulkheadFullError) as exc:
            if fallback is None:
                raise
            value = fallback(exc)
            if inspect.isawaitable(value):
                value = await value
            return Reply(target.subject, to_bytes(value), {FALLBACK_HEADER: "true"})

    def stats(self) -> dict[str, Any]:
        """This client's figures, JSON-ready: calls in flight per service, per instance
        figures (in flight, latency EWMA, calls, failures) and every breaker's state."""
        return {
            "in_flight": dict(self._service_in_flight),
            "instances": {
                i: {"in_flight": s.in_flight, "ewma_ms": round(s.ewma_s * 1000, 3),
                    "calls": s.calls, "failures": s.failures}
                for i, s in self._stats.items()
            },
            "breakers": {f"{a}/{b}": br.snapshot() for (a, b), br in self._breakers.items()},
            # View messages dropped by reason, and reconciles with a registry snapshot.
            "dropped": dict(self._catalog.dropped),
            "reconciled": dict(self._reconciler.applied),
        }

    # -- one call ----------------------------------------------------------------------------

    async def _call(self, target: _Target, data: bytes, headers: Mapping[str, str] | None,
                    deadline: float, policy: RetryPolicy, strategy: str, key: str | None,
                    select: tuple[tuple[str, str], ...], idempotent: bool | None) -> Reply:
        bulkhead = target.service or target.subject
        in_flight = self._service_in_flight.get(bulkhead, 0)
        if self.max_in_flight is not None and in_flight >= self.max_in_flight:
            raise BulkheadFullError(
                f"{in_flight} calls to {bulkhead!r} are already in flight from this client "
                f"(max_in_flight={self.max_in_flight}); not sent", subject=target.subject)
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
                route: _Route | None
                if fallback:
                    route = self._queue_route(
                        target.subject, self._matching(target, select).all_idempotent)
                else:
                    route = self._route(target, strategy, key, select, tried, False)
                if route is None:
                    await self._has_view(target.service, deadline)  # type: ignore[arg-type]
                    route = self._route(target, strategy, key, select, tried, True)
                    assert route is not None
                retry_timeouts = route.idempotent if idempotent is None else idempotent
                started = self._clock()
                remaining = deadline - started
                if remaining <= 0:
                    route.breaker.release()
                    raise RequestTimeoutError(
                        f"no reply on {target.subject!r} within the call's budget",
                        subject=target.subject)
                attempt_s = policy.attempt_timeout(remaining, attempt, retry_timeouts)
                budget = str(int(attempt_s * 1000))
                if retry_timeouts:
                    # Idempotent: running it twice does no harm, and the service keeps no
                    # memory of such calls, so the id (about 14k instructions a request for
                    # nats-py to parse on the service, bench/RESULTS.md) would buy nothing.
                    sent = ({**headers, BUDGET_HEADER: budget} if headers
                            else {BUDGET_HEADER: budget})
                else:
                    sent = ({**headers, BUDGET_HEADER: budget, REQUEST_ID_HEADER: request_id}
                            if headers else
                            {BUDGET_HEADER: budget, REQUEST_ID_HEADER: request_id})
                instance = route.instance
                stats = None
                if instance is not None:
                    stats = self._stats.get(instance.id)
                    if stats is None:
                        stats = self._stats[instance.id] = InstanceStats()
                    stats.in_flight += 1
                    tried.append(instance.id)
                    self._expiry.arm()
                try:
                    reply = await self._request(route.subject, data, attempt_s, sent,
                                                None if instance is None else instance.id)
                except RequestError as exc:
                    self._failed(route, stats, exc)
                    unserved = unserved and instance is not None and isinstance(
                        exc, NoInstanceError)
                    if (unserved and attempt >= policy.attempts and target.constraint is None
                            and not select):
                        # Nobody subscribed on any direct subject tried (instances that
                        # announce but never serve): nothing ran, and the queue group
                        # reaches whoever truly serves.
                        fallback, unserved = True, False
                    elif attempt >= policy.attempts or not is_retryable(exc, retry_timeouts):
                        raise
                    delay = policy.backoff(attempt)
                    if self._clock() + delay >= deadline:
                        raise
                    if delay:
                        await asyncio.sleep(delay)
                    continue
                finally:
                    if stats is not None:
                        stats.in_flight -= 1
                route.breaker.record(True)
                if stats is not None:
                    stats.calls += 1
                    stats.observe(self._clock() - started)
                return reply
        finally:
            self._service_in_flight[bulkhead] -= 1

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
                self._heal(route.instance.name)

    def _route(self, target: _Target, strategy: str, key: str | None,
               select: tuple[tuple[str, str], ...], tried: list[str], settled: bool
               ) -> _Route | None:
        # Decided without awaiting in the common cases: a view in place, or none to be had
        # yet. None when the service's view is still to be fetched (see _await_view); with
        # ``settled`` the view is taken as it is.
        narrowed = target.constraint is not None or bool(select)
        if target.service is None or (strategy == "queue" and not narrowed):
            return self._queue_route(target.subject, False)
        tracker = self._trackers.get(target.service)
        if tracker is not None and tracker.available:
            has_view = True
        elif settled or (
                tracker is None and (self._closed or len(self._trackers) >= MAX_VIEWED_SERVICES)
        ) or (tracker is not None and tracker.task is None and self._clock() < tracker.retry_at):
            has_view = False
        else:
            return None
        if not has_view:
            if narrowed:
                raise NoInstanceError(
                    f"{target.subject!r}: version constraints and selectors need a registry "
                    f"node on prefix {self.prefix!r} ('natsreg registry')",
                    subject=target.subject)
            return self._queue_route(target.subject, False)
        matches = self._matching(target, select)
        if not matches.instances:
            if narrowed:
                raise NoInstanceError(
                    f"no instance of {target.service!r} matches "
                    f"{_describe(target, select)}", subject=target.subject)
            # The registry may not know the instance yet, or it is a plain ADR-32 service
            # (no direct subject): NATS' queue group still knows who serves.
            return self._queue_route(target.subject, matches.all_idempotent)
        return self._instance_route(target, strategy, key, matches, tried)

    def _queue_route(self, subject: str, idempotent: bool) -> _Route:
        breaker = self._breaker("queue", subject)
        if not breaker.allow():
            raise CircuitOpenError(
                f"the circuit breaker of {subject!r} is open", retry_at=breaker.retry_at,
                retry_in_s=max(0.0, breaker.retry_at - self._clock()), subject=subject)
        return _Route(subject, None, breaker, idempotent)

    def _instance_route(self, target: _Target, strategy: str, key: str | None,
                        found: _Matches, tried: list[str]) -> _Route:
        endpoint = target.endpoint or ""
        matches = found.instances
        usable = [m for m in matches if self._breaker(m.id, endpoint).available()]
        if not usable:
            retry_at = min(self._breaker(m.id, endpoint).retry_at for m in matches)
            raise CircuitOpenError(
                f"the circuit breakers of all {len(matches)} matching instances of "
                f"{target.service!r} are open for {endpoint!r}", retry_at=retry_at,
                retry_in_s=max(0.0, retry_at - self._clock()), subject=target.subject)
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
        chosen = cast(wire.InstanceView, self._balancer.pick(
            "auto" if strategy == "queue" else strategy,
            candidates, self._stats, key=key, group=target.subject))
        breaker = self._breaker(chosen.id, endpoint)
        breaker.allow()
        # Idempotence is what the instance that runs the call declares: another instance (a
        # fake one, say) saying so must not make this one's timeouts retried.
        return _Route(subjects.direct_subject(self.prefix, chosen.name, chosen.id, endpoint),
                      chosen, breaker, chosen.id in found.idempotent_ids)

    def _sound(self, instance: wire.InstanceView, now: float) -> bool:
        if instance.health == "critical":
            return False
        stats = self._stats.get(instance.id)
        return stats is None or stats.sound(instance.seq, now)

    def _matching(self, target: _Target, select: tuple[tuple[str, str], ...]) -> _Matches:
        assert target.service is not None
        instances = self._catalog.instances(target.service)
        cache_key = (target.service, target.endpoint, target.subject, target.constraint, select)
        cached = self._matches.get(cache_key)
        if cached is not None and cached[0] == self._catalog.revision:
            return cached[1]
        matches = []
        idempotent_ids = []
        serving = 0
        for i in instances:
            if target.constraint is not None and not target.constraint.matches(i.version):
                continue
            if any(i.metadata.get(k) != v for k, v in select):
                continue
            for e in i.endpoints:
                # A plain subject names the endpoint served there; the constraint form
                # names the endpoint itself.
                if e.name == target.endpoint and (
                        target.constraint is not None or e.subject == target.subject):
                    serving += 1
                    if e.idempotent:
                        idempotent_ids.append(i.id)
                    if i.kind == "natsreg":  # plain ADR-32 services have no direct subject
                        matches.append(i)
                    break
        if len(self._matches) > 4096:
            self._matches.clear()
        found = _Matches(matches, frozenset(idempotent_ids),
                         serving > 0 and len(idempotent_ids) == serving)
        self._matches[cache_key] = (self._catalog.revision, found)
        return found

    def _breaker(self, target: str, endpoint: str) -> Breaker:
        breaker = self._breakers.get((target, endpoint))
        if breaker is None:
            if len(self._breakers) > 10_000:
                # Bounded: a closed breaker holds nothing worth keeping.
                for k in [k for k, b in self._breakers.items() if b.state == "closed"]:
                    del self._breakers[k]
            breaker = Breaker(self.breaker, clock=self._clock)
            self._breakers[(target, endpoint)] = breaker
        return breaker

    # -- the registry view -------------------------------------------------------------------

    async def _has_view(self, service: str, deadline: float) -> bool:
        # Starts the view of ``service`` if need be and waits a while for the registry's
        # snapshot.
        tracker = self._trackers.get(service)
        if tracker is None:
            if self._closed or len(self._trackers) >= MAX_VIEWED_SERVICES:
                return False
            tracker = self._trackers[service] = _Tracker()
            self._catalog.track(service)
        if tracker.available:
            return True
        if tracker.task is None:
            if self._clock() < tracker.retry_at:
                return False
            tracker.task = asyncio.get_running_loop().create_task(
                self._bootstrap(service, tracker))
        task = tracker.task
        wait_s = min(self.view_wait_s, (deadline - self._clock()) * VIEW_WAIT_SHARE)
        if wait_s > 0:
            # asyncio.wait, not wait_for: giving up on the view must leave the bootstrap
            # running for later calls, and its end (aclose() cancels it) is not ours to raise.
            await asyncio.wait((task,), timeout=wait_s)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # a bug, not a missing registry
        return tracker.available

    async def _bootstrap(self, service: str, tracker: _Tracker) -> None:
        try:
            if not tracker.subs:
                on_message = functools.partial(self._on_view_message, tracker)
                for verb, tokens in (("events", (service,)), ("hb", (service, "*")),
                                     ("bye", (service, "*"))):
                    tracker.subs.append(await self._nc.subscribe(
                        subjects.control_subject(self.prefix, verb, *tokens), cb=on_message))
            # Subscribed first, then asked: no change between the two can be missed.
            self._catalog.apply_snapshot(await self.instances(service, timeout_s=2.0), service)
            tracker.available = True
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
        verb, *tokens = msg.subject[len(self.prefix) + 1:].split(".")
        heard = self._catalog.hear(verb, tokens, msg.data)
        if heard == "dropped":
            return
        if verb == "events":
            # An event shows a registry runs: the view fills in from its events.
            tracker.available = True
        if heard == "reconcile" and (tracker.available or verb == "events"):
            self._heal(tokens[0])

    def _heal(self, service: str) -> None:
        # Reconcile the view of ``service`` with a registry snapshot, soon (rate-limited).
        if not self._closed and service in self._trackers:
            self._reconciler.request(service)

    def _reconciled(self, service: str, snapshot: wire.Snapshot) -> None:
        tracker = self._trackers.get(service)
        if tracker is not None:
            self._catalog.reconcile(service, snapshot)
            tracker.available = True

    def _lost(self, instance_id: str) -> None:
        # The instance died (not a goodbye: a stopping instance still answers what it got).
        # Whatever it was running for us will never be answered.
        self._mux.abandon(instance_id)

    async def _request(
        self, subject: str, data: bytes, timeout_s: float, headers: dict[str, str] | None,
        instance_id: str | None = None,
    ) -> Reply:
        # The one place a request meets NATS: every attempt of request() and the CLI's
        # plain requests go through here. With ``instance_id``, the call ends at once when
        # the view learns that instance died (_lost).
        mux = self._mux
        try:
            if mux.closed:
                msg = await self._nc.request(subject, data, timeout=timeout_s, headers=headers)
            else:
                msg = await mux.request(subject, data, timeout_s, headers, instance_id)
        except Abandoned:
            raise OutcomeUnknownError(
                f"the instance serving {subject!r} went down before it answered: the call "
                "may or may not have run", subject=subject) from None
        except Exception as exc:
            raise errors.from_nats(exc, subject, timeout_s) from exc
        if msg.headers:
            error = errors.from_reply_headers(msg.headers, subject)
            if error is not None:
                raise error
        return Reply(subject, msg.data, msg.headers)

    # -- registry ----------------------------------------------------------------------------

    async def instances(
        self, service: str | None = None, *, timeout_s: float = 2.0
    ) -> wire.Snapshot:
        """Every instance a registry node knows (or those of ``service``)."""
        if service is None:
            subject = subjects.control_subject(self.prefix, "registry", "list")
        elif subjects.is_valid_token(service):
            subject = subjects.control_subject(self.prefix, "registry", "service", service)
        else:
            raise ConfigError(f"{service!r} is not a valid service name")
        return await self._ask_registry(subject, timeout_s)

    async def instance(self, instance_id: str, *, timeout_s: float = 2.0) -> wire.InstanceView:
        """One instance by id; raises :class:`~natsreg.ServiceError` (404) if unknown."""
        if not subjects.is_valid_token(instance_id):
            raise ConfigError(f"{instance_id!r} is not a valid instance id")
        subject = subjects.control_subject(self.prefix, "registry", "instance", instance_id)
        snapshot = await self._ask_registry(subject, timeout_s)
        if not snapshot.instances:
            raise errors.ServiceError(f"no instance {instance_id!r}", code=404, subject=subject)
        return snapshot.instances[0]

    async def services(self, *, timeout_s: float = 2.0) -> wire.ServiceList:
        """Every service at every version, summed over its instances (what ``natsreg ls``
        shows): one small answer, whatever the size of the fleet."""
        subject = subjects.control_subject(self.prefix, "registry", "services")
        try:
            reply = await self._request(subject, b"", timeout_s, None)
        except NoInstanceError as exc:
            raise self._no_registry(subject) from exc
        try:
            return wire.decode_service_list(reply.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RequestError(f"registry sent an unreadable answer: {exc}",
                               subject=subject) from exc

    def _no_registry(self, subject: str) -> NoInstanceError:
        return NoInstanceError(
            f"no registry node answers on prefix {self.prefix!r}: start one with "
            "'natsreg registry' (or 'natsreg up')", subject=subject)

    async def _ask_registry(self, subject: str, timeout_s: float) -> wire.Snapshot:
        # A large view comes as several chunks, each under the server's max_payload, the last
        # with more=false; a plain request() would keep only the first.
        inbox = self._nc.new_inbox()
        try:
            sub = await self._nc.subscribe(inbox)
        except nats.errors.Error as exc:
            raise errors.from_nats(exc, subject, timeout_s) from exc
        deadline = time.monotonic() + timeout_s
        instances: list[wire.InstanceView] = []
        try:
            try:
                await self._nc.publish(subject, b"", reply=inbox)
            except nats.errors.Error as exc:
                raise errors.from_nats(exc, subject, timeout_s) from exc
            while True:
                try:
                    msg = await sub.next_msg(timeout=max(deadline - time.monotonic(), 0.001))
                except nats.errors.Error as exc:  # a timeout, or the connection closed
                    raise errors.from_nats(exc, subject, timeout_s) from exc
                if msg.headers and msg.headers.get("Status") == "503":
                    raise self._no_registry(subject)
                error = errors.from_reply_headers(msg.headers, subject)
                if error is not None:
                    raise error
                try:
                    chunk = wire.decode_snapshot(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise RequestError(f"registry sent an unreadable answer: {exc}",
                                       subject=subject) from exc
                instances.extend(chunk.instances)
                if not chunk.more:
                    chunk.instances = instances
                    return chunk
        finally:
            if not self._nc.is_closed:
                # Closed: nats-py dropped the subscription already, and its unsubscribe()
                # would raise over whatever ended this ask (a cancellation, say).
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    async def watch(self, service: str | None = None) -> AsyncIterator[wire.Event]:
        """Registry changes as they happen, one event per change.

        Every registry node publishes what it sees; the same change reported by several
        nodes is yielded once. An event that does not decode, or whose subject
        (``<prefix>.events.<name>``) names another service than its instance, is skipped.
        """
        if service is not None and not subjects.is_valid_token(service):
            raise ConfigError(f"{service!r} is not a valid service name")
        subject = subjects.control_subject(self.prefix, "events", service or ">")
        seen: OrderedDict[tuple[str, int, str], None] = OrderedDict()
        sub = await self._nc.subscribe(subject)
        try:
            async for msg in sub.messages:
                try:
                    event = wire.decode_event(msg.data)
                except wire.MALFORMED:
                    continue
                if msg.subject != subjects.control_subject(
                        self.prefix, "events", event.instance.name):
                    continue
                key = (event.instance.id, event.instance.seq, event.kind)
                if key in seen:
                    continue
                seen[key] = None
                if len(seen) > 4096:
                    seen.popitem(last=False)
                yield event
        finally:
            await sub.unsubscribe()


def _describe(target: _Target, select: tuple[tuple[str, str], ...]) -> str:
    parts = []
    if target.constraint is not None:
        parts.append(f"version {target.constraint}")
    parts.extend(f"{k}={v}" for k, v in select)
    parts.append(f"endpoint {target.endpoint!r}")
    return ", ".join(parts)
