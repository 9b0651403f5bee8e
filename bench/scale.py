"""What a registry node costs as the fleet grows: 1k, 10k and 50k heartbeating instances.

    python bench/scale.py                 # 1000, 10000, 50000 instances (about 3 minutes)
    python bench/scale.py --sizes 1000    # one size
    python bench/scale.py --chart bench/scale.png   # also draw cost against size (matplotlib)
    python bench/scale.py --sizes 50000 --profile bench/profile   # and where the node's CPU goes
    python bench/scale.py --watch 50000   # a node under 50k instances, second by second, 30 s

For each size: a fresh nats-server, a registry node (``natsreg registry``, its own process),
and synthetic fleet processes (bench/fleet.py) whose virtual instances heartbeat every second
as real ones do. Measured:

- registry CPU (% of one core, over a 10 s window) and resident memory;
- heartbeat messages per second the node takes in, and its CPU time per heartbeat;
- ``ls`` latency: the service summary ``natsreg ls`` shows (``registry.services``), and a
  whole-view query (``Client.instances()``, every instance), median of 5 each;
- a fresh registry node's time to the full view (from entering ``Registry`` to holding every
  instance): taken from the warm node (``<prefix>.sync``), and, as the baseline in the same
  run, by the re-announce round (``Registry(sync=False)``);
- kill -9 of one real service process to its removal from the view, by heartbeat expiry; and
  once, on a server with a system account, by the server's disconnect advisory;
- messages the node dropped because its queues were full (``slow_consumer``), and how often it
  lost its NATS connection (from its log).

With ``--profile DIR``, py-spy (the ``bench`` extra) then samples the registry process for
another window and writes ``DIR/registry-<size>.txt`` (collapsed stacks, for flame graph
tools) and prints the functions where it spent its time.

Goals: at 50k instances, a fresh node's full view within 1 s; earlier ones: under
50% of one core and 500 MB, ``ls`` under 200 ms. Everything runs on 127.0.0.1 and stops
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
import tempfile
import time
from pathlib import Path
from typing import IO

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


async def fresh_node_s(url: str, prefix: str, size: int, *, sync: bool) -> tuple[float, float]:
    """A new registry node's seconds to hold every instance, and to be warm."""
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    try:
        start = time.monotonic()
        async with natsreg.Registry(nc, prefix=prefix, sync=sync) as fresh:

            async def complete() -> bool:
                return fresh.stats().instances >= size

            await wait_for(complete, 60, "fresh node full view", poll_s=0.005)
            full_s = time.monotonic() - start

            async def warm() -> bool:
                return not fresh.warming_up

            await wait_for(warm, 60, "fresh node warm", poll_s=0.005)
            warm_s = time.monotonic() - start
        return full_s, warm_s
    finally:
        await nc.close()


def profile(pid: int, window_s: float, path: Path) -> None:
    """Sample ``pid`` with py-spy for ``window_s``; collapsed stacks to ``path``; print the
    functions that held the CPU, by own time and with what they call."""
    path.parent.mkdir(parents=True, exist_ok=True)
    beside = Path(sys.executable).with_name("py-spy")  # installed in this venv
    subprocess.run(
        [
            str(beside) if beside.exists() else "py-spy",
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(round(window_s)),
            "--rate",
            "250",
            "--format",
            "raw",
            "--nonblocking",
            "--function",
            "--output",
            str(path),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    own: dict[str, int] = {}
    within: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        frames = stack.split(";")
        total += samples
        own[frames[-1]] = own.get(frames[-1], 0) + samples
        for frame in set(frames):
            within[frame] = within.get(frame, 0) + samples
    print(f"py-spy, {total} samples of the registry process ({path}):")
    print("  own time:")
    for frame, samples in sorted(own.items(), key=lambda kv: -kv[1])[:15]:
        print(f"    {100 * samples / total:5.1f}%  {frame}")
    print("  with callees:")
    for frame, samples in sorted(within.items(), key=lambda kv: -kv[1])[:25]:
        print(f"    {100 * samples / total:5.1f}%  {frame}")


async def start_fleet(
    url: str, prefix: str, size: int, log: IO[str], processes: list[subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    """A registry node (its log to ``log``), then ``size`` instances announced; every process
    appended to ``processes``. Returns the node's process."""
    registry = subprocess.Popen(
        [sys.executable, "-m", "natsreg", "registry", "--server", url, "--prefix", prefix],
        stderr=log,
        text=True,
    )
    processes.append(registry)
    nc = await nats.connect(url)
    try:
        await wait_for(lambda: _answers(nc, prefix), 10, "registry up")
    finally:
        await nc.close()
    fleets = math.ceil(size / PER_FLEET_PROCESS)
    for k in range(fleets):
        count = size // fleets + (1 if k < size % fleets else 0)
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "fleet.py"),
                    "--url",
                    url,
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
    for fleet in processes[-fleets:]:
        assert fleet.stdout is not None and fleet.stdout.readline().startswith("ready")
    return registry


async def watch(size: int, seconds: float) -> None:
    """Once a second for ``seconds``: what the node under a fleet of ``size`` holds, how long
    it takes to answer, what it dropped, and how often it lost its connection."""
    prefix = "scale"
    processes: list[subprocess.Popen[str]] = []
    with NatsServer() as server, tempfile.TemporaryFile("w+") as registry_log:
        try:
            await start_fleet(server.url, prefix, size, registry_log, processes)
            nc = await nats.connect(server.url)
            warming = subjects.control_subject(prefix, "warming", "stats")
            print("second | answered in s | instances | slow_consumer dropped | connection lost")
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                asked = time.monotonic()
                try:
                    reply = await nc.request(warming, b"", timeout=5)
                    stats = wire.decode_node_stats(reply.data)
                    answer = f"{time.monotonic() - asked:.3f} | {stats.instances}"
                    answer += f" | {stats.dropped.get('slow_consumer', 0)}"
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
                    answer = f"{type(exc).__name__} | - | -"
                registry_log.seek(0)
                lost = registry_log.read().count("NATS: Connection lost")
                print(f"{asked - start:.0f} | {answer} | {lost}", flush=True)
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - asked)))
            await nc.close()
        finally:
            stop(processes)


def stop(processes: list[subprocess.Popen[str]]) -> None:
    for proc in reversed(processes):
        proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.stdout:
            proc.stdout.close()


async def measure(size: int, window_s: float, profile_dir: str | None) -> dict[str, float]:
    prefix = "scale"
    processes: list[subprocess.Popen[str]] = []
    with NatsServer() as server, tempfile.TemporaryFile("w+") as registry_log:
        try:
            registry = await start_fleet(server.url, prefix, size, registry_log, processes)
            nc = await nats.connect(server.url)

            async def complete() -> bool:
                try:
                    return (await node_stats(nc, prefix)).instances == size
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    return False  # busy taking in the fleet, or warming again: ask again

            await wait_for(complete, 120, f"registry holding {size} instances")
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

            # From the warm node, then by re-announce (the baseline), then from the warm node
            # again: the median of the two sync runs against the one round in between.
            synced = [await fresh_node_s(server.url, prefix, size, sync=True)]
            reannounced = await fresh_node_s(server.url, prefix, size, sync=False)
            await asyncio.sleep(2.0)  # the fleet's re-announce round, out of the next run's way
            synced.append(await fresh_node_s(server.url, prefix, size, sync=True))
            fresh_s = statistics.median(s[0] for s in synced)
            warm_s = statistics.median(s[1] for s in synced)

            if profile_dir:
                profile(registry.pid, window_s, Path(profile_dir) / f"registry-{size}.txt")

            try:
                removal_s = await kill_to_removal(nc, server.url, prefix, size)
            except TimeoutError:  # a node that sheds heartbeats expires nothing meanwhile
                removal_s = math.nan
            registry_log.seek(0)
            lost = registry_log.read().count("NATS: Connection lost")
            await nc.close()
            return {
                "instances": size,
                "cpu_pct": round(cpu_pct, 1),
                "rss_mb": round(memory),
                "heartbeats_per_s": round(size / 1.0),
                "us_per_heartbeat": round(cpu_pct / 100 / size * 1e6, 1),
                "ls_ms": round(statistics.median(summary_ms)),
                "all_instances_ms": round(statistics.median(ls_ms)),
                "fresh_full_view_s": round(fresh_s, 3),
                "fresh_warm_s": round(warm_s, 3),
                "fresh_reannounce_s": round(reannounced[0], 3),
                "fresh_speedup": round(reannounced[0] / fresh_s, 1),
                "kill_to_removal_s": round(removal_s, 2),
                "stale_dropped": stats.dropped.get("stale", 0),
                "slow_consumer_dropped": stats.dropped.get("slow_consumer", 0),
                "connection_lost": lost,
            }
        finally:
            stop(processes)


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
    parser.add_argument("--profile", help="sample the registry with py-spy; stacks to this folder")
    parser.add_argument(
        "--watch", type=int, metavar="N", help="only watch a node under N instances for 30 s"
    )
    args = parser.parse_args()
    if args.watch:
        await watch(args.watch, 30.0)
        return
    rows = []
    columns = (
        "instances",
        "cpu_pct",
        "rss_mb",
        "heartbeats_per_s",
        "us_per_heartbeat",
        "ls_ms",
        "all_instances_ms",
        "fresh_full_view_s",
        "fresh_warm_s",
        "fresh_reannounce_s",
        "fresh_speedup",
        "kill_to_removal_s",
        "stale_dropped",
        "slow_consumer_dropped",
        "connection_lost",
    )
    print(" | ".join(columns))
    for size in (int(s) for s in args.sizes.split(",")):
        row = await measure(size, args.window, args.profile)
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
