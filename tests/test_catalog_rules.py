"""The client's catalog, rule by rule: who it lists, for how long, and what brings an instance
back. Pure, with a fake clock: every instance heartbeats each second and is given 2.5 s of
silence (two missed heartbeats and a half)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import pytest

from natsreg import wire
from natsreg.client._catalog import MAX_EVENT_BYTES, MAX_INSTANCES_PER_SERVICE, Catalog
from tests.helpers import Clock

pytestmark = pytest.mark.pure

SILENCE_S = 2.5


def view(instance_id: str = "i1", seq: int = 1, **fields: object) -> wire.InstanceView:
    fields.setdefault("version", "1.0.0")
    fields.setdefault("heartbeat_s", 1.0)
    return wire.InstanceView(id=instance_id, name="svc", seq=seq, **fields)  # type: ignore[arg-type]


def beat(seq: int, instance_id: str = "i1", **fields: object) -> wire.Heartbeat:
    return wire.Heartbeat(id=instance_id, name="svc", seq=seq, **fields)  # type: ignore[arg-type]


class Node:
    """A registry node: its snapshots, and its events, each chained to the one before."""

    def __init__(self, name: str = "n") -> None:
        self.name = name
        self.revision = 0

    def snapshot(self, *views: wire.InstanceView) -> wire.Snapshot:
        return wire.Snapshot(node=self.name, revision=self.revision, instances=list(views))

    def event(
        self,
        kind: Literal["up", "down", "changed", "health"],
        instance: wire.InstanceView,
        reason: str = "",
    ) -> wire.Event:
        self.revision += 1
        return wire.Event(
            node=self.name,
            revision=self.revision,
            prev_revision=self.revision - 1,
            kind=kind,
            instance=instance,
            reason=reason,
        )


def catalog_of(
    *views: wire.InstanceView,
    node: Node | None = None,
    clock: Clock | None = None,
    lost: list[str] | None = None,
) -> Catalog:
    """A catalog that tracks "svc" and took ``node``'s snapshot of it."""
    catalog = Catalog(clock=clock or Clock(), on_lost=None if lost is None else lost.append)
    catalog.track("svc")
    catalog.apply_snapshot((node or Node()).snapshot(*views), "svc")
    return catalog


def listed(catalog: Catalog) -> list[tuple[str, int]]:
    return [(i.id, i.seq) for i in catalog.instances("svc")]


def padded(message: wire.Event | wire.Heartbeat, size: int) -> bytes:
    """``message`` encoded, then padded with JSON whitespace to exactly ``size`` bytes."""
    data = wire.encode(message)
    return data + b" " * (size - len(data))


# -- silence, as far as the client has read --------------------------------------------------


def test_silence_past_what_the_client_has_read_is_unproven_and_kills_nobody() -> None:
    clock, lost = Clock(), []
    catalog = catalog_of(view("i1"), view("i2"), clock=clock, lost=lost)
    catalog.heard_through = clock.now  # read up to here, then the client stalls
    clock.now += SILENCE_S + 5
    assert listed(catalog) == [("i1", 1), ("i2", 1)] and lost == []
    assert catalog.unproven
    # What it reads then: i1's heartbeat, queued during the stall.
    assert catalog.apply_heartbeat(beat(2, "i1")) == "taken"
    # Proven read up to now: i2 was silent, i1 was not.
    catalog.heard_through = clock.now
    catalog.expire()
    assert listed(catalog) == [("i1", 2)] and lost == ["i2"]
    assert not catalog.unproven


def test_an_instance_expires_once_what_was_read_passes_its_deadline_not_before() -> None:
    clock, lost = Clock(), []
    catalog = catalog_of(view("i1"), clock=clock, lost=lost)
    clock.now += SILENCE_S
    catalog.heard_through = clock.now - 0.001
    assert listed(catalog) == [("i1", 1)] and catalog.unproven
    catalog.heard_through = clock.now
    assert listed(catalog) == [] and lost == ["i1"] and not catalog.unproven


def test_with_nothing_read_to_prove_the_clock_alone_decides() -> None:
    clock = Clock()
    catalog = catalog_of(view("i1"), clock=clock)
    clock.now += SILENCE_S - 0.001
    assert listed(catalog) == [("i1", 1)] and not catalog.unproven
    clock.now += 0.001
    assert listed(catalog) == [] and not catalog.unproven


# -- an instance the client expired, heard from again ------------------------------------------


def test_a_client_lists_again_an_instance_it_expired_when_an_event_brings_newer_news() -> None:
    clock, node = Clock(), Node()
    catalog = catalog_of(view(seq=3), node=node, clock=clock)
    clock.now += SILENCE_S
    assert listed(catalog) == []
    catalog.apply_event(node.event("health", view(seq=4)))
    assert listed(catalog) == [("i1", 4)]


def test_news_no_newer_than_its_last_does_not_bring_back_an_expired_instance() -> None:
    clock, node = Clock(), Node()
    catalog = catalog_of(view(seq=3), node=node, clock=clock)
    clock.now += SILENCE_S
    assert listed(catalog) == []
    for late in (2, 3):
        catalog.apply_event(node.event("health", view(seq=late)))
        assert listed(catalog) == []


def test_a_client_lists_again_an_instance_it_expired_once_its_heartbeat_is_reconciled() -> None:
    clock, node = Clock(), Node()
    catalog = catalog_of(view(seq=3), node=node, clock=clock)
    clock.now += SILENCE_S
    assert listed(catalog) == []
    # A heartbeat lacks the instance's description: the view asks the registry for it.
    assert catalog.hear("hb", ["svc", "i1"], wire.encode(beat(4))) == "reconcile"
    assert listed(catalog) == []
    catalog.reconcile("svc", node.snapshot(view(seq=4)))
    assert listed(catalog) == [("i1", 4)]


def test_a_replayed_heartbeat_does_not_extend_an_instances_life() -> None:
    clock = Clock()
    catalog = catalog_of(view(seq=1), clock=clock)
    assert catalog.apply_heartbeat(beat(2)) == "taken"
    clock.now += SILENCE_S - 0.5
    for replayed in (2, 1):
        assert catalog.apply_heartbeat(beat(replayed)) == "taken"
    clock.now += 0.5  # the silence allowed since heartbeat 2
    assert listed(catalog) == []
    # Nor does a replay, once it expired, list it again: at most the registry is asked.
    assert catalog.apply_heartbeat(beat(2)) == "reconcile"
    assert listed(catalog) == []


def test_a_replayed_event_does_not_extend_an_instances_life_nor_change_it() -> None:
    clock, node = Clock(), Node()
    catalog = catalog_of(view(seq=1), node=node, clock=clock)
    catalog.apply_event(node.event("changed", view(seq=2)))
    revision = catalog.revision
    clock.now += SILENCE_S - 0.5
    catalog.apply_event(node.event("changed", view(seq=2, version="6.6.6")))
    assert catalog.revision == revision
    assert [i.version for i in catalog.instances("svc")] == ["1.0.0"]
    clock.now += 0.5
    assert listed(catalog) == []


# -- what a message heard on a subject may do ----------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "tokens", "message", "after"),
    [
        ("events", ["svc"], Node().event("health", view(seq=2, health="warning")), "warning"),
        ("hb", ["svc", "i1"], beat(2, health="critical"), "critical"),
        ("bye", ["svc", "i1"], wire.Goodbye(id="i1", name="svc", seq=2), None),
    ],
)
def test_a_message_on_its_own_subject_is_taken(
    verb: str, tokens: list[str], message: wire.Event | wire.Heartbeat, after: str | None
) -> None:
    catalog = catalog_of(view(seq=1))
    assert catalog.hear(verb, tokens, wire.encode(message)) == "taken"
    assert [i.health for i in catalog.instances("svc")] == ([after] if after else [])
    assert catalog.dropped == {}


@pytest.mark.parametrize(
    ("verb", "tokens", "message", "limit"),
    [
        ("events", ["svc"], Node().event("health", view(seq=2)), MAX_EVENT_BYTES),
        ("hb", ["svc", "i1"], beat(2), wire.MAX_CONTROL_BYTES),
    ],
)
def test_a_message_at_its_size_limit_is_read_and_one_byte_more_is_dropped_as_oversized(
    verb: str, tokens: list[str], message: wire.Event | wire.Heartbeat, limit: int
) -> None:
    catalog = catalog_of(view(seq=1))
    assert catalog.hear(verb, tokens, padded(message, limit)) == "taken"
    assert catalog.hear(verb, tokens, padded(message, limit + 1)) == "dropped"
    assert catalog.dropped == {"oversized": 1}
    assert listed(catalog) == [("i1", 2)]


def test_an_event_that_cannot_be_read_is_dropped_as_malformed() -> None:
    catalog = catalog_of(view(seq=1))
    assert catalog.hear("events", ["svc"], b'{"kind": "down"') == "dropped"
    assert catalog.dropped == {"malformed": 1}
    assert listed(catalog) == [("i1", 1)]


def test_an_event_on_a_subject_longer_than_its_service_is_dropped_as_a_mismatch() -> None:
    catalog = catalog_of(view(seq=1))
    down = wire.encode(Node().event("down", view(seq=2), "expired"))
    assert catalog.hear("events", ["svc", "x"], down) == "dropped"
    assert catalog.dropped == {"subject_mismatch": 1}
    assert listed(catalog) == [("i1", 1)]


@pytest.mark.parametrize("message", [Node().event("up", view(seq=1)), beat(1)])
def test_news_of_a_service_the_client_does_not_call_is_ignored(
    message: wire.Event | wire.Heartbeat,
) -> None:
    catalog = Catalog(clock=Clock())
    catalog.track("other")
    if isinstance(message, wire.Event):
        assert catalog.apply_event(message) == "taken"
    else:
        assert catalog.apply_heartbeat(message) == "taken"
    assert catalog.instances("svc") == [] and catalog.services() == ["other"]


# -- registry events -----------------------------------------------------------------------------


def test_each_event_from_a_node_no_snapshot_came_from_is_counted_and_not_applied() -> None:
    catalog = catalog_of(view(seq=1))
    stranger = Node("m")
    for seq in (2, 3):
        assert catalog.apply_event(stranger.event("down", view(seq=seq), "expired")) == "reconcile"
    assert catalog.dropped == {"unknown_node": 2}
    assert listed(catalog) == [("i1", 1)]


def test_a_reconcile_believes_the_events_of_the_node_its_snapshot_came_from() -> None:
    catalog = catalog_of(view(seq=1))
    other = Node("m")
    catalog.reconcile("svc", other.snapshot(view(seq=1)))
    assert catalog.apply_event(other.event("health", view(seq=2, health="warning"))) == "taken"
    assert [i.health for i in catalog.instances("svc")] == ["warning"]
    assert catalog.dropped == {}


def test_a_down_event_asks_for_a_reconcile_only_when_it_breaks_its_nodes_chain() -> None:
    node = Node()
    catalog = catalog_of(view("i1"), view("i2"), node=node)
    assert catalog.apply_event(node.event("down", view("i1", seq=2), "expired")) == "taken"
    node.revision += 1  # an event this client missed
    assert catalog.apply_event(node.event("down", view("i2", seq=2), "expired")) == "reconcile"
    assert listed(catalog) == []


def test_a_goodbye_said_by_a_registry_event_is_undone_only_by_a_reconcile() -> None:
    node, lost = Node(), []  # type: ignore[var-annotated]
    catalog = catalog_of(view(seq=1), node=node, lost=lost)
    catalog.apply_event(node.event("down", view(seq=2), "goodbye"))  # forged, perhaps
    catalog.apply_event(node.event("up", view(seq=5)))
    assert listed(catalog) == []
    catalog.reconcile("svc", node.snapshot(view(seq=5)))
    assert listed(catalog) == [("i1", 5)]
    assert lost == []


def test_a_down_heard_before_its_instance_keeps_older_news_from_listing_it() -> None:
    node = Node()
    catalog = catalog_of(node=node)
    assert catalog.apply_event(node.event("down", view("late", seq=5), "expired")) == "taken"
    catalog.apply_event(node.event("up", view("late", seq=5)))
    assert listed(catalog) == []
    catalog.apply_event(node.event("up", view("late", seq=6)))
    assert listed(catalog) == [("late", 6)]


# -- heartbeats ----------------------------------------------------------------------------------


def test_a_heartbeat_refreshes_the_health_load_and_age_of_its_instance() -> None:
    catalog = catalog_of(view(seq=1, age_s=1.0))
    load = wire.Load(in_flight=3, served=40, errors=1)
    assert catalog.apply_heartbeat(beat(2, health="warning", load=load)) == "taken"
    (instance,) = catalog.instances("svc")
    assert (instance.seq, instance.health, instance.load, instance.age_s) == (
        2,
        "warning",
        load,
        0.0,
    )


def test_a_change_of_health_is_a_change_callers_see_and_the_same_health_is_not() -> None:
    catalog = catalog_of(view(seq=1))
    revision = catalog.revision
    catalog.apply_heartbeat(beat(2, health="passing"))
    assert catalog.revision == revision
    catalog.apply_heartbeat(beat(3, health="critical"))
    assert catalog.revision > revision


# -- reconciling with a snapshot -----------------------------------------------------------------


def test_an_instance_a_reconcile_removed_comes_back_only_with_a_newer_sequence_number() -> None:
    node = Node()
    catalog = catalog_of(view("i1", seq=3), view("i2"), node=node)
    catalog.reconcile("svc", node.snapshot(view("i2")))
    assert listed(catalog) == [("i2", 1)]
    catalog.apply_event(node.event("health", view("i1", seq=3)))
    assert listed(catalog) == [("i2", 1)]
    catalog.apply_event(node.event("health", view("i1", seq=4)))
    assert listed(catalog) == [("i1", 4), ("i2", 1)]


def test_a_reconcile_takes_the_snapshots_word_over_a_newer_sequence_heard_meanwhile() -> None:
    node = Node()
    catalog = catalog_of(view(seq=1), node=node)
    catalog.apply_event(node.event("changed", view(seq=10, version="6.6.6")))  # forged
    catalog.reconcile("svc", node.snapshot(view(seq=5)))
    assert [(i.seq, i.version) for i in catalog.instances("svc")] == [(5, "1.0.0")]


def test_a_reconcile_skips_an_instance_that_said_bye_and_takes_the_others() -> None:
    node = Node()
    catalog = catalog_of(view("a"), node=node)
    catalog.apply_goodbye(wire.Goodbye(id="a", name="svc", seq=2))
    catalog.reconcile("svc", node.snapshot(view("a", seq=3), view("b"), view("c")))
    assert listed(catalog) == [("b", 1), ("c", 1)]


def test_a_reconcile_that_removes_an_instance_is_a_change_callers_see() -> None:
    node = Node()
    catalog = catalog_of(view("i1"), view("i2"), node=node)
    revision = catalog.revision
    catalog.reconcile("svc", node.snapshot())
    assert catalog.revision > revision
    assert listed(catalog) == []


# -- every change is seen ------------------------------------------------------------------------


def test_every_change_of_membership_or_health_raises_the_revision() -> None:
    clock, node = Clock(), Node()
    catalog = Catalog(clock=clock)
    catalog.track("svc")

    def fall_silent() -> None:
        clock.now += SILENCE_S
        catalog.expire()

    steps: list[Callable[[], object]] = [
        lambda: catalog.apply_snapshot(node.snapshot(view("a"), view("b"), view("c")), "svc"),
        lambda: catalog.apply_event(node.event("up", view("d"))),
        lambda: catalog.apply_heartbeat(beat(2, "a", health="warning")),
        lambda: catalog.apply_event(node.event("down", view("b", seq=2), "expired")),
        lambda: catalog.apply_goodbye(wire.Goodbye(id="c", name="svc", seq=2)),
        fall_silent,
        lambda: catalog.apply_event(node.event("up", view("e"))),
        lambda: catalog.forget("svc"),
    ]
    for number, step in enumerate(steps):
        revision = catalog.revision
        step()
        assert catalog.revision > revision, f"step {number}"


def test_every_way_out_of_the_view_is_reported_once_and_nothing_else_is() -> None:
    clock, node = Clock(), Node()
    left: list[str] = []
    lost: list[str] = []
    catalog = Catalog(clock=clock, on_lost=lost.append, on_left=left.append)
    catalog.track("svc")

    def fall_silent() -> None:
        clock.now += SILENCE_S
        catalog.expire()

    steps: list[tuple[Callable[[], object], set[str]]] = [
        (lambda: catalog.apply_snapshot(node.snapshot(*map(view, "abcdef")), "svc"), set()),
        (lambda: catalog.apply_heartbeat(beat(2, "a", health="warning")), set()),
        (lambda: catalog.apply_event(node.event("changed", view("a", seq=3))), set()),
        (lambda: catalog.apply_event(node.event("down", view("b", seq=2), "expired")), {"b"}),
        (lambda: catalog.apply_goodbye(wire.Goodbye(id="c", name="svc", seq=2)), {"c"}),
        # d is not in the snapshot; e is, but silent for too long to be taken.
        (
            lambda: catalog.reconcile(
                "svc", node.snapshot(view("a", seq=3), view("e", age_s=SILENCE_S), view("f"))
            ),
            {"d", "e"},
        ),
        (fall_silent, {"a", "f"}),
        (lambda: catalog.apply_event(node.event("up", view("g"))), set()),
        (lambda: catalog.forget("svc"), {"g"}),
    ]
    for number, (step, leaving) in enumerate(steps):
        left.clear()
        step()
        assert sorted(left) == sorted(leaving), f"step {number}"
    # Only deaths end calls in flight: not a goodbye, a reconcile or the client letting go.
    assert sorted(lost) == ["a", "b", "f"]


# -- services tracked ----------------------------------------------------------------------------


def test_the_catalog_lists_the_services_it_tracks_in_the_order_it_began() -> None:
    catalog = Catalog(clock=Clock())
    for service in ("b", "a", "b"):
        catalog.track(service)
    assert catalog.services() == ["b", "a"]


def test_a_forgotten_service_is_no_longer_listed_nor_fed() -> None:
    node = Node()
    catalog = catalog_of(view(seq=1), node=node)
    catalog.track("other")
    catalog.forget("svc")
    assert catalog.services() == ["other"]
    assert catalog.instances("svc") == []
    assert catalog.apply_event(node.event("health", view(seq=2))) == "taken"
    assert catalog.apply_heartbeat(beat(3)) == "taken"
    catalog.track("svc")
    assert catalog.instances("svc") == []


def test_forgetting_a_service_never_tracked_changes_nothing() -> None:
    catalog = catalog_of(view(seq=1))
    revision = catalog.revision
    catalog.forget("never")
    assert (catalog.revision, catalog.services(), listed(catalog)) == (
        revision,
        ["svc"],
        [("i1", 1)],
    )


# -- expiry --------------------------------------------------------------------------------------


def test_an_instance_leaves_exactly_when_its_silence_reaches_the_limit() -> None:
    clock = Clock()
    catalog = catalog_of(view(), clock=clock)
    assert catalog.next_expiry == 1000.0 + SILENCE_S
    clock.now = 1000.0 + SILENCE_S - 0.001
    assert listed(catalog) == [("i1", 1)]
    clock.now = 1000.0 + SILENCE_S
    assert listed(catalog) == []


def test_an_instance_that_expires_leaves_the_others_until_their_own_time() -> None:
    clock = Clock()
    catalog = catalog_of(view("old", age_s=1.0), view("new"), clock=clock)
    clock.now += SILENCE_S - 1.0
    assert listed(catalog) == [("new", 1)]
    assert catalog.next_expiry == 1000.0 + SILENCE_S
    clock.now = 1000.0 + SILENCE_S
    assert listed(catalog) == []


def test_a_snapshot_instance_already_silent_for_the_whole_limit_is_not_taken() -> None:
    lost: list[str] = []
    catalog = catalog_of(lost=lost)
    catalog.apply_snapshot(Node().snapshot(view("fresh", age_s=SILENCE_S - 0.001)), "svc")
    revision = catalog.revision
    catalog.apply_snapshot(Node().snapshot(view("stale", age_s=SILENCE_S)), "svc")
    assert catalog.revision == revision
    assert listed(catalog) == [("fresh", 1)]
    assert lost == []


def test_a_plain_adr32_instance_never_expires_locally() -> None:
    clock = Clock()
    catalog = catalog_of(view("m1", seq=0, kind="micro", heartbeat_s=0.0), clock=clock)
    assert catalog.next_expiry == float("inf")
    clock.now += 10**6
    assert listed(catalog) == [("m1", 0)]


def test_a_plain_adr32_instance_takes_every_event_about_it() -> None:
    node = Node()
    catalog = catalog_of(view("m1", seq=0, kind="micro"), node=node)
    catalog.apply_event(node.event("changed", view("m1", seq=0, kind="micro", version="1.1.0")))
    assert [i.version for i in catalog.instances("svc")] == ["1.1.0"]


# -- bounds --------------------------------------------------------------------------------------


def test_a_view_follows_sixteen_nodes_and_forgets_the_oldest_beyond() -> None:
    nodes = [Node(f"n{k}") for k in range(17)]
    catalog = Catalog(clock=Clock())
    catalog.track("svc")
    for node in nodes[:16]:
        catalog.apply_snapshot(node.snapshot(view()), "svc")
    assert catalog.apply_event(nodes[0].event("health", view(seq=2))) == "taken"
    catalog.apply_snapshot(nodes[16].snapshot(), "svc")
    assert catalog.apply_event(nodes[16].event("health", view(seq=3))) == "taken"
    assert catalog.apply_event(nodes[0].event("health", view(seq=4))) == "reconcile"
    assert catalog.dropped == {"unknown_node": 1}
    assert listed(catalog) == [("i1", 3)]


def test_the_catalog_remembers_the_last_4096_goodbyes() -> None:
    node = Node()
    catalog = catalog_of(node=node)
    for n in range(4096):
        catalog.apply_goodbye(wire.Goodbye(id=f"g{n}", name="svc", seq=1))
    catalog.apply_event(node.event("up", view("g0", seq=2)))
    assert listed(catalog) == []
    catalog.apply_goodbye(wire.Goodbye(id="g4096", name="svc", seq=1))
    for instance_id in ("g4096", "g0"):  # the newest is remembered, the oldest forgotten
        catalog.apply_event(node.event("up", view(instance_id, seq=2)))
    assert listed(catalog) == [("g0", 2)]


def test_instances_beyond_the_cap_per_service_are_ignored_and_known_ones_still_change() -> None:
    node = Node()
    ids = [f"i{n:05}" for n in range(MAX_INSTANCES_PER_SERVICE + 1)]
    catalog = catalog_of(*(view(i) for i in ids), node=node)
    assert [i.id for i in catalog.instances("svc")] == ids[:-1]
    catalog.apply_event(node.event("changed", view(ids[0], seq=2, version="2.0.0")))
    assert catalog.instances("svc")[0].version == "2.0.0"


def test_instances_that_come_back_leave_no_tombstone_to_push_out_a_goodbye() -> None:
    clock, node = Clock(), Node()
    catalog = catalog_of(node=node, clock=clock)
    catalog.apply_goodbye(wire.Goodbye(id="g", name="svc", seq=1))
    # 4095 instances expire, then come back: the goodbye was the 4096th thing remembered.
    ids = [f"r{n}" for n in range(4095)]
    catalog.apply_snapshot(node.snapshot(*(view(i) for i in ids)), "svc")
    clock.now += SILENCE_S
    assert listed(catalog) == []
    for i in ids:
        catalog.apply_event(node.event("up", view(i, seq=2)))
    catalog.apply_goodbye(wire.Goodbye(id="h", name="svc", seq=1))
    catalog.apply_event(node.event("up", view("g", seq=2)))
    assert len(listed(catalog)) == 4095 and ("g", 2) not in listed(catalog)
