"""The JetStream rules events and sagas share, without a server: how many replicas to ask
for, and when to wait for JetStream and when not."""

from __future__ import annotations

from typing import Any

import nats.errors
import pytest
from nats.js.errors import APIError, ServiceUnavailableError

from natsreg import _jetstream

pytestmark = pytest.mark.pure


def creator(*failures: int | None) -> tuple[list[int], Any]:
    """A create(count) that fails with the given JetStream error codes in turn, then works."""
    asked: list[int] = []
    pending = list(failures)

    async def create(count: int) -> None:
        asked.append(count)
        if pending:
            raise APIError(code=500, err_code=pending.pop(0))

    return asked, create


async def test_with_no_count_three_replicas_are_asked_then_fewer_where_the_cluster_cannot() -> None:
    asked, create = creator(10074, 10005)
    assert await _jetstream.create_replicated(create, None) == 1
    assert asked == [3, 2, 1]


async def test_a_count_given_is_the_only_one_asked_for() -> None:
    asked, create = creator(10074)
    with pytest.raises(APIError):
        await _jetstream.create_replicated(create, 3)
    assert asked == [3]


async def test_created_meanwhile_by_another_process_is_no_error_and_other_errors_are() -> None:
    _, create = creator(10058)
    assert await _jetstream.create_replicated(create, None) is None
    _, create = creator(10999)
    with pytest.raises(APIError):
        await _jetstream.create_replicated(create, None)
    _, create = creator(10074, 10074, 10074)
    with pytest.raises(APIError):
        await _jetstream.create_replicated(create, None)


async def test_a_server_without_jetstream_that_nobody_answers_for_is_not_waited_for() -> None:
    calls = 0

    async def probe() -> None:
        nonlocal calls
        calls += 1
        raise ServiceUnavailableError

    with pytest.raises(ServiceUnavailableError):
        await _jetstream.when_ready(probe, starting_s=5.0)
    assert calls == 1


async def test_jetstream_starting_up_is_waited_for_until_it_answers() -> None:
    answers: list[Exception] = [
        ServiceUnavailableError(code=503, err_code=10008),
        nats.errors.TimeoutError(),
        ServiceUnavailableError(code=503),
    ]

    async def probe() -> str:
        if answers:
            raise answers.pop(0)
        return "ready"

    result = await _jetstream.when_ready(probe, starting_s=5.0, retry_s=0.0)
    assert result == "ready"


async def test_past_the_wait_the_last_unavailable_is_raised() -> None:
    async def probe() -> None:
        raise ServiceUnavailableError(code=503, err_code=10008)

    with pytest.raises(ServiceUnavailableError):
        await _jetstream.when_ready(probe, starting_s=0.0)
