"""Where each attempt of a call goes: the queue group, or an instance that matches the target
(its version constraint and selectors), whose circuit breaker lets it through, chosen by the
balancer. Reads the views (:mod:`._views`); owns the circuit breakers and the balancer.

An instance's breakers live as long as it stays in the views: they go when it leaves them
(:attr:`~._catalog.Catalog.on_left`), so an open one is not reported open for ever (a breaker
only leaves "open" when a call tries it, and none will) and instances that come and go leave
nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .. import subjects, wire
from ..errors import CircuitOpenError, NoInstanceError
from ._balance import Balancer, InstanceStats
from ._breaker import Breaker, BreakerConfig
from ._target import Select, Target, describe
from ._views import Views

__all__ = ["Route", "RouteChooser"]


class Route(NamedTuple):
    """Where one attempt goes: its subject, the instance (None: the queue group), and the
    breaker that hears how it went."""

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


class RouteChooser:
    """Chooses where the attempts of one client's calls go (for :class:`~._routing.Router`),
    from the views and ``stats``, the figures of each instance, which the router keeps."""

    def __init__(
        self,
        views: Views,
        stats: dict[str, InstanceStats],
        *,
        breaker: BreakerConfig,
        clock: Callable[[], float],
    ) -> None:
        self.prefix = views.prefix
        self.breaker = breaker
        self._views = views
        self._catalog = views.catalog
        self._stats = stats
        self._clock = clock
        self._balancer = Balancer(clock=clock)
        #: Every breaker, by (instance id or ``queue``, endpoint or subject), and the service
        #: each one's target belongs to (for Prometheus, natsreg._collector).
        self.breakers: dict[tuple[str, str], Breaker] = {}
        self.breaker_services: dict[tuple[str, str], str] = {}
        # Instance id -> the endpoints it has breakers for: what forget() drops, without a
        # scan of every breaker.
        self._endpoints: dict[str, set[str]] = {}
        views.catalog.on_left = self.forget
        # (service, endpoint, subject, constraint, selector) -> (catalog revision, matches)
        self._matches: dict[tuple[Any, ...], tuple[int, _Matches]] = {}

    def fallback(self, target: Target, select: Select) -> Route:
        """The queue group, as the last resort when no direct subject was served."""
        return self._queue_route(target.subject, self._matching(target, select).all_idempotent)

    def route(
        self,
        target: Target,
        strategy: str,
        key: str | None,
        select: Select,
        tried: list[str],
        settled: bool,
    ) -> Route | None:
        """Where the next attempt goes, decided without awaiting in the common cases: a view
        in place, or none to be had yet. None when the service's view is still to be fetched
        (Views.wait); with ``settled`` the view is taken as it is."""
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
        if self._catalog.unproven and not settled:
            return None  # an instance's silence is to be proven first (Views.caught_up)
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

    def _queue_route(self, subject: str, idempotent: bool) -> Route:
        breaker = self.breaker_for("queue", subject, subject.partition(".")[0], instance=False)
        if not breaker.allow():
            raise CircuitOpenError(
                f"the circuit breaker of {subject!r} is open",
                retry_at=breaker.retry_at,
                retry_in_s=max(0.0, breaker.retry_at - self._clock()),
                subject=subject,
            )
        return Route(subject, None, breaker, idempotent)

    def _instance_route(
        self, target: Target, strategy: str, key: str | None, found: _Matches, tried: list[str]
    ) -> Route:
        endpoint = target.endpoint or ""
        matches = found.instances
        usable = [m for m in matches if self.breaker_for(m.id, endpoint, m.name).available()]
        if not usable:
            retry_at = min(self.breaker_for(m.id, endpoint, m.name).retry_at for m in matches)
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
        breaker = self.breaker_for(chosen.id, endpoint, chosen.name)
        breaker.allow()
        # Idempotence is what the instance that runs the call declares: another instance (a
        # fake one, say) saying so must not make this one's timeouts retried.
        return Route(
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

    def breaker_for(
        self, target: str, endpoint: str, service: str, *, instance: bool = True
    ) -> Breaker:
        """The breaker of ``endpoint`` on ``target`` (an instance id, or ``queue`` with
        ``instance=False``), a part of ``service``; made on first use."""
        breaker = self.breakers.get((target, endpoint))
        if breaker is None:
            if len(self.breakers) > 10_000:
                # Bounded (queue groups of any subject callers make up): a closed breaker
                # holds nothing worth keeping.
                for k in [k for k, b in self.breakers.items() if b.state == "closed"]:
                    self._drop(k)
            breaker = Breaker(self.breaker, clock=self._clock)
            self.breakers[(target, endpoint)] = breaker
            self.breaker_services[(target, endpoint)] = service
            if instance:
                self._endpoints.setdefault(target, set()).add(endpoint)
        return breaker

    def forget(self, instance_id: str) -> None:
        """Drop the breakers of an instance that left the views. Should it come back under
        the same id, its breakers start closed; a call in flight there records its outcome
        in the breaker it was routed with, which then goes unread."""
        for endpoint in self._endpoints.pop(instance_id, ()):
            self.breakers.pop((instance_id, endpoint), None)
            self.breaker_services.pop((instance_id, endpoint), None)

    def _drop(self, key: tuple[str, str]) -> None:
        del self.breakers[key]
        self.breaker_services.pop(key, None)
        endpoints = self._endpoints.get(key[0])
        if endpoints is not None:
            endpoints.discard(key[1])
            if not endpoints:
                del self._endpoints[key[0]]


def _plain_subject(announced: list[str], foreign: set[str]) -> str | None:
    # The subject most matching plain instances announced (the first, on a tie), unless an
    # instance that does not match serves there too.
    usable = [s for s in announced if s not in foreign]
    return max(usable, key=usable.count) if usable else None
