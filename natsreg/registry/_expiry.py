"""When a registry node's instances expire: their deadlines, and the mass-expiry alarm.

Deadlines are kept in a heap, so that a sweep costs what expires, not the size of the fleet.
A heartbeat only moves its instance's deadline (:attr:`Entry.expires_at`) and touches no heap:
the heap holds, per instance, the deadline it was queued at (:attr:`Entry.queued`), and a
queued deadline that surfaces superseded is queued again at the instance's current one. An
instance heard from regularly costs one push and one pop per silence allowance, however many
heartbeats it sends meanwhile.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .. import wire


@dataclass(slots=True)
class Entry:
    """One instance the view holds, with what its interval implies, worked out once."""

    view: wire.InstanceView
    last_seen: float = 0.0
    #: How long it may stay silent, and how fast (per second) its sequence may grow.
    ttl_s: float = 0.0
    jump_rate: float = 0.0
    expires_at: float = math.inf
    #: The deadline the heap holds for it (the earliest one, if it holds several).
    queued: float = math.inf
    #: Heard from again after it came up (a heartbeat, a re-announce, a second poll): only
    #: such instances count for the mass-expiry alarm, so that a flood of one-off fake
    #: announcements expiring together raises none.
    proven: bool = False


class Deadlines:
    """The instances' deadlines in a heap of ``(deadline, instance id)``."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def set(self, entry: Entry, expires_at: float) -> None:
        """``entry`` now expires at ``expires_at``: queued only if earlier than the heap has
        it (a later deadline is found when the queued one surfaces)."""
        entry.expires_at = expires_at
        if expires_at < entry.queued:
            self._queue(entry)

    def due(self, now: float, entries: Mapping[str, Entry]) -> Iterator[Entry]:
        """The entries of ``entries`` whose deadline is ``now`` or past, each once. The
        caller removes each one it is given before taking the next."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            queued, instance_id = heapq.heappop(heap)
            entry = entries.get(instance_id)
            if entry is None or entry.queued != queued:
                continue  # gone, or queued again since (at an earlier deadline)
            if entry.expires_at > now:
                self._queue(entry)  # heard from since it was queued
                continue
            entry.queued = math.inf  # no longer queued
            yield entry

    def _queue(self, entry: Entry) -> None:
        entry.queued = entry.expires_at
        heapq.heappush(self._heap, (entry.expires_at, entry.view.id))


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
