"""The mass-expiry policy with real processes: 20% of a fleet killed at once, then restarted."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nats.aio.client import Client as NATS

import natsreg
from natsreg import subjects, wire
from tests.helpers import eventually, until_warm
from tests.test_cli import run_cli

FLEET = Path(__file__).resolve().parents[1] / "bench" / "fleet.py"


@contextmanager
def fleet(url: str, prefix: str, instances: int, tag: str) -> Iterator[subprocess.Popen[str]]:
    """Virtual instances in one process (heartbeat every 0.2 s to keep the test short)."""
    with subprocess.Popen(
        [
            sys.executable,
            str(FLEET),
            "--url",
            url,
            "--prefix",
            prefix,
            "--instances",
            str(instances),
            "--tag",
            tag,
            "--heartbeat",
            "0.2",
            "--ramp",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
            yield proc
        finally:
            proc.kill()


async def stats(nc: NATS, prefix: str) -> wire.NodeStats:
    reply = await nc.request(subjects.control_subject(prefix, "registry", "stats"), b"")
    return wire.decode_node_stats(reply.data)


async def test_a_fifth_of_the_fleet_killed_at_once_is_expired_flagged_and_cleared(
    nc: NATS, nats_url: str, prefix: str, cli_env: dict[str, str]
) -> None:
    async with natsreg.Registry(nc, prefix=prefix):
        await until_warm(nc, prefix)
        with fleet(nats_url, prefix, 40, "stay"), fleet(nats_url, prefix, 10, "gone") as gone:

            async def count_is(n: int) -> bool:
                return (await stats(nc, prefix)).instances == n

            async def all_heard_twice() -> bool:
                reply = await nc.request(subjects.control_subject(prefix, "registry", "list"), b"")
                listed = wire.decode_snapshot(reply.data).instances
                return len(listed) == 50 and all(i.seq >= 2 for i in listed)

            # Only instances heard from after their announcement count toward the alarm (a
            # burst of fake announcements is no fleet): let every one heartbeat first.
            await eventually(all_heard_twice, what="fleet of 50 listed and heartbeating")
            gone.kill()
            gone.wait()
            # The documented policy: expired all the same, and flagged.
            await eventually(lambda: count_is(40), what="killed fifth expired")
            mass = (await stats(nc, prefix)).mass_expiry
            assert mass is not None and (mass.lost, mass.before) == (10, 50)
            listed = await run_cli(cli_env, "ls", "--prefix", prefix)
            assert "mass expiry: 10 of 50" in listed.stdout

            # Restarted (new processes, new instance ids): the flag clears by itself.
            with fleet(nats_url, prefix, 10, "back"):

                async def cleared() -> bool:
                    current = await stats(nc, prefix)
                    return current.instances == 50 and current.mass_expiry is None

                await eventually(cleared, what="alert cleared once capacity is back")
