"""Circuit breaker rules, one per test: when a breaker opens, what its rolling window counts,
how trial calls are let through, and what its snapshot (the client's stats) shows. Pure, with
a fake clock: no call sleeps."""

from __future__ import annotations

import re
from typing import Any

import pytest

from natsreg import ConfigError
from natsreg.client._breaker import Breaker, BreakerConfig
from tests.helpers import Clock

pytestmark = pytest.mark.pure


def breaker(clock: Clock, **config: Any) -> Breaker:
    return Breaker(BreakerConfig(**config), clock=clock)


def calls(b: Breaker, *outcomes: bool) -> None:
    """Calls the breaker lets through, ending with ``outcomes`` (True: success)."""
    for ok in outcomes:
        assert b.allow()
        b.record(ok)


def opened(clock: Clock, **config: Any) -> Breaker:
    """A breaker that just opened on one failure."""
    b = breaker(clock, min_requests=1, **config)
    calls(b, False)
    assert b.state == "open"
    return b


def whole(message: str) -> str:
    """A ``match=`` pattern for exactly this message."""
    return f"^{re.escape(message)}$"


# -- configuration ---------------------------------------------------------------------------

RATE = "failure_rate must be in (0, 1], got {}"
DURATIONS = "window_s and open_s must be > 0"
COUNTS = "min_requests, half_open_calls and buckets must be >= 1"


@pytest.mark.parametrize(
    "config",
    [
        {"failure_rate": 1.0},
        {"failure_rate": 0.01},
        {"window_s": 0.5},
        {"open_s": 0.5},
        {"min_requests": 1},
        {"half_open_calls": 1},
        {"buckets": 1},
    ],
)
def test_breaker_config_accepts_the_edges_of_every_range(config: dict[str, Any]) -> None:
    assert vars(BreakerConfig(**config)).items() >= config.items()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"failure_rate": 0.0}, RATE.format(0.0)),
        ({"failure_rate": -0.5}, RATE.format(-0.5)),
        ({"failure_rate": 1.5}, RATE.format(1.5)),
        ({"window_s": 0.0}, DURATIONS),
        ({"window_s": -1.0}, DURATIONS),
        ({"open_s": 0.0}, DURATIONS),
        ({"min_requests": 0}, COUNTS),
        ({"half_open_calls": 0}, COUNTS),
        ({"buckets": 0}, COUNTS),
    ],
)
def test_breaker_config_refuses_an_out_of_range_setting_and_names_it(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=whole(message)):
        BreakerConfig(**config)


# -- when it opens ---------------------------------------------------------------------------


def test_a_breaker_does_not_open_below_its_failure_ratio() -> None:
    b = breaker(Clock(), failure_rate=0.2, min_requests=10)
    for _ in range(5):
        calls(b, *[True] * 9, False)  # one call in ten fails: 10%, under the 20% configured
    assert b.state == "closed"
    assert b.snapshot() == {"state": "closed", "calls": 50, "failures": 5}


def test_a_breaker_opens_when_failures_reach_exactly_its_failure_ratio() -> None:
    b = breaker(Clock(), failure_rate=0.5, min_requests=4)
    calls(b, True, True, False)
    assert b.state == "closed"
    calls(b, False)  # 2 of 4
    assert b.state == "open"


def test_a_breaker_with_a_ratio_of_one_opens_only_when_every_call_failed() -> None:
    b = breaker(Clock(), failure_rate=1.0, min_requests=3)
    calls(b, True, False, False, False)
    assert b.state == "closed"  # 3 of 4
    b = breaker(Clock(), failure_rate=1.0, min_requests=3)
    calls(b, False, False, False)
    assert b.state == "open"


# -- the rolling window ----------------------------------------------------------------------


def test_a_breaker_does_not_wipe_its_window_on_every_step() -> None:
    clock = Clock()
    b = breaker(clock, window_s=10.0, buckets=10, min_requests=4)
    for _ in range(3):
        calls(b, False)
        clock.now += 1.0  # the next bucket
    assert b.totals() == (3, 3)
    calls(b, False)  # the fourth failure, in the fourth bucket
    assert b.state == "open"


def test_a_breaker_still_opens_once_it_is_older_than_its_window() -> None:
    clock = Clock(0.0)
    b = breaker(clock, window_s=10.0, buckets=10, min_requests=5, failure_rate=0.5)
    for _ in range(10):  # a first window of successes, one per bucket
        calls(b, True)
        clock.now += 1.0
    for _ in range(4):  # then one failure per bucket: the oldest successes leave the window
        calls(b, False)
        clock.now += 1.0
    assert b.totals() == (9, 4)  # the window now starts at the sixth success
    assert b.state == "closed"
    calls(b, False)  # 5 successes, 5 failures in the last ten buckets
    assert b.state == "open"


@pytest.mark.parametrize("start", [1000.25, 0.25, -12.75], ids=["late", "zero", "negative"])
def test_an_outcome_counts_for_exactly_one_window_wherever_the_clock_starts(start: float) -> None:
    clock = Clock(start)
    b = breaker(clock, window_s=5.0, buckets=5)
    for step in range(20):
        calls(b, True)
        assert b.totals() == (min(step + 1, 5), 0), f"after {step + 1} buckets"
        clock.now += 1.0


def test_a_long_quiet_spell_empties_the_window() -> None:
    clock = Clock()
    b = breaker(clock, window_s=10.0, buckets=10, min_requests=3)
    calls(b, False, False)
    clock.now += 1000.0
    calls(b, False)
    assert b.totals() == (1, 1)
    assert b.state == "closed"


# -- open, half-open, closed -----------------------------------------------------------------


def test_a_breaker_lets_a_trial_call_through_exactly_when_its_pause_ends() -> None:
    clock = Clock()
    b = opened(clock, open_s=2.0)
    clock.now = b.retry_at - 0.001
    assert not b.available()
    assert not b.allow()
    clock.now = b.retry_at
    assert b.available()
    assert b.allow()
    assert b.state == "half_open"


def test_a_half_open_breaker_lets_exactly_its_number_of_trial_calls_through() -> None:
    clock = Clock()
    b = opened(clock, open_s=1.0, half_open_calls=2)
    clock.now += 1.0
    assert b.allow()
    assert b.allow()
    assert not b.allow()


def test_a_half_open_breaker_closes_only_once_every_trial_call_succeeded() -> None:
    clock = Clock()
    b = opened(clock, open_s=1.0, half_open_calls=2)
    clock.now += 1.0
    assert b.allow()
    assert b.allow()
    b.record(True)
    assert b.state == "half_open"
    b.record(True)
    assert b.state == "closed"


def test_an_outcome_that_ends_while_the_breaker_is_open_changes_nothing() -> None:
    # A call that started before the breaker opened and fails after it did.
    clock = Clock()
    b = opened(clock, open_s=5.0)
    retry_at = b.retry_at
    clock.now += 1.0
    b.record(False)
    b.record(True)
    assert b.retry_at == retry_at
    assert b.snapshot() == {"state": "open", "calls": 1, "failures": 1, "retry_in_s": 4.0}


def test_a_released_trial_slot_gives_back_exactly_one_slot() -> None:
    clock = Clock()
    b = opened(clock, open_s=1.0, half_open_calls=2)
    clock.now += 1.0
    assert b.allow()
    assert b.allow()
    b.release()
    assert b.allow()
    assert not b.allow()


def test_a_release_with_no_trial_in_flight_grants_no_extra_trial() -> None:
    # A call let through while closed ends without a verdict once the breaker is half-open.
    clock = Clock()
    b = opened(clock, open_s=1.0)
    clock.now += 1.0
    assert b.allow()
    b.release()
    b.release()
    assert b.allow()
    assert not b.allow()


def test_a_failed_trial_call_reopens_the_breaker_for_a_full_pause_with_fresh_trials() -> None:
    clock = Clock()
    b = opened(clock, open_s=1.0, half_open_calls=2)
    clock.now += 1.0
    assert b.allow()
    assert b.allow()
    b.record(False)
    assert b.state == "open"
    assert not b.available()
    clock.now += 1.0
    assert b.available()
    assert b.allow()
    assert b.allow()
    assert not b.allow()


# -- available: asked for every instance before picking one, takes no slot --------------------


def test_a_closed_breaker_is_always_available() -> None:
    b = breaker(Clock())
    assert all(b.available() for _ in range(5))
    assert b.state == "closed"


def test_an_open_breaker_is_unavailable_until_its_pause_ends() -> None:
    clock = Clock()
    b = opened(clock, open_s=2.0)
    assert not b.available()
    clock.now += 1.0
    assert not b.available()
    clock.now += 1.0
    assert b.available()
    assert b.state == "open"  # asking is not taking a trial slot


def test_availability_takes_no_trial_slot() -> None:
    clock = Clock()
    b = opened(clock, open_s=1.0)
    clock.now += 1.0
    assert b.available()
    assert b.available()
    assert b.allow()  # the one trial slot is still there
    assert not b.available()  # and now it is taken
    assert not b.allow()


def test_a_half_open_breaker_is_available_while_a_trial_slot_is_free() -> None:
    clock = Clock()
    b = opened(clock, open_s=1.0, half_open_calls=2)
    clock.now += 1.0
    assert b.allow()
    assert b.available()
    assert b.allow()
    assert not b.available()
    b.release()
    assert b.available()


# -- snapshot: what Client.stats() shows ------------------------------------------------------


def test_a_fresh_breaker_shows_closed_with_nothing_counted() -> None:
    assert breaker(Clock()).snapshot() == {"state": "closed", "calls": 0, "failures": 0}


def test_a_closed_breaker_shows_the_calls_and_failures_in_its_window() -> None:
    clock = Clock()
    b = breaker(clock, window_s=10.0, buckets=10)
    calls(b, True, False)
    clock.now += 5.0
    calls(b, True, True, False)
    assert b.snapshot() == {"state": "closed", "calls": 5, "failures": 2}
    clock.now += 5.0  # the first two calls left the window
    assert b.snapshot() == {"state": "closed", "calls": 3, "failures": 1}


def test_an_open_breaker_shows_the_time_left_before_its_trial_call_to_the_millisecond() -> None:
    clock = Clock()
    b = breaker(clock, min_requests=2, open_s=2.0)
    calls(b, False, False)
    clock.now += 0.7654
    assert b.snapshot() == {"state": "open", "calls": 2, "failures": 2, "retry_in_s": 1.235}
    clock.now += 0.5
    assert b.snapshot() == {"state": "open", "calls": 2, "failures": 2, "retry_in_s": 0.735}


def test_a_breaker_past_its_pause_shows_half_open_with_no_time_left_before_any_call() -> None:
    # It lets the next call through: shown open, it would stay open (and alert) for as long
    # as nobody calls it.
    clock = Clock()
    b = opened(clock, open_s=2.0)
    clock.now += 1.999
    assert b.reported == "open"
    clock.now += 0.001
    assert b.reported == "half_open"
    assert b.state == "open"  # nothing changed: only a call takes the trial slot
    clock.now += 1.0
    assert b.snapshot() == {"state": "half_open", "calls": 1, "failures": 1, "retry_in_s": 0.0}
    assert b.allow()
    assert b.snapshot() == {"state": "half_open", "calls": 1, "failures": 1, "retry_in_s": 0.0}
    b.record(True)
    assert b.reported == "closed"


def test_a_breaker_that_closed_again_shows_a_fresh_window() -> None:
    clock = Clock()
    b = opened(clock, open_s=1.0)
    clock.now += 1.0
    calls(b, True)
    assert b.snapshot() == {"state": "closed", "calls": 0, "failures": 0}
