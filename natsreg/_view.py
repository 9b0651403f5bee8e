"""A registry node's view of the fleet: pure state, no I/O, time from an injected clock.

The node feeds it every control message and calls :meth:`View.expire` regularly; each call
returns the changes to publish. Keeping this apart from NATS is what lets its rules (stale
messages, tombstones, expiry) be tested exactly, with a fake clock.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Literal, TypeVar

import msgspec

from . import wire

_T = TypeVar("_T")

ChangeKind = Literal["up", "down", "changed", "health"]


@dataclass(slots=True)
class Change:
    kind: ChangeKind
    instance: wire.InstanceView
    reason: str = ""


@dataclass(slots=True)
class _Entry:
    view: wire.InstanceView
    last_seen: float
    expires_at: float


@dataclass(slots=True)
class _Tombstone:
    seq: int
    until: float
    said_goodbye: bool


@dataclass(slots=True)
class MassAlert:
    """Raised when a large share of the fleet expires within one burst window."""

    since: float
    lost: int
    before: int


@dataclass(slots=True)
class Outcome:
    """What one control message did: the changes, and whether to ask the sender for its info."""

    changes: list[Change]
    ask_info: bool = False
    stale: bool = False


_NOTHING = Outcome([])
_STALE = Outcome([], stale=True)


class View:
    """Instances by id, kept current from announcements, heartbeats and goodbyes.

    An instance expires ``(missed_heartbeats + 0.5) × heartbeat_s`` after it was last heard
    from: the half interval absorbs scheduling jitter, so one late heartbeat is no expiry.
    """

    def __init__(
        self,
        *,
        missed_heartbeats: float = 2.0,
        micro_ttl_s: float = 15.0,
        tombstone_s: float = 60.0,
        ask_interval_s: float = 1.0,
        mass_fraction: float = 0.2,
        mass_window_s: float = 5.0,
        mass_alert_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.missed_heartbeats = missed_heartbeats
        self.micro_ttl_s = micro_ttl_s
        self.tombstone_s = tombstone_s
        self.ask_interval_s = ask_interval_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        # Deadlines in a heap, so a sweep costs what expires, not the size of the fleet. Every
        # heartbeat pushes a new deadline; the superseded ones are skipped when they surface.
        self._deadlines: list[tuple[float, str]] = []
        # An instance that said goodbye or expired leaves a tombstone holding its last
        # sequence number, so that a message still in flight cannot bring it back.
        # Tombstones and asks are kept in the order they were made, which (with one fixed
        # duration each) is the order they end in.
        self._tombstones: dict[str, _Tombstone] = {}
        self._asked: dict[str, float] = {}
        # NATS connection -> instances on it, for the server's disconnect advisories.
        self._by_conn: dict[str, set[str]] = {}
        # Mass expiry: the policy is to expire all the same (a dead instance listed is worse
        # than a live one missing for a heartbeat), but to say so loudly until capacity is
        # back. Holding instances instead is Eureka's self-preservation, which can stop
        # expiry for good (Eureka #1073).
        self.mass_fraction = mass_fraction
        self.mass_window_s = mass_window_s
        self.mass_alert_s = mass_alert_s
        self._recent_expiries: deque[float] = deque()
        self.mass_alert: MassAlert | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, instance_id: str) -> bool:
        return instance_id in self._entries

    # -- input -------------------------------------------------------------------------------

    def apply(self, message: wire.ControlMessage) -> Outcome:
        """Take one announcement, heartbeat or goodbye into the view."""
        match message:
            case wire.Heartbeat():
                return self._heartbeat(message)
            case wire.Announce():
                return self._announce(message)
            case wire.Goodbye():
                return self._goodbye(message)
        raise TypeError(f"not a control message: {message!r}")

    def apply_micro(self, info: wire.SrvInfo) -> list[Change]:
        """Take one plain ADR-32 service's ``$SRV.INFO`` reply into the view."""
        now = self._clock()
        entry = self._entries.get(info.id)
        if entry is not None and entry.view.kind != "micro":
            return []
        view = wire.InstanceView(
            id=info.id, name=info.name, version=info.version, kind="micro",
            description=info.description or "", metadata=info.metadata or {},
            endpoints=[
                wire.Endpoint(name=e.name, subject=e.subject, queue_group=e.queue_group or "",
                              metadata=e.metadata or {})
                for e in info.endpoints or ()
            ],
        )
        if entry is None:
            self._add(view, now, now + self.micro_ttl_s)
            return [Change("up", view)]
        changed = _describes_differently(entry.view, view)
        entry.view, entry.last_seen = view, now
        self._set_deadline(entry, now + self.micro_ttl_s)
        return [Change("changed", view)] if changed else []

    def disconnected(self, conn: str) -> list[Change]:
        """The server says connection ``conn`` closed: its instances are gone now."""
        changes = []
        now = self._clock()
        for instance_id in self._by_conn.pop(conn, ()):
            entry = self._entries.pop(instance_id, None)
            if entry is not None:
                self._bury(instance_id, entry.view.seq, now, said_goodbye=False)
                changes.append(Change("down", entry.view, "disconnected"))
        return changes

    def expire(self) -> list[Change]:
        """Remove the instances not heard from in time; forget old tombstones."""
        now = self._clock()
        changes = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, instance_id = heapq.heappop(self._deadlines)
            entry = self._entries.get(instance_id)
            if entry is None or entry.expires_at > now:
                continue  # gone already, or heard from since this deadline was set
            del self._entries[instance_id]
            self._unindex(entry.view)
            self._bury(entry.view.id, entry.view.seq, now, said_goodbye=False)
            changes.append(Change("down", entry.view, "expired"))
        _drop_oldest(self._tombstones, lambda t: t.until <= now)
        _drop_oldest(self._asked, lambda asked_at: asked_at + self.ask_interval_s <= now)
        self._watch_for_mass_expiry(now, len(changes))
        return changes

    def _watch_for_mass_expiry(self, now: float, expired: int) -> None:
        recent = self._recent_expiries
        recent.extend([now] * expired)
        while recent and recent[0] <= now - self.mass_window_s:
            recent.popleft()
        alive = len(self._entries)
        if self.mass_alert is None:
            lost = len(recent)
            if lost >= 2 and lost >= self.mass_fraction * (alive + lost):
                self.mass_alert = MassAlert(since=now, lost=lost, before=alive + lost)
            return
        alert = self.mass_alert
        alert.lost = max(alert.lost, alert.before - alive)
        # Cleared once half the lost capacity is back (the same instances resumed, or new
        # ones replaced them), or after mass_alert_s whatever happened.
        if alive >= alert.before - alert.lost / 2 or now - alert.since >= self.mass_alert_s:
            self.mass_alert = None

    # -- output ------------------------------------------------------------------------------

    def summaries(self) -> list[wire.ServiceSummary]:
        """Every service at every version, summed over its instances, in one pass."""
        now = self._clock()
        groups: dict[tuple[str, str, str], wire.ServiceSummary] = {}
        endpoints: dict[tuple[str, str, str], set[str]] = {}
        for entry in self._entries.values():
            view = entry.view
            key = (view.name, view.version, view.kind)
            summary = groups.get(key)
            if summary is None:
                summary = groups[key] = wire.ServiceSummary(
                    name=view.name, version=view.version, kind=view.kind,
                    last_heard_s=now - entry.last_seen)
                endpoints[key] = set()
            summary.instances += 1
            summary.health[view.health] = summary.health.get(view.health, 0) + 1
            summary.last_heard_s = min(summary.last_heard_s, now - entry.last_seen)
            endpoints[key].update(e.name for e in view.endpoints)
        for key, summary in groups.items():
            summary.endpoints = sorted(endpoints[key])
            summary.last_heard_s = round(summary.last_heard_s, 3)
        return sorted(groups.values(), key=lambda s: (s.name, s.version, s.kind))

    def service_count(self) -> int:
        return len({e.view.name for e in self._entries.values()})

    def instances(self, *, name: str | None = None, instance_id: str | None = None
                  ) -> list[wire.InstanceView]:
        """Copies of the matching instances, each with ``age_s`` filled in."""
        now = self._clock()
        if instance_id is not None:
            entry = self._entries.get(instance_id)
            entries = [entry] if entry is not None else []
        else:
            entries = [e for e in self._entries.values() if name is None or e.view.name == name]
        return [
            msgspec.structs.replace(e.view, age_s=round(now - e.last_seen, 3)) for e in entries
        ]

    # -- rules -------------------------------------------------------------------------------

    def _is_stale(self, instance_id: str, seq: int) -> bool:
        entry = self._entries.get(instance_id)
        if entry is not None:
            return seq <= entry.view.seq
        tomb = self._tombstones.get(instance_id)
        return tomb is not None and (tomb.said_goodbye or seq <= tomb.seq)

    def _deadline(self, now: float, heartbeat_s: float) -> float:
        return now + wire.silence_allowed_s(heartbeat_s, self.missed_heartbeats)

    def _heartbeat(self, beat: wire.Heartbeat) -> Outcome:
        if self._is_stale(beat.id, beat.seq):
            return _STALE
        now = self._clock()
        entry = self._entries.get(beat.id)
        if entry is None:
            # Alive but unknown (we started after its announcement, or lost it): ask it for
            # its full info, once per ask interval, rather than guess.
            if beat.id in self._asked:
                return _NOTHING
            self._asked[beat.id] = now
            return Outcome([], ask_info=True)
        view = entry.view
        health_changed = view.health != beat.health
        view.seq, view.health, view.load = beat.seq, beat.health, beat.load
        entry.last_seen = now
        self._set_deadline(entry, self._deadline(now, view.heartbeat_s))
        return Outcome([Change("health", view)]) if health_changed else _NOTHING

    def _announce(self, ann: wire.Announce) -> Outcome:
        if self._is_stale(ann.id, ann.seq):
            return _STALE
        now = self._clock()
        view = wire.InstanceView(
            id=ann.id, name=ann.name, version=ann.version, kind="natsreg", seq=ann.seq,
            description=ann.description, metadata=ann.metadata, endpoints=ann.endpoints,
            host=ann.host, pid=ann.pid, started=ann.started, heartbeat_s=ann.heartbeat_s,
            health=ann.health, load=ann.load, conn=ann.conn,
        )
        old = self._entries.get(ann.id)
        if old is not None:
            self._unindex(old.view)
        self._add(view, now, self._deadline(now, ann.heartbeat_s))
        if view.conn:
            self._by_conn.setdefault(view.conn, set()).add(view.id)
        self._tombstones.pop(ann.id, None)
        self._asked.pop(ann.id, None)
        if old is None:
            return Outcome([Change("up", view)])
        if _describes_differently(old.view, view):
            return Outcome([Change("changed", view)])
        if old.view.health != view.health:
            return Outcome([Change("health", view)])
        return _NOTHING

    def _goodbye(self, bye: wire.Goodbye) -> Outcome:
        if self._is_stale(bye.id, bye.seq):
            return _STALE
        now = self._clock()
        self._bury(bye.id, bye.seq, now, said_goodbye=True)
        entry = self._entries.pop(bye.id, None)
        if entry is None:
            return _NOTHING
        self._unindex(entry.view)
        entry.view.seq = bye.seq
        return Outcome([Change("down", entry.view, "goodbye")])

    def _unindex(self, view: wire.InstanceView) -> None:
        on_conn = self._by_conn.get(view.conn)
        if on_conn is not None:
            on_conn.discard(view.id)
            if not on_conn:
                del self._by_conn[view.conn]

    def _add(self, view: wire.InstanceView, now: float, expires_at: float) -> None:
        entry = _Entry(view, now, 0.0)
        self._entries[view.id] = entry
        self._set_deadline(entry, expires_at)

    def _set_deadline(self, entry: _Entry, expires_at: float) -> None:
        entry.expires_at = expires_at
        heapq.heappush(self._deadlines, (expires_at, entry.view.id))

    def _bury(self, instance_id: str, seq: int, now: float, *, said_goodbye: bool) -> None:
        self._tombstones.pop(instance_id, None)  # re-inserted last: the order stays by time
        self._tombstones[instance_id] = _Tombstone(seq, now + self.tombstone_s, said_goodbye)
        self._asked.pop(instance_id, None)


def _drop_oldest(items: MutableMapping[str, _T], ended: Callable[[_T], bool]) -> None:
    """Drop entries from the front of an insertion-ordered mapping while they have ended."""
    while items:
        key = next(iter(items))
        if not ended(items[key]):
            return
        del items[key]


def _describes_differently(a: wire.InstanceView, b: wire.InstanceView) -> bool:
    return (a.version, a.description, a.metadata, a.endpoints) != (
        b.version, b.description, b.metadata, b.endpoints)
