"""Paced heartbeats, rule by rule (docs/protocol.md, "Paced heartbeats"): the pace an instance
keeps from the leases it heard, and how long every reader waits for a paced instance. Pure,
with fake clocks; each bound pinned on both sides."""

from __future__ import annotations

import math

import msgspec
import pytest

from natsreg import wire
from natsreg.client._catalog import Catalog
from natsreg.errors import ConfigError
from natsreg.registry._pace import check_pace
from natsreg.registry._view import View
from natsreg.service._pace import MAX_LEASES, Leases
from tests.test_catalog_rules import Node
from tests.test_catalog_rules import view as instance_view_of
from tests.test_view_rules import Clock, announce

pytestmark = pytest.mark.pure

OWN_S = 1.0


def pace(node: str = "n1", heartbeat_s: float = 10.0, valid_s: float = 60.0) -> bytes:
    return wire.encode(wire.Pace(node=node, heartbeat_s=heartbeat_s, valid_s=valid_s))


# -- the instance's side: which pace it keeps ------------------------------------------------


def test_without_a_lease_an_instance_keeps_its_own_interval() -> None:
    assert Leases(Clock()).interval_s(OWN_S) == OWN_S


def test_a_lease_slows_an_instance_until_it_ends_then_it_is_back_to_its_own_interval() -> None:
    clock = Clock()
    leases = Leases(clock)
    assert leases.hear("n1", pace(heartbeat_s=10.0, valid_s=60.0))
    clock.now += 59.999
    assert leases.interval_s(OWN_S) == 10.0
    clock.now += 0.001
    assert leases.interval_s(OWN_S) == OWN_S


def test_a_withdrawn_lease_ends_at_once() -> None:
    leases = Leases(Clock())
    leases.hear("n1", pace())
    assert leases.hear("n1", pace(heartbeat_s=0.0, valid_s=0.0))
    assert leases.interval_s(OWN_S) == OWN_S


def test_the_fastest_valid_lease_wins_and_none_makes_an_instance_faster_than_its_own() -> None:
    leases = Leases(Clock())
    leases.hear("n1", pace("n1", heartbeat_s=10.0))
    leases.hear("n2", pace("n2", heartbeat_s=5.0))
    assert leases.interval_s(OWN_S) == 5.0
    leases.hear("n3", pace("n3", heartbeat_s=0.2))
    assert leases.interval_s(OWN_S) == OWN_S


@pytest.mark.parametrize(
    ("asked", "kept"),
    [(wire.MAX_PACE_S, wire.MAX_PACE_S), (wire.MAX_PACE_S + 0.001, wire.MAX_PACE_S), (1e300, 30)],
)
def test_a_forged_lease_slows_an_instance_to_at_most_max_pace_s(asked: float, kept: float) -> None:
    leases = Leases(Clock())
    leases.hear("evil", pace("evil", heartbeat_s=asked, valid_s=1e300))
    assert leases.interval_s(OWN_S) == kept


def test_a_forged_lease_lasts_at_most_max_pace_valid_s() -> None:
    clock = Clock()
    leases = Leases(clock)
    leases.hear("evil", pace("evil", valid_s=1e300))
    clock.now += wire.MAX_PACE_VALID_S - 0.001
    assert leases.interval_s(OWN_S) == 10.0
    clock.now += 0.001
    assert leases.interval_s(OWN_S) == OWN_S


@pytest.mark.parametrize(
    ("node", "data", "reason"),
    [
        ("n2", pace("n1"), "subject_mismatch"),
        ("n1", b"{", "malformed"),
        ("n1", b'{"node":"n1","heartbeat_s":"slow"}', "malformed"),
        ("n1", pace("n1")[:-1] + b" " * wire.MAX_PACE_BYTES + b"}", "oversized"),
        ("n1", b'{"node":"n1","heartbeat_s":1e999,"valid_s":60}', "malformed"),
        ("n1", b'{"node":"n1","heartbeat_s":10,"valid_s":1e999}', "malformed"),
    ],
)
def test_a_pace_message_that_cannot_be_believed_changes_nothing(
    node: str, data: bytes, reason: str
) -> None:
    leases = Leases(Clock())
    assert not leases.hear(node, data)
    assert leases.dropped == {reason: 1}
    assert leases.interval_s(OWN_S) == OWN_S


def test_a_message_just_within_the_size_bound_is_taken() -> None:
    data = pace("n1")
    padded = data[:-1] + b" " * (wire.MAX_PACE_BYTES - len(data)) + b"}"
    assert len(padded) == wire.MAX_PACE_BYTES
    assert Leases(Clock()).hear("n1", padded)


def test_a_flood_of_made_up_nodes_cannot_push_out_a_genuine_faster_lease() -> None:
    leases = Leases(Clock())
    leases.hear("genuine", pace("genuine", heartbeat_s=5.0))
    for n in range(3 * MAX_LEASES):
        leases.hear(f"fake{n}", pace(f"fake{n}", heartbeat_s=30.0))
    assert leases.interval_s(OWN_S) == 5.0
    assert len(leases._leases) == MAX_LEASES


@pytest.mark.parametrize(("pace_s", "ok"), [(0.0, True), (30.0, True), (30.001, False)])
def test_a_node_offers_a_pace_between_off_and_max_pace_s(pace_s: float, ok: bool) -> None:
    for bad in (-0.001, math.nan, math.inf):
        with pytest.raises(ConfigError):
            check_pace(bad)
    if ok:
        assert check_pace(pace_s) == pace_s
    else:
        with pytest.raises(ConfigError, match="between 0"):
            check_pace(pace_s)


# -- the readers' side: how long a paced instance is waited for ------------------------------


def paced_beat(seq: int, pace_s: float) -> wire.Heartbeat:
    return wire.Heartbeat(id="i1", name="svc", seq=seq, pace_s=pace_s)


def test_the_registry_expires_a_paced_instance_by_the_pace_its_last_beat_declared() -> None:
    clock = Clock()
    view = View(missed_heartbeats=2.0, clock=clock)
    view.apply(announce(1))
    view.apply(paced_beat(2, pace_s=10.0))
    clock.now += 24.999  # 2.5 intervals of 10 s
    assert view.expire() == []
    assert [i.pace_s for i in view.instances()] == [10.0]
    clock.now += 0.001
    assert [c.kind for c in view.expire()] == ["down"]


def test_a_beat_back_at_the_own_interval_brings_the_expiry_back_to_it() -> None:
    clock = Clock()
    view = View(missed_heartbeats=2.0, clock=clock)
    view.apply(announce(1))
    view.apply(paced_beat(2, pace_s=10.0))
    view.apply(paced_beat(3, pace_s=1.0))
    clock.now += 2.499
    assert view.expire() == []
    clock.now += 0.001
    assert [c.kind for c in view.expire()] == ["down"]


def test_an_announcement_declares_its_pace_too_and_an_old_instance_keeps_its_interval() -> None:
    clock = Clock()
    view = View(missed_heartbeats=2.0, clock=clock)
    view.apply(announce(1, "paced", pace_s=10.0))
    view.apply(announce(1, "old"))  # no pace_s: an instance older than paced heartbeats
    clock.now += 2.5
    assert [c.instance.id for c in view.expire()] == ["old"]
    clock.now += 22.5
    assert [c.instance.id for c in view.expire()] == ["paced"]


def test_a_declared_pace_is_clamped_like_any_interval() -> None:
    clock = Clock()
    view = View(missed_heartbeats=2.0, clock=clock)
    view.apply(announce(1))
    view.apply(paced_beat(2, pace_s=1e300))
    clock.now += 2.5 * wire.MAX_HEARTBEAT_S
    assert [c.kind for c in view.expire()] == ["down"]


def test_a_non_finite_pace_is_refused() -> None:
    for message in (paced_beat(2, math.nan), announce(1, pace_s=math.inf)):
        with pytest.raises(wire.Invalid) as refused:
            wire.check(message)
        assert refused.value.reason == "invalid_pace"


@pytest.mark.parametrize("extra", [0, 1])
def test_the_sequence_jump_bound_follows_the_own_interval_not_the_pace(extra: int) -> None:
    # A paced instance may go back to its own interval at any moment (its lease ended), so
    # the fastest it can count is still one beat per heartbeat_s: 32 + 2 × (1 + 1) × 10.
    clock = Clock()
    view = View(clock=clock)
    view.apply(announce(1))
    view.apply(paced_beat(2, pace_s=10.0))
    clock.now += 10.0
    assert view.apply(paced_beat(2 + 72 + extra, pace_s=10.0)).dropped == (
        "seq_jump" if extra else ""
    )


def test_a_restored_paced_instance_expires_when_it_would_have_on_the_peer() -> None:
    clock = Clock()
    view = View(missed_heartbeats=2.0, clock=clock)
    peer = wire.instance_view(announce(5, pace_s=10.0))
    view.restore(msgspec.structs.replace(peer, age_s=5.0))
    clock.now += 19.999
    assert view.expire() == []
    clock.now += 0.001
    assert [c.kind for c in view.expire()] == ["down"]


def test_the_client_keeps_a_paced_instance_as_long_as_its_pace_says() -> None:
    clock = Clock()
    catalog = Catalog(clock=clock)
    catalog.track("svc")
    catalog.apply_snapshot(Node().snapshot(instance_view_of(seq=1)), "svc")
    catalog.apply_heartbeat(paced_beat(2, pace_s=10.0))
    clock.now += 24.999
    assert [i.id for i in catalog.instances("svc")] == ["i1"]
    clock.now += 0.001
    assert catalog.instances("svc") == []


def test_the_client_takes_the_pace_from_a_registry_snapshot_too() -> None:
    clock = Clock()
    catalog = Catalog(clock=clock)
    catalog.track("svc")
    catalog.apply_snapshot(Node().snapshot(instance_view_of(seq=1, pace_s=10.0, age_s=5.0)), "svc")
    clock.now += 19.999
    assert [i.id for i in catalog.instances("svc")] == ["i1"]
    clock.now += 0.001
    assert catalog.instances("svc") == []
