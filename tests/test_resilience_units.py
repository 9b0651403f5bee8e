"""Breakers, balancing, the client's catalog and the retry policy: pure, with a fake clock."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

import natsreg
from natsreg import wire
from natsreg.client._balance import Balancer, InstanceStats
from natsreg.client._breaker import Breaker, BreakerConfig
from natsreg.client._catalog import Catalog
from natsreg.client._retry import RetryPolicy, is_retryable
from natsreg.client._target import parse_target
from tests.helpers import Clock

pytestmark = pytest.mark.pure


# -- breaker ---------------------------------------------------------------------------------


def test_a_breaker_opens_at_the_failure_rate_once_enough_calls_were_seen() -> None:
    clock = Clock()
    breaker = Breaker(BreakerConfig(failure_rate=0.5, min_requests=4, open_s=2.0), clock=clock)
    for ok in (False, False, False):
        assert breaker.allow()
        breaker.record(ok)
    # Three failures out of three: not enough calls yet to judge.
    assert breaker.state == "closed"
    breaker.record(True)
    assert breaker.state == "closed"  # 3 of 4 failed, but the last call succeeded
    breaker.record(False)
    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.retry_at == pytest.approx(clock.now + 2.0)


def test_an_open_breaker_half_opens_after_its_pause_and_closes_on_success() -> None:
    clock = Clock()
    breaker = Breaker(BreakerConfig(min_requests=2, open_s=1.0), clock=clock)
    for _ in range(2):
        breaker.record(False)
    assert breaker.state == "open"
    clock.now += 0.99
    assert not breaker.allow()
    clock.now += 0.02
    assert breaker.allow()  # the one trial call
    assert breaker.state == "half_open"
    assert not breaker.allow()  # no second trial while the first runs
    breaker.record(True)
    assert breaker.state == "closed"
    assert breaker.totals() == (0, 0)


def test_a_failed_trial_call_opens_the_breaker_again() -> None:
    clock = Clock()
    breaker = Breaker(BreakerConfig(min_requests=1, open_s=1.0), clock=clock)
    breaker.record(False)
    clock.now += 1.5
    assert breaker.allow()
    breaker.record(False)
    assert breaker.state == "open"
    assert breaker.retry_at == pytest.approx(clock.now + 1.0)


def test_old_failures_leave_the_window() -> None:
    clock = Clock()
    breaker = Breaker(BreakerConfig(min_requests=4, window_s=10.0), clock=clock)
    for _ in range(3):
        breaker.record(False)
    clock.now += 11
    assert breaker.totals() == (0, 0)
    breaker.record(False)
    assert breaker.state == "closed"


def test_a_released_trial_slot_can_be_used_again() -> None:
    clock = Clock()
    breaker = Breaker(BreakerConfig(min_requests=1, open_s=1.0), clock=clock)
    breaker.record(False)
    clock.now += 2
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()


# -- balancing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inst:
    id: str


INSTANCES = [Inst("a"), Inst("b"), Inst("c")]


def test_round_robin_takes_each_instance_in_turn() -> None:
    balancer = Balancer()
    picks = [balancer.pick("round_robin", INSTANCES, {}, group="s.e").id for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_least_in_flight_never_picks_the_busiest_of_three() -> None:
    balancer = Balancer(random.Random(1))
    stats = {i.id: InstanceStats() for i in INSTANCES}
    stats["c"].in_flight = 5
    picks = Counter(balancer.pick("least_in_flight", INSTANCES, stats).id for _ in range(300))
    assert picks["c"] == 0 and picks["a"] > 50 and picks["b"] > 50


def test_least_in_flight_breaks_ties_by_latency() -> None:
    balancer = Balancer(random.Random(2))
    stats = {i.id: InstanceStats() for i in INSTANCES}
    for i, ms in zip("abc", (2, 2, 10), strict=True):
        stats[i].observe(ms / 1000)
    picks = Counter(balancer.pick("least_in_flight", INSTANCES, stats).id for _ in range(300))
    assert picks["c"] <= 10  # the odd probe keeps its figure fresh
    picks = Counter(balancer.pick("least_in_flight", INSTANCES[:2], stats).id for _ in range(300))
    assert picks["a"] > 100 and picks["b"] > 100  # similar ones share


def test_latency_aware_prefers_the_fast_instance_unless_it_is_much_busier() -> None:
    balancer = Balancer(random.Random(3))
    stats = {i.id: InstanceStats() for i in INSTANCES[:2]}
    stats["a"].observe(0.001)
    stats["b"].observe(0.005)
    assert {balancer.pick("latency", INSTANCES[:2], stats).id for _ in range(50)} == {"a"}
    stats["a"].in_flight = 9  # 10 x 1 ms > 1 x 5 ms
    assert {balancer.pick("latency", INSTANCES[:2], stats).id for _ in range(50)} == {"b"}


def test_sticky_keeps_a_key_on_one_instance_and_moves_only_the_keys_of_one_that_leaves() -> None:
    balancer = Balancer()
    keys = [f"user-{n}" for n in range(300)]
    before = {k: balancer.pick("sticky", INSTANCES, {}, key=k).id for k in keys}
    assert before == {k: balancer.pick("sticky", INSTANCES, {}, key=k).id for k in keys}
    assert set(Counter(before.values())) == {"a", "b", "c"}
    after = {k: balancer.pick("sticky", INSTANCES[:2], {}, key=k).id for k in keys}
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "c"}


def test_an_unknown_strategy_or_a_sticky_call_without_key_is_refused() -> None:
    with pytest.raises(natsreg.ConfigError):
        Balancer().pick("sticky", INSTANCES, {})
    with pytest.raises(natsreg.ConfigError):
        natsreg.Client.__init__(object.__new__(natsreg.Client), None, strategy="fastest")  # type: ignore[arg-type]


# -- the client's catalog --------------------------------------------------------------------


def view(
    seq: int, instance_id: str = "i1", age_s: float = 0.0, **fields: object
) -> wire.InstanceView:
    fields.setdefault("version", "1.0.0")
    return wire.InstanceView(
        id=instance_id, name="svc", seq=seq, heartbeat_s=1.0, age_s=age_s, **fields
    )  # type: ignore[arg-type]


def snapshot(*views: wire.InstanceView) -> wire.Snapshot:
    return wire.Snapshot(node="n", revision=1, instances=list(views))


def event(kind: str, v: wire.InstanceView, reason: str = "") -> wire.Event:
    return wire.Event(node="n", revision=2, kind=kind, instance=v, reason=reason)  # type: ignore[arg-type]


def test_the_catalog_holds_only_services_it_tracks() -> None:
    catalog = Catalog(clock=Clock())
    catalog.apply_snapshot(snapshot(view(1)))
    assert catalog.instances("svc") == []
    catalog.track("svc")
    catalog.apply_snapshot(snapshot(view(1)))
    assert [i.id for i in catalog.instances("svc")] == ["i1"]


def test_an_instance_not_heard_from_expires_locally_even_without_a_down_event() -> None:
    clock = Clock()
    catalog = Catalog(clock=clock)
    catalog.track("svc")
    catalog.apply_snapshot(snapshot(view(1, age_s=1.0)))
    clock.now += 1.4
    assert len(catalog.instances("svc")) == 1
    clock.now += 0.2  # 1.0 + 1.6 > 2.5 s since it was last heard
    assert catalog.instances("svc") == []


def test_heartbeats_heard_directly_keep_an_instance_alive() -> None:
    clock = Clock()
    catalog = Catalog(clock=clock)
    catalog.track("svc")
    catalog.apply_snapshot(snapshot(view(1)))
    for seq in range(2, 10):
        clock.now += 1.0
        catalog.apply_heartbeat(wire.Heartbeat(id="i1", name="svc", seq=seq, health="warning"))
    (instance,) = catalog.instances("svc")
    assert (instance.seq, instance.health) == (9, "warning")


def test_a_goodbye_or_down_event_removes_an_instance_and_late_messages_do_not_revive_it() -> None:
    catalog = Catalog(clock=Clock())
    catalog.track("svc")
    catalog.apply_snapshot(snapshot(view(3), view(3, "i2")))
    catalog.apply_goodbye(wire.Goodbye(id="i1", name="svc", seq=4))
    catalog.apply_event(event("down", view(5, "i2"), "expired"))
    assert catalog.instances("svc") == []
    catalog.apply_event(event("up", view(3)))
    catalog.apply_snapshot(snapshot(view(3, "i2")))
    catalog.apply_event(event("health", view(9)))  # said goodbye: never again
    assert catalog.instances("svc") == []
    catalog.apply_event(event("up", view(6, "i2")))  # expired, then came back
    assert [i.id for i in catalog.instances("svc")] == ["i2"]


def test_an_older_event_does_not_overwrite_newer_knowledge() -> None:
    catalog = Catalog(clock=Clock())
    catalog.track("svc")
    catalog.apply_snapshot(snapshot(), "svc")
    catalog.apply_event(event("changed", view(5, version="2.0.0")))
    catalog.apply_snapshot(snapshot(view(4)))
    assert catalog.instances("svc")[0].version == "2.0.0"


# -- retries ---------------------------------------------------------------------------------


def test_only_failures_that_are_safe_to_repeat_are_retried() -> None:
    assert is_retryable(natsreg.NoInstanceError("x"), idempotent=False)
    assert not is_retryable(natsreg.RequestTimeoutError("x"), idempotent=False)
    assert is_retryable(natsreg.RequestTimeoutError("x"), idempotent=True)
    assert not is_retryable(natsreg.ServiceError("x", code=500), idempotent=True)
    assert is_retryable(natsreg.ServiceError("x", code=500, retryable=True), idempotent=False)
    assert is_retryable(natsreg.OverloadedError(), idempotent=False)
    assert not is_retryable(natsreg.NotConnectedError("x"), idempotent=True)


def test_backoff_grows_exponentially_with_full_jitter_up_to_its_cap() -> None:
    policy = RetryPolicy(backoff_s=0.01, max_backoff_s=0.05)
    rng = random.Random(4)
    for retry, cap in ((1, 0.01), (2, 0.02), (3, 0.04), (4, 0.05), (9, 0.05)):
        delays = [policy.backoff(retry, rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= cap and max(delays) > cap * 0.8


def test_an_attempt_leaves_room_for_a_retry_only_when_a_timeout_would_be_retried() -> None:
    policy = RetryPolicy(attempts=3, attempt_share=0.5)
    assert policy.attempt_timeout(2.0, 1, timeouts_retried=True) == 1.0
    assert policy.attempt_timeout(2.0, 1, timeouts_retried=False) == 2.0
    assert policy.attempt_timeout(1.0, 3, timeouts_retried=True) == 1.0


# -- request targets ---------------------------------------------------------------------------


def test_a_target_names_a_service_a_version_constraint_and_an_endpoint() -> None:
    target = parse_target("user-service@^1.2.users")
    assert (target.subject, target.service, target.endpoint) == (
        "user-service.users",
        "user-service",
        "users",
    )
    assert target.constraint is not None and target.constraint.matches("1.4.0")
    assert not target.constraint.matches("2.0.0")
    assert parse_target("user-service.users").constraint is None
    for bad in ("svc@.users", "svc@^1", "svc@^1.bad ep", "@1.x.users", "svc@nonsense.users"):
        with pytest.raises(natsreg.ConfigError):
            parse_target(bad)


def test_auto_gives_a_latency_outlier_only_one_probe_per_interval() -> None:
    clock = Clock()
    balancer = Balancer(random.Random(5), clock=clock)
    stats = {i.id: InstanceStats() for i in INSTANCES}
    for i, ms in zip("abc", (2, 2, 10), strict=True):
        stats[i].observe(ms / 1000)
    stats["a"].in_flight = stats["b"].in_flight = 6  # busy, yet still preferred
    picks = Counter(balancer.pick("auto", INSTANCES, stats).id for _ in range(300))
    assert picks["c"] == 1  # the probe
    clock.now += 1.0
    picks = Counter(balancer.pick("auto", INSTANCES, stats).id for _ in range(300))
    assert picks["c"] == 1
    stats["c"].ewma_s = 0.003  # recovered: back among the candidates
    picks = Counter(balancer.pick("auto", INSTANCES, stats).id for _ in range(300))
    assert picks["c"] > 100


def test_the_catalogs_tombstones_stay_bounded_when_instances_expire() -> None:
    from natsreg.client._catalog import _MAX_TOMBSTONES

    clock = Clock()
    catalog = Catalog(clock=clock)
    catalog.track("svc")
    for batch in range(3):
        catalog.apply_snapshot(
            snapshot(
                *(
                    wire.InstanceView(
                        id=f"b{batch}-{n}", name="svc", version="1.0.0", seq=1, heartbeat_s=1.0
                    )
                    for n in range(_MAX_TOMBSTONES)
                )
            )
        )
        clock.now += 10
        assert catalog.instances("svc") == []  # all expired, each leaving a tombstone
    assert len(catalog._tombstones) <= _MAX_TOMBSTONES


# -- the catalog under forged or lost messages -------------------------------------------------


def chained(
    kind: str, v: wire.InstanceView, revision: int, prev: int, reason: str = "", node: str = "n"
) -> wire.Event:
    return wire.Event(
        node=node,
        revision=revision,
        prev_revision=prev,
        kind=kind,  # type: ignore[arg-type]
        instance=v,
        reason=reason,
    )


def tracked(clock: Clock | None = None, lost: list[str] | None = None) -> Catalog:
    catalog = Catalog(clock=clock or Clock(), on_lost=None if lost is None else lost.append)
    catalog.track("svc")
    catalog.apply_snapshot(snapshot(view(1), view(1, "i2")), "svc")
    return catalog


def test_the_catalog_drops_messages_whose_body_disagrees_with_their_subject() -> None:
    catalog = tracked()
    bye = wire.encode(wire.Goodbye(id="i1", name="svc", seq=9))
    assert catalog.hear("bye", ["svc", "i2"], bye) == "dropped"
    assert catalog.hear("bye", ["other", "i1"], bye) == "dropped"
    assert catalog.hear("hb", ["svc", "i1"], bye) == "dropped"  # a goodbye on a heartbeat subject
    down = wire.encode(chained("down", view(9), 5, 0, "expired"))
    assert catalog.hear("events", ["other"], down) == "dropped"
    assert catalog.hear("hb", ["svc", "i1"], b"{" * 10) == "dropped"
    assert catalog.hear("hb", ["svc", "i1"], b" " * (wire.MAX_CONTROL_BYTES + 1)) == "dropped"
    assert [i.id for i in catalog.instances("svc")] == ["i1", "i2"]
    assert catalog.dropped == {
        "subject_mismatch": 3,
        "wrong_kind": 1,
        "malformed": 1,
        "oversized": 1,
    }
    assert catalog.hear("bye", ["svc", "i1"], bye) == "taken"
    assert [i.id for i in catalog.instances("svc")] == ["i2"]


def test_an_event_out_of_its_nodes_chain_or_from_an_unknown_node_asks_for_a_reconcile() -> None:
    catalog = tracked()
    assert catalog.apply_event(chained("health", view(2, health="warning"), 10, 7)) == "taken"
    assert catalog.apply_event(chained("health", view(3), 11, 10)) == "taken"
    assert catalog.apply_event(chained("health", view(4), 13, 12)) == "reconcile"  # missed 12
    # A node no snapshot came from: not applied at all.
    assert catalog.apply_event(chained("down", view(9), 1, 0, "expired", node="x")) == "reconcile"
    assert [i.id for i in catalog.instances("svc")] == ["i1", "i2"]
    assert catalog.dropped["unknown_node"] == 1
    # A new instance, even in the chain, is checked against a snapshot.
    assert catalog.apply_event(chained("up", view(1, "i3"), 14, 13)) == "reconcile"


def test_a_heartbeat_from_an_instance_the_view_lost_asks_for_a_reconcile_unless_it_said_bye() -> (
    None
):
    catalog = tracked()
    catalog.apply_event(chained("down", view(10**9), 10, 0, "goodbye"))  # forged, say
    catalog.apply_goodbye(wire.Goodbye(id="i2", name="svc", seq=2))
    assert catalog.apply_heartbeat(wire.Heartbeat(id="i1", name="svc", seq=2)) == "reconcile"
    assert catalog.apply_heartbeat(wire.Heartbeat(id="i2", name="svc", seq=3)) == "taken"
    assert catalog.apply_heartbeat(wire.Heartbeat(id="new", name="svc", seq=1)) == "reconcile"


def test_a_reconcile_makes_the_view_match_the_snapshot_but_never_revives_a_goodbye() -> None:
    catalog = tracked()
    catalog.apply_event(chained("down", view(10**9), 10, 0, "goodbye"))  # forged
    catalog.apply_event(chained("up", view(1, "rogue"), 11, 10))  # forged
    catalog.apply_goodbye(wire.Goodbye(id="i2", name="svc", seq=2))
    assert [i.id for i in catalog.instances("svc")] == ["rogue"]
    catalog.reconcile("svc", snapshot(view(5), view(1, "i2")))
    assert [(i.id, i.seq) for i in catalog.instances("svc")] == [("i1", 5)]


def test_only_a_death_ends_calls_in_flight_a_goodbye_does_not() -> None:
    clock, lost = Clock(), []  # type: ignore[var-annotated]
    catalog = tracked(clock, lost)
    catalog.apply_event(chained("down", view(2, "i2"), 10, 0, "goodbye"))
    catalog.apply_goodbye(wire.Goodbye(id="i1", name="svc", seq=2))
    assert lost == []
    catalog = tracked(clock, lost)
    catalog.apply_event(chained("down", view(2, "i2"), 10, 0, "disconnected"))
    clock.now += 3.0
    catalog.expire()
    assert lost == ["i2", "i1"]


# -- avoiding instances nobody serves --------------------------------------------------------


def test_an_unserved_instance_is_avoided_for_a_time_that_doubles_up_to_a_minute() -> None:
    clock = Clock()
    stats = InstanceStats()
    waits = []
    for _ in range(9):
        stats.unserved(clock.now)
        assert not stats.sound(seq=10**9, now=clock.now)  # however new its heartbeat
        waits.append(stats.avoid_until - clock.now)
        clock.now = stats.avoid_until
        assert stats.sound(seq=10**9, now=clock.now)
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    stats.unserved(clock.now)
    stats.observe(0.001)  # it answered
    assert stats.sound(seq=0, now=clock.now)
    stats.unserved(clock.now)
    assert stats.avoid_until - clock.now == 1


def test_an_outcome_unknown_is_retried_only_for_an_idempotent_endpoint() -> None:
    assert not is_retryable(natsreg.OutcomeUnknownError("x"), idempotent=False)
    assert is_retryable(natsreg.OutcomeUnknownError("x"), idempotent=True)


# -- reconciling -------------------------------------------------------------------------------


async def test_reconciles_of_one_service_run_one_at_a_time_at_most_once_per_interval() -> None:
    import asyncio
    import itertools

    from natsreg.client._healing import Reconciler

    fetched: list[float] = []
    applied: list[wire.Snapshot] = []

    async def fetch(service: str) -> wire.Snapshot:
        fetched.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.01)
        return wire.Snapshot(node="n", revision=len(fetched), warming_up=len(fetched) == 2)

    reconciler = Reconciler(fetch, lambda s, snap: applied.append(snap), interval_s=0.2)
    for _ in range(100):
        reconciler.request("svc")
    await asyncio.sleep(0.05)
    assert len(fetched) == 1  # at once, and once
    for _ in range(100):
        reconciler.request("svc")
    await asyncio.sleep(0.6)
    # The second waited for the interval; it was warming up (not applied) and tried again.
    assert len(fetched) == 3
    assert all(b - a >= 0.19 for a, b in itertools.pairwise(fetched))
    assert [s.revision for s in applied] == [1, 3]
    reconciler.request("svc")
    await reconciler.aclose()
    reconciler.request("svc")
    assert len(fetched) == 3
