"""What ``natsreg ls`` shows, kept as instances come, change health and go: one line per service,
version and kind, summed over its instances (``wire.ServiceSummary``).

Summed anew at every question, a view of 50,000 instances took 170 ms and one of 250,000 a
second, whenever an instance had changed since the last answer; kept here, an answer walks
the services, not the instances. Only the time since a service was last heard from is found
at the question: from the newest time one of its instances was heard, which each heartbeat
sets, or, once the instance heard last has gone, from its other instances, looked up again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .. import wire

if TYPE_CHECKING:
    from ._expiry import Entry

__all__ = ["UNHELD", "Group", "Summaries"]

_Key = tuple[str, str, str]


class Group:
    """The instances of one service at one version and kind, summed."""

    __slots__ = ("emits", "endpoints", "events", "freshest", "health", "ids", "key", "stale")

    def __init__(self, key: _Key) -> None:
        self.key = key
        self.ids: set[str] = set()
        # How many of its instances are at each health, serve each endpoint, consume and
        # emit each event type (plain dicts and loops: a starting node holds 50k at once).
        self.health: dict[str, int] = {}
        self.endpoints: dict[str, int] = {}
        self.events: dict[str, int] = {}
        self.emits: dict[str, int] = {}
        #: When one of its instances was last heard from; ``stale`` once that one has gone.
        self.freshest = -math.inf
        # (Always stale would answer the same, a walk of the group slower: not tested.)
        self.stale = False  # pragma: no mutate

    def changed_health(self, old: str, new: str) -> None:
        """One of its instances went from health ``old`` to ``new``."""
        _add(self.health, old, -1)
        _add(self.health, new, 1)

    def summary(self, now: float, entries: Mapping[str, Entry]) -> wire.ServiceSummary:
        if self.stale:
            self.freshest = max(entries[i].last_seen for i in self.ids)
            self.stale = False  # pragma: no mutate (as above)
        name, version, kind = self.key
        return wire.ServiceSummary(
            name=name,
            version=version,
            kind=kind,  # type: ignore[arg-type]  # an InstanceView's kind
            instances=len(self.ids),
            health={state: n for state, n in self.health.items() if n},
            endpoints=_present(self.endpoints),
            last_heard_s=round(now - self.freshest, 3),
            events=_present(self.events),
            emits=_present(self.emits),
        )


#: The group of an entry not held (yet).
UNHELD = Group(("", "", "natsreg"))


class Summaries:
    """Every held instance's group; the view tells it each instance held and removed, and
    each change of health."""

    def __init__(self) -> None:
        self._groups: dict[_Key, Group] = {}

    def hold(self, entry: Entry) -> Group:
        """``entry`` is held: counted in its group, which is returned (the entry keeps it,
        to mark it heard)."""
        view = entry.view
        key = (view.name, view.version, view.kind)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(key)
        group.ids.add(view.id)
        _count(group, view, 1)
        if entry.last_seen > group.freshest:  # pragma: no mutate (>=: the same)
            group.freshest = entry.last_seen
        return group

    def remove(self, entry: Entry) -> None:
        """``entry``, held, is no longer."""
        view, group = entry.view, entry.group
        group.ids.discard(view.id)
        if not group.ids:
            del self._groups[group.key]
            return
        _count(group, view, -1)
        if entry.last_seen >= group.freshest:
            group.stale = True

    def all(self, now: float, entries: Mapping[str, Entry]) -> list[wire.ServiceSummary]:
        """Every group's summary, by name, version and kind."""
        return [self._groups[key].summary(now, entries) for key in sorted(self._groups)]


def _count(group: Group, view: wire.InstanceView, by: int) -> None:
    """``view``'s health, endpoints and event types counted in ``group``, ``by`` 1 or -1."""
    _add(group.health, view.health, by)
    for endpoint in view.endpoints:
        _add(group.endpoints, endpoint.name, by)
    for interest in view.events:
        _add(group.events, interest.type, by)
    for emitted in view.emits:
        _add(group.emits, emitted, by)


def _add(counts: dict[str, int], name: str, by: int) -> None:
    counts[name] = counts.get(name, 0) + by


def _present(counts: dict[str, int]) -> list[str]:
    return sorted(name for name, n in counts.items() if n > 0)
