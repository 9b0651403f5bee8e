"""The saga rules without a server: what runs next, when a lease has run out, what an entry
read from the bucket must be, and the bounds on what is kept."""

from __future__ import annotations

import msgspec
import pytest

import natsreg
from natsreg.saga._state import (
    MAX_ERROR_CHARS,
    MAX_HISTORY,
    MAX_LEASE_S,
    MAX_REPLY_BYTES,
    MAX_STEPS,
    LeaseWatch,
    SagaState,
    StepState,
    begin,
    check_id,
    decode,
    encode,
    next_action,
    note,
    settle,
    stored_reply,
)

pytestmark = pytest.mark.pure


def saga(*statuses: str, status: str = "running", compensate: bool = True) -> SagaState:
    return SagaState(
        id="s-1",
        name="order",
        status=status,  # type: ignore[arg-type]
        steps=[
            StepState(
                subject=f"svc.s{i}",
                compensate=f"svc.undo{i}" if compensate else None,
                status=s,  # type: ignore[arg-type]
            )
            for i, s in enumerate(statuses)
        ],
        coordinator="me",
        lease_s=1.0,
    )


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (("pending", "pending"), ("step", 0)),
        (("succeeded", "pending"), ("step", 1)),
        # Started and never recorded: the coordinator may have died mid-call; run it again.
        (("succeeded", "started"), ("step", 1)),
        (("succeeded", "succeeded"), ("completed", -1)),
    ],
)
def test_forward_the_first_step_not_yet_succeeded_runs_next(
    statuses: tuple[str, ...], expected: tuple[str, int]
) -> None:
    assert next_action(saga(*statuses)) == expected


def test_backward_the_latest_step_that_took_effect_is_undone_first() -> None:
    state = saga("succeeded", "succeeded", "failed", status="compensating")
    assert next_action(state) == ("compensate", 1)
    state.steps[1].status = "compensated"
    assert next_action(state) == ("compensate", 0)
    state.steps[0].status = "compensated"
    assert next_action(state) == ("compensated", -1)


def test_a_step_that_failed_uncertainly_is_undone_too_and_a_certain_failure_is_not() -> None:
    state = saga("succeeded", "failed", status="compensating")
    assert next_action(state) == ("compensate", 0)
    state.steps[1].uncertain = True
    assert next_action(state) == ("compensate", 1)


def test_a_dead_compensation_ends_the_saga_in_failed_compensation_after_the_others() -> None:
    state = saga("succeeded", "dead", "failed", status="compensating")
    assert next_action(state) == ("compensate", 0)
    state.steps[0].status = "compensated"
    assert next_action(state) == ("failed-compensation", -1)


def test_steps_without_a_compensation_are_passed_over_and_an_ended_saga_does_nothing() -> None:
    assert next_action(saga("succeeded", "failed", status="compensating", compensate=False)) == (
        "compensated",
        -1,
    )
    for ended in ("completed", "compensated", "failed-compensation"):
        assert next_action(saga("succeeded", status=ended)) is None


def test_a_lease_runs_out_only_after_the_same_revision_stood_for_the_whole_lease() -> None:
    watch = LeaseWatch()
    assert not watch.expired("a", 5, 1.0, now=100.0)
    assert not watch.expired("a", 5, 1.0, now=100.9)
    assert watch.expired("a", 5, 1.0, now=101.0)
    # A renewal (a new revision) starts the count again.
    assert not watch.expired("a", 6, 1.0, now=101.5)
    assert not watch.expired("a", 6, 1.0, now=102.4)
    assert watch.expired("a", 6, 1.0, now=102.5)


def test_a_lease_read_from_the_bucket_is_bounded_both_ways() -> None:
    watch = LeaseWatch()
    watch.expired("huge", 1, 1e9, now=0.0)
    assert watch.expired("huge", 1, 1e9, now=MAX_LEASE_S)
    watch.expired("tiny", 1, 0.0, now=0.0)
    assert not watch.expired("tiny", 1, 0.0, now=0.05)


def test_an_entry_round_trips_and_only_a_saga_under_its_own_key_is_read() -> None:
    state = saga("succeeded", "pending")
    state.replies["svc.s0"] = msgspec.Raw(b'{"held": 1}')
    value = encode(state)
    read = decode("s-1", value)
    assert read is not None and bytes(read.replies["svc.s0"]) == b'{"held": 1}'
    assert decode("s-2", value) is None


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\x00\xff",
        b"[1, 2]",
        b'{"id": "s-1"}',
        encode(msgspec.structs.replace(saga("pending"), lease_s=1e9)),
        encode(msgspec.structs.replace(saga("pending"), lease_s=0.0)),
        encode(msgspec.structs.replace(saga("pending"), schema=2)),
        encode(msgspec.structs.replace(saga("pending"), name="bad.name")),
        encode(msgspec.structs.replace(saga("pending"), coordinator="x" * 1000)),
        encode(saga(*["pending"] * (MAX_STEPS + 1))),
        encode(saga()),
        encode(saga("pending")).replace(b'"running"', b'"hacked"'),
        b'{"schema":1,"id":"s-1","padding":"' + b"x" * 900_000 + b'"}',
    ],
    ids=lambda v: repr(v[:40]),
)
def test_garbage_forged_and_out_of_bounds_entries_are_not_read(value: bytes) -> None:
    assert decode("s-1", value) is None


def test_replies_are_kept_as_json_up_to_a_bound_and_as_a_marker_past_it() -> None:
    assert bytes(stored_reply(b'{"a": 1}')) == b'{"a": 1}'
    assert bytes(stored_reply(b"")) == b"null"
    assert msgspec.json.decode(stored_reply(b"plain \xff text")) == "plain \ufffd text"
    big = b'"' + b"x" * MAX_REPLY_BYTES + b'"'
    assert msgspec.json.decode(stored_reply(big)) == {"truncated": len(big)}
    assert len(bytes(stored_reply(b'"' + b"x" * (MAX_REPLY_BYTES - 2) + b'"'))) == MAX_REPLY_BYTES


def test_the_history_keeps_its_first_line_and_drops_the_oldest_after_it() -> None:
    state = saga("pending")
    note(state, 0.0, "started")
    for n in range(MAX_HISTORY + 10):
        note(state, float(n), "beat", detail="e" * (MAX_ERROR_CHARS + 50))
    assert len(state.history) == MAX_HISTORY
    assert state.history[0].event == "started"
    assert state.history_dropped == 11
    assert state.history[-1].at == MAX_HISTORY + 9
    assert len(state.history[-1].detail) == MAX_ERROR_CHARS


@pytest.mark.parametrize("good", ["a", "order-42", "A_b-9", "x" * 48])
def test_saga_ids_of_letters_digits_dash_and_underscore_are_taken(good: str) -> None:
    assert check_id(good) == good


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "x" * 49, "a*", "a>", "ü", "a\n"])
def test_other_saga_ids_are_refused_with_what_one_looks_like(bad: str) -> None:
    with pytest.raises(natsreg.ConfigError, match="letters, digits"):
        check_id(bad)


def test_a_saga_definition_is_checked_when_it_is_made() -> None:
    step = natsreg.Step("svc.a")
    with pytest.raises(natsreg.ConfigError, match="1 to 32 steps"):
        natsreg.Saga("s", steps=[])
    with pytest.raises(natsreg.ConfigError, match="subject of its own"):
        natsreg.Saga("s", steps=[step, step])
    with pytest.raises(natsreg.ConfigError, match="lease_s"):
        natsreg.Saga("s", steps=[step], lease_s=0.0)
    with pytest.raises(natsreg.ConfigError, match="not valid"):
        natsreg.Saga("a.b", steps=[step])
    with pytest.raises(natsreg.ConfigError):
        natsreg.Step("svc.*")
    with pytest.raises(natsreg.ConfigError):
        natsreg.Step("svc.a", compensate="$JS.API.STREAM.DELETE.x")
    with pytest.raises(natsreg.ConfigError, match="replicas"):
        natsreg.SagaStore(replicas=7)


def test_a_step_is_marked_started_and_a_step_found_started_is_noted_as_run_again() -> None:
    state = saga("pending", "started")
    begin(state, 0, 1.0)
    begin(state, 1, 2.0)
    assert [s.status for s in state.steps] == ["started", "started"]
    assert [(e.event, e.step, e.detail) for e in state.history] == [
        ("step-started", 0, "svc.s0"),
        ("step-started", 1, "again: the coordinator before may have run it"),
    ]


def test_settling_starts_the_next_step_or_ends_the_saga_in_the_same_write() -> None:
    state = saga("succeeded", "pending")
    assert settle(state, 1.0) == 1
    assert state.steps[1].status == "started" and state.status == "running"
    state.steps[1].status = "succeeded"
    assert settle(state, 2.0) is None
    assert state.status == "completed"
    assert [e.event for e in state.history] == ["step-started", "completed"]
    # A compensation still to call is left to the coordinator.
    backward = saga("succeeded", "failed", status="compensating")
    assert settle(backward, 3.0) is None
    assert backward.status == "compensating" and backward.history == []
