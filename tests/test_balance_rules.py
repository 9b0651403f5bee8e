"""Balancing rules, one per test: which instance each strategy calls, from this client's figures.

Strategies draw at random: every balancer here has a seeded random source, and a rule about
shares is asserted over hundreds of picks (thousands where a share is small), with bounds
that a broken rule misses by far. (Few enough that the mutation run, which runs these tests
against every change to the balancer, stays short.)
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from natsreg import ConfigError
from natsreg.client._balance import (
    OUTLIER_RATIO,
    PICKERS,
    PROBE_SHARE,
    TIE_RATIO,
    Balancer,
    InstanceStats,
    check_strategy,
)

pytestmark = pytest.mark.pure

PICKS = 500
#: For a rule about three equal shares: 300 each, bounds over four standard deviations out.
EVEN = 900


@dataclass(frozen=True)
class Inst:
    id: str


def instances(*ids: str) -> list[Inst]:
    return [Inst(i) for i in ids]


def figures(**latency_ms: float | None) -> dict[str, InstanceStats]:
    """Each named instance's figures after one reply taking that long (None: no reply yet)."""
    stats = {}
    for instance_id, ms in latency_ms.items():
        stats[instance_id] = InstanceStats()
        if ms is not None:
            stats[instance_id].observe(ms / 1000)
    return stats


def picks(
    strategy: str,
    candidates: Sequence[Inst],
    stats: dict[str, InstanceStats],
    *,
    seed: int = 1,
    n: int = PICKS,
    balancer: Balancer | None = None,
) -> Counter[str]:
    balancer = balancer or Balancer(random.Random(seed), clock=lambda: 1000.0)
    return Counter(balancer.pick(strategy, candidates, stats).id for _ in range(n))


class ProbingAlways(random.Random):
    """A random source whose every draw against PROBE_SHARE falls on the probe's side."""

    def random(self) -> float:
        return 0.0

    def getrandbits(self, k: int) -> int:  # so that the draw of a pair stays random
        return super().getrandbits(k)


# -- power of two choices ----------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["least_in_flight", "latency", "auto"])
@pytest.mark.parametrize(
    ("ids", "busy"),
    [(ids, busy) for ids in (("a", "b"), ("a", "b", "c"), ("a", "b", "c", "d")) for busy in ids],
)
def test_power_of_two_choices_never_draws_the_same_instance_twice(
    strategy: str, ids: tuple[str, ...], busy: str
) -> None:
    # The busiest instance loses every comparison with another one: it can only be called
    # if it were drawn twice, against itself.
    stats = figures(**dict.fromkeys(ids, 2.0))
    stats[busy].in_flight = 5
    chosen = picks(strategy, instances(*ids), stats)
    assert chosen[busy] == 0
    assert set(chosen) == set(ids) - {busy}


@pytest.mark.parametrize("strategy", ["least_in_flight", "latency", "auto"])
def test_power_of_two_choices_between_equals_shares_the_calls_evenly(strategy: str) -> None:
    chosen = picks(strategy, instances("a", "b", "c"), figures(a=2, b=2, c=2), n=EVEN)
    assert all(240 < chosen[i] < 360 for i in "abc"), chosen


# -- latency: EWMA x (in flight + 1) ---------------------------------------------------------


@pytest.mark.parametrize("known", [False, True], ids=["never-called", "no-reply-yet"])
def test_a_never_measured_instance_is_assumed_as_fast_as_the_fastest_not_as_slow_as_the_slowest(
    known: bool,
) -> None:
    # c is assumed at a's 1 ms: it beats b (10 ms) every time they are compared. Were it
    # assumed at b's 10 ms, b would win half of those comparisons (the first drawn wins a tie).
    stats = figures(a=1, b=10, **({"c": None} if known else {}))
    chosen = picks("latency", instances("a", "b", "c"), stats)
    assert chosen["b"] == 0
    assert chosen["c"] > PICKS / 3


def test_a_never_measured_instance_costs_the_fastest_figure_times_its_calls_in_flight() -> None:
    # c has had no reply yet but one call in flight: 1 ms x 2 = 2 ms, more than b's 1.5 ms.
    stats = figures(a=1, b=1.5, c=None)
    stats["c"].in_flight = 1
    chosen = picks("latency", instances("a", "b", "c"), stats)
    assert chosen["c"] == 0
    assert chosen["a"] > 0 and chosen["b"] > 0


@pytest.mark.parametrize("strategy", ["latency", "auto"])
def test_before_any_reply_the_calls_in_flight_still_decide(strategy: str) -> None:
    # Nothing measured yet (a burst of calls at start): the busiest instance loses every
    # comparison, as it would with figures.
    stats = figures(a=None, b=None, c=None)
    stats["a"].in_flight = 3
    chosen = picks(strategy, instances("a", "b", "c"), stats)
    assert chosen["a"] == 0
    assert chosen["b"] > PICKS / 3 and chosen["c"] > PICKS / 3


@pytest.mark.parametrize(
    ("fast_in_flight", "winner"),
    [
        (1, "fast"),  # 4 ms x 2 = 8 ms < 10 ms
        (2, "slow"),  # 4 ms x 3 = 12 ms > 10 ms
    ],
)
def test_latency_weighs_a_figure_by_its_calls_in_flight_plus_one(
    fast_in_flight: int, winner: str
) -> None:
    stats = figures(fast=4, slow=10)
    stats["fast"].in_flight = fast_in_flight
    assert picks("latency", instances("fast", "slow"), stats) == {winner: PICKS}


# -- least in flight -----------------------------------------------------------------------------


def test_least_in_flight_prefers_fewer_calls_in_flight_whatever_the_latency() -> None:
    stats = figures(fast=1, slow=50)
    stats["fast"].in_flight = 2
    stats["slow"].in_flight = 1
    assert picks("least_in_flight", instances("fast", "slow"), stats) == {"slow": PICKS}


def test_least_in_flight_counts_a_never_called_instance_as_idle() -> None:
    stats = figures(a=1)
    stats["a"].in_flight = 1
    assert picks("least_in_flight", instances("a", "new"), stats) == {"new": PICKS}


def test_least_in_flight_sends_a_tie_to_the_clearly_faster_instance_but_for_the_odd_probe() -> None:
    n = 2000  # the probe's share is small: enough picks for it to show
    chosen = picks("least_in_flight", instances("fast", "slow"), figures(fast=1, slow=2.5), n=n)
    expected = n * PROBE_SHARE  # 20
    assert expected / 4 < chosen["slow"] < expected * 3


def test_least_in_flight_shares_a_tie_between_instances_at_most_the_tie_ratio_apart() -> None:
    chosen = picks("least_in_flight", instances("fast", "slow"), figures(fast=1, slow=TIE_RATIO))
    assert chosen["fast"] > PICKS * 0.4 and chosen["slow"] > PICKS * 0.4


def test_least_in_flight_probes_only_an_instance_more_than_the_tie_ratio_slower() -> None:
    # With every draw a probe, a clearly slower instance wins every tie; one exactly
    # TIE_RATIO slower is a similar one, and the order of the draw decides.
    candidates = instances("fast", "slow")
    balancer = Balancer(ProbingAlways(1))
    chosen = picks("least_in_flight", candidates, figures(fast=1, slow=2.5), balancer=balancer)
    assert chosen == {"slow": PICKS}
    chosen = picks(
        "least_in_flight", candidates, figures(fast=1, slow=TIE_RATIO), balancer=balancer
    )
    assert chosen["fast"] > PICKS * 0.4 and chosen["slow"] > PICKS * 0.4


# -- auto: latency without the outliers ----------------------------------------------------------


def test_auto_keeps_an_instance_exactly_the_outlier_ratio_slower_than_the_fastest() -> None:
    # 750 ms is OUTLIER_RATIO x 250 ms: still a candidate, and the cheaper one while the
    # fast one has three calls in flight (250 ms x 4 = 1 s).
    stats = figures(fast=250, slow=250 * OUTLIER_RATIO)
    stats["fast"].in_flight = 3
    assert picks("auto", instances("fast", "slow"), stats) == {"slow": PICKS}


def test_auto_takes_the_outlier_bound_from_the_measured_instances_only() -> None:
    # "new" has no figure yet: it neither counts as the fastest (which would make every
    # measured instance an outlier) nor is left out; "slow" gets its one probe.
    stats = figures(fast=1, slow=10)
    chosen = picks("auto", instances("fast", "new", "slow"), stats)
    assert chosen["slow"] == 1
    assert chosen["fast"] > PICKS / 3 and chosen["new"] > PICKS / 3


def test_auto_with_no_figures_yet_calls_every_candidate() -> None:
    chosen = picks("auto", instances("a", "b", "c"), {}, n=EVEN)
    assert all(240 < chosen[i] < 360 for i in "abc"), chosen


# -- random, round robin, sticky ------------------------------------------------------------------


def test_random_spreads_the_calls_evenly_over_every_candidate() -> None:
    chosen = picks("random", instances("a", "b", "c"), {}, n=EVEN)
    assert all(240 < chosen[i] < 360 for i in "abc"), chosen


def test_round_robin_keeps_one_sequence_per_group() -> None:
    balancer = Balancer()
    candidates = instances("a", "b", "c")
    sequence = [
        (group, balancer.pick("round_robin", candidates, {}, group=group).id)
        for group in ("users", "orders", "users", "orders", "users")
    ]
    assert sequence == [
        ("users", "a"),
        ("orders", "a"),
        ("users", "b"),
        ("orders", "b"),
        ("users", "c"),
    ]


def test_round_robin_remembers_4096_groups_and_starts_over_beyond() -> None:
    balancer = Balancer()
    candidates = instances("a", "b", "c")

    def next_in(group: str) -> str:
        return balancer.pick("round_robin", candidates, {}, group=group).id

    assert next_in("g0") == "a"
    for n in range(1, 4096):
        next_in(f"g{n}")
    assert next_in("g0") == "b"  # 4096 sequences: all remembered
    next_in("g4096")  # one more: every sequence starts over
    assert next_in("g0") == "a"


def test_sticky_placement_is_the_same_in_every_client() -> None:
    # A fixed hash of key and instance id (not Python's per-process one): two clients, or two
    # versions of natsreg, send a key to the same instance.
    candidates = instances("i1", "i2", "i3", "i4")
    placement = {
        key: Balancer().pick("sticky", candidates, {}, key=key).id
        for key in ("user-1", "user-4", "user-7", "user-10")
    }
    assert placement == {"user-1": "i2", "user-4": "i4", "user-7": "i1", "user-10": "i3"}


# -- the balancer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", sorted(PICKERS))
def test_a_lone_candidate_is_chosen_by_every_strategy(strategy: str) -> None:
    only = Inst("only")
    assert Balancer().pick(strategy, [only], figures(only=None), key="k") is only


def test_a_balancer_draws_from_the_random_source_it_is_given() -> None:
    candidates = instances("a", "b", "c")

    def sequence() -> list[str]:
        balancer = Balancer(random.Random(7))
        return [balancer.pick("random", candidates, {}).id for _ in range(100)]

    assert sequence() == sequence()


def test_a_balancer_without_a_random_source_still_chooses_at_random() -> None:
    chosen = picks("random", instances("a", "b", "c"), {}, n=300, balancer=Balancer())
    assert set(chosen) == {"a", "b", "c"}


def test_a_strategy_that_does_not_choose_an_instance_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"^strategy 'queue' does not choose an instance$"):
        Balancer().pick("queue", instances("a", "b"), {})


def test_sticky_without_a_key_is_refused_with_a_message_naming_key() -> None:
    with pytest.raises(ConfigError, match=r"^strategy 'sticky' needs key=\.\.\.$"):
        Balancer().pick("sticky", instances("a", "b"), {})


def test_an_unknown_strategy_is_refused_with_the_list_of_known_ones() -> None:
    assert check_strategy("least_in_flight") == "least_in_flight"
    known = "auto, queue, round_robin, random, least_in_flight, latency, sticky"
    with pytest.raises(
        ConfigError, match=re.escape(f"unknown strategy 'fastest': use one of {known}")
    ):
        check_strategy("fastest")


# -- one instance's figures --------------------------------------------------------------------


def test_a_new_instance_has_no_calls_failures_or_figures_and_is_not_avoided() -> None:
    stats = InstanceStats()
    assert (stats.in_flight, stats.calls, stats.failures, stats.ewma_s) == (0, 0, 0, 0.0)
    assert all(stats.sound(seq=seq, now=0.0) for seq in (0, 1, 10**9))


def test_an_instance_that_left_a_call_unanswered_is_avoided_until_a_newer_heartbeat() -> None:
    stats = InstanceStats()
    stats.avoid_seq = 5  # the call went unanswered while its heartbeat sequence was 5
    assert not stats.sound(seq=5, now=0.0)
    assert stats.sound(seq=6, now=0.0)


def test_the_latency_figure_moves_a_fifth_of_the_way_to_each_new_reply() -> None:
    stats = InstanceStats()
    stats.observe(0.010)
    assert stats.ewma_s == pytest.approx(0.010)  # the first reply is the figure
    stats.observe(0.020)
    assert stats.ewma_s == pytest.approx(0.012)
    stats.observe(0.002)
    assert stats.ewma_s == pytest.approx(0.010)
