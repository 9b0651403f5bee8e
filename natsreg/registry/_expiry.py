"""When a registry node's instances expire: their deadlines, and the mass-expiry alarm.

Deadlines are kept in buckets by time, so that a sweep costs what expires, not the size of the
fleet. A heartbeat only moves its instance's deadline (:attr:`Entry.expires_at`) and touches no
bucket: the buckets hold, per instance, the time it was queued for (:attr:`Entry.queued`), and
a queued deadline that surfaces superseded is queued again at the instance's current one. An
instance heard from regularly costs one append and one look-up per silence allowance, however
many heartbeats it sends meanwhile.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import msgspec

from .. import wire
from ._summaries import UNHELD, Group

#: Deadlines are kept to this resolution: an instance is expired at most this long after its
#: deadline, plus the time until the node's next sweep (every ``Registry.sweep_s``).
RESOLUTION_S = 0.1


class Entry(msgspec.Struct, gc=False):
    """One instance the view holds, with what its interval implies, worked out once.

    Left out of the cyclic garbage collector (it refers to no container that could lead
    back to it): a starting node that made 50k entries tracked spent three quarters of
    making them in collections over the whole heap."""

    view: wire.InstanceView
    last_seen: float = 0.0
    #: How long it may stay silent, and how fast (per second) its sequence may grow.
    ttl_s: float = 0.0
    jump_rate: float = 0.0
    expires_at: float = math.inf
    #: When the bucket it is queued in ends (the earliest, if it is queued in several).
    queued: float = math.inf
    #: Heard from again after it came up (a heartbeat, a re-announce, a second poll): only
    #: such instances count for the mass-expiry alarm, so that a flood of one-off fake
    #: announcements expiring together raises none.
    proven: bool = False
    #: Its service's line of ``natsreg ls`` once it is held (_summaries.py).
    group: Group = UNHELD


class Deadlines:
    """The instances' deadlines, in buckets of :data:`RESOLUTION_S`: a deadline is kept in the
    bucket that ends at or after it, found by one division, and the buckets' ends in a small
    heap. A sweep takes what is in the buckets that have ended, and touches no heap per
    instance: at 50,000 instances a heap of their deadlines cost the node more than applying
    their heartbeats (bench/RESULTS.md, "fixed work cut"). An instance is expired at most one
    resolution after its deadline, never before it."""

    def __init__(self, resolution_s: float = RESOLUTION_S) -> None:
        self._resolution_s = resolution_s
        # Bucket number -> the ids queued in it; a bucket ends at number × resolution.
        self._buckets: dict[int, list[str]] = {}
        self._ends: list[int] = []  # the buckets' numbers, a heap
        self._queued = 0

    def __len__(self) -> int:
        return self._queued

    def next_due(self) -> float:
        """When the earliest bucket ends (infinity if none): nothing expires before."""
        return self._ends[0] * self._resolution_s if self._ends else math.inf

    def set(self, entry: Entry, expires_at: float) -> None:
        """``entry`` now expires at ``expires_at``: queued only if earlier than it is queued
        (a later deadline is found when the queued one surfaces)."""
        entry.expires_at = expires_at
        if expires_at < entry.queued:
            self.queue((entry,))

    def due(self, now: float, entries: Mapping[str, Entry]) -> Iterator[Entry]:
        """The entries of ``entries`` whose deadline is ``now`` or past, each once, from the
        buckets that have ended by ``now``. The caller removes each one it is given before
        taking the next."""
        ends, buckets, resolution_s = self._ends, self._buckets, self._resolution_s
        while ends and ends[0] * resolution_s <= now:
            number = heapq.heappop(ends)
            queued_at = number * resolution_s
            ids = buckets.pop(number)
            self._queued -= len(ids)
            for instance_id in ids:
                entry = entries.get(instance_id)
                if entry is None or entry.queued != queued_at:
                    continue  # gone, or queued again since (in an earlier bucket)
                if entry.expires_at > now:
                    self.queue((entry,))  # heard from since it was queued
                    continue
                entry.queued = math.inf  # no longer queued
                yield entry

    def queue(self, entries: Iterable[Entry]) -> None:
        """Queue each of ``entries`` at its deadline (:attr:`Entry.expires_at`), in one pass
        (a starting node queues a peer's 50k instances at once)."""
        buckets, ends, resolution_s = self._buckets, self._ends, self._resolution_s
        count = 0
        for entry in entries:
            expires_at = entry.expires_at
            number = math.ceil(expires_at / resolution_s)
            if number * resolution_s < expires_at:
                number += 1  # the division rounded down: the bucket must end at or after it
            entry.queued = number * resolution_s
            bucket = buckets.get(number)
            if bucket is None:
                bucket = buckets[number] = []
                heapq.heappush(ends, number)
            bucket.append(entry.view.id)
            count += 1
        self._queued += count


@dataclass(slots=True)
class MassAlert:
    """Raised when a large share of the fleet expires within one burst window."""

    since: float
    lost: int
    before: int


class MassWatch:
    """Says when a large share of the fleet expires at once.

    The policy is to expire all the same (a dead instance listed is worse than a live one
    missing for a heartbeat), but to say so loudly until capacity is back. Holding instances
    instead is Eureka's self-preservation, which can stop expiry for good (Eureka #1073).
    """

    def __init__(self, fraction: float, window_s: float, alert_s: float) -> None:
        self.fraction = fraction
        self.window_s = window_s
        self.alert_s = alert_s
        self._recent: deque[float] = deque()
        self.alert: MassAlert | None = None

    def update(self, now: float, expired: int, alive: int) -> None:
        """``expired`` proven instances expired at ``now``; ``alive`` proven ones are held.

        Only instances heard from twice count, on both sides of the ratio: a burst of
        announcements that never heartbeat is no fleet, and its expiry no crash wave."""
        recent = self._recent
        recent.extend([now] * expired)
        while recent and recent[0] <= now - self.window_s:
            recent.popleft()
        if self.alert is None:
            lost = len(recent)
            if lost >= 2 and lost >= self.fraction * (alive + lost):
                self.alert = MassAlert(since=now, lost=lost, before=alive + lost)
            return
        alert = self.alert
        alert.lost = max(alert.lost, alert.before - alive)
        # Cleared once half the lost capacity is back (the same instances resumed, or new
        # ones replaced them), or after alert_s whatever happened.
        if alive >= alert.before - alert.lost / 2 or now - alert.since >= self.alert_s:
            self.alert = None
