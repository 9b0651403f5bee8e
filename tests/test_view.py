"""The registry's rules, on the pure view with a fake clock: no server, exact timing."""

from __future__ import annotations

import msgspec
import pytest

from natsreg import wire
from natsreg.registry._view import View
from tests.helpers import Clock

pytestmark = pytest.mark.pure


def announce(seq: int, **fields: object) -> wire.Announce:
    return wire.Announce(id="i1", name="svc", version="1.0.0", seq=seq, heartbeat_s=1.0, **fields)  # type: ignore[arg-type]


def beat(seq: int, health: wire.Health = "passing") -> wire.Heartbeat:
    return wire.Heartbeat(id="i1", name="svc", seq=seq, health=health)


def test_an_announcement_brings_an_instance_up() -> None:
    view = View(clock=Clock())
    outcome = view.apply(announce(1))
    assert [c.kind for c in outcome.changes] == ["up"]
    assert [i.id for i in view.instances()] == ["i1"]


def test_a_duplicate_or_older_message_is_ignored_as_stale() -> None:
    view = View(clock=Clock())
    view.apply(announce(5))
    assert view.apply(beat(5)).stale
    assert view.apply(beat(3)).stale
    assert not view.apply(beat(6)).stale


def test_a_late_heartbeat_never_revives_an_instance_that_said_goodbye() -> None:
    view = View(clock=Clock())
    view.apply(announce(1))
    outcome = view.apply(wire.Goodbye(id="i1", name="svc", seq=10))
    assert [(c.kind, c.reason) for c in outcome.changes] == [("down", "goodbye")]
    for late in (beat(9), announce(9), beat(11), announce(12)):
        assert view.apply(late).stale
    assert view.instances() == []


def test_an_instance_expires_after_the_missed_heartbeats_and_grace() -> None:
    clock = Clock()
    view = View(missed_heartbeats=2, clock=clock)
    view.apply(announce(1))
    clock.now += 2.49
    assert view.expire() == []
    clock.now += 0.02
    assert [(c.kind, c.reason) for c in view.expire()] == [("down", "expired")]
    assert view.instances() == []


def test_a_heartbeat_postpones_expiry() -> None:
    clock = Clock()
    view = View(missed_heartbeats=2, clock=clock)
    view.apply(announce(1))
    clock.now += 2.0
    view.apply(beat(2))
    clock.now += 2.0
    assert view.expire() == []


def test_a_stale_heartbeat_does_not_revive_an_expired_instance() -> None:
    clock = Clock()
    view = View(clock=clock)
    view.apply(announce(1))
    view.apply(beat(2))
    clock.now += 10
    view.expire()
    assert view.apply(beat(2)).stale
    assert view.instances() == []


def test_a_fresh_heartbeat_from_an_expired_instance_asks_for_its_info_once() -> None:
    clock = Clock()
    view = View(clock=clock)
    view.apply(announce(1))
    clock.now += 10
    view.expire()
    assert view.apply(beat(2)).ask_info
    assert not view.apply(beat(3)).ask_info, "asked again within the ask interval"
    assert [c.kind for c in view.apply(announce(4)).changes] == ["up"]


def test_an_unknown_heartbeat_asks_for_info_and_adds_nothing() -> None:
    view = View(clock=Clock())
    outcome = view.apply(beat(7))
    assert outcome.ask_info and outcome.changes == []
    assert view.instances() == []


def test_health_changes_and_description_changes_are_reported() -> None:
    view = View(clock=Clock())
    view.apply(announce(1))
    assert [c.kind for c in view.apply(beat(2, "critical")).changes] == ["health"]
    assert view.apply(beat(3, "critical")).changes == []
    changed = view.apply(announce(4, health="critical", metadata={"zone": "b"}))
    assert [c.kind for c in changed.changes] == ["changed"]


def test_instances_report_their_age_from_the_monotonic_clock() -> None:
    clock = Clock()
    view = View(clock=clock)
    view.apply(announce(1))
    clock.now += 0.75
    assert view.instances()[0].age_s == 0.75


def test_tombstones_are_forgotten_after_their_time() -> None:
    clock = Clock()
    view = View(tombstone_s=60, clock=clock)
    view.apply(wire.Goodbye(id="i1", name="svc", seq=3))
    clock.now += 61
    view.expire()
    assert not view.apply(announce(1)).stale


def test_a_plain_adr32_service_is_listed_as_micro_and_expires_without_polls() -> None:
    clock = Clock()
    view = View(micro_ttl_s=15, clock=clock)
    info = wire.SrvInfo(
        name="go-svc",
        id="m1",
        version="0.1.0",
        description=None,
        endpoints=[wire.SrvEndpointInfo(name="add", subject="math.add")],
    )
    assert [c.kind for c in view.apply_micro(info).changes] == ["up"]
    (instance,) = view.instances()
    assert (instance.kind, instance.description, instance.endpoints[0].subject) == (
        "micro",
        "",
        "math.add",
    )
    clock.now += 16
    assert [c.reason for c in view.expire()] == ["expired"]


def test_a_ping_keeps_a_listed_plain_service_and_asks_info_only_when_there_is_news() -> None:
    clock = Clock()
    view = View(micro_ttl_s=3, clock=clock)
    assert view.pinged_micro("m1", "go-svc", "1.0.0"), "a new id must be asked its INFO"
    bare = wire.SrvInfo(name="go-svc", id="m1", version="1.0.0")
    view.apply_micro(bare)
    assert view.pinged_micro("m1", "go-svc", "1.0.0"), "listed with no endpoint yet"
    full = wire.SrvInfo(
        name="go-svc",
        id="m1",
        version="1.0.0",
        endpoints=[wire.SrvEndpointInfo(name="add", subject="math.add")],
    )
    view.apply_micro(full)
    for _ in range(5):  # a ping every 2 s outlives the 3 s expiry many times over
        clock.now += 2
        assert not view.pinged_micro("m1", "go-svc", "1.0.0")
        assert view.expire() == []
    assert view.pinged_micro("m1", "go-svc", "1.1.0"), "a new version must be asked"
    # Another service's name, or a natsreg instance's id: nothing to ask, nothing kept alive.
    view.apply(announce(1))
    assert not view.pinged_micro("m1", "other", "1.0.0")
    assert not view.pinged_micro("i1", "svc", "1.0.0")
    clock.now += 3.1
    assert "m1" in [c.instance.id for c in view.expire()]


def test_a_closed_connection_removes_the_instances_on_it() -> None:
    view = View(clock=Clock())
    view.apply(announce(1, conn="S1/7"))
    view.apply(wire.Announce(id="i2", name="svc", version="1.0.0", seq=1, conn="S1/8"))
    changes = view.disconnected("S1/7")
    assert [(c.kind, c.reason, c.instance.id) for c in changes] == [("down", "disconnected", "i1")]
    assert [i.id for i in view.instances()] == ["i2"]
    assert view.apply(beat(1)).stale, "a late heartbeat revived it"


def test_an_instance_that_moved_connection_survives_the_old_ones_close() -> None:
    view = View(clock=Clock())
    view.apply(announce(1, conn="S1/7"))
    view.apply(announce(2, conn="S2/3"))  # reconnected elsewhere, re-announced
    assert view.disconnected("S1/7") == []
    assert [c.instance.id for c in view.disconnected("S2/3")] == ["i1"]


def _fleet(view: View, count: int, prefix: str = "i") -> None:
    """``count`` instances that announced and heartbeat once (seq 1 and 2)."""
    for n in range(count):
        view.apply(wire.Announce(id=f"{prefix}{n}", name="svc", version="1.0.0", seq=1))
        view.apply(wire.Heartbeat(id=f"{prefix}{n}", name="svc", seq=2))


def test_a_fifth_of_the_fleet_going_silent_at_once_is_expired_and_flagged() -> None:
    clock = Clock()
    view = View(clock=clock)
    _fleet(view, 8, "stay")
    _fleet(view, 2, "gone")
    clock.now += 2.0
    for n in range(8):  # the others keep heartbeating
        view.apply(wire.Heartbeat(id=f"stay{n}", name="svc", seq=3))
    clock.now += 1.0
    assert len(view.expire()) == 2, "policy: expire all the same"
    assert view.mass_alert is not None
    assert (view.mass_alert.lost, view.mass_alert.before) == (2, 10)
    _fleet(view, 1, "new")  # replacements arrive: half the lost capacity is back
    view.expire()
    assert view.mass_alert is None


def test_ordinary_churn_raises_no_mass_alert() -> None:
    clock = Clock()
    view = View(clock=clock)
    _fleet(view, 20)
    view.apply(wire.Goodbye(id="i0", name="svc", seq=3))
    for step in range(30):
        clock.now += 1.0
        for n in range(1, 20):
            if n != 5:
                view.apply(wire.Heartbeat(id=f"i{n}", name="svc", seq=3 + step))
        view.expire()
    assert "i5" not in view and view.mass_alert is None


def test_a_mass_alert_that_never_recovers_clears_after_its_time() -> None:
    clock = Clock()
    view = View(mass_alert_s=300, clock=clock)
    _fleet(view, 4)
    clock.now += 3
    view.expire()
    assert view.mass_alert is not None
    clock.now += 301
    view.expire()
    assert view.mass_alert is None


def test_services_are_summed_per_name_and_version() -> None:
    clock = Clock()
    view = View(clock=clock)
    endpoint = wire.Endpoint(name="get", subject="svc.get", queue_group="svc")
    for n, (version, health) in enumerate(
        [("1.0.0", "passing"), ("1.0.0", "critical"), ("2.0.0", "passing")]
    ):
        view.apply(
            wire.Announce(
                id=f"i{n}", name="svc", version=version, seq=1, health=health, endpoints=[endpoint]
            )
        )  # type: ignore[arg-type]
        clock.now += 1
    one, two = view.summaries()
    assert (one.version, one.instances, one.health, one.endpoints) == (
        "1.0.0",
        2,
        {"passing": 1, "critical": 1},
        ["get"],
    )
    assert (two.version, two.instances, two.last_heard_s) == ("2.0.0", 1, 1.0)


# -- bounds against forged and flooding messages -------------------------------------------


def test_an_absurd_sequence_jump_is_dropped_and_the_instance_asked_to_announce() -> None:
    clock = Clock()
    view = View(clock=clock)
    view.apply(announce(1))
    clock.now += 1.0
    outcome = view.apply(beat(2**63 - 1, "critical"))
    assert (outcome.dropped, outcome.ask_info) == ("seq_jump", True)
    assert view.apply(beat(2**63 - 1)).ask_info is False  # asked once per ask interval
    assert view.apply(beat(2)).dropped == ""
    (instance,) = view.instances()
    assert (instance.seq, instance.health) == (2, "passing")


def test_a_genuine_instance_whose_messages_were_lost_is_never_locked_out() -> None:
    clock = Clock()
    view = View(clock=clock)
    view.apply(announce(1))
    # The node lost 500 messages (a burst it could not read): that jump is too far for the
    # time that passed, but the instance keeps counting, and time widens the bound.
    clock.now += 0.5
    assert view.apply(beat(501)).dropped == "seq_jump"
    seq = 501
    for _ in range(200):
        clock.now += 1.0
        seq += 1
        if view.apply(beat(seq)).dropped == "":
            break
    assert view.instances()[0].seq == seq
    assert seq - 501 < 200


def test_one_message_moves_the_sequence_only_as_far_as_the_sender_could_have_counted() -> None:
    # One second after a 1 s heartbeat: SEQ_JUMP_SLACK plus twice (one beat + one
    # re-announce) a second, 36 in all.
    for jump, dropped in ((36, ""), (37, "seq_jump")):
        clock = Clock()
        view = View(clock=clock)
        view.apply(announce(1))
        clock.now += 1.0
        assert view.apply(beat(1 + jump)).dropped == dropped


def test_a_huge_announced_interval_is_clamped_where_the_view_stores_and_uses_it() -> None:
    clock = Clock()
    view = View(missed_heartbeats=2, clock=clock)
    view.apply(wire.Announce(id="i1", name="svc", version="1.0.0", seq=1, heartbeat_s=1e9))
    assert view.instances()[0].heartbeat_s == wire.MAX_HEARTBEAT_S
    clock.now += wire.MAX_HEARTBEAT_S * 2.5 + 0.01
    assert [c.reason for c in view.expire()] == ["expired"]


def test_instances_beyond_the_caps_are_refused_as_capacity() -> None:
    view = View(clock=Clock(), max_per_service=3, max_instances=5)
    outcomes = [
        view.apply(wire.Announce(id=f"a{n}", name="a", version="1.0.0", seq=1)) for n in range(4)
    ]
    outcomes += [
        view.apply(wire.Announce(id=f"b{n}", name="b", version="1.0.0", seq=1)) for n in range(3)
    ]
    assert [o.dropped for o in outcomes] == ["", "", "", "capacity", "", "", "capacity"]
    assert (len(view), view.service_count()) == (5, 2)
    # A known instance re-announcing is no new instance: never refused.
    assert view.apply(wire.Announce(id="a0", name="a", version="1.0.0", seq=2)).dropped == ""


def test_a_message_for_a_known_id_under_another_service_name_is_a_mismatch() -> None:
    view = View(clock=Clock())
    view.apply(announce(1))
    for forged in (
        wire.Goodbye(id="i1", name="other", seq=2),
        wire.Heartbeat(id="i1", name="other", seq=2),
        wire.Announce(id="i1", name="other", version="1.0.0", seq=2),
    ):
        assert view.apply(forged).dropped == "subject_mismatch"
    assert [i.name for i in view.instances()] == ["svc"]


@pytest.mark.slow
def test_a_hundred_thousand_announcements_that_never_heartbeat_raise_no_mass_alarm() -> None:
    clock = Clock()
    view = View(clock=clock, max_instances=200_000)
    _fleet(view, 10, "real")
    for n in range(100_000):
        view.apply(wire.Announce(id=f"fake{n}", name=f"fake{n % 20}", version="1.0.0", seq=1))
    clock.now += 2.0
    for n in range(10):
        view.apply(wire.Heartbeat(id=f"real{n}", name="svc", seq=3))
    clock.now += 1.0
    assert len(view.expire()) == 100_000
    assert view.mass_alert is None and len(view) == 10


def test_goodbyes_and_heartbeats_for_made_up_ids_hold_bounded_memory() -> None:
    view = View(clock=Clock(), max_instances=100)
    for n in range(1000):
        view.apply(wire.Goodbye(id=f"g{n}", name="svc", seq=1))
        assert view.apply(wire.Heartbeat(id=f"h{n}", name="svc", seq=1)).ask_info
    assert len(view._sequences.tombstones) <= 100 and len(view._sequences.asked) <= 100


def test_the_view_of_an_announcement_keeps_every_field_the_two_share() -> None:
    # A field added to Announce and InstanceView must also be copied by wire.instance_view.
    ann = wire.Announce(
        id="i1",
        name="svc",
        version="1.2.3",
        seq=7,
        description="d",
        metadata={"k": "v"},
        endpoints=[wire.Endpoint(name="e", subject="svc.e", queue_group="q")],
        host="h",
        pid=42,
        started="2026-01-01T00:00:00Z",
        heartbeat_s=2.0,
        health="warning",
        load=wire.Load(in_flight=1, served=2, errors=3),
        conn="S/1",
        events=[wire.EventInterest(type="user.created")],
        emits=["user.deleted"],
    )
    view = wire.instance_view(ann)
    shared = set(wire.Announce.__struct_fields__) & set(wire.InstanceView.__struct_fields__)
    assert shared - {"schema"} == set(wire.InstanceView.__struct_fields__) - {"kind", "age_s"}
    for field in shared - {"schema"}:
        # As each says it on the wire: the view keeps its sequences as tuples.
        kept, announced = getattr(view, field), getattr(ann, field)
        assert msgspec.json.encode(kept) == msgspec.json.encode(announced), field
    assert view.kind == "natsreg"


def test_the_protocol_docs_name_every_reason_an_instance_goes_down() -> None:
    from pathlib import Path

    clock = Clock()
    view = View(clock=clock)
    view.apply(announce(1, conn="S1/7"))
    reasons = {c.reason for c in view.disconnected("S1/7")}
    view.apply(wire.Announce(id="i2", name="svc", version="1.0.0", seq=1))
    reasons |= {c.reason for c in view.apply(wire.Goodbye(id="i2", name="svc", seq=2)).changes}
    view.apply(wire.Announce(id="i3", name="svc", version="1.0.0", seq=1))
    clock.now += 10
    reasons |= {c.reason for c in view.expire()}
    assert reasons == {"disconnected", "goodbye", "expired"}
    docs = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    event = docs[docs.index("- `Event` is") : docs.index("## Identity")]
    for reason in reasons:
        assert f"`{reason}`" in event, f"docs/protocol.md's Event omits down reason {reason!r}"


def test_heard_gives_every_instance_held_with_the_seconds_since_it_was_heard() -> None:
    clock = Clock()
    view = View(clock=clock)
    view.apply(announce(1))
    clock.now += 2.5
    view.apply(wire.Announce(id="i2", name="svc", version="1.0.0", seq=1, heartbeat_s=1.0))
    clock.now += 0.5
    assert [(v.id, v.seq, age) for v, age in view.heard()] == [("i1", 1, 3.0), ("i2", 1, 0.5)]
    # The instances themselves, not copies: the sync answer encodes them as they are.
    assert view.heard()[0][0] is view.heard()[0][0]


def test_each_interval_implies_the_same_allowances_however_often_it_is_worked_out() -> None:
    # The allowances are remembered per interval: the hundredth instance of an interval
    # expires, and may jump, exactly as the first.
    clock = Clock()
    view = View(missed_heartbeats=2, clock=clock)
    for n in range(100):
        view.apply(wire.Announce(id=f"i{n}", name="svc", version="1.0.0", seq=1, heartbeat_s=2.0))
    view.apply(wire.Announce(id="paced", name="svc", version="1.0.0", seq=1, pace_s=4.0))
    clock.now += 4.99
    assert view.expire() == []
    clock.now += 0.02
    assert sorted(c.instance.id for c in view.expire()) == sorted(f"i{n}" for n in range(100))
    clock.now += 4.98  # the paced one: 4 s kept, (2 + 0.5) x 4 = 10 s allowed
    assert view.expire() == []
    clock.now += 0.02
    assert [c.instance.id for c in view.expire()] == ["paced"]
