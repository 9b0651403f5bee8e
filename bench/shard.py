"""What sharding saves a registry node: one unsharded node against 4 sharded ones, same fleet,
same run.

    python bench/shard.py                          # 10,000 instances of 100 services
    python bench/shard.py --instances 20000 --window 10

A fresh nats-server and a synthetic fleet (bench/fleet.py: virtual instances that announce,
heartbeat every second and re-announce when asked). First one ``natsreg registry`` (the
baseline), then, on another prefix of the same server, four ``natsreg registry --shard``; each
node's CPU is its own process' (from /proc) over the window. Also: the instances each node
holds, and ``ls`` (``registry.services``: gathered across the sharded nodes) and a whole
listing, median of 5. The fleet, the server and the benchmark share the machine's cores: read
the ratio, measured in one run, rather than the percentages.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nats

import natsreg
from natsreg import wire
from natsreg.testing import NatsServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import HERE, cpu_seconds, stop, wait_for

NODES = 4


async def nodes(nc: nats.NATS, prefix: str) -> list[wire.NodeStats]:
    return await natsreg.client.RegistryApi(nc, prefix=prefix).nodes(wait_s=0.5)


async def run(url: str, prefix: str, size: int, services: int, window_s: float, *, shard: bool):
    """Start the nodes and the fleet on ``prefix``; measure; stop them."""
    processes: list[subprocess.Popen[str]] = []
    count = NODES if shard else 1
    command = [sys.executable, "-m", "natsreg", "registry", "--server", url, "--prefix", prefix]
    try:
        registries = [
            subprocess.Popen(command + (["--shard"] if shard else []), stderr=subprocess.DEVNULL)
            for _ in range(count)
        ]
        processes += registries
        nc = await nats.connect(url)

        async def up() -> bool:
            found = await nodes(nc, prefix)
            return len(found) == count and not any(n.warming_up for n in found)

        await wait_for(up, 30, f"{count} registry nodes up")
        fleet = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "fleet.py"),
                *("--url", url, "--prefix", prefix, "--instances", str(size)),
                *("--services", str(services), "--tag", prefix, "--ramp", str(size / 10_000)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(fleet)
        assert fleet.stdout is not None and fleet.stdout.readline().startswith("ready")
        api = natsreg.client.RegistryApi(nc, prefix=prefix)

        async def complete() -> bool:
            try:
                listed = await api.services(timeout_s=5)
            except natsreg.RequestError:
                return False
            return sum(s.instances for s in listed.services) == size and not listed.unanswered

        await wait_for(complete, 60, f"every instance listed on {prefix}")
        await asyncio.sleep(2.0)
        cpu0, t0 = [cpu_seconds(p.pid) for p in registries], time.monotonic()
        await asyncio.sleep(window_s)
        elapsed = time.monotonic() - t0
        cpu = [
            100 * (cpu_seconds(p.pid) - c) / elapsed for p, c in zip(registries, cpu0, strict=True)
        ]
        held = sorted(n.instances for n in await nodes(nc, prefix))
        ls_ms, all_ms = [], []
        for _ in range(5):
            start = time.perf_counter()
            listed = await api.services(timeout_s=10)
            ls_ms.append((time.perf_counter() - start) * 1000)
            assert sum(s.instances for s in listed.services) == size
            start = time.perf_counter()
            assert len((await api.instances(timeout_s=30)).instances) == size
            all_ms.append((time.perf_counter() - start) * 1000)
        await nc.close()
        return {
            "nodes": count,
            "cpu_pct": [round(c, 1) for c in cpu],
            "held": held,
            "ls_ms": round(statistics.median(ls_ms)),
            "all_ms": round(statistics.median(all_ms)),
        }
    finally:
        stop(processes)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--window", type=float, default=5.0, help="CPU window, seconds")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    with NatsServer() as server:
        rows = [
            await run(server.url, p, args.instances, args.services, args.window, shard=s)
            for p, s in (("one", False), ("sharded", True))
        ]
    for row in rows:
        print(row)
    baseline = rows[0]["cpu_pct"][0]
    per_node = statistics.mean(rows[1]["cpu_pct"])
    print(
        f"{args.instances} instances: one node {baseline:.1f}% of a core; "
        f"{NODES} sharded nodes {per_node:.1f}% each (ratio {per_node / baseline:.2f}); "
        f"load average after: {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
