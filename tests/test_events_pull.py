"""The pull requests a balanced handler keeps open (natsreg.events._pull), against a real
JetStream: what arrives, what an expiry and an ended request do to the count of events asked
for, and the pending figure read from the reply subject."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from natsreg.events._pull import Puller, pending_of
from natsreg.events._settings import EventOptions, stream_name
from natsreg.events._streams import StreamSettings, ensure_consumer, ensure_streams

PREFIX = "pulltest"


@pytest.mark.pure
@pytest.mark.parametrize(
    ("reply", "pending"),
    [
        ("$JS.ACK.s.c.1.10.10.1700000000000000000.7", 7),
        ("$JS.ACK.hub.ACC.s.c.1.10.10.1700000000000000000.0.abc", 0),
        ("$JS.ACK.s.c.1.10.10.1700000000000000000.x", None),
        ("_INBOX.abc", None),
        (None, None),
    ],
)
def test_pending_comes_from_the_reply_subject(reply: str | None, pending: int | None) -> None:
    assert pending_of(reply) == pending


class Pulled:
    def __init__(self) -> None:
        self.msgs: list[Msg] = []
        self.changes = 0

    def deliver(self, msg: Msg) -> None:
        self.msgs.append(msg)

    def changed(self) -> None:
        self.changes += 1


@pytest.fixture
async def consumer(js: NATS) -> AsyncIterator[str]:
    jsc = js.jetstream()
    await ensure_streams(jsc, PREFIX, StreamSettings())
    name = await ensure_consumer(jsc, PREFIX, "mail", "user.created", EventOptions(), None)
    yield name
    await jsc.delete_stream(stream_name(PREFIX))


async def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.01)


async def test_events_arrive_and_an_expiry_returns_what_was_not_sent(
    js: NATS, consumer: str
) -> None:
    jsc = js.jetstream()
    for n in range(3):
        await jsc.publish(f"{PREFIX}.ev.user.created.{n}", b"%d" % n)
    pulled = Pulled()
    puller = Puller(js, stream_name(PREFIX), consumer, pulled.deliver, pulled.changed, 0.5)
    await puller.start()
    await puller.ask(10)
    await _until(lambda: len(pulled.msgs) == 3)
    assert [m.data for m in pulled.msgs] == [b"0", b"1", b"2"]
    assert puller.outstanding == 7
    assert pulled.changes == 0
    await _until(lambda: pulled.changes == 1)  # the request expired
    assert puller.outstanding == 0
    assert puller.pending == 0
    await puller.stop()


async def test_a_request_ended_by_the_server_is_no_longer_counted(js: NATS, consumer: str) -> None:
    pulled = Pulled()
    puller = Puller(js, stream_name(PREFIX), consumer, pulled.deliver, pulled.changed, 30)
    await puller.start()
    await puller.ask(5)
    jsc = js.jetstream()
    async with asyncio.timeout(5):
        while (await jsc.consumer_info(stream_name(PREFIX), consumer)).num_waiting != 1:
            await asyncio.sleep(0.01)
    await jsc.delete_consumer(stream_name(PREFIX), consumer)
    await _until(lambda: pulled.changes == 1)  # 409 Consumer Deleted
    assert puller.outstanding == 0
    assert pulled.msgs == []
    await puller.stop()


async def test_requests_the_server_never_answers_are_written_off(js: NATS) -> None:
    pulled = Pulled()
    # A consumer that does not exist: the request goes nowhere and nothing ever comes back.
    puller = Puller(js, "no_such_stream", "nobody", pulled.deliver, pulled.changed, 0.1)
    await puller.start()
    await puller.ask(5)
    assert not puller.write_off_lost()
    assert puller.outstanding == 5
    await asyncio.sleep(2.3)  # 0.1 s of wait and 2 s for an expiry that never comes
    assert puller.write_off_lost()
    assert puller.outstanding == 0
    await puller.stop()
