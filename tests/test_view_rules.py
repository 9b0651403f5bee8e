"""The registry view's rules pinned on both sides: what is listed, refused, asked and flagged,
exactly at each bound, on the pure view with a fake clock."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from natsreg import wire
from natsreg.registry._expiry import RESOLUTION_S
from natsreg.registry._view import Change, Outcome, View
from tests.helpers import Clock

pytestmark = pytest.mark.pure

START = 1000.0


def announce(
    seq: int, instance_id: str = "i1", name: str = "svc", heartbeat_s: float = 1.0, **fields: object
) -> wire.Announce:
    return wire.Announce(
        id=instance_id,
        name=name,
        version="1.0.0",
        seq=seq,
        heartbeat_s=heartbeat_s,
        **fields,  # type: ignore[arg-type]
    )


def beat(seq: int, instance_id: str = "i1", health: wire.Health = "passing") -> wire.Heartbeat:
    return wire.Heartbeat(id=instance_id, name="svc", seq=seq, health=health)


def goodbye(seq: int, instance_id: str = "i1") -> wire.Goodbye:
    return wire.Goodbye(id=instance_id, name="svc", seq=seq)


def info(instance_id: str = "m1", name: str = "go-svc", version: str = "0.1.0") -> wire.SrvInfo:
    """A plain ADR-32 service's ``$SRV.INFO`` reply."""
    return wire.SrvInfo(
        name=name,
        id=instance_id,
        version=version,
        endpoints=[wire.SrvEndpointInfo(name="add", subject="math.add")],
    )


def changes(outcome: Outcome | list[Change]) -> list[tuple[str, str]]:
    """(kind, instance id) of each change: who the registry would publish as up, down..."""
    found = outcome.changes if isinstance(outcome, Outcome) else outcome
    return [(c.kind, c.instance.id) for c in found]


def listed(view: View) -> list[str]:
    return sorted(i.id for i in view.instances())


def proven_fleet(view: View, count: int, prefix: str = "i") -> None:
    """``count`` instances that announced and heartbeat once (seq 1 and 2)."""
    for n in range(count):
        view.apply(announce(1, f"{prefix}{n}"))
        view.apply(beat(2, f"{prefix}{n}"))


def lose(view: View, clock: Clock, *, keep: list[str]) -> list[tuple[str, str]]:
    """Three seconds after :func:`proven_fleet`: ``keep`` heartbeat meanwhile, the rest of the
    fleet (1 s heartbeats, 2 missed allowed) has expired at this sweep."""
    clock.now = START + 2.0
    for instance_id in keep:
        view.apply(beat(3, instance_id))
    clock.now = START + 3.0
    return changes(view.expire())


# -- plain ADR-32 services ----------------------------------------------------------------


def test_a_natsreg_announced_instance_is_not_replaced_by_an_adr32_info_reply() -> None:
    view = View(clock=Clock())
    view.apply(announce(1, "i1"))
    outcome = view.apply_micro(info("i1", "svc", version="9.9.9"))
    assert (outcome.changes, outcome.dropped) == ([], "")
    (instance,) = view.instances()
    assert (instance.kind, instance.version) == ("natsreg", "1.0.0")


@pytest.mark.parametrize(("options", "ttl_s"), [({}, 15.0), ({"micro_ttl_s": 6.0}, 6.0)])
def test_a_plain_adr32_instance_is_listed_until_its_ttl_after_its_reply(
    options: dict[str, Any], ttl_s: float
) -> None:
    clock = Clock()
    view = View(clock=clock, **options)
    assert changes(view.apply_micro(info())) == [("up", "m1")]
    clock.now = START + ttl_s - 0.01
    assert view.expire() == []
    assert listed(view) == ["m1"]
    clock.now = START + ttl_s
    expired = view.expire()
    assert [(c.kind, c.instance.id, c.reason) for c in expired] == [("down", "m1", "expired")]
    assert listed(view) == []


def test_a_plain_adr32_instance_that_keeps_replying_is_never_expired() -> None:
    clock = Clock()
    view = View(micro_ttl_s=15.0, clock=clock)
    for step in range(4):
        clock.now = START + 10.0 * step
        view.apply_micro(info())
        assert view.expire() == []
    clock.now = START + 30.0 + 14.99
    assert view.expire() == []
    assert listed(view) == ["m1"]


def test_a_repeated_adr32_reply_changes_nothing_and_a_different_one_is_reported() -> None:
    view = View(clock=Clock())
    view.apply_micro(info())
    assert view.apply_micro(info()).changes == []
    assert (len(view), view.service_count()) == (1, 1)
    changed = view.apply_micro(info(version="0.2.0"))
    assert changes(changed) == [("changed", "m1")]
    assert changed.changes[0].instance.version == "0.2.0"
    assert [i.version for i in view.instances()] == ["0.2.0"]


def test_an_adr32_reply_for_a_known_id_under_another_service_name_is_a_mismatch() -> None:
    view = View(clock=Clock())
    view.apply_micro(info("m1", "go-svc"))
    assert view.apply_micro(info("m1", "other")).dropped == "subject_mismatch"
    assert [i.name for i in view.instances()] == ["go-svc"]


def test_adr32_instances_are_held_to_the_per_service_cap() -> None:
    view = View(clock=Clock(), max_per_service=1)
    assert view.apply_micro(info("m1", "go-svc")).dropped == ""
    assert view.apply_micro(info("m2", "go-svc")).dropped == "capacity"
    assert view.apply_micro(info("m3", "other")).dropped == ""
    assert listed(view) == ["m1", "m3"]


@pytest.mark.parametrize(("replies", "alert"), [(1, False), (2, True)])
def test_adr32_instances_count_for_the_mass_alert_only_once_they_replied_twice(
    replies: int, alert: bool
) -> None:
    clock = Clock()
    view = View(micro_ttl_s=15.0, clock=clock)
    for _ in range(replies):
        for n in range(4):
            view.apply_micro(info(f"m{n}"))
    clock.now = START + 15.0
    assert len(view.expire()) == 4
    assert (view.mass_alert is not None) == alert


# -- announcements, heartbeats, goodbyes ---------------------------------------------------


@pytest.mark.parametrize(
    ("heard_again", "alert"),
    [("never", False), ("re-announce", True), ("heartbeat", True)],
)
def test_announced_instances_count_for_the_mass_alert_only_once_heard_from_again(
    heard_again: str, alert: bool
) -> None:
    clock = Clock()
    view = View(clock=clock)
    for n in range(4):
        view.apply(announce(1, f"i{n}"))
        if heard_again == "re-announce":
            view.apply(announce(2, f"i{n}"))
        elif heard_again == "heartbeat":
            view.apply(beat(2, f"i{n}"))
    clock.now = START + 3.0
    assert len(view.expire()) == 4
    assert (view.mass_alert is not None) == alert


def test_every_change_names_the_instance_it_is_about() -> None:
    view = View(clock=Clock())
    assert changes(view.apply(announce(1))) == [("up", "i1")]
    assert changes(view.apply(beat(2, health="critical"))) == [("health", "i1")]
    assert changes(view.apply(announce(3, metadata={"zone": "b"}))) == [("changed", "i1")]
    assert changes(view.apply(goodbye(4))) == [("down", "i1")]


def test_a_reannouncement_that_only_changes_health_is_reported_as_a_health_change() -> None:
    view = View(clock=Clock())
    view.apply(announce(1))
    assert changes(view.apply(announce(2, health="critical"))) == [("health", "i1")]
    assert view.apply(announce(3, health="critical")).changes == []
    assert [i.health for i in view.instances()] == ["critical"]


def test_a_goodbyes_down_change_carries_the_goodbyes_sequence() -> None:
    view = View(clock=Clock())
    view.apply(announce(1))
    (down,) = view.apply(goodbye(10)).changes
    assert (down.instance.id, down.instance.seq, down.reason) == ("i1", 10, "goodbye")


def test_an_instance_is_expired_exactly_at_its_deadline() -> None:
    clock = Clock()
    view = View(missed_heartbeats=2, clock=clock)
    view.apply(announce(1))  # 1 s heartbeat: 2.5 s of silence allowed
    clock.now = START + 2.5
    expired = view.expire()
    assert [(c.kind, c.instance.id, c.reason) for c in expired] == [("down", "i1", "expired")]


def test_applying_something_that_is_no_control_message_is_refused_by_name() -> None:
    view = View(clock=Clock())
    with pytest.raises(TypeError, match="not a control message: Discover"):
        view.apply(wire.Discover())  # type: ignore[arg-type]


# -- connections -----------------------------------------------------------------------------


def test_after_a_disconnect_the_instances_reannounce_on_a_new_connection_lists_it_at_once() -> None:
    clock = Clock()
    view = View(clock=clock)
    view.apply(announce(1, conn="S1/7"))
    assert changes(view.disconnected("S1/7")) == [("down", "i1")]
    clock.now = START + 0.5
    assert changes(view.apply(announce(2, conn="S2/3"))) == [("up", "i1")]
    assert listed(view) == ["i1"]


def test_instances_sharing_a_connection_all_go_down_when_it_closes_after_one_left() -> None:
    view = View(clock=Clock())
    view.apply(announce(1, "i1", conn="S1/7"))
    view.apply(announce(1, "i2", conn="S1/7"))
    view.apply(goodbye(2, "i1"))
    assert changes(view.disconnected("S1/7")) == [("down", "i2")]
    assert listed(view) == []


# -- asking for info -------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "interval_s"), [({}, 1.0), ({"ask_interval_s": 3.0}, 3.0)])
def test_an_unknown_heartbeating_instance_is_asked_again_after_the_ask_interval(
    options: dict[str, Any], interval_s: float
) -> None:
    clock = Clock()
    view = View(clock=clock, **options)
    assert view.apply(beat(5, "h1")).ask_info
    clock.now = START + interval_s - 0.01
    view.expire()
    assert not view.apply(beat(6, "h1")).ask_info, "asked again within the ask interval"
    clock.now = START + interval_s
    view.expire()
    assert view.apply(beat(7, "h1")).ask_info, "never asked again"
    assert listed(view) == []


def test_a_sequence_jump_is_asked_about_again_after_the_ask_interval() -> None:
    clock = Clock()
    view = View(ask_interval_s=1.0, clock=clock)
    view.apply(announce(1))
    clock.now = START + 1.0
    assert view.apply(beat(1000)).ask_info
    assert not view.apply(beat(1001)).ask_info
    clock.now = START + 2.0
    view.expire()
    outcome = view.apply(beat(1002))
    assert (outcome.dropped, outcome.ask_info) == ("seq_jump", True)


def test_each_instance_whose_sequence_jumps_is_asked_once_whatever_the_others_did() -> None:
    clock = Clock()
    view = View(ask_interval_s=100.0, clock=clock)
    view.apply(announce(1, "j1"))
    view.apply(announce(1, "j2"))
    clock.now = START + 1.0
    assert view.apply(beat(1000, "j1")).ask_info
    assert view.apply(beat(1000, "j2")).ask_info, "j1's ask kept j2 from being asked"
    assert not view.apply(beat(1001, "j1")).ask_info
    assert not view.apply(beat(1001, "j2")).ask_info


def test_an_instance_that_answered_an_ask_is_asked_again_at_its_next_jump() -> None:
    view = View(ask_interval_s=100.0, clock=Clock())
    assert view.apply(beat(5)).ask_info
    assert changes(view.apply(announce(6))) == [("up", "i1")]
    outcome = view.apply(beat(1000))
    assert (outcome.dropped, outcome.ask_info) == ("seq_jump", True)


def test_an_instance_that_went_down_is_asked_for_its_info_at_its_first_heartbeat_after() -> None:
    clock = Clock()
    view = View(ask_interval_s=100.0, clock=clock)
    view.apply(announce(1, conn="S1/7"))
    assert view.apply(beat(1000)).ask_info  # a jump: asked
    view.disconnected("S1/7")
    clock.now = START + 1.0
    assert view.apply(beat(2)).ask_info


def test_asks_are_remembered_up_to_the_instance_cap() -> None:
    view = View(max_instances=2, clock=Clock())
    assert view.apply(beat(1, "h1")).ask_info
    assert view.apply(beat(1, "h2")).ask_info
    assert not view.apply(beat(2, "h1")).ask_info


# -- tombstones ------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "tombstone_s"), [({}, 60.0), ({"tombstone_s": 10.0}, 10.0)])
def test_a_goodbye_from_an_instance_never_seen_keeps_its_late_messages_out_for_the_tombstone_time(
    options: dict[str, Any], tombstone_s: float
) -> None:
    clock = Clock()
    view = View(clock=clock, **options)
    assert view.apply(goodbye(5, "g1")).changes == []
    clock.now = START + tombstone_s - 0.01
    view.expire()
    assert view.apply(announce(6, "g1")).stale
    assert view.apply(beat(7, "g1")).stale
    clock.now = START + tombstone_s
    view.expire()
    assert changes(view.apply(announce(8, "g1"))) == [("up", "g1")]


def test_every_tombstone_ends_after_its_own_time_even_when_an_older_one_was_renewed() -> None:
    clock = Clock()
    view = View(tombstone_s=60.0, clock=clock)
    view.apply(announce(1, "i1"))
    clock.now = START + 2.5
    view.expire()  # i1 buried until START + 62.5
    clock.now = START + 10.0
    view.apply(goodbye(1, "g1"))  # until START + 70
    clock.now = START + 20.0
    view.apply(goodbye(2, "i1"))  # i1's tombstone renewed, until START + 80
    clock.now = START + 75.0
    view.expire()
    assert changes(view.apply(announce(2, "g1"))) == [("up", "g1")]
    assert view.apply(announce(3, "i1")).stale


def test_tombstones_are_kept_up_to_the_instance_cap() -> None:
    view = View(max_instances=2, clock=Clock())
    view.apply(goodbye(1, "g1"))
    view.apply(goodbye(1, "g2"))
    assert view.apply(announce(2, "g1")).stale
    assert view.apply(announce(2, "g2")).stale


def test_a_tombstone_is_lifted_when_its_instance_reannounces_and_frees_its_place() -> None:
    clock = Clock()
    view = View(max_instances=2, clock=clock)
    view.apply(goodbye(1, "g1"))
    view.apply(announce(1, "i1"))
    clock.now = START + 2.5
    view.expire()  # tombstones: g1, i1
    assert changes(view.apply(announce(2, "i1"))) == [("up", "i1")]  # i1's is lifted
    view.apply(goodbye(1, "g2"))  # tombstones: g1, g2, within the cap
    assert view.apply(announce(2, "g1")).stale


# -- sequence jumps --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heartbeat_s", "silent_s", "largest_jump"),
    [
        # SEQ_JUMP_SLACK (32) plus twice (beats per second + one re-announce per second) per
        # second of silence.
        (1.0, 1.0, 36),
        (0.5, 1.0, 38),
        (1.0, 0.5, 34),
    ],
)
@pytest.mark.parametrize("extra", [0, 1])
def test_a_message_moves_the_sequence_only_as_far_as_the_sender_could_have_counted(
    heartbeat_s: float, silent_s: float, largest_jump: int, extra: int
) -> None:
    clock = Clock()
    view = View(clock=clock)
    view.apply(announce(1, heartbeat_s=heartbeat_s))
    clock.now = START + silent_s
    outcome = view.apply(beat(1 + largest_jump + extra))
    assert outcome.dropped == ("seq_jump" if extra else "")


@pytest.mark.parametrize(("jump", "dropped"), [(36, ""), (37, "seq_jump")])
def test_after_going_down_the_sequence_may_move_only_as_far_as_the_sender_could_have_counted(
    jump: int, dropped: str
) -> None:
    # Down at once on a disconnect, back one second later: the same bound as when listed.
    clock = Clock()
    view = View(clock=clock)
    view.apply(announce(1, conn="S1/7"))
    view.disconnected("S1/7")
    clock.now = START + 1.0
    assert view.apply(announce(1 + jump, conn="S2/3")).dropped == dropped


# -- caps ------------------------------------------------------------------------------------


def test_a_place_under_the_per_service_cap_is_freed_when_an_instance_leaves() -> None:
    view = View(max_per_service=2, clock=Clock())
    assert [view.apply(announce(1, f"a{n}")).dropped for n in range(3)] == ["", "", "capacity"]
    view.apply(goodbye(2, "a0"))
    assert view.apply(announce(1, "a2")).dropped == ""
    assert view.apply(announce(1, "a3")).dropped == "capacity"
    assert (listed(view), view.service_count()) == (["a1", "a2"], 1)
    view.apply(goodbye(2, "a1"))
    view.apply(goodbye(2, "a2"))
    assert view.service_count() == 0


# -- mass expiry -----------------------------------------------------------------------------


def test_two_simultaneous_expiries_raise_no_mass_alert_in_a_large_fleet() -> None:
    clock = Clock()
    view = View(clock=clock)
    proven_fleet(view, 100)
    assert len(lose(view, clock, keep=[f"i{n}" for n in range(2, 100)])) == 2
    assert view.mass_alert is None


@pytest.mark.parametrize(
    ("fleet", "lost", "alert"),
    [(10, 2, True), (11, 2, False), (12, 3, True), (5, 1, False), (2, 2, True)],
)
def test_the_mass_alert_is_raised_when_a_fifth_of_the_fleet_expires_at_once(
    fleet: int, lost: int, alert: bool
) -> None:
    clock = Clock()
    view = View(mass_fraction=0.2, clock=clock)
    proven_fleet(view, fleet)
    assert len(lose(view, clock, keep=[f"i{n}" for n in range(lost, fleet)])) == lost
    assert (view.mass_alert is not None) == alert
    if alert:
        assert view.mass_alert is not None
        assert (view.mass_alert.lost, view.mass_alert.before) == (lost, fleet)


@pytest.mark.parametrize(("gap_s", "alert"), [(4.0, True), (5.0, False)])
def test_expiries_further_apart_than_the_mass_window_are_not_counted_together(
    gap_s: float, alert: bool
) -> None:
    # The default window is 5 s: two of ten expiring 4 s apart is a fifth at once, 5 s is not.
    clock = Clock()
    view = View(clock=clock)
    proven_fleet(view, 10)
    for second in range(1, 9):
        clock.now = START + second
        for n in range(10):
            if n == 0 or (n == 1 and second > gap_s):
                continue  # i0 expires at START + 3, i1 gap_s later
            view.apply(beat(2 + second, f"i{n}"))
        view.expire()
    assert len(view) == 8
    assert (view.mass_alert is not None) == alert


def test_a_mass_alert_stays_raised_until_half_the_lost_capacity_is_back() -> None:
    clock = Clock()
    view = View(clock=clock)
    proven_fleet(view, 10)
    lose(view, clock, keep=[f"i{n}" for n in range(2, 10)])
    assert view.mass_alert is not None
    for second in (4, 5, 6):  # the eight others keep heartbeating: no recovery yet
        clock.now = START + second
        for n in range(2, 10):
            view.apply(beat(second, f"i{n}"))
        view.expire()
        assert view.mass_alert is not None
    proven_fleet(view, 1, "new")  # nine of ten: half the lost capacity is back
    view.expire()
    assert view.mass_alert is None


def test_a_mass_alert_counts_the_instances_lost_after_it_was_raised() -> None:
    clock = Clock()
    view = View(clock=clock)
    proven_fleet(view, 10)
    lose(view, clock, keep=[f"i{n}" for n in range(2, 10)])
    clock.now = START + 4.0
    for n in range(4, 10):  # i2 and i3 fall silent too
        view.apply(beat(4, f"i{n}"))
    clock.now = START + 4.5
    assert changes(view.expire()) == [("down", "i2"), ("down", "i3")]
    assert view.mass_alert is not None
    assert (view.mass_alert.lost, view.mass_alert.before) == (4, 10)


def test_by_default_a_mass_alert_that_never_recovers_clears_after_five_minutes() -> None:
    clock = Clock()
    view = View(clock=clock)
    proven_fleet(view, 4)
    clock.now = START + 3.0
    view.expire()
    assert view.mass_alert is not None
    clock.now = START + 3.0 + 299.99
    view.expire()
    assert view.mass_alert is not None
    clock.now = START + 3.0 + 300.0
    view.expire()
    assert view.mass_alert is None


# -- listing ---------------------------------------------------------------------------------


def test_instances_can_be_looked_up_by_id_or_by_service_name() -> None:
    view = View(clock=Clock())
    view.apply(announce(1, "i1"))
    view.apply(announce(1, "i2"))
    view.apply(announce(1, "o1", name="other"))
    assert [i.id for i in view.instances(instance_id="i2")] == ["i2"]
    assert view.instances(instance_id="nope") == []
    assert [i.id for i in view.instances(name="svc")] == ["i1", "i2"]
    assert [i.id for i in view.instances(name="other")] == ["o1"]


def test_ages_are_reported_to_the_millisecond() -> None:
    clock = Clock()
    view = View(clock=clock)
    view.apply(announce(1))
    clock.now = START + 1.2344
    assert [i.age_s for i in view.instances()] == [1.234]
    assert [s.last_heard_s for s in view.summaries()] == [1.234]


def test_a_service_summary_counts_each_health_and_the_most_recent_instance() -> None:
    clock = Clock()
    view = View(clock=clock)
    for n, health in enumerate(["passing", "passing", "critical"]):
        clock.now = START + n
        view.apply(announce(1, f"i{n}", health=health))
    clock.now = START + 2.5
    view.apply_micro(info())
    clock.now = START + 3.0
    micro, svc = view.summaries()
    assert (micro.name, micro.kind, micro.instances, micro.last_heard_s) == (
        "go-svc",
        "micro",
        1,
        0.5,
    )
    assert (svc.name, svc.kind, svc.instances, svc.health, svc.last_heard_s) == (
        "svc",
        "natsreg",
        3,
        {"passing": 2, "critical": 1},
        1.0,
    )


def test_a_summary_follows_health_changes_and_drops_a_health_no_instance_has() -> None:
    view = View(clock=Clock())
    view.apply(announce(1, "i1"))
    view.apply(announce(1, "i2"))
    view.apply(beat(2, "i1", health="critical"))
    assert [s.health for s in view.summaries()] == [{"passing": 1, "critical": 1}]
    view.apply(beat(3, "i1", health="critical"))  # no change: counted once
    view.apply(beat(2, "i2", health="critical"))
    assert [s.health for s in view.summaries()] == [{"critical": 2}]
    view.apply(goodbye(4, "i1"))
    assert [(s.instances, s.health) for s in view.summaries()] == [(1, {"critical": 1})]
    view.apply(announce(1, "i3"))
    view.apply(announce(1, "i4"))
    view.apply(goodbye(3, "i2"))  # the last critical one
    assert [s.health for s in view.summaries()] == [{"passing": 2}]


def test_a_summary_keeps_an_endpoint_while_any_instance_has_it() -> None:
    def endpoints(*names: str) -> list[wire.Endpoint]:
        return [wire.Endpoint(name=n, subject=f"svc.{n}", queue_group="q") for n in names]

    view = View(clock=Clock())
    consumes = [wire.EventInterest(type="x.asked")]
    view.apply(announce(1, "i1", endpoints=endpoints("a", "b"), emits=["x.made"], events=consumes))
    view.apply(announce(1, "i2", endpoints=endpoints("b", "c")))
    view.apply(announce(1, "i3", emits=["x.made"], events=consumes))
    (summary,) = view.summaries()
    assert (summary.endpoints, summary.emits, summary.events) == (
        ["a", "b", "c"],
        ["x.made"],
        ["x.asked"],
    )
    view.apply(goodbye(2, "i2"))
    (summary,) = view.summaries()
    assert (summary.instances, summary.endpoints, summary.emits) == (2, ["a", "b"], ["x.made"])
    # Announced again with other endpoints: the old ones go with the old announcement, the
    # event types stay while another instance has them.
    view.apply(announce(3, "i1", endpoints=endpoints("d")))
    (summary,) = view.summaries()
    assert (summary.endpoints, summary.emits, summary.events) == (["d"], ["x.made"], ["x.asked"])
    view.apply(announce(3, "i3"))
    (summary,) = view.summaries()
    assert (summary.endpoints, summary.emits, summary.events) == (["d"], [], [])
    view.apply(goodbye(4, "i1"))
    view.apply(goodbye(4, "i3"))
    assert view.summaries() == []


def test_the_last_heard_of_a_service_falls_back_when_its_newest_instance_goes() -> None:
    clock = Clock()
    view = View(clock=clock)
    view.apply(announce(1, "old"))
    clock.now = START + 1.0
    view.apply(announce(1, "new"))
    clock.now = START + 1.5
    assert [s.last_heard_s for s in view.summaries()] == [0.5]
    view.apply(goodbye(2, "new"))
    # The one left was last heard at the start: 1.5 s ago, not the gone one's 0.5 s.
    assert [s.last_heard_s for s in view.summaries()] == [1.5]
    clock.now = START + 2.0
    view.apply(beat(2, "old"))
    clock.now = START + 2.25
    assert [s.last_heard_s for s in view.summaries()] == [0.25]
    # An older instance going changes nothing.
    view.apply(announce(1, "older"))
    clock.now = START + 3.0
    view.apply(beat(3, "old"))
    view.apply(goodbye(2, "older"))
    assert [s.last_heard_s for s in view.summaries()] == [0.0]


def test_a_summary_follows_an_adr32_reply_that_says_something_new() -> None:
    # ADR-32 libraries add endpoints after the service first answers: the line shows the
    # version and endpoints of the latest reply, and nothing of the earlier one stays.
    clock = Clock()
    view = View(clock=clock)
    view.apply_micro(wire.SrvInfo(name="go-svc", id="m1", version="0.1.0"))
    assert [(s.version, s.instances, s.endpoints) for s in view.summaries()] == [("0.1.0", 1, [])]
    view.apply_micro(info("m1"))
    assert [(s.version, s.instances, s.endpoints) for s in view.summaries()] == [
        ("0.1.0", 1, ["add"])
    ]
    view.apply_micro(info("m2"))
    view.apply_micro(info("m1", version="0.2.0"))
    assert [(s.version, s.instances, s.endpoints) for s in view.summaries()] == [
        ("0.1.0", 1, ["add"]),
        ("0.2.0", 1, ["add"]),
    ]
    clock.now = START + 15.0  # both expire: no line is left behind
    view.expire()
    assert view.summaries() == []


def test_summaries_are_by_name_then_version_then_kind() -> None:
    view = View(clock=Clock())
    for instance_id, name, version in [
        ("b2", "b", "2.0.0"),
        ("a1", "a", "1.0.0"),
        ("b1", "b", "1.0.0"),
    ]:
        view.apply(wire.Announce(id=instance_id, name=name, version=version, seq=1))
    assert [(s.name, s.version) for s in view.summaries()] == [
        ("a", "1.0.0"),
        ("b", "1.0.0"),
        ("b", "2.0.0"),
    ]


def test_a_ping_from_a_listed_plain_adr32_instance_counts_as_hearing_from_it() -> None:
    # What `natsreg ls` shows as the last heartbeat of a plain service is its last ping reply.
    clock = Clock()
    view = View(micro_ttl_s=3.0, clock=clock)
    view.apply_micro(info(version="1.0.0"))
    clock.now = START + 2.0
    assert not view.pinged_micro("m1", "go-svc", "1.0.0")
    assert [i.age_s for i in view.instances()] == [0.0]
    assert [s.last_heard_s for s in view.summaries()] == [0.0]


# -- restoring a warm peer's view (registry/_sync.py) ----------------------------------------


def peer_view(
    seq: int = 5, instance_id: str = "i1", name: str = "svc", age_s: float = 0.0, **fields: object
) -> wire.InstanceView:
    """An instance as a warm peer's snapshot holds it, heard ``age_s`` ago."""
    view = wire.instance_view(announce(seq, instance_id, name, **fields))  # type: ignore[arg-type]
    return msgspec.structs.replace(view, age_s=age_s)


def test_a_restored_instance_keeps_its_sequence_and_expires_when_it_would_have_on_the_peer() -> (
    None
):
    clock = Clock()
    view = View(missed_heartbeats=2.0, clock=clock)
    # Silence allowed: 2.5 intervals of 1 s; heard 1 s ago on the peer: 1.5 s left.
    assert view.restore(peer_view(seq=7, age_s=1.0)) == Outcome([])
    [instance] = view.instances()
    assert (instance.id, instance.seq, instance.age_s) == ("i1", 7, 1.0)
    clock.now += 1.499
    assert view.expire() == []
    clock.now += 0.001
    [down] = view.expire()
    # What it publishes about it carries no age, as for an announced instance.
    assert (down.kind, down.instance.id, down.instance.age_s) == ("down", "i1", 0.0)


def test_a_newer_sequence_from_the_peer_replaces_an_instance_and_takes_no_new_place() -> None:
    view = View(clock=Clock(), max_per_service=1, max_instances=1)
    view.apply(announce(5))
    assert view.restore(peer_view(seq=6, age_s=0.5)) == Outcome([])
    assert view.restore(peer_view(seq=7, age_s=0.5)) == Outcome([])
    assert [(i.id, i.seq) for i in view.instances()] == [("i1", 7)]
    assert view.restore(peer_view(seq=1, instance_id="i2")).dropped == "capacity"


def test_a_peers_age_counts_no_further_back_than_expiry_and_never_forward() -> None:
    clock = Clock()
    view = View(missed_heartbeats=2.0, clock=clock)
    view.restore(peer_view(instance_id="old", age_s=100.0))
    view.restore(peer_view(instance_id="new", age_s=-100.0))
    assert sorted((i.id, i.age_s) for i in view.instances()) == [("new", 0.0), ("old", 2.5)]
    clock.now += 2.499
    assert changes(view.expire()) == [("down", "old")]
    clock.now += 0.001
    assert changes(view.expire()) == [("down", "new")]


def test_a_restored_instance_is_held_to_the_announced_interval_bounds() -> None:
    clock = Clock()
    view = View(missed_heartbeats=2.0, clock=clock)
    view.restore(peer_view(heartbeat_s=1e9))
    [instance] = view.instances()
    assert instance.heartbeat_s == wire.MAX_HEARTBEAT_S
    clock.now += 2.5 * wire.MAX_HEARTBEAT_S
    assert changes(view.expire()) == [("down", "i1")]


def test_a_restored_plain_adr32_instance_lives_for_the_poll_ttl() -> None:
    clock = Clock()
    view = View(micro_ttl_s=3.0, clock=clock)
    micro = msgspec.structs.replace(wire.micro_instance_view(info()), age_s=1.0)
    view.restore(micro)
    clock.now += 1.999
    assert view.expire() == []
    clock.now += 0.001
    assert changes(view.expire()) == [("down", "m1")]


def test_restored_instances_are_held_to_the_caps() -> None:
    view = View(clock=Clock(), max_per_service=2, max_instances=3)
    outcomes = [view.restore(peer_view(instance_id=f"a{n}")) for n in range(3)]
    outcomes += [view.restore(peer_view(instance_id=f"b{n}", name="other")) for n in range(2)]
    assert [o.dropped for o in outcomes] == ["", "", "capacity", "", "capacity"]
    assert listed(view) == ["a0", "a1", "b0"]


def test_what_the_view_holds_already_wins_unless_the_peer_heard_a_newer_sequence() -> None:
    view = View(clock=Clock())
    view.apply(announce(5, description="mine"))
    assert view.restore(peer_view(seq=5, description="peer")).stale
    assert view.restore(peer_view(seq=4, description="peer")).stale
    assert view.restore(peer_view(seq=6, description="newer")) == Outcome([])
    [instance] = view.instances()
    assert (instance.seq, instance.description, len(view)) == (6, "newer", 1)
    assert view.restore(peer_view(seq=6 + 10_000)).dropped == "seq_jump"


def test_a_peer_cannot_restore_an_instance_that_said_goodbye_here() -> None:
    view = View(clock=Clock())
    view.apply(goodbye(3))
    assert view.restore(peer_view(seq=9)).stale
    assert listed(view) == []


def test_a_restored_instance_goes_down_when_its_connection_closes() -> None:
    view = View(clock=Clock())
    view.restore(peer_view(instance_id="a", conn="S/1"))
    view.restore(peer_view(instance_id="b", conn="S/2"))
    assert changes(view.disconnected("S/1")) == [("down", "a")]
    assert listed(view) == ["b"]


def test_restored_instances_count_for_the_mass_alert_only_once_heard_from_here() -> None:
    clock = Clock()
    view = View(clock=clock)
    for n in range(10):
        view.restore(peer_view(instance_id=f"i{n}"))
    clock.now += 10
    assert len(view.expire()) == 10
    assert view.mass_alert is None
    for n in range(10):
        view.restore(peer_view(seq=7, instance_id=f"j{n}"))
    for n in range(5):
        view.apply(beat(8, f"j{n}"))
    clock.now += 10
    assert len(view.expire()) == 10
    assert view.mass_alert is not None and view.mass_alert.before == 5


def test_a_forgotten_service_leaves_without_a_change_and_the_others_stay() -> None:
    clock = Clock()
    view = View(clock=clock, max_per_service=2)
    for n in range(4):
        name = "gone" if n < 2 else "kept"
        view.apply(announce(1, f"i{n}", name=name))
        view.apply(wire.Heartbeat(id=f"i{n}", name=name, seq=2))
    assert view.forget({"gone", "never-held"}) == 2
    assert listed(view) == ["i2", "i3"]
    assert [s.name for s in view.summaries()] == ["kept"]
    assert view.service_count() == 1
    # No change, no tombstone, no mass expiry: it is its holders' to speak for now.
    clock.now += 0.1
    assert view.expire() == [] and view.mass_alert is None
    # Taken back, it is held afresh, up to its per-service cap again.
    assert changes(view.apply(announce(1, "i0", name="gone"))) == [("up", "i0")]
    assert changes(view.apply(announce(1, "i1", name="gone"))) == [("up", "i1")]
    assert view.apply(announce(1, "i9", name="gone")).dropped == "capacity"


def test_many_instances_restored_at_once_are_taken_as_one_at_a_time_would_be() -> None:
    # The same instances, the same order, into two views: in one call, and one by one.
    peer = [
        peer_view(seq=3, instance_id="a", age_s=0.5),
        peer_view(seq=5, instance_id="held", age_s=0.2),  # older than what is held: stale
        peer_view(seq=4, instance_id="a", age_s=0.5),  # the same id again, newer: replaces
        peer_view(seq=4, instance_id="a", age_s=0.1),  # and again, not newer: stale
        peer_view(seq=2, instance_id="b", age_s=4.0, heartbeat_s=2.0),
        peer_view(seq=2, instance_id="c", conn="S/1"),
        peer_view(seq=2, instance_id="d"),  # over the cap
        peer_view(seq=2, instance_id="e"),  # and another
        peer_view(seq=9, instance_id="gone"),  # said goodbye here
    ]
    clocks = Clock(), Clock()
    views = [View(clock=clock, max_instances=4) for clock in clocks]
    for view in views:
        view.apply(announce(6, "held"))
        view.apply(goodbye(3, "gone"))
    dropped = views[0].restore_all([msgspec.structs.replace(v) for v in peer])
    one_by_one = [views[1].restore(msgspec.structs.replace(v)).dropped for v in peer]
    assert dropped == {"stale": 3, "capacity": 2}
    assert [d for d in one_by_one if d] == ["stale", "stale", "capacity", "capacity", "stale"]
    for view in views:
        assert sorted((i.id, i.seq, i.age_s) for i in view.instances()) == [
            ("a", 4, 0.5),
            ("b", 2, 4.0),
            ("c", 2, 0.0),
            ("held", 6, 0.0),
        ]
        assert changes(view.disconnected("S/1")) == [("down", "c")]
    for clock, view in zip(clocks, views, strict=True):
        # Each expires when it would have on the peer: 2.5 intervals after it was heard.
        clock.now += 0.999
        assert view.expire() == []
        clock.now += 0.001
        assert changes(view.expire()) == [("down", "b")]
        clock.now += 0.9
        assert view.expire() == []
        clock.now += 0.1 + RESOLUTION_S
        assert changes(view.expire()) == [("down", "a")]
        clock.now += 0.5
        assert changes(view.expire()) == [("down", "held")]
        assert len(view) == 0
