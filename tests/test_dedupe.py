"""At-most-once rules of a service (natsreg/service/_dedupe.py), without a server: the clock is a
number passed in."""

from __future__ import annotations

import pytest

from natsreg.errors import CODE_HEADER, ERROR_HEADER
from natsreg.service import _dedupe
from natsreg.service._dedupe import JOINED, Memory, is_valid_id, remember_until

pytestmark = pytest.mark.pure

KEY = ("charge", "req-1")
ERROR = {ERROR_HEADER: "card declined", CODE_HEADER: "402"}


def refusal(answer: _dedupe.Reply | None) -> dict[str, str]:
    """The error headers of a reply sent without running anything."""
    assert answer is not None
    assert answer is not JOINED
    data, headers = answer
    assert data == b""
    assert headers is not None
    return headers


def finish(
    memory: Memory,
    key: tuple[str, str],
    data: bytes = b'{"ok":true}',
    headers: dict[str, str] | None = None,
    *,
    now: float = 0.0,
    until: float = 10.0,
    remember: bool = True,
) -> list[str]:
    return memory.finish(key, data, headers, remember=remember, expires_at=until, now=now)


def test_a_new_id_runs_and_a_repeat_after_it_finished_gets_the_first_reply() -> None:
    memory = Memory()
    assert memory.begin(KEY, "_INBOX.a", 0.0) is None
    assert finish(memory, KEY, b'{"charged":1}', now=0.1) == []
    assert memory.begin(KEY, "_INBOX.b", 0.2) == (b'{"charged":1}', None)
    assert memory.stats()["replayed"] == 1


def test_a_repeat_gets_the_same_error_headers_as_the_first_reply() -> None:
    memory = Memory()
    memory.begin(KEY, "_INBOX.a", 0.0)
    finish(memory, KEY, b"", ERROR, now=0.1)
    assert memory.begin(KEY, "_INBOX.b", 0.2) == (b"", ERROR)


def test_a_repeat_while_the_call_runs_waits_for_that_run_and_both_get_its_reply() -> None:
    memory = Memory()
    assert memory.begin(KEY, "_INBOX.first", 0.0) is None
    assert memory.begin(KEY, "_INBOX.second", 0.1) is JOINED
    assert memory.begin(KEY, "_INBOX.third", 0.2) is JOINED
    assert finish(memory, KEY, now=0.3) == ["_INBOX.second", "_INBOX.third"]
    assert memory.stats()["running"] == 0


def test_a_repeat_without_a_reply_subject_joins_without_waiting() -> None:
    memory = Memory()
    memory.begin(KEY, "_INBOX.first", 0.0)
    assert memory.begin(KEY, None, 0.1) is JOINED
    assert finish(memory, KEY, now=0.3) == []


def test_the_same_id_on_another_endpoint_is_another_call() -> None:
    memory = Memory()
    memory.begin(("charge", "x"), "_INBOX.a", 0.0)
    finish(memory, ("charge", "x"), now=0.1)
    assert memory.begin(("refund", "x"), "_INBOX.b", 0.2) is None


def test_an_id_runs_again_once_its_window_has_passed() -> None:
    memory = Memory()
    memory.begin(KEY, "_INBOX.a", 0.0)
    finish(memory, KEY, now=0.1, until=1.0)
    assert memory.begin(KEY, "_INBOX.b", 0.99) is not None
    assert memory.begin(KEY, "_INBOX.c", 1.0) is None


def test_a_call_that_ran_again_is_remembered_with_its_new_window() -> None:
    memory = Memory()
    memory.begin(KEY, "_INBOX.a", 0.0)
    finish(memory, KEY, b"first", now=0.1, until=1.0)
    memory.begin(KEY, "_INBOX.b", 2.0)
    finish(memory, KEY, b"second", now=2.1, until=3.0)
    assert memory.begin(KEY, "_INBOX.c", 2.5) == (b"second", None)
    assert memory.stats()["remembered"] == 1


def test_expired_calls_are_swept_out() -> None:
    memory = Memory()
    for i in range(100):
        memory.begin(("e", str(i)), "_INBOX.a", 0.0)
        finish(memory, ("e", str(i)), now=0.0, until=1.0)
    memory.begin(KEY, "_INBOX.a", 5.0)
    finish(memory, KEY, now=5.0, until=6.0)
    assert memory.stats()["remembered"] == 1


def test_a_reply_that_says_a_repeat_is_safe_is_not_remembered() -> None:
    memory = Memory()
    memory.begin(KEY, "_INBOX.a", 0.0)
    assert finish(memory, KEY, now=0.1, remember=False) == []
    assert memory.begin(KEY, "_INBOX.b", 0.2) is None


def test_a_call_refused_before_it_ran_is_forgotten() -> None:
    memory = Memory()
    memory.begin(KEY, "_INBOX.a", 0.0)
    memory.abandon(KEY)
    assert memory.begin(KEY, "_INBOX.b", 0.1) is None


def test_a_reply_too_large_to_keep_makes_a_repeat_fail_with_409_saying_the_call_ran() -> None:
    memory = Memory(max_reply_bytes=100)
    memory.begin(KEY, "_INBOX.a", 0.0)
    finish(memory, KEY, b"x" * 101, now=0.1)
    headers = refusal(memory.begin(KEY, "_INBOX.b", 0.2))
    assert headers[CODE_HEADER] == "409"
    assert "req-1 already ran" in headers[ERROR_HEADER]
    assert "not run again" in headers[ERROR_HEADER]
    assert memory.stats()["bytes"] == 0


def test_replies_beyond_the_byte_bound_are_dropped_oldest_first_but_their_ids_kept() -> None:
    memory = Memory(max_bytes=1000, max_reply_bytes=400)
    for i in range(5):
        memory.begin(("e", str(i)), "_INBOX.a", 0.0)
        finish(memory, ("e", str(i)), bytes([65 + i]) * 300, now=0.0)
    stats = memory.stats()
    assert stats["bytes"] <= 1000
    assert stats["dropped_replies"] == 2
    for i in (0, 1):
        assert refusal(memory.begin(("e", str(i)), "_INBOX.b", 0.1))[CODE_HEADER] == "409"
    assert memory.begin(("e", "4"), "_INBOX.b", 0.1) == (b"E" * 300, None)


def test_a_flood_of_distinct_ids_stays_within_the_entry_and_byte_bounds() -> None:
    memory = Memory(max_entries=1000, max_bytes=50_000)
    for i in range(20_000):
        key = ("charge", f"flood-{i}")
        memory.begin(key, "_INBOX.a", 0.0)
        finish(memory, key, b"y" * 100, now=0.0, until=600.0)
    stats = memory.stats()
    assert stats["remembered"] == 1000
    assert stats["bytes"] <= 50_000
    assert stats["evicted"] == 19_000
    assert len(memory._kept) <= 500


def test_repeats_beyond_the_waiter_bound_are_refused_with_409_and_never_run() -> None:
    memory = Memory(max_waiters=2)
    memory.begin(KEY, "_INBOX.a", 0.0)
    assert memory.begin(KEY, "_INBOX.b", 0.0) is JOINED
    assert memory.begin(KEY, "_INBOX.c", 0.0) is JOINED
    refused = refusal(memory.begin(KEY, "_INBOX.d", 0.0))
    assert refused[CODE_HEADER] == "409"
    assert "already running" in refused[ERROR_HEADER]
    assert finish(memory, KEY, now=0.1) == ["_INBOX.b", "_INBOX.c"]


@pytest.mark.parametrize(
    "value", ["yCCXlP4iJIayd9YTziyAil", "2f0c9e4e-6d1a-4c37-9a52-0b7e1f3c2a10", "a", "x" * 64]
)
def test_a_short_printable_token_is_a_request_id(value: str) -> None:
    assert is_valid_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 65,
        "has space",
        "crlf\r\nX-Forged: 1",
        "tab\there",
        "caf\u00e9",
        "nul\x00",
        "del\x7f",
    ],
)
def test_a_hostile_request_id_is_refused(value: str) -> None:
    assert not is_valid_id(value)


def test_a_call_is_remembered_for_its_budget_plus_the_margin() -> None:
    assert remember_until(12.0, now=10.0) == 12.0 + _dedupe.MARGIN_S


def test_a_call_without_a_budget_is_remembered_for_the_default_window() -> None:
    assert remember_until(None, now=10.0) == 10.0 + _dedupe.NO_BUDGET_WINDOW_S + _dedupe.MARGIN_S


def test_a_huge_budget_is_remembered_no_longer_than_the_longest_window() -> None:
    assert remember_until(1e12, now=10.0) == 10.0 + _dedupe.MAX_WINDOW_S
