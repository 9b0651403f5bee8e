"""A registry node's view of the fleet: pure state, no I/O, time from an injected clock.

The node feeds it every control message and calls :meth:`View.expire` regularly; each call
returns the changes to publish. Keeping this apart from NATS is what lets its rules (stale
messages, sequence jumps, caps, tombstones, expiry) be tested exactly, with a fake clock.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import msgspec

from .. import wire
from ._expiry import Deadlines, Entry, MassAlert, MassWatch
from ._sequence import Sequences, Tombstone, jump_rate
from ._summaries import Summaries

#: Default caps: instances of one service (the client catalog's cap) and on one node.
MAX_PER_SERVICE = 10_000
MAX_INSTANCES = 100_000

ChangeKind = Literal["up", "down", "changed", "health"]


@dataclass(slots=True)
class Change:
    kind: ChangeKind
    instance: wire.InstanceView
    reason: str = ""


@dataclass(slots=True)
class Outcome:
    """What one control message did: the changes, whether to ask the sender for its info,
    and why it was dropped (``stale``, ``seq_jump``, ``capacity``), if it was."""

    changes: list[Change]
    ask_info: bool = False
    dropped: str = ""

    @property
    def stale(self) -> bool:
        return self.dropped == "stale"


#: What most messages do: nothing to publish, nothing to ask, nothing dropped. The registry
#: node's fast path recognises it by identity.
NOTHING = Outcome([])
_NOTHING = NOTHING
_STALE = Outcome([], dropped="stale")
_FULL = Outcome([], dropped="capacity")
_ASK = Outcome([], ask_info=True)
_JUMP = Outcome([], dropped="seq_jump")
_JUMP_ASK = Outcome([], ask_info=True, dropped="seq_jump")
_MISMATCH = Outcome([], dropped="subject_mismatch")
_REFUSED = {
    "subject_mismatch": _MISMATCH,
    "stale": _STALE,
    "seq_jump": _JUMP,
    "seq_jump_ask": _JUMP_ASK,
}
#: What one instance restored from a peer did, by why it was dropped.
_DROPPED = {outcome.dropped: outcome for outcome in (_MISMATCH, _STALE, _JUMP, _FULL)}


class View:
    """Instances by id, kept current from announcements, heartbeats and goodbyes.

    An instance expires ``(missed_heartbeats + 0.5) × interval`` after it was last heard
    from: the half interval absorbs scheduling jitter, so one late heartbeat is no expiry.
    The interval is the one it last declared it keeps (:func:`wire.kept_interval_s`: its
    announced ``heartbeat_s``, or the slower pace a registry node allowed it).
    At most ``max_per_service`` instances of one service and ``max_instances`` in all are
    held; a new instance beyond either is refused (``capacity``).
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
        max_per_service: int = MAX_PER_SERVICE,
        max_instances: int = MAX_INSTANCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.missed_heartbeats = missed_heartbeats
        self.max_per_service = max_per_service
        self.max_instances = max_instances
        self._per_service: Counter[str] = Counter()
        self._proven = 0
        self.micro_ttl_s = micro_ttl_s
        self._clock = clock
        self._entries: dict[str, Entry] = {}
        self._deadlines = Deadlines()
        # Tombstones and asks: what the sequence rules remember (_sequence.py).
        self._sequences = Sequences(
            tombstone_s=tombstone_s, ask_interval_s=ask_interval_s, max_remembered=max_instances
        )
        # NATS connection -> instances on it, for the server's disconnect advisories.
        self._by_conn: dict[str, set[str]] = {}
        self._mass = MassWatch(mass_fraction, mass_window_s, mass_alert_s)
        self._summaries = Summaries()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, instance_id: str) -> bool:
        return instance_id in self._entries

    @property
    def mass_alert(self) -> MassAlert | None:
        """Set while a large share of the fleet has expired at once (:class:`MassWatch`)."""
        return self._mass.alert

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

    def apply_micro(self, info: wire.SrvInfo) -> Outcome:
        """Take one plain ADR-32 service's ``$SRV.INFO`` reply into the view."""
        now = self._clock()
        entry = self._entries.get(info.id)
        if entry is not None and entry.view.kind != "micro":
            return _NOTHING
        if entry is not None and entry.view.name != info.name:
            return _MISMATCH
        view = wire.micro_instance_view(info)
        if entry is None:
            if not self._room_for(info.name):
                return _FULL
            self._add(view, now)
            return Outcome([Change("up", view)])
        changed = _describes_differently(entry.view, view)
        # Its line of ``natsreg ls`` counted what the old reply said (version, endpoints).
        self._summaries.remove(entry)
        entry.view = view
        entry.group = self._summaries.hold(entry)
        self._heard(entry, now)
        return Outcome([Change("changed", view)]) if changed else _NOTHING

    def restore(self, view: wire.InstanceView) -> Outcome:
        """Take one instance from a peer, as :meth:`restore_all` takes many."""
        dropped = self.restore_all([view])
        return _DROPPED[next(iter(dropped))] if dropped else _NOTHING

    def restore_all(self, views: Iterable[wire.InstanceView]) -> Counter[str]:
        """Take instances from a warm peer's snapshot (``registry/_sync.py``), each as that
        peer last heard it ``view.age_s`` ago: it expires when it would have on the peer.
        The instances taken become this view's own (their ``age_s`` is set to 0); what was
        dropped is counted by reason (``stale``, ``seq_jump``, ``capacity``...).

        The caller has checked them (:func:`wire.check`). Each is believed no further than
        its own announcement would be: an id already held or buried keeps what this view
        knows (a newer sequence wins), and a new one needs room. No change is returned: the
        peer published the instances' events already. All are queued for expiry in one pass,
        so a starting node takes a peer's 50k instances at a few microseconds each.
        """
        now = self._clock()
        dropped: Counter[str] = Counter()
        entries, refusal = self._entries, self._sequences.refusal
        taken: list[Entry] = []
        # What set_interval works out, by what it depends on: a fleet has a few of those. (A
        # cache that misses works each out again, the same: its mutants change no result.)
        intervals: dict[tuple[str, float, float], tuple[float, float, float]] = {}
        for view in views:
            old = entries.get(view.id)
            refused = refusal(view, old, now)
            if refused:
                dropped[_REFUSED[refused].dropped] += 1
                continue
            if old is None and not self._room_for(view.name):
                dropped["capacity"] += 1
                continue
            if old is not None:
                self._remove(old)
            key = (view.kind, view.heartbeat_s, view.pace_s)
            known = intervals.get(key)  # pragma: no mutate (equivalent: see above)
            if known is None:
                entry = Entry(view)
                self.set_interval(entry, view.heartbeat_s, view.pace_s)
                known = intervals[key] = (  # pragma: no mutate (equivalent: see above)
                    view.heartbeat_s,
                    entry.ttl_s,
                    entry.jump_rate,
                )
            view.heartbeat_s, ttl_s, jump_rate = known
            # A peer's age beyond the time left to live would have expired it there: clamped.
            last_seen = now - min(max(view.age_s, 0.0), ttl_s)
            entry = Entry(view, last_seen, ttl_s, jump_rate, last_seen + ttl_s)
            self._hold(entry)
            view.age_s = 0.0
            taken.append(entry)
        self._deadlines.queue(taken)
        return dropped

    def pinged_micro(self, instance_id: str, name: str, version: str) -> bool:
        """A plain ADR-32 service answered ``$SRV.PING``: keep it listed if the view holds
        it as it says it is, and say whether its ``$SRV.INFO`` must be asked (it is new, runs
        another version now, or was listed with no endpoint: ADR-32 libraries add endpoints
        after the service starts answering, so its first INFO may have had none)."""
        entry = self._entries.get(instance_id)
        if entry is None:
            return True
        if entry.view.kind != "micro" or entry.view.name != name:
            return False  # apply_micro would take nothing from its INFO either
        if entry.view.version != version or not entry.view.endpoints:
            return True
        self._heard(entry, self._clock())
        return False

    def disconnected(self, conn: str) -> list[Change]:
        """The server says connection ``conn`` closed: its instances are gone now."""
        changes = []
        now = self._clock()
        for instance_id in self._by_conn.pop(conn, ()):
            entry = self._entries.get(instance_id)
            if entry is not None:
                self._remove(entry)
                self._sequences.bury(entry, now)
                changes.append(Change("down", entry.view, "disconnected"))
        return changes

    def forget(self, names: set[str]) -> int:
        """Drop every instance of the services ``names`` without a word (a sharded node that
        no longer holds them: their holders speak for them); how many were dropped."""
        gone = [entry for entry in self._entries.values() if entry.view.name in names]
        for entry in gone:
            self._remove(entry)
        return len(gone)

    def expire(self) -> list[Change]:
        """Remove the instances not heard from in time; forget old tombstones."""
        now = self._clock()
        changes = []
        proven_lost = 0
        for entry in self._deadlines.due(now, self._entries):
            proven_lost += entry.proven
            self._remove(entry)
            self._sequences.bury(entry, now)
            changes.append(Change("down", entry.view, "expired"))
        self._sequences.forget(now)
        self._mass.update(now, proven_lost, self._proven)
        return changes

    # -- output ------------------------------------------------------------------------------

    def summaries(self) -> list[wire.ServiceSummary]:
        """Every service at every version, summed over its instances (kept as they change:
        _summaries.py)."""
        return self._summaries.all(self._clock(), self._entries)

    def service_count(self) -> int:
        return len(self._per_service)

    def instances(
        self, *, name: str | None = None, instance_id: str | None = None
    ) -> list[wire.InstanceView]:
        """Copies of the matching instances, each with ``age_s`` filled in."""
        now = self._clock()
        if instance_id is not None:
            entry = self._entries.get(instance_id)
            entries = [entry] if entry is not None else []
        else:
            entries = [e for e in self._entries.values() if name is None or e.view.name == name]
        return [msgspec.structs.replace(e.view, age_s=round(now - e.last_seen, 3)) for e in entries]

    def heard(self) -> list[tuple[wire.InstanceView, float]]:
        """Every instance held (not a copy: to encode at once), with the seconds since it
        was last heard from."""
        now = self._clock()
        return [(e.view, now - e.last_seen) for e in self._entries.values()]

    # -- rules -------------------------------------------------------------------------------

    def _heartbeat(self, beat: wire.Heartbeat) -> Outcome:
        # The bulk of what a node hears: every rule applies, at the least cost (no heap, no
        # interval worked out again, no Outcome made when nothing changed).
        now = self._clock()
        entry = self._entries.get(beat.id)
        refused = self._sequences.refusal(beat, entry, now)
        if refused:
            return _REFUSED[refused]
        if entry is None:
            # Alive but unknown (we started after its announcement, or lost it): ask it for
            # its full info, once per ask interval, rather than guess.
            return _ASK if self._sequences.ask(beat.id, now) else _NOTHING
        view = entry.view
        health_changed = view.health != beat.health
        if health_changed:
            entry.group.changed_health(view.health, beat.health)
        view.seq, view.health, view.load = beat.seq, beat.health, beat.load
        if beat.pace_s != view.pace_s:
            self.set_interval(entry, view.heartbeat_s, beat.pace_s)
        self._heard(entry, now)
        return Outcome([Change("health", view)]) if health_changed else _NOTHING

    def _announce(self, ann: wire.Announce) -> Outcome:
        now = self._clock()
        old = self._entries.get(ann.id)
        refused = self._sequences.refusal(ann, old, now)
        if refused:
            return _REFUSED[refused]
        if old is None and not self._room_for(ann.name):
            return _FULL
        view = wire.instance_view(ann)
        if old is not None:
            self._remove(old)
        self._add(view, now, proven=old is not None)
        self._sequences.lift(ann.id)
        if old is None:
            return Outcome([Change("up", view)])
        if _describes_differently(old.view, view):
            return Outcome([Change("changed", view)])
        if old.view.health != view.health:
            return Outcome([Change("health", view)])
        return _NOTHING

    def _goodbye(self, bye: wire.Goodbye) -> Outcome:
        now = self._clock()
        entry = self._entries.get(bye.id)
        refused = self._sequences.refusal(bye, entry, now)
        if refused:
            return _REFUSED[refused]
        if entry is None:
            # A goodbye is final until the tombstone ends: no sequence bound applies after it.
            tomb = Tombstone(bye.seq, now + self._sequences.tombstone_s, said_goodbye=True)
            self._sequences.bury_id(bye.id, tomb)
            return _NOTHING
        self._remove(entry)
        entry.view.seq = bye.seq
        self._sequences.bury(entry, now, said_goodbye=True)
        return Outcome([Change("down", entry.view, "goodbye")])

    def _room_for(self, name: str) -> bool:
        return (
            len(self._entries) < self.max_instances
            and self._per_service[name] < self.max_per_service
        )

    def _heard(self, entry: Entry, now: float) -> None:
        """Heard from ``entry``'s instance again: it is proven, and lives its ttl from now."""
        entry.last_seen = now
        entry.group.freshest = now
        if not entry.proven:
            self._prove(entry)
        self._deadlines.set(entry, now + entry.ttl_s)

    def _prove(self, entry: Entry) -> None:
        entry.proven = True
        self._proven += 1

    def _remove(self, entry: Entry) -> None:
        view = entry.view
        del self._entries[view.id]
        self._summaries.remove(entry)
        self._proven -= entry.proven
        left = self._per_service[view.name] - 1
        if left:
            self._per_service[view.name] = left
        else:
            del self._per_service[view.name]
        on_conn = self._by_conn.get(view.conn)
        if on_conn is not None:
            on_conn.discard(view.id)
            if not on_conn:
                del self._by_conn[view.conn]

    def _add(self, view: wire.InstanceView, now: float, *, proven: bool = False) -> None:
        """Hold ``view``, heard ``now``."""
        entry = Entry(view, now)
        self.set_interval(entry, view.heartbeat_s, view.pace_s)
        entry.expires_at = now + entry.ttl_s
        self._hold(entry)
        if proven:
            self._prove(entry)
        self._deadlines.queue((entry,))

    def _hold(self, entry: Entry) -> None:
        """Hold ``entry``, its interval and deadline set (the caller queues the deadline:
        :meth:`Deadlines.queue`); what :meth:`_remove` undoes."""
        view = entry.view
        self._entries[view.id] = entry
        entry.group = self._summaries.hold(entry)
        self._per_service[view.name] += 1
        if view.conn:
            self._by_conn.setdefault(view.conn, set()).add(view.id)

    def set_interval(self, entry: Entry, heartbeat_s: float, pace_s: float) -> None:
        """``entry``'s instance heartbeats every ``heartbeat_s`` (clamped), or at the slower
        ``pace_s`` a registry node allowed it (0: none): keep what that implies, its silence
        allowance (by the interval it keeps now) and sequence rate (by the fastest it may
        go), so no message works them out again. A plain ADR-32 service is polled instead;
        it lives ``micro_ttl_s`` from each reply."""
        view = entry.view
        if view.kind == "micro":
            entry.ttl_s = self.micro_ttl_s
        else:
            view.heartbeat_s, entry.ttl_s = _intervals(heartbeat_s, pace_s, self.missed_heartbeats)
            view.pace_s = pace_s
        entry.jump_rate = _jump_rate(view.heartbeat_s)


# What an interval implies, worked out once for each interval a fleet keeps (a fleet keeps a
# few: a starting node restoring a peer's 50k instances otherwise works it out 50k times).
_INTERVALS = 256  # pragma: no mutate (equivalent: a cache's size changes no result)


@functools.lru_cache(maxsize=_INTERVALS)  # pragma: no mutate (equivalent: as above)
def _intervals(heartbeat_s: float, pace_s: float, missed: float) -> tuple[float, float]:
    """For an instance that announced ``heartbeat_s`` and keeps ``pace_s``: its clamped
    interval, and its silence allowance."""
    clamped = wire.heartbeat_interval_s(heartbeat_s)
    return clamped, wire.silence_allowed_s(wire.kept_interval_s(clamped, pace_s), missed)


#: How fast a sequence may grow (``jump_rate``), likewise.
_jump_rate = functools.lru_cache(maxsize=_INTERVALS)(jump_rate)  # pragma: no mutate (as above)


def _describes_differently(a: wire.InstanceView, b: wire.InstanceView) -> bool:
    return (a.version, a.description, a.metadata, a.endpoints, a.events, a.emits) != (
        b.version,
        b.description,
        b.metadata,
        b.endpoints,
        b.events,
        b.emits,
    )
