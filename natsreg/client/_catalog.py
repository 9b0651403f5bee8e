"""The client's local view of the services it calls: pure state, injected clock, no I/O.

Fed from three sources, in any order, each possibly late or repeated:

- a registry snapshot of the service (on first use),
- the registry's change events (``up``, ``changed``, ``health``, ``down``),
- the instances' own heartbeats and goodbyes, heard directly.

Why the heartbeats too: registry events only report changes, so without them the client could
not tell a quiet healthy instance from a frozen one, and one lost ``down`` event would leave a
dead instance in the view for good. With them, an instance leaves this view when *this client*
has not heard it for ``(missed_heartbeats + 0.5) × heartbeat_s`` (the slower pace it declared,
if any: docs/protocol.md, "Paced heartbeats"), whatever happens to events:
a frozen instance is avoided within one expiry period even if NATS still routes to it. A
goodbye heard directly drops the instance one hop earlier than the registry's ``down``.

Sequence numbers order everything: an older message never overwrites a newer one, and an
instance that said goodbye never comes back. Plain ADR-32 instances (``kind == "micro"``) do
not heartbeat: they stay until the registry says ``down``.

Any message may come from anyone who can publish (docs/protocol.md, "The client's view and how
it heals"), so :meth:`Catalog.hear` drops what is malformed, oversized, or says it speaks for
another service or instance than its subject names, counted by reason in ``dropped``; and it
tells its caller when the view must be reconciled with a registry snapshot
(:meth:`Catalog.reconcile`): a gap in a node's chain of events, an event from a node no
snapshot came from, a new instance, or a heartbeat from an instance the view does not hold.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from .. import wire

#: Instances kept per service; beyond this, new ones are ignored (a misbehaving fleet must
#: not exhaust a caller's memory).
MAX_INSTANCES_PER_SERVICE = 10_000
_MAX_TOMBSTONES = 4096
#: Registry nodes whose chain of events one service's view follows; beyond this the oldest is
#: forgotten (a deployment runs a handful of nodes).
MAX_NODES_PER_SERVICE = 16
#: An event repeats an instance's view (at most an announcement's ``wire.MAX_CONTROL_BYTES``)
#: plus a few fields of its own.
MAX_EVENT_BYTES = wire.MAX_CONTROL_BYTES + 1024

#: What :meth:`Catalog.hear` made of a message: dropped, taken, or taken but the view must be
#: reconciled with a registry snapshot.
Heard = Literal["dropped", "taken", "reconcile"]

# The goodbye an instance left the view on, which says what may bring it back:
# - "bye", heard on its own bye subject: never (only that service's credentials may publish
#   there);
# - "goodbye", said by a registry event: a reconcile only (the event may have been forged).
# It left on none (None: another down event, a reconcile without it, or local expiry): a
# newer sequence number brings it back. Only an instance that left on none was lost.
_Goodbye = Literal["bye", "goodbye"]


@dataclass(slots=True)
class _Entry:
    view: wire.InstanceView
    expires_at: float


class Catalog:
    """Instances per service name, as this client last heard of them."""

    def __init__(
        self,
        *,
        missed_heartbeats: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_lost: Callable[[str], None] | None = None,
        on_left: Callable[[str], None] | None = None,
    ) -> None:
        self.missed_heartbeats = missed_heartbeats
        self._clock = clock
        #: Called with an instance's id when it leaves the view for any reason but a
        #: goodbye (a ``down`` event, local expiry): it died, and calls in flight there
        #: will get no answer.
        self.on_lost = on_lost
        #: Called with an instance's id whenever it leaves the view, for any reason (goodbye,
        #: ``down`` event, local expiry, a reconcile, :meth:`forget`): what callers keep per
        #: instance (its circuit breakers) goes with it, on the change, not on every read.
        self.on_left = on_left
        self._services: dict[str, dict[str, _Entry]] = {}
        # id -> (last seq, the goodbye it left on): keeps late messages from reviving it.
        self._tombstones: OrderedDict[str, tuple[int, _Goodbye | None]] = OrderedDict()
        # service -> node -> revision of the last event taken from it (None: none since the
        # node's snapshot). Only nodes a snapshot came from are here.
        self._chains: dict[str, OrderedDict[str, int | None]] = {}
        #: Messages dropped, by reason: malformed, oversized, subject_mismatch, wrong_kind,
        #: unknown_node (an event from a node no snapshot came from: not applied).
        self.dropped: Counter[str] = Counter()
        #: Rises on every change of membership, health, version or metadata: callers cache
        #: their candidate lists against it.
        self.revision = 0  # pragma: no mutate (equivalent: callers compare revisions, never values)
        self._next_expiry = math.inf
        #: The client has read everything the bus sent it until this moment (on the
        #: catalog's clock): an instance is taken for dead by its silence only up to it, so
        #: that heartbeats still unread in the client's own queues (its event loop held up)
        #: kill nobody. Moved on by whoever proves it (Views); +inf: the clock alone decides.
        self.heard_through = math.inf
        #: An instance's silence has run out, but ``heard_through`` does not prove it yet.
        self.unproven = False  # pragma: no mutate (equivalent: None is as false, and read so)

    # -- input -------------------------------------------------------------------------------

    def track(self, service: str) -> None:
        """Start holding ``service`` (even with no instance yet)."""
        self._services.setdefault(service, {})
        self._chains.setdefault(service, OrderedDict())

    def forget(self, service: str) -> None:
        """Stop holding ``service``."""
        self._chains.pop(service, None)
        entries = self._services.pop(service, None)
        if entries:
            self.revision += 1  # pragma: no mutate (equivalent: read only as "it changed")
            for instance_id in entries:
                self._left(instance_id, lost=False)  # pragma: no mutate (None is not lost too)

    def hear(self, verb: str, tokens: Sequence[str], data: bytes) -> Heard:
        """One message heard on ``<prefix>.<verb>.<tokens>``: ``events.<name>``,
        ``hb.<name>.<id>`` or ``bye.<name>.<id>``. Dropped (and counted) when it cannot be
        read or its body speaks for another service or instance than its subject names."""
        if verb == "events":
            if len(data) > MAX_EVENT_BYTES:
                return self._drop("oversized")
            try:
                event = wire.decode_event(data)
            except wire.MALFORMED:
                return self._drop("malformed")
            if len(tokens) != 1 or event.instance.name != tokens[0]:
                return self._drop("subject_mismatch")
            return self.apply_event(event)
        if len(data) > wire.MAX_CONTROL_BYTES:
            return self._drop("oversized")
        try:
            message = wire.decode_control(data)
        except wire.MALFORMED:
            return self._drop("malformed")
        if len(tokens) != 2 or message.name != tokens[0] or message.id != tokens[1]:
            return self._drop("subject_mismatch")
        if verb == "hb" and isinstance(message, wire.Heartbeat):
            return self.apply_heartbeat(message)
        if verb == "bye" and isinstance(message, wire.Goodbye):
            self.apply_goodbye(message)
            return "taken"
        return self._drop("wrong_kind")

    def apply_snapshot(self, snapshot: wire.Snapshot, service: str | None = None) -> None:
        """Take a registry snapshot (the first one of a view, of ``service`` or of all);
        each instance is as fresh as its ``age_s`` says. Its node's events are believed from
        now on."""
        for name in {service} if service is not None else {v.name for v in snapshot.instances}:
            self._believe(name, snapshot.node)
        for view in snapshot.instances:
            self._upsert(view)

    def reconcile(self, service: str, snapshot: wire.Snapshot) -> None:
        """Make ``service`` match a registry snapshot of it: instances missing from it leave,
        those in it come back as it describes them, even over a ``down`` event or a newer
        sequence number heard meanwhile (both may have been forged); only an instance heard
        saying goodbye on its own subject stays gone. A snapshot of a node that is still
        warming up is no reference: the caller must not pass one."""
        entries = self._services.get(service)
        if entries is None:
            return
        self._believe(service, snapshot.node)
        listed = {v.id: v for v in snapshot.instances if v.name == service}
        for instance_id in [i for i in entries if i not in listed]:
            self._bury(instance_id, entries.pop(instance_id).view.seq, None)
            self._left(instance_id, lost=False)
        for view in listed.values():
            tomb = self._tombstones.get(view.id)
            if tomb is not None and tomb[1] == "bye":
                continue
            self._tombstones.pop(view.id, None)
            held = entries.pop(view.id, None) is not None
            self._upsert(view)
            if held and view.id not in entries:
                self._left(view.id, lost=False)  # listed, but silent for too long to be taken
        self.revision += 1

    def apply_event(self, event: wire.Event) -> Heard:
        """Take one registry change event, if its node is one a snapshot came from.

        ``reconcile`` when the event does not follow the last one taken from its node
        (``prev_revision``: an event was missed, or this one was never published by the
        node), when its node is unknown (not applied), or when it brings an instance the
        view did not hold (a forged ``up`` would otherwise stand until the next gap).
        """
        service = event.instance.name
        chain = self._chains.get(service)
        if chain is None:
            return "taken"  # not a service this client calls
        if event.node not in chain:
            self.dropped["unknown_node"] += 1
            return "reconcile"
        last = chain[event.node]
        chain[event.node] = event.revision
        gap = last is not None and event.prev_revision != last
        instance = event.instance
        if event.kind == "down":
            goodbye: _Goodbye | None = "goodbye" if event.reason == "goodbye" else None
            self._remove(service, instance.id, instance.seq, goodbye)
            return "reconcile" if gap else "taken"
        held = instance.id in self._services[service]
        self._upsert(instance)
        return "reconcile" if gap or not held else "taken"

    def apply_heartbeat(self, beat: wire.Heartbeat) -> Heard:
        """A heartbeat heard directly: refreshes a known instance. One the view does not
        hold asks for a reconcile (a heartbeat lacks version, endpoints and metadata): it
        is new, or was removed by a lost or forged event; unless it said goodbye itself."""
        entries = self._services.get(beat.name)
        if entries is None:
            return "taken"
        entry = entries.get(beat.id)
        if entry is None:
            tomb = self._tombstones.get(beat.id)
            return "taken" if tomb is not None and tomb[1] == "bye" else "reconcile"
        if beat.seq <= entry.view.seq:
            return "taken"
        view = entry.view
        if view.health != beat.health:
            self.revision += 1
        view.seq, view.health, view.load = beat.seq, beat.health, beat.load
        view.pace_s = beat.pace_s
        now = self._clock()
        view.age_s = 0.0
        entry.expires_at = self._expiry(view, now)
        return "taken"

    def apply_goodbye(self, bye: wire.Goodbye) -> None:
        """A goodbye heard directly: the instance is gone now (its calls in flight still
        end: a stopping instance drains)."""
        self._remove(bye.name, bye.id, bye.seq, "bye")

    # -- output ------------------------------------------------------------------------------

    def instances(self, service: str) -> list[wire.InstanceView]:
        """The live instances of ``service``, sorted by id (a stable order for round-robin).

        The views are the catalog's own: read them, do not change them.
        """
        self._expire()
        entries = self._services.get(service)
        if not entries:
            return []
        return [e.view for _, e in sorted(entries.items())]

    def services(self) -> list[str]:
        return list(self._services)

    @property
    def next_expiry(self) -> float:
        """No instance expires before this time (on the catalog's clock)."""
        return self._next_expiry

    def expire(self) -> None:
        """Drop the instances whose time is up (reading the catalog does this too)."""
        self._expire()

    # -- rules -------------------------------------------------------------------------------

    def _drop(self, reason: str) -> Heard:
        self.dropped[reason] += 1
        return "dropped"

    def _believe(self, service: str, node: str) -> None:
        chain = self._chains.get(service)
        if chain is None or node in chain:
            return
        chain[node] = None
        if len(chain) > MAX_NODES_PER_SERVICE:
            chain.popitem(last=False)

    def _expiry(self, view: wire.InstanceView, heard_at: float) -> float:
        # Every natsreg instance expires, whatever interval it declared: the rule clamps it.
        # A paced instance (docs/protocol.md "Paced heartbeats") is given its slower interval.
        if view.kind != "natsreg":
            return math.inf
        interval_s = wire.kept_interval_s(view.heartbeat_s, view.pace_s)
        return heard_at + wire.silence_allowed_s(interval_s, self.missed_heartbeats)

    def _upsert(self, view: wire.InstanceView) -> None:
        entries = self._services.get(view.name)
        if entries is None:
            return  # not a service this client calls
        tomb = self._tombstones.get(view.id)
        if tomb is not None and (tomb[1] is not None or view.seq <= tomb[0]):
            return
        old = entries.get(view.id)
        if old is not None and view.seq <= old.view.seq and view.seq != 0:
            return
        if old is None and len(entries) >= MAX_INSTANCES_PER_SERVICE:
            return
        now = self._clock()
        # A copy: the caller's Struct may be shared, and heartbeats update ours in place.
        view = msgspec.structs.replace(view)
        expires_at = self._expiry(view, now - view.age_s)
        if expires_at <= now:
            return
        entries[view.id] = _Entry(view, expires_at)
        self._tombstones.pop(view.id, None)
        self._next_expiry = min(self._next_expiry, expires_at)
        self.revision += 1

    def _remove(self, service: str, instance_id: str, seq: int, goodbye: _Goodbye | None) -> None:
        self._bury(instance_id, seq, goodbye)
        entries = self._services.get(service)
        if entries is not None and entries.pop(instance_id, None) is not None:
            self.revision += 1
            self._left(instance_id, lost=goodbye is None)

    def _left(self, instance_id: str, *, lost: bool) -> None:
        # Every way out of the view ends here, so that what callers keep per instance cannot
        # outlive it.
        if lost and self.on_lost is not None:
            self.on_lost(instance_id)
        if self.on_left is not None:
            self.on_left(instance_id)

    def _bury(self, instance_id: str, seq: int, goodbye: _Goodbye | None) -> None:
        # The oldest tombstones go first: bounded, whatever the churn.
        self._tombstones[instance_id] = (seq, goodbye)
        self._tombstones.move_to_end(instance_id)
        if len(self._tombstones) > _MAX_TOMBSTONES:
            self._tombstones.popitem(last=False)

    def _expire(self) -> None:
        now = self._clock()
        if now < self._next_expiry:
            return
        horizon = min(now, self.heard_through)
        if horizon >= self._next_expiry:
            self._expire_until(horizon)
        self.unproven = self._next_expiry <= now

    def _expire_until(self, horizon: float) -> None:
        next_expiry = math.inf
        for entries in self._services.values():
            for instance_id in [i for i, e in entries.items() if e.expires_at <= horizon]:
                self._bury(instance_id, entries.pop(instance_id).view.seq, None)
                self.revision += 1
                self._left(instance_id, lost=True)
            for e in entries.values():
                next_expiry = min(next_expiry, e.expires_at)
        self._next_expiry = next_expiry
