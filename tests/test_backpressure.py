"""A registry node under more heartbeats or announcements than it can handle keeps its NATS
connection, counts and logs what it drops, and answers queries throughout."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import nats
import pytest
from nats.aio.client import Client as NATS

import natsreg
from natsreg import subjects, wire
from natsreg.testing import NatsServer
from tests.helpers import until_warm

FLOOD_PROC = Path(__file__).with_name("flood_proc.py")
# Beyond what one node handles (~13 µs a heartbeat: under 80k a second) on any machine, and
# for about 2 s; 30 s at most, however slow the machine.
FLOOD = 300_000
RATE = 150_000


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A server of its own, so the flood slows no other test, that holds at most 12 MB for a
    client that does not read fast enough (nats-server's default is 64 MB): a node that fell
    behind its socket would be cut off within the flood."""
    config = tmp_path / "nats.conf"
    config.write_text("max_pending: 12MB\n")
    async with NatsServer(args=("-c", str(config))) as server:
        yield server


@pytest.mark.parametrize("kind", ["hb", "announce"])
async def test_a_flood_costs_the_node_messages_never_its_connection(
    own_server: NatsServer, prefix: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Announcements (a 250k fleet starting, or re-announcing) are 5x a heartbeat's bytes and
    # are not shed: the node must read them faster than it handles them, and drop the rest.
    caplog.set_level(logging.WARNING, logger="natsreg.registry")
    disconnects: list[float] = []
    nats_errors: list[Exception] = []

    async def on_disconnect() -> None:
        disconnects.append(time.monotonic())

    async def on_error(exc: Exception) -> None:
        nats_errors.append(exc)

    node_nc = await nats.connect(
        own_server.url, disconnected_cb=on_disconnect, error_cb=on_error, reconnect_time_wait=0.2
    )
    asker = await nats.connect(own_server.url)
    latencies: list[float] = []
    try:
        async with natsreg.Registry(node_nc, prefix=prefix) as node:
            await until_warm(asker, prefix)
            with subprocess.Popen(
                [
                    sys.executable,
                    str(FLOOD_PROC),
                    own_server.url,
                    prefix,
                    str(FLOOD),
                    str(RATE),
                    kind,
                ],
                stdout=subprocess.PIPE,
                text=True,
            ) as flood:
                try:
                    # Asked all through the flood, with the CLI's own budget and then some.
                    while flood.poll() is None:
                        latencies.append(await stats_latency(asker, prefix, timeout_s=5.0))
                        await anyio.sleep(0.2)
                    assert flood.stdout is not None
                    assert flood.stdout.read().strip() == f"sent {FLOOD}"
                finally:
                    flood.kill()
            latencies.append(await stats_latency(asker, prefix, timeout_s=5.0))
            figures = node.stats().dropped
            dropped = figures.get("slow_consumer", 0) + figures.get("shed", 0)
            # Once caught up it takes such messages again (what it shed, it subscribes again).
            await takes_again(asker, node, prefix, kind)
        # It was flooded past what it could take (else this test proves nothing) ...
        assert dropped > 0
        # ... said so once, in words and in its figures, not once per message ...
        warnings = [r for r in caplog.records if "falling behind" in r.getMessage()]
        assert len(warnings) == 1
        assert not any(isinstance(e, nats.errors.SlowConsumerError) for e in nats_errors)
        # ... and kept its connection, answering every question asked meanwhile.
        assert disconnects == [] and node_nc.stats["reconnects"] == 0
        assert len(latencies) >= 3
    finally:
        await asker.close()
        await node_nc.close()


async def stats_latency(nc: NATS, prefix: str, timeout_s: float) -> float:
    start = time.monotonic()
    reply = await nc.request(
        subjects.control_subject(prefix, "registry", "stats"), b"", timeout=timeout_s
    )
    wire.decode_node_stats(reply.data)
    return time.monotonic() - start


async def takes_again(nc: NATS, node: natsreg.Registry, prefix: str, kind: str) -> None:
    """One message of ``kind``, sent every 0.2 s, reaches ``node`` within 20 s."""
    label = {"hb": "heartbeat", "announce": "announce"}[kind]
    heard = node.messages[label]
    message: wire.ControlMessage = (
        wire.Heartbeat(id="after-flood", name="after-flood", seq=1)
        if kind == "hb"
        else wire.Announce(id="after-flood", name="after-flood", version="1.0.0", seq=1)
    )
    subject = subjects.control_subject(prefix, kind, "after-flood", "after-flood")
    deadline = time.monotonic() + 20.0
    while node.messages[label] == heard:
        assert time.monotonic() < deadline, f"no {label} taken within 20 s of the flood"
        await nc.publish(subject, wire.encode(message))
        await anyio.sleep(0.2)
