"""What paced heartbeats save a registry node: its CPU under a fleet heartbeating every second,
against the same fleet at the pace a node reading system events allows (docs/protocol.md,
"Paced heartbeats"), in the same run; and kill -9 to removal through the disconnect advisory
with the fleet paced.

    python bench/pace.py                          # 10000 instances, pace 10 s (about 2 minutes)
    python bench/pace.py --sizes 10000 50000 --pace 10 --window 20

For each size: a fresh nats-server with a system account, synthetic fleet processes
(bench/fleet.py, which obey the pace as real instances do), then a registry node process
(``natsreg registry --system-server ...``) with ``--pace 0`` (the baseline: every instance
keeps its 1 s) and, after it, one with ``--pace N``. CPU is the node's, over ``--window``
seconds once the fleet keeps the pace. Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats

from natsreg import subjects, wire
from natsreg.testing import NatsServer

HERE = Path(__file__).resolve().parent
ACCOUNTS = HERE.parent / "tests" / "sys-accounts.conf"
SERVICE_PROC = HERE.parent / "tests" / "service_proc.py"
PER_FLEET_PROCESS = 25_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PREFIX = "pace"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def as_user(url: str, user: str) -> str:
    return url.replace("nats://", f"nats://{user}:{user}@")


async def until(check, timeout_s: float, what: str, poll_s: float = 0.1) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(poll_s)
    return time.monotonic() - start


async def node_stats(nc: nats.NATS) -> wire.NodeStats | None:
    try:
        reply = await nc.request(subjects.control_subject(PREFIX, "registry", "stats"), timeout=5)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return None  # busy taking the fleet in, or warming up: ask again
    return wire.decode_node_stats(reply.data)


def start_registry(url: str, pace_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "natsreg", "registry", "--prefix", PREFIX),
            *("--server", as_user(url, "app"), "--system-server", as_user(url, "sys")),
            *("--pace", str(pace_s)),
        ],
        stderr=subprocess.DEVNULL,
        text=True,
    )


def start_fleets(url: str, size: int) -> list[subprocess.Popen[str]]:
    fleets = math.ceil(size / PER_FLEET_PROCESS)
    procs = []
    for k in range(fleets):
        count = size // fleets + (1 if k < size % fleets else 0)
        procs.append(
            subprocess.Popen(
                [
                    *(sys.executable, str(HERE / "fleet.py"), "--url", as_user(url, "app")),
                    *("--prefix", PREFIX, "--instances", str(count), "--tag", f"f{k}"),
                    *("--ramp", str(max(1.0, count / 10_000))),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
    return procs


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.stdout:
            proc.stdout.close()


async def node_cpu(url: str, nc: nats.NATS, size: int, pace_s: float, window_s: float) -> float:
    """% of one core a node with ``--pace pace_s`` uses under the fleet, once it holds every
    instance and the fleet keeps its pace."""
    registry = start_registry(url, pace_s)
    try:

        async def complete() -> bool:
            stats = await node_stats(nc)
            return stats is not None and stats.instances == size and not stats.warming_up

        await until(complete, 120, f"the node holding {size} instances")
        # One round at the old interval declares the new one; a round more to be sure.
        await asyncio.sleep(2 * max(pace_s, 1.0) + 1.0)
        cpu0, t0 = cpu_seconds(registry.pid), time.monotonic()
        await asyncio.sleep(window_s)
        return 100 * (cpu_seconds(registry.pid) - cpu0) / (time.monotonic() - t0)
    finally:
        stop([registry])


async def removal_ms(url: str, nc: nats.NATS, pace_s: float) -> tuple[float, float]:
    """kill -9 of a real service process, with the fleet paced: (its pace, ms to removal)."""
    service = subprocess.Popen(
        [sys.executable, str(SERVICE_PROC), as_user(url, "app"), "victim", PREFIX],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert service.stdout is not None
    instance_id = service.stdout.readline().split()[1]
    # Started after the victim, so that the node's first lease reaches it.
    registry = start_registry(url, pace_s)
    try:
        subject = subjects.control_subject(PREFIX, "registry", "instance", instance_id)

        async def paced() -> bool:
            try:
                reply = await nc.request(subject, timeout=2)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                return False
            found = wire.decode_snapshot(reply.data).instances
            return bool(found) and found[0].pace_s == pace_s

        await until(paced, 60, "the victim at the slow pace")
        service.send_signal(signal.SIGKILL)
        killed = time.monotonic()

        async def gone() -> bool:
            reply = await nc.request(subject, timeout=2)
            return not wire.decode_snapshot(reply.data).instances

        await until(gone, 30, "the victim removed", poll_s=0.002)
        return pace_s, (time.monotonic() - killed) * 1000
    finally:
        stop([service, registry])


async def run(sizes: list[int], pace_s: float, window_s: float) -> None:
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| instances | node CPU, 1 s heartbeats | node CPU, paced | ratio | kill -9 → removal |")
    print("|---|---|---|---|---|")
    for size in sizes:
        with NatsServer(args=("-c", str(ACCOUNTS))) as server:
            fleets = start_fleets(server.url, size)
            nc = await nats.connect(as_user(server.url, "app"))
            try:
                base = await node_cpu(server.url, nc, size, 0.0, window_s)
                paced = await node_cpu(server.url, nc, size, pace_s, window_s)
                _, removal = await removal_ms(server.url, nc, pace_s)
            finally:
                await nc.close()
                stop(fleets)
        print(
            f"| {size} | {base:.1f}% | {paced:.1f}% (pace {pace_s:g} s) | "
            f"{base / paced:.1f}× | {removal:.0f} ms |",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--pace", type=float, default=10.0, help="seconds")
    parser.add_argument("--window", type=float, default=15.0, help="seconds of CPU measured")
    args = parser.parse_args()
    asyncio.run(run(args.sizes, args.pace, args.window))
