"""The worker pool that runs a balanced handler's events, and the reading of an event's
delivery count and stream sequence from its reply subject, without a server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError

from natsreg.events._consume import _position
from natsreg.events._pool import Pool

pytestmark = pytest.mark.pure


async def test_work_that_never_waits_runs_every_item_once_in_one_task() -> None:
    seen: list[int] = []
    tasks: set[asyncio.Task[object] | None] = set()

    async def work(item: int) -> None:
        seen.append(item)
        tasks.add(asyncio.current_task())

    pool: Pool[int] = Pool(work, size=8)
    pool.put(range(20))
    await _until(lambda: len(seen) == 20)
    assert seen == list(range(20))
    assert len(tasks) == 1
    assert await pool.close() == []


async def test_work_that_waits_spreads_over_at_most_size_tasks() -> None:
    running = 0
    most = 0
    release = asyncio.Event()
    done: list[int] = []

    async def work(item: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        done.append(item)

    pool: Pool[int] = Pool(work, size=4)
    pool.put(range(10))
    await _until(lambda: running == 4)
    await asyncio.sleep(0.01)  # room for a fifth to start, were the bound broken
    assert most == 4
    release.set()
    await _until(lambda: len(done) == 10)
    assert sorted(done) == list(range(10))
    assert await pool.close() == []


async def test_close_cancels_running_work_and_returns_the_items_not_started() -> None:
    cancelled: list[int] = []

    async def work(item: int) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(item)
            raise

    pool: Pool[int] = Pool(work, size=2)
    pool.put(range(5))
    await _until(lambda: len(pool._workers) == 2)
    await asyncio.sleep(0)
    left = await pool.close()
    assert sorted(cancelled) == [0, 1]
    assert left == [2, 3, 4]


async def test_a_failing_work_costs_no_worker() -> None:
    done: list[int] = []

    async def work(item: int) -> None:
        if item == 0:
            raise RuntimeError("a bug")
        done.append(item)

    pool: Pool[int] = Pool(work, size=1)
    pool.put(range(3))
    await _until(lambda: len(done) == 2)
    assert done == [1, 2]
    await pool.close()


def _msg(reply: str) -> Msg:
    return Msg(_client=None, subject="x", reply=reply)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.app_events.mail--user-created.3.1042.17.1764636000000000000.5",
        "$JS.ACK.hub.ACCHASH.app_events.mail--user-created.3.1042.17.1764636000000000000.5.x",
    ],
)
def test_position_is_what_nats_py_reads_from_the_reply(reply: str) -> None:
    meta = _msg(reply).metadata
    assert _position(_msg(reply)) == (meta.num_delivered, meta.sequence.stream) == (3, 1042)


def test_a_reply_that_is_not_jetstream_is_refused() -> None:
    with pytest.raises(NotJSMessageError):
        _position(_msg("_INBOX.abc"))


async def _until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within 2 s"
        await asyncio.sleep(0.001)
