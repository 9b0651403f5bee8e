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
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
from scale import stop, wait_for  # bench/scale.py: SIGTERM then SIGKILL; a polled wait

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


async def node_stats(nc: nats.NATS) -> wire.NodeStats | None:
    # <prefix>.nodes: answered by the one node whether it is warm or not.
    try:
        reply = await nc.request(subjects.control_subject(PREFIX, "nodes"), timeout=5)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return None  # too busy taking the fleet in: ask again
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


async def node_cpu(
    registry: subprocess.Popen[str], nc: nats.NATS, size: int, pace_s: float, window_s: float
) -> tuple[float, int, bool]:
    """% of one core the node uses under the fleet once the fleet keeps its pace, how many
    instances it held, and whether it was warm (an overloaded node sheds heartbeats and may
    never hold them all: then the window starts after 60 s all the same)."""
    held, warm = 0, False

    async def complete() -> bool:
        nonlocal held, warm
        stats = await node_stats(nc)
        if stats is not None:
            held, warm = stats.instances, not stats.warming_up
        return held >= size and warm

    with contextlib.suppress(TimeoutError):
        await wait_for(complete, 60, f"the node holding {size} instances", poll_s=0.1)
    # One round at the old interval declares the new one; a round more to be sure.
    await asyncio.sleep(2 * max(pace_s, 1.0) + 1.0)
    cpu0, t0 = cpu_seconds(registry.pid), time.monotonic()
    await asyncio.sleep(window_s)
    cpu = 100 * (cpu_seconds(registry.pid) - cpu0) / (time.monotonic() - t0)
    await complete()
    return cpu, held, warm


def start_victim(url: str) -> tuple[subprocess.Popen[str], str]:
    service = subprocess.Popen(
        [sys.executable, str(SERVICE_PROC), as_user(url, "app"), "victim", PREFIX],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert service.stdout is not None
    return service, service.stdout.readline().split()[1]


async def removal_ms(
    nc: nats.NATS, victim: subprocess.Popen[str], victim_id: str, pace_s: float
) -> float:
    """kill -9 of a real service process keeping the slow pace, to the node's ``down``."""
    beats = await nc.subscribe(subjects.control_subject(PREFIX, "hb", "victim", victim_id))
    events = await nc.subscribe(subjects.control_subject(PREFIX, "events", "victim"))
    deadline = time.monotonic() + 60
    while wire.decode_control((await beats.next_msg(timeout=60)).data).pace_s != pace_s:
        assert time.monotonic() < deadline, "the victim never kept the slow pace"
    victim.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    while True:
        event = wire.decode_event((await events.next_msg(timeout=30)).data)
        if event.kind == "down" and event.instance.id == victim_id:
            return (time.monotonic() - killed) * 1000


async def run(sizes: list[int], pace_s: float, window_s: float) -> None:
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print("| instances | node | CPU (% of one core) | instances held | warm |")
    print("|---|---|---|---|---|")
    for size in sizes:
        with NatsServer(args=("-c", str(ACCOUNTS))) as server:
            fleets = start_fleets(server.url, size)
            nc = await nats.connect(as_user(server.url, "app"))
            # Started before the paced node, so that its first lease reaches it.
            victim, victim_id = start_victim(server.url)
            try:
                figures = []
                for pace in (0.0, pace_s):
                    registry = start_registry(server.url, pace)
                    try:
                        cpu, held, warm = await node_cpu(registry, nc, size, pace, window_s)
                        name = f"--pace {pace:g}" + (" (1 s heartbeats)" if not pace else "")
                        row = (
                            f"| {size} | {name} | {cpu:.1f}% | {held} | {'yes' if warm else 'no'} |"
                        )
                        print(row, flush=True)
                        figures.append(cpu)
                        if pace:
                            removal = await removal_ms(nc, victim, victim_id, pace)
                    finally:
                        stop([registry])
            finally:
                await nc.close()
                stop([victim, *fleets])
        print(
            f"{size} instances: CPU ratio {figures[0] / figures[1]:.1f}×; kill -9 of a paced "
            f"instance to its removal (disconnect advisory): {removal:.0f} ms",
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
