"""A registry node's view of the fleet: pure state, no I/O, time from an injected clock.

The node feeds it every control message and calls :meth:`View.expire` regularly; each call
returns the changes to publish. Keeping this apart from NATS is what lets its rules (stale
messages, sequence jumps, caps, tombstones, expiry) be tested exactly, with a fake clock.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, deque
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Literal, TypeVar

import msgspec

from .. import wire

_T = TypeVar("_T")

#: A message may advance an instance's sequence by at most this much plus
#: :data:`SEQ_JUMP_PER_S` per second since the node last accepted one from it. Above that the
#: message is dropped as ``seq_jump``: a genuine instance sends one message per heartbeat and
#: at most one re-announce per ``wire.MIN_REANNOUNCE_S``, so twice that rate never locks it
#: out (a genuine jump, after lost messages, is admitted once enough time has passed), while
#: one forged message can no longer push the sequence out of the instance's reach.
SEQ_JUMP_SLACK = 32
#: Per second of silence, as a multiple of the instance's own message rate.
SEQ_JUMP_RATE_FACTOR = 2.0
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
class _Entry:
    view: wire.InstanceView
    last_seen: float
    expires_at: float
    #: Heard from again after it came up (a heartbeat, a re-announce, a second poll): only
    #: such instances count for the mass-expiry alarm, so that a flood of one-off fake
    #: announcements expiring together raises none.
    proven: bool = False


@dataclass(slots=True)
class _Tombstone:
    seq: int
    until: float
    said_goodbye: bool
    #: When the instance was last heard, and its interval: the sequence-jump bound goes on.
    heard_at: float = 0.0
    heartbeat_s: float = wire.MAX_HEARTBEAT_S


@dataclass(slots=True)
class MassAlert:
    """Raised when a large share of the fleet expires within one burst window."""

    since: float
    lost: int
    before: int


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


_NOTHING = Outcome([])
_STALE = Outcome([], dropped="stale")
_FULL = Outcome([], dropped="capacity")
_JUMP = Outcome([], dropped="seq_jump")
_JUMP_ASK = Outcome([], ask_info=True, dropped="seq_jump")
_MISMATCH = Outcome([], dropped="subject_mismatch")


class View:
    """Instances by id, kept current from announcements, heartbeats and goodbyes.

    An instance expires ``(missed_heartbeats + 0.5) × heartbeat_s`` after it was last heard
    from: the half interval absorbs scheduling jitter, so one late heartbeat is no expiry.
    ``heartbeat_s`` is the announced interval clamped by :func:`wire.heartbeat_interval_s`.
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
        # duration each) is the order they end in. Both are capped at max_instances (oldest
        # dropped first), since goodbyes and heartbeats for made-up ids cost nothing to send.
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
            self._add(view, now, now + self.micro_ttl_s)
            return Outcome([Change("up", view)])
        changed = _describes_differently(entry.view, view)
        entry.view, entry.last_seen = view, now
        self._prove(entry)
        self._set_deadline(entry, now + self.micro_ttl_s)
        return Outcome([Change("changed", view)]) if changed else _NOTHING

    def restore(self, view: wire.InstanceView) -> Outcome:
        """Take one instance from a warm peer's snapshot (``registry/_sync.py``), as that
        peer last heard it ``view.age_s`` ago: it expires when it would have on the peer.

        The caller has checked it (:func:`wire.check`). It is believed no further than its
        own announcement would be: an id already held or buried keeps what this view knows
        (a newer sequence wins), and a new one needs room (``capacity``). No change is
        returned: the peer published the instance's events already.
        """
        now = self._clock()
        refused = self._check(view, now)
        if refused is not None:
            return refused
        old = self._entries.get(view.id)
        if old is None and not self._room_for(view.name):
            return _FULL
        # A peer's age beyond the time left to live would have expired it there: clamped.
        age_s = max(view.age_s, 0.0)
        view = msgspec.structs.replace(view, age_s=0.0)
        if view.kind == "micro":
            ttl_s = self.micro_ttl_s
        else:
            view.heartbeat_s = wire.heartbeat_interval_s(view.heartbeat_s)
            ttl_s = wire.silence_allowed_s(view.heartbeat_s, self.missed_heartbeats)
        last_seen = now - min(age_s, ttl_s)
        expires_at = last_seen + ttl_s
        if old is not None:
            self._remove(old)
        self._add(view, last_seen, expires_at)
        if view.conn:
            self._by_conn.setdefault(view.conn, set()).add(view.id)
        return _NOTHING

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
        now = self._clock()
        entry.last_seen = now
        self._prove(entry)
        self._set_deadline(entry, now + self.micro_ttl_s)
        return False

    def disconnected(self, conn: str) -> list[Change]:
        """The server says connection ``conn`` closed: its instances are gone now."""
        changes = []
        now = self._clock()
        for instance_id in self._by_conn.pop(conn, ()):
            entry = self._entries.get(instance_id)
            if entry is not None:
                self._remove(entry)
                self._bury(entry, now)
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
        while self._deadlines and self._deadlines[0][0] <= now:
            _, instance_id = heapq.heappop(self._deadlines)
            entry = self._entries.get(instance_id)
            if entry is None or entry.expires_at > now:
                continue  # gone already, or heard from since this deadline was set
            proven_lost += entry.proven
            self._remove(entry)
            self._bury(entry, now)
            changes.append(Change("down", entry.view, "expired"))
        _drop_oldest(self._tombstones, lambda t: t.until <= now)
        _drop_oldest(self._asked, lambda asked_at: asked_at + self.ask_interval_s <= now)
        self._watch_for_mass_expiry(now, proven_lost)
        return changes

    def _watch_for_mass_expiry(self, now: float, expired: int) -> None:
        recent = self._recent_expiries
        recent.extend([now] * expired)
        while recent and recent[0] <= now - self.mass_window_s:
            recent.popleft()
        # Only instances heard from twice count, on both sides of the ratio: a burst of
        # announcements that never heartbeat is no fleet, and its expiry no crash wave.
        alive = self._proven
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
        events: dict[tuple[str, str, str], set[str]] = {}
        emits: dict[tuple[str, str, str], set[str]] = {}
        for entry in self._entries.values():
            view = entry.view
            key: tuple[str, str, str] = (view.name, view.version, view.kind)
            summary = groups.get(key)
            if summary is None:
                summary = groups[key] = wire.ServiceSummary(
                    name=view.name,
                    version=view.version,
                    kind=view.kind,
                    last_heard_s=now - entry.last_seen,
                )
                endpoints[key] = set()
                events[key] = set()
                emits[key] = set()
            else:
                summary.last_heard_s = min(summary.last_heard_s, now - entry.last_seen)
            summary.instances += 1
            summary.health[view.health] = summary.health.get(view.health, 0) + 1
            endpoints[key].update(e.name for e in view.endpoints)
            events[key].update(e.type for e in view.events)
            emits[key].update(view.emits)
        for key, summary in groups.items():
            summary.endpoints = sorted(endpoints[key])
            summary.events = sorted(events[key])
            summary.emits = sorted(emits[key])
            summary.last_heard_s = round(summary.last_heard_s, 3)
        return sorted(groups.values(), key=lambda s: (s.name, s.version, s.kind))

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

    # -- rules -------------------------------------------------------------------------------

    def _check(
        self, message: wire.ControlMessage | wire.InstanceView, now: float
    ) -> Outcome | None:
        """None if ``message`` may be taken into the view; else why not."""
        instance_id, seq = message.id, message.seq
        entry = self._entries.get(instance_id)
        if entry is not None:
            if entry.view.name != message.name:
                # An instance never changes its service: this speaks for another one.
                return _MISMATCH
            if seq <= entry.view.seq:
                return _STALE
            if seq - entry.view.seq > _allowed_jump(now - entry.last_seen, entry.view.heartbeat_s):
                # Forged, or we lost its messages: ask it to announce (once per ask
                # interval), which a genuine instance does with its next number.
                if instance_id in self._asked:
                    return _JUMP
                self._remember_ask(instance_id, now)
                return _JUMP_ASK
            return None
        tomb = self._tombstones.get(instance_id)
        if tomb is None:
            return None
        if tomb.said_goodbye or seq <= tomb.seq:
            return _STALE
        if seq - tomb.seq > _allowed_jump(now - tomb.heard_at, tomb.heartbeat_s):
            return _JUMP
        return None

    def _deadline(self, now: float, heartbeat_s: float) -> float:
        return now + wire.silence_allowed_s(heartbeat_s, self.missed_heartbeats)

    def _heartbeat(self, beat: wire.Heartbeat) -> Outcome:
        now = self._clock()
        refused = self._check(beat, now)
        if refused is not None:
            return refused
        entry = self._entries.get(beat.id)
        if entry is None:
            # Alive but unknown (we started after its announcement, or lost it): ask it for
            # its full info, once per ask interval, rather than guess.
            if beat.id in self._asked:
                return _NOTHING
            self._remember_ask(beat.id, now)
            return Outcome([], ask_info=True)
        view = entry.view
        health_changed = view.health != beat.health
        view.seq, view.health, view.load = beat.seq, beat.health, beat.load
        entry.last_seen = now
        self._prove(entry)
        self._set_deadline(entry, self._deadline(now, view.heartbeat_s))
        return Outcome([Change("health", view)]) if health_changed else _NOTHING

    def _announce(self, ann: wire.Announce) -> Outcome:
        now = self._clock()
        refused = self._check(ann, now)
        if refused is not None:
            return refused
        old = self._entries.get(ann.id)
        if old is None and not self._room_for(ann.name):
            return _FULL
        view = wire.instance_view(ann)
        if old is not None:
            self._remove(old)
        self._add(view, now, self._deadline(now, view.heartbeat_s), proven=old is not None)
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
        now = self._clock()
        refused = self._check(bye, now)
        if refused is not None:
            return refused
        entry = self._entries.get(bye.id)
        if entry is None:
            # A goodbye is final until the tombstone ends: no sequence bound applies after it.
            self._bury_id(bye.id, _Tombstone(bye.seq, now + self.tombstone_s, said_goodbye=True))
            return _NOTHING
        self._remove(entry)
        entry.view.seq = bye.seq
        self._bury(entry, now, said_goodbye=True)
        return Outcome([Change("down", entry.view, "goodbye")])

    def _room_for(self, name: str) -> bool:
        return (
            len(self._entries) < self.max_instances
            and self._per_service[name] < self.max_per_service
        )

    def _prove(self, entry: _Entry) -> None:
        if not entry.proven:
            entry.proven = True
            self._proven += 1

    def _remove(self, entry: _Entry) -> None:
        view = entry.view
        del self._entries[view.id]
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

    def _add(
        self, view: wire.InstanceView, now: float, expires_at: float, *, proven: bool = False
    ) -> None:
        entry = _Entry(view, now, expires_at)
        self._entries[view.id] = entry
        self._per_service[view.name] += 1
        if proven:
            self._prove(entry)
        heapq.heappush(self._deadlines, (expires_at, view.id))

    def _set_deadline(self, entry: _Entry, expires_at: float) -> None:
        entry.expires_at = expires_at
        heapq.heappush(self._deadlines, (expires_at, entry.view.id))

    def _bury(self, entry: _Entry, now: float, *, said_goodbye: bool = False) -> None:
        view = entry.view
        self._bury_id(
            view.id,
            _Tombstone(
                view.seq,
                now + self.tombstone_s,
                said_goodbye,
                entry.last_seen,
                view.heartbeat_s or wire.MAX_HEARTBEAT_S,
            ),
        )

    def _bury_id(self, instance_id: str, tomb: _Tombstone) -> None:
        self._tombstones.pop(instance_id, None)  # re-inserted last: the order stays by time
        self._tombstones[instance_id] = tomb
        if len(self._tombstones) > self.max_instances:
            del self._tombstones[next(iter(self._tombstones))]
        self._asked.pop(instance_id, None)

    def _remember_ask(self, instance_id: str, now: float) -> None:
        self._asked[instance_id] = now
        if len(self._asked) > self.max_instances:
            del self._asked[next(iter(self._asked))]


def _allowed_jump(silent_s: float, heartbeat_s: float) -> float:
    """How far a genuine instance's sequence can have moved in ``silent_s``: one message per
    heartbeat plus one re-announce per ``wire.MIN_REANNOUNCE_S``, times the safety factor,
    plus :data:`SEQ_JUMP_SLACK` for bursts (one announcement per endpoint added)."""
    rate = 1 / wire.heartbeat_interval_s(heartbeat_s) + 1 / wire.MIN_REANNOUNCE_S
    return SEQ_JUMP_SLACK + SEQ_JUMP_RATE_FACTOR * rate * max(silent_s, 0.0)


def _drop_oldest(items: MutableMapping[str, _T], ended: Callable[[_T], bool]) -> None:
    """Drop entries from the front of an insertion-ordered mapping while they have ended."""
    while items:
        key = next(iter(items))
        if not ended(items[key]):
            return
        del items[key]


def _describes_differently(a: wire.InstanceView, b: wire.InstanceView) -> bool:
    return (a.version, a.description, a.metadata, a.endpoints, a.events, a.emits) != (
        b.version,
        b.description,
        b.metadata,
        b.endpoints,
        b.events,
        b.emits,
    )
