"""What natsreg sets on the nats-py connections it is given: a PONG that comes after its
flush gave up no longer stops the connection; and a subscription handed over to natsreg gets
its messages from nats-py's parser as they are read (natsreg/_natspy.py)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from natsreg import _natspy
from natsreg.testing import NatsServer
from tests.helpers import eventually


@pytest.fixture
async def server() -> AsyncIterator[NatsServer]:
    """A server of its own: the test freezes it."""
    async with NatsServer() as server:
        yield server


async def late_pong(server: NatsServer, nc: NATS) -> None:
    """A flush that gives up while the server is frozen; its PONG comes once it thaws."""
    server.process.send_signal(signal.SIGSTOP)
    await eventually(lambda: stopped(server.process.pid), what="the server stopped")
    try:
        with pytest.raises(nats.errors.FlushTimeoutError):
            await nc.flush(timeout=0.2)
    finally:
        server.process.send_signal(signal.SIGCONT)
    # The late PONG arrives and is taken off the queue (then stops the read loop, or not).
    await eventually(lambda: not nc._pongs, what="the late PONG")


def stopped(pid: int) -> bool:
    # Every thread, not only the main one: a Go server answers from any of them.
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return all((t / "stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for t in tasks)


async def delivers(nc: NATS, subject: str) -> bool:
    """Whether a message published now reaches a subscription of the same connection."""
    sub = await nc.subscribe(subject)
    await nc.publish(subject, b"still here")
    try:
        return (await sub.next_msg(timeout=1.0)).data == b"still here"
    except nats.errors.TimeoutError:
        return False


async def test_a_late_pong_leaves_an_adopted_connection_reading(server: NatsServer) -> None:
    adopted = await nats.connect(server.url, allow_reconnect=False)
    plain = await nats.connect(server.url, allow_reconnect=False)
    try:
        _natspy.adopt(adopted)
        await late_pong(server, adopted)
        await late_pong(server, plain)
        assert await delivers(adopted, "natspy.adopted")
        await adopted.flush(timeout=2)
        # The fault is real: nats-py's own handling stops reading, while it says connected.
        assert plain.is_connected
        assert not await delivers(plain, "natspy.plain"), (
            "nats-py no longer loses its read loop to a late PONG: natsreg/_natspy.py's PONG "
            "handling can go"
        )
    finally:
        await adopted.close()
        await plain.close()


async def test_a_handed_over_subscription_gets_every_message_in_order(
    server: NatsServer, prefix: str
) -> None:
    nc, pub = await nats.connect(server.url), await nats.connect(server.url)
    taken: list[tuple[bytes, bytes]] = []
    plain: list[tuple[str, bytes, dict[str, str] | None]] = []

    async def on_plain(msg: Msg) -> None:
        plain.append((msg.subject, msg.data, msg.headers))

    try:
        sub = await nc.subscribe(f"{prefix}.taken.>")
        others = await nc.subscribe(f"{prefix}.plain", cb=on_plain)
        await nc.flush()
        # Queued by nats-py before the hand-over: taken first, in order.
        await pub.publish(f"{prefix}.taken.a", b"0")
        await pub.flush()
        try:
            await eventually(lambda: sub.pending_msgs == 1, timeout_s=20, what="the first queued")
        except AssertionError as exc:
            # Seen once in a full CI run, never alone: say where the message stopped.
            raise AssertionError(
                f"{exc}: receiver connected={nc.is_connected} stats={nc.stats}, "
                f"sender connected={pub.is_connected} stats={pub.stats}"
            ) from None
        in_msgs = nc.stats["in_msgs"]
        _natspy.hand_over(nc, sub, lambda subject, payload: taken.append((subject, payload)))
        for n in range(1, 200):
            await pub.publish(f"{prefix}.taken.b{n % 3}", str(n).encode(), headers={"x": "1"})
        await pub.publish(f"{prefix}.plain", b"as before", headers={"h": "v"})
        await pub.flush()
        await eventually(
            lambda: len(taken) == 200 and len(plain) == 1, timeout_s=20, what="every message"
        )
        assert [int(payload) for _, payload in taken] == list(range(200))
        assert taken[0][0] == f"{prefix}.taken.a".encode()
        assert taken[5] == (f"{prefix}.taken.b2".encode(), b"5")
        # The other subscriptions of the connection get their messages as nats-py makes them.
        assert plain == [(f"{prefix}.plain", b"as before", {"h": "v"})]
        assert nc.stats["in_msgs"] == in_msgs + 200
        # Unsubscribed and taken back: nothing more comes.
        await sub.unsubscribe()
        _natspy.take_back(nc, sub)
        await pub.publish(f"{prefix}.taken.c", b"late")
        await pub.publish(f"{prefix}.plain", b"after")
        await pub.flush()
        await eventually(lambda: len(plain) == 2, timeout_s=20, what="the plain message after")
        assert len(taken) == 200
        await others.unsubscribe()
    finally:
        await pub.close()
        await nc.close()
