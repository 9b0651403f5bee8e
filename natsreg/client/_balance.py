"""Choosing one instance among candidates: pure functions over this client's own figures.

Strategies (``strategy=`` of :meth:`natsreg.Client.request`):

- ``queue``: no choice here; the request goes to the queue-group subject and NATS picks a
  member at random. Needs no registry view, but cannot avoid a frozen member.
- ``round_robin``, ``random``: what their names say, over the healthy candidates.
- ``least_in_flight``: power of two choices: two random candidates, the one with fewer calls
  in flight *from this client* wins; a tie goes to the clearly faster one. Two choices rather
  than the global minimum, so that many clients with stale figures do not all pile onto the
  same instance (Mitzenmacher). A frozen instance collects calls in flight, so it loses
  nearly every comparison; a slow one gets less, but by Little's law still its share
  whenever the fast ones are busier.
- ``latency``: power of two choices on ``EWMA latency × (in flight + 1)`` (Finagle's
  idea): the faster instance wins unless it is much busier, so a 5× slower instance gets
  calls only when the others have 5× more in flight.
- ``auto``, the default when a registry view exists: ``latency`` among the instances whose
  EWMA is within ``OUTLIER_RATIO`` of the fastest, so that a slow instance gets no share of
  the calls (which would be the callers' tail latency), only the odd probe; frozen
  instances lose every comparison as their in-flight count only grows.
- ``sticky``: rendezvous hashing of ``key`` over the candidates: the same key goes to the
  same instance while it is there, and only the keys of an instance that leaves move.

Each strategy that chooses is one :class:`Strategy` subclass, listed in :data:`PICKERS`
by its name: a new strategy is one class and its entry there.
"""

from __future__ import annotations

import hashlib
import math
import random as _random
import time
from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol, TypeVar

from ..errors import ConfigError

#: Weight of the newest sample in the latency EWMA: about the last ten calls count.
EWMA_WEIGHT = 0.2
#: Latency EWMAs within this ratio count as equal when in-flight counts tie.
TIE_RATIO = 2.0
#: Share of ties that go to the slower instance anyway, to keep its figure current.
PROBE_SHARE = 0.01
#: ``auto`` avoids an instance whose latency EWMA exceeds the fastest one's by this factor...
OUTLIER_RATIO = 3.0
#: ...but for one probe call per this interval.
PROBE_INTERVAL_S = 1.0
#: After "no responders" on an instance's direct subject (nobody subscribes there, whatever its
#: heartbeats say), the instance is avoided this long; each further one doubles the time...
AVOID_FIRST_S = 1.0
#: ...up to this. An answer from it ends the avoidance.
AVOID_MAX_S = 60.0


class _Candidate(Protocol):
    @property
    def id(self) -> str: ...


_C = TypeVar("_C", bound=_Candidate)


class InstanceStats:
    """What this client knows of one instance from its own calls."""

    __slots__ = (
        "avoid_s",
        "avoid_seq",
        "avoid_until",
        "calls",
        "ewma_s",
        "failures",
        "in_flight",
        "probed_at",
    )

    def __init__(self) -> None:
        self.in_flight = 0
        #: After a call got no answer, the instance's sequence number then: it is avoided
        #: until a newer heartbeat shows it alive. Below every sequence until then.
        self.avoid_seq: float = -math.inf
        #: After "no responders" on its direct subject: avoided until this time (monotonic),
        #: its heartbeats notwithstanding, for a time that doubles while it stays unserved.
        self.avoid_until = -math.inf
        self.avoid_s = 0.0
        #: 0.0 until the first reply: an instance never called counts as fast, so it is tried.
        self.ewma_s = 0.0
        self.calls = 0
        self.failures = 0
        self.probed_at = -math.inf

    def unserved(self, now: float) -> None:
        """Nobody serves its direct subject: avoid it for ``AVOID_FIRST_S``, doubling on each
        repeat up to ``AVOID_MAX_S``. A fake announcement (or an instance that lost its
        subscriptions) heartbeats on, so a newer heartbeat proves nothing here."""
        self.avoid_s = min(AVOID_MAX_S, max(AVOID_FIRST_S, self.avoid_s * 2))
        self.avoid_until = now + self.avoid_s

    def sound(self, seq: int, now: float) -> bool:
        """Not avoided: no unanswered call since its heartbeat ``seq``, and its direct subject
        is served as far as this client knows."""
        return seq > self.avoid_seq and now >= self.avoid_until

    def observe(self, latency_s: float) -> None:
        """Fold one reply's latency into the EWMA; an answer ends any avoidance."""
        self.avoid_s = 0.0
        self.avoid_until = -math.inf
        if self.ewma_s == 0.0:
            self.ewma_s = latency_s
        else:
            self.ewma_s += EWMA_WEIGHT * (latency_s - self.ewma_s)


_EMPTY = InstanceStats()
#: The latency assumed of every candidate while none has a figure yet: any positive one will
#: do, so that calls in flight still count (a zero would make them all cost nothing).
_NO_FIGURE_S = 1.0


class Strategy:
    """One way of choosing an instance; one subclass per name in :data:`PICKERS`.

    An instance is made per :class:`Balancer`, sharing its random source and clock; it may
    keep state of its own (round-robin positions).
    """

    #: The name callers pass as ``strategy=``.
    name: ClassVar[str]

    def __init__(self, rng: _random.Random, clock: Callable[[], float]) -> None:
        self._rng = rng
        self._clock = clock

    def pick(
        self, candidates: Sequence[_C], stats: dict[str, InstanceStats], key: str | None, group: str
    ) -> _C:
        """One of ``candidates`` (at least two, in a stable order)."""
        raise NotImplementedError

    def _two(self, candidates: Sequence[_C]) -> tuple[_C, _C]:
        n = len(candidates)
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1
        return candidates[i], candidates[j]


class RoundRobin(Strategy):
    name = "round_robin"

    def __init__(self, rng: _random.Random, clock: Callable[[], float]) -> None:
        super().__init__(rng, clock)  # pragma: no mutate (equivalent: it uses neither)
        self._positions: dict[str, int] = {}

    def pick(
        self, candidates: Sequence[_C], stats: dict[str, InstanceStats], key: str | None, group: str
    ) -> _C:
        position = self._positions.get(group, -1) + 1
        self._positions[group] = position
        if len(self._positions) > 4096:
            self._positions.clear()
        return candidates[position % len(candidates)]


class Random(Strategy):
    name = "random"

    def pick(
        self, candidates: Sequence[_C], stats: dict[str, InstanceStats], key: str | None, group: str
    ) -> _C:
        return candidates[self._rng.randrange(len(candidates))]


class LeastInFlight(Strategy):
    name = "least_in_flight"

    def pick(
        self, candidates: Sequence[_C], stats: dict[str, InstanceStats], key: str | None, group: str
    ) -> _C:
        a, b = self._two(candidates)
        sa, sb = stats.get(a.id, _EMPTY), stats.get(b.id, _EMPTY)
        if sa.in_flight < sb.in_flight:
            return a
        if sb.in_flight < sa.in_flight:
            return b
        # A tie (always, for a caller with one call at a time) goes to the clearly faster
        # one; between similar ones it stays random (the pair is drawn in random order), so
        # that they share the load and each keeps its latency figure fresh. Now and then the
        # slower one is tried anyway, so that one slow spell does not starve an instance for
        # good.
        if sa.ewma_s > TIE_RATIO * sb.ewma_s:
            faster, slower = b, a
        elif sb.ewma_s > TIE_RATIO * sa.ewma_s:
            faster, slower = a, b
        else:
            return a
        return slower if self._rng.random() < PROBE_SHARE else faster


class Latency(Strategy):
    name = "latency"

    def pick(
        self, candidates: Sequence[_C], stats: dict[str, InstanceStats], key: str | None, group: str
    ) -> _C:
        return self._cheaper_of_two(candidates, stats)

    def _cheaper_of_two(self, candidates: Sequence[_C], stats: dict[str, InstanceStats]) -> _C:
        # On a tie the first drawn wins: the pair is drawn in random order.
        return min(self._two(candidates), key=lambda c: _cost(c, stats, candidates))


class Auto(Latency):
    name = "auto"

    def pick(
        self, candidates: Sequence[_C], stats: dict[str, InstanceStats], key: str | None, group: str
    ) -> _C:
        candidates = self._without_outliers(candidates, stats)
        if len(candidates) == 1:
            return candidates[0]
        return self._cheaper_of_two(candidates, stats)

    def _without_outliers(
        self, candidates: Sequence[_C], stats: dict[str, InstanceStats]
    ) -> Sequence[_C]:
        # Handlers mostly run concurrently, so a busy fast instance is rarely slower than an
        # idle slow one: weighing in-flight counts alone still sends the slow one a share,
        # and that share is the tail. An instance whose latency EWMA is over OUTLIER_RATIO
        # times the fastest one's gets no calls (but the odd probe) until it recovers or the
        # others slow down to its pace.
        measured = _measured(candidates, stats)
        if not measured:
            return candidates
        limit = min(measured) * OUTLIER_RATIO
        kept = []
        now = self._clock()
        for c in candidates:
            s = stats.get(c.id, _EMPTY)
            if s.ewma_s <= limit:
                kept.append(c)
            elif now - s.probed_at >= PROBE_INTERVAL_S:
                # One call per interval keeps its figure current, whatever the call rate.
                s.probed_at = now
                return [c]
        return kept


class Sticky(Strategy):
    name = "sticky"

    def pick(
        self, candidates: Sequence[_C], stats: dict[str, InstanceStats], key: str | None, group: str
    ) -> _C:
        if key is None:
            raise ConfigError("strategy 'sticky' needs key=...")
        return max(candidates, key=lambda c: _rendezvous(key, c.id))


#: The strategies that choose an instance, by name (``queue`` chooses none: NATS does).
PICKERS: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (RoundRobin, Random, LeastInFlight, Latency, Auto, Sticky)
}

STRATEGIES: tuple[str, ...] = ("auto", "queue", *(n for n in PICKERS if n != "auto"))


def check_strategy(strategy: str) -> str:
    """``strategy`` if it is one natsreg knows; ConfigError otherwise."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    return strategy


class Balancer:
    """Picks an instance per call, by the strategy named; holds one of each strategy."""

    def __init__(
        self, rng: _random.Random | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        rng = rng or _random.Random()
        self._strategies = {name: cls(rng, clock) for name, cls in PICKERS.items()}

    def pick(
        self,
        strategy: str,
        candidates: Sequence[_C],
        stats: dict[str, InstanceStats],
        *,
        key: str | None = None,
        group: str = "",  # pragma: no mutate (equivalent: only names the default sequence)
    ) -> _C:
        """One of ``candidates`` (non-empty, in a stable order) by ``strategy``.

        ``group`` names the round-robin sequence (one per service and endpoint).
        """
        if len(candidates) == 1:
            return candidates[0]
        chosen = self._strategies.get(strategy)
        if chosen is None:
            raise ConfigError(f"strategy {strategy!r} does not choose an instance")
        return chosen.pick(candidates, stats, key, group)


def _cost(
    c: _Candidate, stats: dict[str, InstanceStats], candidates: Sequence[_Candidate]
) -> float:
    s = stats.get(c.id, _EMPTY)
    ewma = s.ewma_s
    if ewma == 0.0:
        # Never measured: assume it is as fast as the fastest known one, so it gets tried
        # without being flooded.
        ewma = min(_measured(candidates, stats), default=_NO_FIGURE_S)
    return ewma * (s.in_flight + 1)


def _measured(candidates: Sequence[_Candidate], stats: dict[str, InstanceStats]) -> list[float]:
    """The latency EWMAs of the candidates this client has had a reply from."""
    return [f for c in candidates if (f := stats.get(c.id, _EMPTY).ewma_s) > 0]


def _rendezvous(key: str, instance_id: str) -> bytes:
    return hashlib.blake2b(f"{key}\x00{instance_id}".encode(), digest_size=8).digest()
