"""Sharding's rules without a server: who holds a service, who counts as a node, what a
presence must be, how parts merge (docs/protocol.md, "Sharding")."""

from __future__ import annotations

from collections import Counter

import pytest

from natsreg import wire
from natsreg.registry import _shard
from natsreg.registry._shard import (
    MAX_LEASE_S,
    MAX_MEMBERS,
    REPLICAS,
    LateAsks,
    Members,
    check_presence,
    merge_instances,
    owners,
)

pytestmark = pytest.mark.pure

NODES = [f"node{n}" for n in range(4)]
SERVICES = [f"svc-{n}" for n in range(400)]


def test_each_service_is_held_by_two_nodes_the_same_for_everyone() -> None:
    for service in SERVICES:
        held = owners(service, NODES)
        assert len(held) == REPLICAS == len(set(held))
        assert owners(service, reversed(NODES)) == held  # order of discovery does not matter
    # Spread: each node holds about half the services (2 of 4), none less than a third.
    load = Counter(node for service in SERVICES for node in owners(service, NODES))
    assert set(load) == set(NODES)
    assert min(load.values()) > len(SERVICES) * REPLICAS / len(NODES) * 0.75


def test_a_node_joining_takes_one_place_at_most_and_only_for_itself() -> None:
    joined = [*NODES, "node4"]
    moved = 0
    for service in SERVICES:
        before, after = set(owners(service, NODES)), set(owners(service, joined))
        assert len(before - after) <= 1
        assert after - before <= {"node4"}
        moved += before != after
    # About REPLICAS / 5 of the services move, every one of them to the new node.
    assert 0 < moved < len(SERVICES) * 0.6


def test_a_node_leaving_gives_up_its_own_places_only() -> None:
    left = NODES[1:]
    for service in SERVICES:
        before, after = owners(service, NODES), owners(service, left)
        assert set(before) - {"node0"} <= set(after)
        assert len(after) == REPLICAS


def test_fewer_nodes_than_replicas_hold_everything() -> None:
    assert owners("svc", ["only"]) == ["only"]
    assert owners("svc", []) == []


def test_members_come_by_lease_and_go_when_it_ends_or_they_say_so() -> None:
    now = [100.0]
    members = Members("me", clock=lambda: now[0])
    assert members.live == ("me",)
    assert members.heard(wire.ShardPresence(node="b", valid_s=3.0)) == "joined"
    assert members.heard(wire.ShardPresence(node="b", valid_s=3.0)) == "renewed"
    assert members.heard(wire.ShardPresence(node="c", valid_s=1.0)) == "joined"
    assert members.live == ("b", "c", "me")
    now[0] += 1.5
    assert members.heard(wire.ShardPresence(node="me", valid_s=3.0)) == "renewed"  # its echo
    assert members.expire() and members.live == ("b", "me")
    assert not members.expire()
    assert members.heard(wire.ShardPresence(node="b", valid_s=0.0)) == "left"
    assert members.live == ("me",)
    # This node is a member whatever is said in its name.
    assert members.heard(wire.ShardPresence(node="me", valid_s=0.0)) == "renewed"
    assert members.live == ("me",)


def test_a_busy_node_expires_no_member_until_it_has_read_its_own_presence_back() -> None:
    # Its peers' renewals wait in the same queue as its own presence: a lease that ended while
    # the node read nothing is no sign of the peer.
    now = [0.0]
    members = Members("me", clock=lambda: now[0])
    members.heard(wire.ShardPresence(node="me", valid_s=3.0))
    members.heard(wire.ShardPresence(node="b", valid_s=3.0))
    now[0] += 10.0
    assert not members.expire() and members.live == ("b", "me")
    now[0] += 1.0
    members.heard(wire.ShardPresence(node="me", valid_s=3.0))
    assert members.expire() and members.live == ("me",)


def test_a_forged_presence_holds_a_place_for_a_bounded_time_and_number() -> None:
    now = [0.0]
    members = Members("me", clock=lambda: now[0])
    assert members.heard(wire.ShardPresence(node="forged", valid_s=1e9)) == "joined"
    now[0] += MAX_LEASE_S
    members.heard(wire.ShardPresence(node="me", valid_s=3.0))
    assert members.expire() and members.live == ("me",)
    for n in range(MAX_MEMBERS * 2):
        members.heard(wire.ShardPresence(node=f"f{n}", valid_s=3.0))
    assert len(members.live) == MAX_MEMBERS


@pytest.mark.parametrize(
    ("subject", "data", "reason"),
    [
        ("p.shard.a", b"x" * (_shard.MAX_PRESENCE_BYTES + 1), "oversized"),
        ("p.shard.a", b"{not json", "malformed"),
        ("p.shard.a", b'{"node": "b", "valid_s": 3}', "subject_mismatch"),
        ("p.shard.a.b", b'{"node": "a.b", "valid_s": 3}', "subject_mismatch"),
        ("p.shard.a", b'{"node": "a", "valid_s": -1}', "invalid_valid_s"),
    ],
)
def test_a_presence_must_name_its_node_in_its_subject_and_be_small(
    subject: str, data: bytes, reason: str
) -> None:
    assert check_presence(subject, "p", data) == reason


def test_a_good_presence_passes() -> None:
    presence = check_presence("p.shard.a", "p", b'{"node": "a", "valid_s": 3}')
    assert presence == wire.ShardPresence(node="a", valid_s=3.0)


def test_merged_instances_keep_each_once_at_its_newest() -> None:
    old = wire.InstanceView(id="i1", name="s", version="1.0.0", seq=3)
    new = wire.InstanceView(id="i1", name="s", version="1.0.0", seq=5)
    other = wire.InstanceView(id="i2", name="t", version="1.0.0", seq=1)
    merged = merge_instances([[old, other], [new]])
    assert sorted((i.id, i.seq) for i in merged) == [("i1", 5), ("i2", 1)]


def test_an_instance_heard_before_its_announcement_is_asked_once_the_queue_is_read() -> None:
    asks = LateAsks(cap=2)
    assert not asks.defer("s", "i0", queued=0)  # nothing queued: ask now
    assert asks.defer("s", "i1", queued=2)
    asks.read += 1
    assert asks.due() == []
    asks.read += 1
    assert asks.due() == [("s", "i1")]
    assert asks.due() == []  # asked once
    assert asks.defer("s", "i2", queued=5) and asks.defer("s", "i3", queued=5)
    assert not asks.defer("s", "i4", queued=5)  # at most cap wait: this one is asked now
