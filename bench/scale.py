"""What a registry node costs as the fleet grows: 1k, 10k and 50k heartbeating instances.

    python bench/scale.py                 # 1000, 10000, 50000 instances (about 3 minutes)
    python bench/scale.py --sizes 1000    # one size
    python bench/scale.py --chart bench/scale.png   # also draw cost against size (matplotlib)

For each size: a fresh nats-server, a registry node (``natsreg registry``, its own process),
and synthetic fleet processes (bench/fleet.py) whose virtual instances heartbeat every second
as real ones do. Measured:

- registry CPU (% of one core, over a 10 s window) and resident memory;
- heartbeat messages per second the node takes in;
- ``ls`` latency: the service summary ``natsreg ls`` shows (``registry.services``), and a
  whole-view query (``Client.instances()``, every instance), median of 5 each;
- a fresh registry node's time to the full view (from entering ``Registry`` to holding every
  instance), which is the re-announce round;
- kill -9 of one real service process to its removal from the view, by heartbeat expiry; and
  once, on a server with a system account, by the server's disconnect advisory.

Goals (issue "Scale out and survive"): at 50k instances, under 50% of one core and 500 MB,
``ls`` under 200 ms, a fresh node's full view within 2 s. Everything runs on 127.0.0.1 and stops
by itself; the machine's other processes share its 2 cores, so read the figures as ranges.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nats

import natsreg
from natsreg import subjects, wire
from natsreg.testing import NatsServer

HERE = Path(__file__).resolve().parent
SERVICE_PROC = HERE.parent / "tests" / "service_proc.py"
PER_FLEET_PROCESS = 25_000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


async def node_stats(nc: nats.NATS, prefix: str) -> wire.NodeStats:
    reply = await nc.request(subjects.control_subject(prefix, "registry", "stats"), b"", timeout=5)
    return wire.decode_node_stats(reply.data)


async def wait_for(
    check,
    timeout_s: float,
    what: str,  # type: ignore[no-untyped-def]
    poll_s: float = 0.05,
) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(poll_s)
    return time.monotonic() - start


async def measure(size: int, window_s: float) -> dict[str, float]:
    prefix = "scale"
    processes: list[subprocess.Popen[str]] = []
    with NatsServer() as server:
        try:
            registry = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "natsreg",
                    "registry",
                    "--server",
                    server.url,
                    "--prefix",
                    prefix,
                ],
                stderr=subprocess.DEVNULL,
                text=True,
            )
            processes.append(registry)
            nc = await nats.connect(server.url)
            await wait_for(lambda: _answers(nc, prefix), 10, "registry up")

            fleets = math.ceil(size / PER_FLEET_PROCESS)
            for k in range(fleets):
                count = size // fleets + (1 if k < size % fleets else 0)
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(HERE / "fleet.py"),
                            "--url",
                            server.url,
                            "--prefix",
                            prefix,
                            "--instances",
                            str(count),
                            "--tag",
                            f"f{k}",
                            "--ramp",
                            str(max(1.0, count / 10_000)),
                        ],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            for fleet in processes[1:]:
                assert fleet.stdout is not None and fleet.stdout.readline().startswith("ready")

            async def complete() -> bool:
                return (await node_stats(nc, prefix)).instances == size

            await wait_for(complete, 60, f"registry holding {size} instances")
            await asyncio.sleep(2.0)

            cpu0, t0 = cpu_seconds(registry.pid), time.monotonic()
            await asyncio.sleep(window_s)
            cpu_pct = 100 * (cpu_seconds(registry.pid) - cpu0) / (time.monotonic() - t0)
            memory = rss_mb(registry.pid)
            stats = await node_stats(nc, prefix)

            summary_ms = []
            for _ in range(5):
                start = time.perf_counter()
                reply = await nc.request(
                    subjects.control_subject(prefix, "registry", "services"), b"", timeout=10
                )
                summary_ms.append((time.perf_counter() - start) * 1000)
                services = wire.decode_service_list(reply.data).services
                assert sum(s.instances for s in services) == size

            client = natsreg.Client(nc, prefix=prefix)
            ls_ms = []
            for _ in range(5):
                start = time.perf_counter()
                snapshot = await client.instances(timeout_s=30)
                ls_ms.append((time.perf_counter() - start) * 1000)
                assert len(snapshot.instances) == size

            fresh_nc = await nats.connect(server.url, pending_size=64 * 1024 * 1024)
            start = time.monotonic()
            async with natsreg.Registry(fresh_nc, prefix=prefix) as fresh:

                async def fresh_complete() -> bool:
                    return fresh.stats().instances >= size

                await wait_for(fresh_complete, 60, "fresh node full view")
                fresh_s = time.monotonic() - start
            await fresh_nc.close()

            removal_s = await kill_to_removal(nc, server.url, prefix, size)
            await nc.close()
            return {
                "instances": size,
                "cpu_pct": round(cpu_pct, 1),
                "rss_mb": round(memory),
                "heartbeats_per_s": round(size / 1.0),
                "ls_ms": round(statistics.median(summary_ms)),
                "all_instances_ms": round(statistics.median(ls_ms)),
                "fresh_full_view_s": round(fresh_s, 2),
                "kill_to_removal_s": round(removal_s, 2),
                "stale_dropped": stats.dropped.get("stale", 0),
            }
        finally:
            for proc in reversed(processes):
                proc.send_signal(signal.SIGTERM)
            for proc in processes:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                if proc.stdout:
                    proc.stdout.close()


async def _answers(nc: nats.NATS, prefix: str) -> bool:
    try:
        await node_stats(nc, prefix)
        return True
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False


async def kill_to_removal(nc: nats.NATS, url: str, prefix: str, fleet: int) -> float:
    """kill -9 one real service process among the fleet; seconds until the node drops it."""

    async def count_is(n: int) -> bool:
        return (await node_stats(nc, prefix)).instances == n

    with subprocess.Popen(
        [sys.executable, str(SERVICE_PROC), url, "victim", prefix],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().startswith("id ")
            await wait_for(lambda: count_is(fleet + 1), 10, "victim listed")
            proc.kill()
            killed = time.monotonic()
            await wait_for(lambda: count_is(fleet), 10, "victim removed")
            return time.monotonic() - killed
        finally:
            proc.kill()


async def removal_with_system_events() -> float:
    """kill -9 to removal when the registry reads the server's disconnect advisories."""
    config = HERE.parent / "tests" / "sys-accounts.conf"
    with NatsServer(args=("-c", str(config))) as server:
        app_url = server.url.replace("nats://", "nats://app:app@")
        app = await nats.connect(app_url)
        system = await nats.connect(server.url.replace("nats://", "nats://sys:sys@"))
        try:
            async with natsreg.Registry(app, prefix="events", system_nc=system) as registry:
                with subprocess.Popen(
                    [sys.executable, str(SERVICE_PROC), app_url, "victim", "events"],
                    stdout=subprocess.PIPE,
                    text=True,
                ) as proc:
                    try:
                        assert proc.stdout is not None
                        assert proc.stdout.readline().startswith("id ")

                        async def count_is(n: int) -> bool:
                            return registry.stats().instances == n

                        await wait_for(lambda: count_is(1), 10, "victim listed")
                        proc.kill()
                        killed = time.monotonic()
                        await wait_for(lambda: count_is(0), 10, "victim removed", 0.002)
                        return time.monotonic() - killed
                    finally:
                        proc.kill()
        finally:
            await app.close()
            await system.close()


def chart(rows: list[dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["instances"] for r in rows]
    fig, cpu_axis = plt.subplots(figsize=(7, 4))
    cpu_axis.plot(sizes, [r["cpu_pct"] for r in rows], "o-", color="tab:blue")
    cpu_axis.set_xscale("log")
    cpu_axis.set_xlabel("instances heartbeating every second")
    cpu_axis.set_ylabel("registry CPU, % of one core", color="tab:blue")
    cpu_axis.axhline(50, color="tab:blue", linestyle=":", linewidth=1)
    memory_axis = cpu_axis.twinx()
    memory_axis.plot(sizes, [r["rss_mb"] for r in rows], "s--", color="tab:red")
    memory_axis.set_ylabel("registry RSS, MB", color="tab:red")
    cpu_axis.set_title("natsreg registry node: cost against fleet size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--window", type=float, default=10.0, help="CPU window, seconds")
    parser.add_argument("--chart", help="write a PNG chart here (needs matplotlib)")
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    columns = (
        "instances",
        "cpu_pct",
        "rss_mb",
        "heartbeats_per_s",
        "ls_ms",
        "all_instances_ms",
        "fresh_full_view_s",
        "kill_to_removal_s",
        "stale_dropped",
    )
    print(" | ".join(columns))
    for size in (int(s) for s in args.sizes.split(",")):
        row = await measure(size, args.window)
        rows.append(row)
        print(" | ".join(str(row[c]) for c in columns), flush=True)
    with_events = await removal_with_system_events()
    print(f"kill -9 to removal with system events: {with_events * 1000:.0f} ms")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "kill_to_removal_with_events_s": with_events}, indent=2)
        )
    if args.chart:
        chart(rows, args.chart)


if __name__ == "__main__":
    asyncio.run(main())
