"""A registry node's control inbox (natsreg/registry/_inbox.py), pinned on both sides of each
bound: what fits is read in order, what does not is dropped and told, a handler's error costs
only its message, and a backlog lets other tasks run."""

from __future__ import annotations

import asyncio
import logging

import pytest

from natsreg.registry._inbox import Inbox

pytestmark = pytest.mark.pure


class Reading:
    """An inbox of at most ``max_msgs`` messages and ``max_bytes`` bytes, what its handler
    was given, and the inboxes it said overflowed."""

    def __init__(self, max_msgs: int = 100, max_bytes: int = 1000, yield_every: int = 4) -> None:
        self.handled: list[tuple[str, bytes]] = []
        self.overflowed: list[Inbox] = []
        self.inbox = Inbox(
            "p.hb.>",
            self.handle,
            self.overflowed.append,
            max_msgs=max_msgs,
            max_bytes=max_bytes,
            yield_every=yield_every,
        )

    async def handle(self, subject: str, payload: bytes) -> None:
        if payload == b"boom":
            raise ValueError("a bug in the handler")
        self.handled.append((subject, payload))

    async def read_all(self) -> None:
        task = asyncio.create_task(self.inbox.read())
        try:
            await asyncio.wait_for(self.inbox.emptied(), timeout=5)
        finally:
            task.cancel()


async def test_messages_are_read_in_order_with_subjects_decoded() -> None:
    reading = Reading()
    for n in range(10):
        reading.inbox.put(f"p.hb.s.{n}".encode(), str(n).encode())
    assert reading.inbox.pending_msgs == 10 and reading.inbox.pending_bytes == 10
    await reading.read_all()
    assert reading.handled == [(f"p.hb.s.{n}", str(n).encode()) for n in range(10)]
    assert reading.inbox.pending_msgs == 0 and reading.inbox.pending_bytes == 0
    assert reading.overflowed == []


async def test_a_message_beyond_the_count_is_dropped_and_told() -> None:
    reading = Reading(max_msgs=3)
    for n in range(4):
        reading.inbox.put(b"p.hb.s.i", str(n).encode())
    assert reading.overflowed == [reading.inbox]
    await reading.read_all()
    assert [payload for _, payload in reading.handled] == [b"0", b"1", b"2"]


async def test_a_message_beyond_the_bytes_is_dropped_and_told_one_that_fits_is_not() -> None:
    reading = Reading(max_bytes=10)
    reading.inbox.put(b"p.hb.s.i", b"x" * 6)
    reading.inbox.put(b"p.hb.s.i", b"y" * 4)  # exactly at the bound: fits
    assert reading.overflowed == []
    reading.inbox.put(b"p.hb.s.i", b"z")
    assert reading.overflowed == [reading.inbox]
    assert reading.inbox.pending_bytes == 10
    await reading.read_all()
    assert [payload for _, payload in reading.handled] == [b"x" * 6, b"y" * 4]
    # Read, it has room again.
    reading.inbox.put(b"p.hb.s.i", b"z")
    assert reading.overflowed == [reading.inbox] and reading.inbox.pending_msgs == 1


async def test_a_handler_error_is_logged_and_the_next_message_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reading = Reading()
    for payload in (b"1", b"boom", b"2"):
        reading.inbox.put(b"p.hb.s.i", payload)
    with caplog.at_level(logging.ERROR, logger="natsreg.registry"):
        await reading.read_all()
    assert [payload for _, payload in reading.handled] == [b"1", b"2"]
    assert "could not be handled" in caplog.text and "a bug in the handler" in caplog.text


async def test_a_backlog_lets_other_tasks_run_every_yield_every_messages() -> None:
    reading = Reading(yield_every=4)
    turns: list[int] = []

    async def other() -> None:
        while True:
            turns.append(len(reading.handled))
            await asyncio.sleep(0)

    for n in range(12):
        reading.inbox.put(b"p.hb.s.i", str(n).encode())
    task = asyncio.create_task(other())
    await asyncio.sleep(0)  # the other task first runs with nothing handled
    await reading.read_all()
    task.cancel()
    # The other task ran after the 4th and the 8th message, not only once the inbox was empty.
    assert 4 in turns and 8 in turns
    assert all(t % 4 == 0 for t in turns)


async def test_a_message_put_while_the_reader_waits_wakes_it() -> None:
    reading = Reading()
    task = asyncio.create_task(reading.inbox.read())
    await asyncio.sleep(0)  # waiting on an empty inbox
    reading.inbox.put(b"p.hb.s.i", b"late")
    await asyncio.wait_for(reading.inbox.emptied(), timeout=5)
    for _ in range(3):
        await asyncio.sleep(0)
    task.cancel()
    assert reading.handled == [("p.hb.s.i", b"late")]


async def test_a_closed_inbox_drops_what_waits_and_is_emptied() -> None:
    reading = Reading()
    reading.inbox.put(b"p.hb.s.i", b"never read")
    waiting = asyncio.create_task(reading.inbox.emptied())
    await asyncio.sleep(0)
    assert not waiting.done()
    reading.inbox.close()
    await asyncio.wait_for(waiting, timeout=5)
    assert reading.inbox.pending_msgs == 0 and reading.inbox.pending_bytes == 0
    assert reading.handled == []
