"""Faults with real processes and real signals."""

from __future__ import annotations

import signal
import time

from nats.aio.client import Client as NATS

import natsreg
from tests.helpers import eventually, read_id, start_service


async def test_a_killed_service_process_leaves_the_view_within_the_expiry(
    nc: NATS, nats_url: str, prefix: str, unique: str
) -> None:
    with start_service(nats_url, f"kill-{unique}", prefix) as proc:
        instance_id = read_id(proc)
        async with natsreg.Registry(nc, prefix=prefix) as registry:
            await eventually(
                lambda: instance_id in {i.id for i in registry.snapshot().instances},
                what="service visible",
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = time.monotonic()
            # Default heartbeat 1 s, 2 missed + half an interval of grace: gone within 3 s.
            await eventually(
                lambda: registry.snapshot().instances == [],
                timeout_s=4,
                what="removal after kill -9",
            )
            assert time.monotonic() - killed_at < 3.0


async def test_sigterm_drains_and_says_goodbye_so_removal_is_immediate(
    nc: NATS, nats_url: str, prefix: str, unique: str
) -> None:
    name = f"term-{unique}"
    with start_service(nats_url, name, prefix) as proc:
        instance_id = read_id(proc)
        async with natsreg.Registry(nc, prefix=prefix) as registry:
            await eventually(lambda: instance_id in {i.id for i in registry.snapshot().instances})
            reply = await natsreg.Client(nc).request(f"{name}.echo", b"ping")
            assert reply.data == b"ping"
            proc.send_signal(signal.SIGTERM)
            await eventually(
                lambda: registry.snapshot().instances == [],
                timeout_s=0.9,
                what="removal on goodbye (before any expiry)",
            )
        assert proc.wait(5) == 0
