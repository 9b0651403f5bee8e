"""What sharding costs and saves: one registry node against sharded ones, same fleet, same run.

    python bench/shard.py                                  # 10,000 instances, 4 nodes, baseline
    python bench/shard.py --instances 250000 --no-baseline # the issue's 250k, 4 sharded nodes
    python bench/shard.py --instances 2000 --heartbeat-s 1 --no-system-events

A fresh nats-server (with a system account, so that nodes read disconnect advisories and let
the fleet heartbeat at their 10 s pace), the fleet simulator (bench/fleet.py, processes of up
to 125,000 virtual instances of 100 services), and first one ``natsreg registry``
(the baseline), then ``--nodes`` ``natsreg registry --shard`` on another prefix. For each:
how long until every instance is listed (``registry.services``, gathered across the sharded
nodes, none unanswered); each node's CPU over ``--window`` (its own process, from /proc) and
the instances it holds; ``ls`` (``registry.services``, median of 5) and a whole listing
(median of 3); kill -9 of one real service process to its removal from the answers (by the
disconnect advisory); messages dropped, and connections lost (from each node's log). Every
wait is bounded; what is not reached in time is reported as such. The load average before and
after is printed: read the ratio, measured in one run, rather than the percentages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import nats

import natsreg
from natsreg import wire

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import (
    SERVICE_PROC,
    app_url,
    cpu_seconds,
    max_instances,
    monitored_server,
    start_fleets,
    stop,
    wait_for,
)

NODES = 4


async def nodes(nc: nats.NATS, prefix: str) -> list[wire.NodeStats]:
    return await natsreg.client.RegistryApi(nc, prefix=prefix).nodes(wait_s=0.5)


async def median_ms(times: int, call: Any) -> float:
    taken = []
    for _ in range(times):
        start = time.perf_counter()
        await call()
        taken.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(taken), 1)


async def kill_to_removal_s(api: natsreg.client.RegistryApi, url: str, prefix: str) -> float:
    """kill -9 one real service process; seconds until the registry answers without it."""

    async def listed(present: bool) -> bool:
        try:
            found = (await api.instances("victim", timeout_s=2)).instances
        except natsreg.RequestError:
            return not present
        return bool(found) == present

    command = [sys.executable, str(SERVICE_PROC), url, "victim", prefix]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().startswith("id ")
            await wait_for(lambda: listed(True), 15, "victim listed")
            proc.kill()
            killed = time.monotonic()
            await wait_for(lambda: listed(False), 15, "victim removed", 0.002)
            return round(time.monotonic() - killed, 3)
        finally:
            proc.kill()


async def run(server: Any, args: argparse.Namespace, prefix: str, count: int) -> dict[str, Any]:
    """``count`` nodes under the fleet on ``prefix`` (sharded on the ``sharded`` prefix)."""
    sharded = prefix == "sharded"
    url = app_url(server, args.system_events)
    command = [sys.executable, "-m", "natsreg", "registry", "--server", url, "--prefix", prefix]
    command += ["--max-instances", str(max_instances(args.instances))]
    if args.system_events:
        command += ["--system-server", server.url.replace("nats://", "nats://sys:sys@")]
    command += ["--shard"] if sharded else []
    command += ["--pace", str(args.pace)] if args.pace is not None else []
    processes: list[subprocess.Popen[str]] = []
    row: dict[str, Any] = {"nodes": count, "sharded": sharded}
    with contextlib.ExitStack() as files:
        logs = [files.enter_context(tempfile.TemporaryFile("w+")) for _ in range(count)]
        await measure(server, args, prefix, command, logs, processes, row)
    return row


async def measure(
    server: Any,
    args: argparse.Namespace,
    prefix: str,
    command: list[str],
    logs: list[IO[str]],
    processes: list[subprocess.Popen[str]],
    row: dict[str, Any],
) -> None:
    count, url = len(logs), app_url(server, args.system_events)
    try:
        registries = [subprocess.Popen(command, stderr=log, text=True) for log in logs]
        processes += registries
        nc = await nats.connect(url)
        api = natsreg.client.RegistryApi(nc, prefix=prefix)

        async def up() -> bool:
            found = await nodes(nc, prefix)
            return len(found) == count and not any(n.warming_up for n in found)

        await wait_for(up, 60, f"{count} registry nodes up")
        started = time.monotonic()
        await start_fleets(
            url, prefix, args.instances, args.heartbeat_s, processes, ramp_s=args.ramp_s
        )

        shown = [time.monotonic()]

        async def complete() -> bool:
            try:
                listed = await api.services(timeout_s=5)
            except natsreg.RequestError:
                return False
            row["listed"] = sum(s.instances for s in listed.services)
            if time.monotonic() - shown[0] >= 10:
                shown[0] = time.monotonic()
                print(f"  {prefix}: {row['listed']} of {args.instances} listed", flush=True)
            return row["listed"] == args.instances and not listed.unanswered

        bound_s = 60 + args.instances / 2_000
        try:
            await wait_for(complete, bound_s, "every instance listed", poll_s=0.5)
            row["listed_all_s"] = round(time.monotonic() - started, 1)
        except TimeoutError:
            row["listed_all_s"] = f"not within {bound_s:.0f} s"
        await asyncio.sleep(2.0)
        cpu0, t0 = [cpu_seconds(p.pid) for p in registries], time.monotonic()
        await asyncio.sleep(args.window)
        elapsed = time.monotonic() - t0
        row["cpu_pct"] = [
            round(100 * (cpu_seconds(p.pid) - c) / elapsed, 1)
            for p, c in zip(registries, cpu0, strict=True)
        ]
        stats = await nodes(nc, prefix)
        row["held"] = sorted(n.instances for n in stats)
        row["dropped"] = sum(sum(n.dropped.values()) for n in stats)
        measures: dict[str, Any] = {
            "ls_ms": lambda: median_ms(5, lambda: api.services(timeout_s=10)),
            "all_ms": lambda: median_ms(3, lambda: api.instances(timeout_s=30)),
        }
        if args.system_events:
            measures["kill_to_removal_s"] = lambda: kill_to_removal_s(api, url, prefix)
        for key, measure_it in measures.items():
            try:
                row[key] = await measure_it()
            except (natsreg.RequestError, TimeoutError) as exc:
                row[key] = f"failed: {exc}"
        await nc.close()
    finally:
        stop(processes)
        lost = 0
        for log in logs:
            log.seek(0)
            lost += log.read().count("NATS: Connection lost")
        row["connections_lost"] = lost


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=NODES, help="sharded nodes")
    parser.add_argument("--window", type=float, default=10.0, help="CPU window, seconds")
    parser.add_argument("--heartbeat-s", type=float, default=10.0, help="the fleet's own interval")
    parser.add_argument(
        "--system-events",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="nodes read disconnect advisories (and allow the 10 s pace)",
    )
    parser.add_argument(
        "--pace",
        type=float,
        help="the interval the nodes let the fleet keep (natsreg registry --pace; default 10 s)",
    )
    parser.add_argument(
        "--ramp-s",
        type=float,
        help="seconds each simulator takes to announce its instances (default: 1 per 10,000)",
    )
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure one unsharded node first",
    )
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    server, _ = monitored_server(args.system_events)
    rows = []
    with server:
        plan = ([("one", 1)] if args.baseline else []) + [("sharded", args.nodes)]
        for prefix, count in plan:
            rows.append(await run(server, args, prefix, count))
            print(rows[-1], flush=True)
    if args.baseline:
        baseline = rows[0]["cpu_pct"][0]
        per_node = statistics.mean(rows[1]["cpu_pct"])
        print(
            f"{args.instances} instances: one node {baseline:.1f}% of a core; {args.nodes} "
            f"sharded nodes {per_node:.1f}% each (ratio {per_node / baseline:.2f})"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
