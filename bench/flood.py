"""What floods of forged control traffic cost a registry node.

    python bench/flood.py                      # 100k fake announcements, 50k fleet
    python bench/flood.py --fleet 20000        # a smaller fleet for the query part

A fresh nats-server on 127.0.0.1 and a registry node in its own process
(``natsreg registry``), then:

1. **Announcement flood**: the node's RSS before, then after ``--fakes`` announcements with
   random ids (each never heartbeats; they announce a 10 s interval, so all are held at once
   and expire 25 s later), then after 1,000 announcements
   of 1,000 metadata keys each (dropped as ``invalid_metadata``). Also whether a false "mass
   expiry" was raised, and the drops by reason.
2. **Discover flood**: 50k ``discover`` messages at one real service (``tests/service_proc.py``):
   how many re-announcements it sent.
3. **Query flood**: a synthetic fleet (bench/fleet.py, heartbeat 5 s), then the latency of
   ``natsreg ls``'s question (``registry.services``) asked ``--asks`` times, without and then
   with 30 ``list`` queries a second from another process (each a whole-fleet answer).

Every loop is bounded in count and time; everything stops by itself. The machine's 2 cores are
shared, so read the figures as ranges and compare the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nats

from natsreg import subjects, wire
from natsreg.testing import NatsServer

HERE = Path(__file__).resolve().parent
SERVICE_PROC = HERE.parent / "tests" / "service_proc.py"
PREFIX = "flood"

# The query flooder: its own process, so that its work does not slow the measuring client.
FLOODER = """
import asyncio, sys, time
import nats
async def main(url, subject, rate, seconds):
    nc = await nats.connect(url)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        # Nobody listens on the inbox: the node still builds and sends every answer.
        await nc.publish(subject, b"", reply=nc.new_inbox())
        await asyncio.sleep(1 / rate)
    await nc.close()
asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


async def node_stats(nc: nats.NATS) -> wire.NodeStats:
    reply = await nc.request(subjects.control_subject(PREFIX, "registry", "stats"), b"", timeout=10)
    return wire.decode_node_stats(reply.data)


async def wait_for(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if await check():
                return
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"flood: {what} not reached within {timeout_s} s")
        await asyncio.sleep(0.2)


async def announcement_flood(nc: nats.NATS, pid: int, fakes: int) -> dict[str, object]:
    await asyncio.sleep(2.0)  # past warm-up, the node idle
    before = rss_mb(pid)
    peak = [before]
    held = [0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mb(pid))
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    for n in range(fakes):
        instance_id = uuid.uuid4().hex
        name = f"fake-{n % 100}"
        await nc.publish(
            subjects.control_subject(PREFIX, "announce", name, instance_id),
            wire.encode(
                wire.Announce(id=instance_id, name=name, version="1.0.0", seq=1, heartbeat_s=10.0)
            ),
        )
        if n % 5000 == 0:
            await nc.flush()
    await nc.flush()

    async def expired() -> bool:
        instances = (await node_stats(nc)).instances
        held[0] = max(held[0], instances)
        return instances == 0

    await wait_for(expired, 120, "fakes expired")
    sampler.cancel()
    after = rss_mb(pid)
    big = {f"k{k}": "v" * 16 for k in range(1000)}
    for _ in range(1000):
        instance_id = uuid.uuid4().hex
        await nc.publish(
            subjects.control_subject(PREFIX, "announce", "big", instance_id),
            wire.encode(
                wire.Announce(id=instance_id, name="big", version="1.0.0", seq=1, metadata=big)
            ),
        )
    await nc.flush()
    await asyncio.sleep(1.0)
    stats = await node_stats(nc)
    return {
        "before": before,
        "peak": peak[0],
        "held": held[0],
        "after_expiry": after,
        "after_big": rss_mb(pid),
        "mass_expiry": stats.mass_expiry,
        "dropped": stats.dropped,
    }


async def discover_flood(nc: nats.NATS, url: str, messages: int) -> int:
    announces = 0

    async def count(msg: nats.aio.msg.Msg) -> None:
        nonlocal announces
        announces += 1

    with subprocess.Popen(
        [sys.executable, str(SERVICE_PROC), url, "victim", PREFIX],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().startswith("id ")
            await asyncio.sleep(1.5)
            sub = await nc.subscribe(
                subjects.control_subject(PREFIX, "announce", "victim", ">"), cb=count
            )
            await nc.flush()
            flood = wire.encode(wire.Discover())
            for n in range(messages):
                await nc.publish(subjects.control_subject(PREFIX, "discover"), flood)
                if n % 5000 == 0:
                    await nc.flush()
            await nc.flush()
            await asyncio.sleep(3.0)
            await sub.unsubscribe()
        finally:
            proc.kill()
    return announces


async def ls_latencies(nc: nats.NATS, asks: int) -> tuple[list[float], int]:
    """``natsreg ls``'s question, ``asks`` times at 5 a second; latencies (ms) and failures."""
    latencies, failed = [], 0
    for _ in range(asks):
        t0 = time.perf_counter()
        try:
            reply = await nc.request(
                subjects.control_subject(PREFIX, "registry", "services"), b"", timeout=2.0
            )
            wire.decode_service_list(reply.data)
            latencies.append((time.perf_counter() - t0) * 1000)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            failed += 1
        await asyncio.sleep(0.2)
    return latencies, failed


def p(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def query_flood(
    nc: nats.NATS, url: str, fleet_size: int, asks: int, rate: float
) -> dict[str, object]:
    fleet = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "fleet.py"),
            "--url",
            url,
            "--prefix",
            PREFIX,
            "--instances",
            str(fleet_size),
            "--tag",
            "fleet",
            "--heartbeat",
            "5",
            "--ramp",
            str(max(1.0, fleet_size / 10_000)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fleet.stdout is not None and fleet.stdout.readline().startswith("ready")

        async def complete() -> bool:
            return (await node_stats(nc)).instances == fleet_size

        await wait_for(complete, 120, f"registry holding {fleet_size} instances")
        await asyncio.sleep(1.0)
        quiet, quiet_failed = await ls_latencies(nc, asks)
        seconds = asks * 0.25 + 5
        flooder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                FLOODER,
                url,
                subjects.control_subject(PREFIX, "registry", "list"),
                str(rate),
                str(seconds),
            ]
        )
        try:
            await asyncio.sleep(1.0)
            loaded, loaded_failed = await ls_latencies(nc, asks)
        finally:
            flooder.kill()
            flooder.wait()
        stats = await node_stats(nc)
        return {
            "quiet": quiet,
            "quiet_failed": quiet_failed,
            "loaded": loaded,
            "loaded_failed": loaded_failed,
            "dropped": stats.dropped,
        }
    finally:
        fleet.kill()
        fleet.wait()


async def main(args: argparse.Namespace) -> None:
    with NatsServer() as server:
        log = open(args.registry_log, "w") if args.registry_log else subprocess.DEVNULL  # noqa: SIM115
        registry = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "natsreg",
                "registry",
                "--server",
                server.url,
                "--prefix",
                PREFIX,
            ],
            stderr=log,
        )
        nc = await nats.connect(server.url, pending_size=256 * 1024 * 1024)
        try:
            await wait_for(lambda: node_stats(nc), 10, "registry up")
            flood = await announcement_flood(nc, registry.pid, args.fakes)
            reannounces = await discover_flood(nc, server.url, args.discovers)
            queries = await query_flood(nc, server.url, args.fleet, args.asks, args.rate)
        finally:
            await nc.close()
            registry.kill()
            registry.wait()

    quiet, loaded = queries["quiet"], queries["loaded"]
    print(
        f"\ncommand: python bench/flood.py --fakes {args.fakes} --fleet {args.fleet} "
        f"--asks {args.asks} --rate {args.rate:g} --discovers {args.discovers}\n"
    )
    print("| what | figure |")
    print("|---|---|")
    print(
        f"| registry RSS before / peak / after expiry (MB) | {flood['before']:.0f} / "
        f"{flood['peak']:.0f} / {flood['after_expiry']:.0f} |"
    )
    print(
        f"| RSS growth from {args.fakes:,} fake announcements, after expiry | "
        f"x{flood['after_expiry'] / flood['before']:.2f} (peak x"
        f"{flood['peak'] / flood['before']:.2f}) |"
    )
    print(
        f"| RSS after 1,000 announcements of 1,000 metadata keys | {flood['after_big']:.0f} MB"
        f" (x{flood['after_big'] / flood['after_expiry']:.2f}) |"
    )
    print(f"| most fake instances held at once (sampled) | {flood['held']:,} |")
    print(f"| false mass-expiry alarm | {'yes' if flood['mass_expiry'] else 'no'} |")
    print(f"| announcement drops by reason | {flood['dropped']} |")
    print(f"| re-announcements after {args.discovers:,} discover messages | {reannounces} |")
    print(
        f"| `ls` p50 / p99, quiet, {args.fleet:,} instances (ms) | {p(quiet, 0.5):.1f} / "
        f"{p(quiet, 0.99):.1f} ({queries['quiet_failed']} of {args.asks} failed) |"
    )
    print(
        f"| `ls` p50 / p99, {args.rate:g} `list`/s flood (ms) | {p(loaded, 0.5):.1f} / "
        f"{p(loaded, 0.99):.1f} ({queries['loaded_failed']} of {args.asks} failed) |"
    )
    print(f"| p99 ratio, flood / quiet | x{p(loaded, 0.99) / p(quiet, 0.99):.2f} |")
    print(
        f"| median ratio, flood / quiet | "
        f"x{statistics.median(loaded or [math.nan]) / statistics.median(quiet):.2f} |"
    )
    print(f"| query drops during the flood | {queries['dropped']} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fakes", type=int, default=100_000)
    parser.add_argument("--discovers", type=int, default=50_000)
    parser.add_argument("--fleet", type=int, default=50_000)
    parser.add_argument("--asks", type=int, default=50, help="ls questions per phase")
    parser.add_argument("--rate", type=float, default=30.0, help="list queries per second")
    parser.add_argument("--registry-log", metavar="FILE", help="the registry's stderr")
    args = parser.parse_args()
    if min(args.fakes, args.discovers, args.fleet, args.asks) < 1 or args.rate <= 0:
        raise SystemExit("flood: counts must be at least 1 and the rate above 0")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main(args))
