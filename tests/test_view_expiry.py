"""Expiry at the cost of one bucket append and look-up per instance per silence allowance: a
heartbeat moves only its instance's deadline, and a superseded deadline is queued again when it
surfaces; an instance expires at most one resolution after its deadline, never before. Pinned
on both sides, on the pure view and its deadline buckets with a fake clock."""

from __future__ import annotations

import math

import pytest

from natsreg import wire
from natsreg.registry._expiry import RESOLUTION_S, Deadlines, Entry
from natsreg.registry._view import View
from tests.test_view_rules import START, Clock

pytestmark = pytest.mark.pure


def announce(seq: int, heartbeat_s: float = 1.0) -> wire.Announce:
    return wire.Announce(id="i1", name="svc", version="1.0.0", seq=seq, heartbeat_s=heartbeat_s)


def beat(seq: int) -> wire.Heartbeat:
    return wire.Heartbeat(id="i1", name="svc", seq=seq)


def entry(instance_id: str = "i1") -> Entry:
    return Entry(wire.InstanceView(id=instance_id, name="svc", version="1.0.0"), START, 1.0, 1.0)


def test_heartbeats_queue_nothing_and_the_instance_expires_from_its_last_one() -> None:
    clock = Clock()
    view = View(missed_heartbeats=2, clock=clock)
    view.apply(announce(1))  # 1 s heartbeat: 2.5 s of silence allowed
    for seq in range(2, 12):
        clock.now += 0.5
        view.apply(beat(seq))
        assert len(view._deadlines) == 1  # the announcement's deadline, nothing more
    assert view.expire() == []  # its queued deadline surfaced superseded: queued again
    assert len(view._deadlines) == 1
    last = clock.now
    clock.now = last + 2.49
    assert view.expire() == []
    clock.now = last + 2.5
    assert [(c.kind, c.reason) for c in view.expire()] == [("down", "expired")]
    assert len(view._deadlines) == 0


def test_a_later_or_equal_deadline_is_not_queued_an_earlier_one_is_at_once() -> None:
    deadlines, e = Deadlines(), entry()
    entries = {"i1": e}
    deadlines.set(e, START + 10)
    deadlines.set(e, START + 10)
    deadlines.set(e, START + 20)
    assert len(deadlines) == 1 and e.expires_at == START + 20
    assert list(deadlines.due(START + 10, entries)) == []  # superseded: queued at +20
    assert len(deadlines) == 1
    deadlines.set(e, START + 5)
    assert len(deadlines) == 2
    assert list(deadlines.due(START + 4.9, entries)) == []
    assert list(deadlines.due(START + 5, entries)) == [e]
    del entries["i1"]  # the caller removes what is due
    assert list(deadlines.due(START + 30, entries)) == [] and len(deadlines) == 0


def test_a_deadline_queued_for_an_entry_since_replaced_expires_nothing() -> None:
    deadlines, old, new = Deadlines(), entry(), entry()
    deadlines.set(old, START + 10)
    entries = {"i1": new}  # re-announced: a new entry under the same id
    deadlines.set(new, START + 20)
    assert list(deadlines.due(START + 15, entries)) == []
    assert list(deadlines.due(START + 20, entries)) == [new]


def test_a_deadline_is_yielded_once_though_queued_twice() -> None:
    deadlines, e = Deadlines(), entry()
    entries = {"i1": e}
    deadlines.set(e, START + 10)
    deadlines.set(e, START + 5)
    found = []
    for due in deadlines.due(START + 5, entries):
        found.append(due)
    deadlines.set(e, START + 8)  # not removed: heard from again in time
    assert found == [e] and len(deadlines) == 2
    assert list(deadlines.due(START + 9, entries)) == [e]


@pytest.mark.parametrize("offset", [0.0, 0.01, 0.05, 0.099, 0.9000000000000001 - 0.9])
def test_a_deadline_expires_not_before_it_and_within_one_resolution_after(offset: float) -> None:
    deadlines, e = Deadlines(), entry()
    entries = {"i1": e}
    deadline = START + 0.9 + offset
    deadlines.set(e, deadline)
    assert deadline <= deadlines.next_due() <= deadline + RESOLUTION_S
    assert list(deadlines.due(math.nextafter(deadline, 0), entries)) == []
    assert list(deadlines.due(deadline + RESOLUTION_S, entries)) == [e]
    assert deadlines.next_due() == math.inf


def test_a_deadline_the_division_rounds_down_is_never_due_before_it() -> None:
    # 0.9000000000000001 / 0.1 is 9.0 exactly: its bucket must be the next one, or the
    # sweep would find it not yet due in a bucket that already ended, and queue it there again.
    deadlines, e = Deadlines(), entry()
    entries = {"i1": e}
    deadlines.set(e, 0.9000000000000001)
    assert deadlines.next_due() >= 0.9000000000000001
    assert list(deadlines.due(0.9, entries)) == []
    assert list(deadlines.due(1.0, entries)) == [e]


def test_deadlines_in_one_bucket_are_taken_together_and_counted() -> None:
    deadlines = Deadlines()
    entries = {i: entry(i) for i in ("a", "b", "c")}
    for n, e in enumerate(entries.values()):
        deadlines.set(e, START + 0.01 * (n + 1))  # all three in the bucket ending at +0.1
    deadlines.set(entries["c"], START + 5)  # later: c stays queued at +0.1
    assert len(deadlines) == 3 and deadlines.next_due() == pytest.approx(START + RESOLUTION_S)
    due = list(deadlines.due(START + RESOLUTION_S, entries))
    assert due == [entries["a"], entries["b"]]
    assert len(deadlines) == 1  # c, queued again at its own deadline
    assert deadlines.next_due() == pytest.approx(START + 5)


def test_a_new_interval_sets_the_silence_allowance_and_sequence_rate_the_next_beat_uses() -> None:
    clock = Clock()
    view = View(missed_heartbeats=2, clock=clock)
    view.apply(announce(1))
    held = view._entries["i1"]
    view.set_interval(held, 10.0, 0.0)
    assert held.view.heartbeat_s == 10.0 and held.ttl_s == 25.0
    assert held.jump_rate == pytest.approx(2 * (1 / 10 + 1))
    clock.now += 1
    # 1 s of silence at 2.2 a second, plus 32 of slack: 34 ahead is allowed, 35 is not.
    assert view.apply(beat(1 + 35)).dropped == "seq_jump"
    assert not view.apply(beat(1 + 34)).dropped
    clock.now = START + 1 + 24.9
    assert view.expire() == []
    clock.now = START + 1 + 25
    assert len(view.expire()) == 1


def test_a_new_interval_is_clamped_as_an_announced_one_is() -> None:
    view = View(missed_heartbeats=2, clock=Clock())
    view.apply(announce(1))
    held = view._entries["i1"]
    view.set_interval(held, 1e9, 0.0)
    assert held.view.heartbeat_s == wire.MAX_HEARTBEAT_S
    assert held.ttl_s == wire.MAX_HEARTBEAT_S * 2.5
    view.set_interval(held, 0.0, 0.0)
    assert held.view.heartbeat_s == wire.MIN_HEARTBEAT_S


def test_a_pace_sets_the_silence_allowance_and_leaves_the_sequence_rate_to_the_interval() -> None:
    view = View(missed_heartbeats=2, clock=Clock())
    view.apply(announce(1))
    held = view._entries["i1"]
    view.set_interval(held, 1.0, 10.0)
    # Silent up to 2.5 paces; its numbers may still grow as fast as its own 1 s allows.
    assert (held.view.pace_s, held.ttl_s) == (10.0, 25.0)
    assert held.jump_rate == pytest.approx(2 * (1 / 1 + 1))
    view.set_interval(held, 1.0, 0.5)  # a pace faster than its interval: the interval
    assert held.ttl_s == 2.5


def test_entries_queued_together_are_each_queued_and_counted_at_their_own_deadlines() -> None:
    # As a starting node queues a peer's instances: many at once, in one pass.
    deadlines = Deadlines()
    entries = {i: entry(i) for i in ("a", "b", "c")}
    for n, e in enumerate(entries.values()):
        e.expires_at = START + n
    deadlines.queue(entries.values())
    assert len(deadlines) == 3
    assert list(deadlines.due(START, entries)) == [entries["a"]]
    assert list(deadlines.due(START + 1, entries)) == [entries["b"]]
    assert len(deadlines) == 1
