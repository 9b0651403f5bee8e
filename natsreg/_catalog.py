"""The client's local view of the services it calls: pure state, injected clock, no I/O.

Fed from three sources, in any order, each possibly late or repeated:

- a registry snapshot of the service (on first use),
- the registry's change events (``up``, ``changed``, ``health``, ``down``),
- the instances' own heartbeats and goodbyes, heard directly.

Why the heartbeats too: registry events only report changes, so without them the client could
not tell a quiet healthy instance from a frozen one, and one lost ``down`` event would leave a
dead instance in the view for good. With them, an instance leaves this view when *this client*
has not heard it for ``(missed_heartbeats + 0.5) × heartbeat_s``, whatever happens to events:
a frozen instance is avoided within one expiry period even if NATS still routes to it. A
goodbye heard directly drops the instance one hop earlier than the registry's ``down``.

Sequence numbers order everything: an older message never overwrites a newer one, and an
instance that said goodbye never comes back. Plain ADR-32 instances (``kind == "micro"``) do
not heartbeat: they stay until the registry says ``down``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from . import wire

#: Instances kept per service; beyond this, new ones are ignored (a misbehaving fleet must
#: not exhaust a caller's memory).
MAX_INSTANCES_PER_SERVICE = 10_000
_MAX_TOMBSTONES = 4096


@dataclass(slots=True)
class _Entry:
    view: wire.InstanceView
    expires_at: float


class Catalog:
    """Instances per service name, as this client last heard of them."""

    def __init__(self, *, missed_heartbeats: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.missed_heartbeats = missed_heartbeats
        self._clock = clock
        self._services: dict[str, dict[str, _Entry]] = {}
        # id -> (last seq, said goodbye): keeps late messages from reviving an instance.
        self._tombstones: OrderedDict[str, tuple[int, bool]] = OrderedDict()
        #: Rises on every change of membership, health, version or metadata: callers cache
        #: their candidate lists against it.
        self.revision = 0
        self._next_expiry = float("inf")

    # -- input -------------------------------------------------------------------------------

    def track(self, service: str) -> None:
        """Start holding ``service`` (even with no instance yet)."""
        self._services.setdefault(service, {})

    def forget(self, service: str) -> None:
        """Stop holding ``service``."""
        if self._services.pop(service, None):
            self.revision += 1

    def tracks(self, service: str) -> bool:
        return service in self._services

    def apply_snapshot(self, snapshot: wire.Snapshot) -> None:
        """Take a registry snapshot; each instance is as fresh as its ``age_s`` says."""
        for view in snapshot.instances:
            self._upsert(view)

    def apply_event(self, event: wire.Event) -> None:
        """Take one registry change event."""
        if event.kind == "down":
            self._remove(event.instance.name, event.instance.id, event.instance.seq,
                         said_goodbye=event.reason == "goodbye")
        else:
            self._upsert(event.instance)

    def apply_heartbeat(self, beat: wire.Heartbeat) -> None:
        """A heartbeat heard directly: refreshes a known instance; an unknown one waits for
        the registry's ``up`` event (a heartbeat lacks version, endpoints and metadata)."""
        entry = self._services.get(beat.name, {}).get(beat.id)
        if entry is None or beat.seq <= entry.view.seq:
            return
        view = entry.view
        if view.health != beat.health:
            self.revision += 1
        view.seq, view.health, view.load = beat.seq, beat.health, beat.load
        now = self._clock()
        view.age_s = 0.0
        entry.expires_at = self._expiry(view, now)

    def apply_goodbye(self, bye: wire.Goodbye) -> None:
        """A goodbye heard directly: the instance is gone now."""
        self._remove(bye.name, bye.id, bye.seq, said_goodbye=True)

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

    # -- rules -------------------------------------------------------------------------------

    def _expiry(self, view: wire.InstanceView, heard_at: float) -> float:
        if view.kind != "natsreg" or view.heartbeat_s <= 0:
            return float("inf")
        return heard_at + wire.silence_allowed_s(view.heartbeat_s, self.missed_heartbeats)

    def _upsert(self, view: wire.InstanceView) -> None:
        entries = self._services.get(view.name)
        if entries is None:
            return  # not a service this client calls
        tomb = self._tombstones.get(view.id)
        if tomb is not None and (tomb[1] or view.seq <= tomb[0]):
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

    def _remove(self, service: str, instance_id: str, seq: int, *, said_goodbye: bool) -> None:
        self._bury(instance_id, seq, said_goodbye)
        entries = self._services.get(service)
        if entries is not None and entries.pop(instance_id, None) is not None:
            self.revision += 1

    def _bury(self, instance_id: str, seq: int, said_goodbye: bool) -> None:
        # The oldest tombstones go first: bounded, whatever the churn.
        self._tombstones[instance_id] = (seq, said_goodbye)
        self._tombstones.move_to_end(instance_id)
        if len(self._tombstones) > _MAX_TOMBSTONES:
            self._tombstones.popitem(last=False)

    def _expire(self) -> None:
        now = self._clock()
        if now < self._next_expiry:
            return
        next_expiry = float("inf")
        for entries in self._services.values():
            for instance_id in [i for i, e in entries.items() if e.expires_at <= now]:
                self._bury(instance_id, entries.pop(instance_id).view.seq, False)
                self.revision += 1
            for e in entries.values():
                next_expiry = min(next_expiry, e.expires_at)
        self._next_expiry = next_expiry
