"""The sequence and identity rules a registry node holds every message to (docs/protocol.md,
"Identity, sequence and the registry's rules"), and what they need remembered: a tombstone
for each instance that went down, and whom the node asked for its info lately.

An instance that said goodbye or expired leaves a tombstone holding its last sequence number,
so that a message still in flight cannot bring it back. Tombstones and asks are kept in the
order they were made, which (with one fixed duration each) is the order they end in. Both are
capped (oldest dropped first), since goodbyes and heartbeats for made-up ids cost nothing to
send.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from .. import wire
from ._expiry import Entry

_T = TypeVar("_T")

#: A message may advance an instance's sequence by at most this much plus its jump rate
#: (:func:`jump_rate`) per second since the node last accepted one from it. Above that the
#: message is dropped as ``seq_jump``: a genuine instance sends one message per heartbeat and
#: at most one re-announce per ``wire.MIN_REANNOUNCE_S``, so twice that rate never locks it
#: out (a genuine jump, after lost messages, is admitted once enough time has passed), while
#: one forged message can no longer push the sequence out of the instance's reach.
SEQ_JUMP_SLACK = 32
#: Per second of silence, as a multiple of the instance's own message rate.
SEQ_JUMP_RATE_FACTOR = 2.0

#: Why a message is refused; ``seq_jump_ask``: dropped as ``seq_jump``, and its sender is to
#: be asked to announce (once per ask interval), which a genuine instance does with its next
#: number.
Refusal = Literal["", "subject_mismatch", "stale", "seq_jump", "seq_jump_ask"]


@dataclass(slots=True)
class Tombstone:
    seq: int
    until: float
    said_goodbye: bool
    #: When the instance was last heard, and its interval: the sequence-jump bound goes on.
    heard_at: float = 0.0
    heartbeat_s: float = wire.MAX_HEARTBEAT_S


class Sequences:
    """Tombstones for ``tombstone_s``, asks for ``ask_interval_s``, at most
    ``max_remembered`` of each."""

    def __init__(self, *, tombstone_s: float, ask_interval_s: float, max_remembered: int) -> None:
        self.tombstone_s = tombstone_s
        self.ask_interval_s = ask_interval_s
        self.max_remembered = max_remembered
        self.tombstones: dict[str, Tombstone] = {}
        self.asked: dict[str, float] = {}

    def refusal(
        self, message: wire.ControlMessage | wire.InstanceView, entry: Entry | None, now: float
    ) -> Refusal:
        """Why ``message`` may not be taken into a view that holds ``entry`` for its id (or
        none); ``""`` if it may."""
        instance_id, seq = message.id, message.seq
        if entry is not None:
            held = entry.view
            if held.name != message.name:
                # An instance never changes its service: this speaks for another one.
                return "subject_mismatch"
            if seq <= held.seq:
                return "stale"
            if seq - held.seq > allowed_jump(now - entry.last_seen, entry.jump_rate):
                # Forged, or we lost its messages.
                return "seq_jump_ask" if self.ask(instance_id, now) else "seq_jump"
            return ""
        tomb = self.tombstones.get(instance_id)
        if tomb is None:
            return ""
        if tomb.said_goodbye or seq <= tomb.seq:
            return "stale"
        if seq - tomb.seq > allowed_jump(now - tomb.heard_at, jump_rate(tomb.heartbeat_s)):
            return "seq_jump"
        return ""

    def ask(self, instance_id: str, now: float) -> bool:
        """Whether to ask ``instance_id`` for its info now: not if it was asked within the
        ask interval. The ask is remembered."""
        if instance_id in self.asked:
            return False
        self.asked[instance_id] = now
        if len(self.asked) > self.max_remembered:
            del self.asked[next(iter(self.asked))]
        return True

    def bury(self, entry: Entry, now: float, *, said_goodbye: bool = False) -> None:
        """``entry``'s instance went down: its later messages are held to its tombstone."""
        view = entry.view
        self.bury_id(
            view.id,
            Tombstone(
                view.seq,
                now + self.tombstone_s,
                said_goodbye,
                entry.last_seen,
                view.heartbeat_s or wire.MAX_HEARTBEAT_S,
            ),
        )

    def bury_id(self, instance_id: str, tomb: Tombstone) -> None:
        self.tombstones.pop(instance_id, None)  # re-inserted last: the order stays by time
        self.tombstones[instance_id] = tomb
        if len(self.tombstones) > self.max_remembered:
            del self.tombstones[next(iter(self.tombstones))]
        self.asked.pop(instance_id, None)

    def lift(self, instance_id: str) -> None:
        """``instance_id`` announced itself: no tombstone holds it, and it was heard."""
        self.tombstones.pop(instance_id, None)
        self.asked.pop(instance_id, None)

    def forget(self, now: float) -> None:
        """Drop the tombstones and asks that have ended by ``now``."""
        _drop_oldest(self.tombstones, lambda t: t.until <= now)
        _drop_oldest(self.asked, lambda asked_at: asked_at + self.ask_interval_s <= now)


def jump_rate(heartbeat_s: float) -> float:
    """How fast (per second) a genuine instance's sequence may grow: one message per
    heartbeat plus one re-announce per ``wire.MIN_REANNOUNCE_S``, times the safety factor."""
    rate = 1 / wire.heartbeat_interval_s(heartbeat_s) + 1 / wire.MIN_REANNOUNCE_S
    return SEQ_JUMP_RATE_FACTOR * rate


def allowed_jump(silent_s: float, rate: float) -> float:
    """How far a genuine instance's sequence can have moved in ``silent_s`` at ``rate``,
    plus :data:`SEQ_JUMP_SLACK` for bursts (one announcement per endpoint added)."""
    return SEQ_JUMP_SLACK + rate * max(silent_s, 0.0)


def _drop_oldest(items: MutableMapping[str, _T], ended: Callable[[_T], bool]) -> None:
    """Drop entries from the front of an insertion-ordered mapping while they have ended."""
    while items:
        key = next(iter(items))
        if not ended(items[key]):
            return
        del items[key]
