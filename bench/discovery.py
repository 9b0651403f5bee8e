"""Discovery: how soon a new instance is visible, and how soon a killed one is gone.

Two registry nodes run in subprocesses with default settings; an observer in this process
subscribes to ``<prefix>.events.>`` and times the events they publish.

- start to visible: from just before ``async with natsreg.announce(...)`` is entered until
  the ``up`` event of the new instance has come from every registry node. The service runs
  in this process on its own connection; each instance leaves (goodbye) before the next.
- kill -9 to removal: a service subprocess (default heartbeat, 1 s) is visible, then gets
  SIGKILL at a random point of its heartbeat interval, so it sends no goodbye; timed until
  the ``down`` event has come from every registry node.
- plain ADR-32 start to listed, and stop to gone: a nats-py ``nats.micro`` service (which
  does not heartbeat) is started in this process at a random point of the nodes' poll
  interval, timed from just before ``add_service`` until the ``up`` event of every node;
  then, 1-2 s later, ``stop()`` (ADR-32 has no goodbye), timed until every node's ``down``
  event.

Goals: start to visible p99 <= 50 ms; a killed instance leaves every registry view within
3 s with default settings; a plain ADR-32 service is listed within about a second (max
<= 1.5 s) and gone within its expiry (3 polls, 3 s, plus the sweep: max <= 3.2 s).

    python bench/discovery.py            # 50 starts, 10 kills, 10 plain (about 2 minutes)
    python bench/discovery.py --quick    # 10 starts, 3 kills, 3 plain
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import nats
from nats.micro import add_service
from nats.micro.request import Request as MicroRequest

import natsreg
from natsreg import wire
from natsreg.testing import NatsServer

PREFIX = "benchdisc"
NODES = 2
WAIT_S = 10.0  # give up on an event after this long: every wait is bounded


# -- subprocesses --------------------------------------------------------------------------


async def run_registry(url: str) -> None:
    nc = await nats.connect(url)
    async with natsreg.Registry(nc, prefix=PREFIX):
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin
    await nc.close()


async def run_service(url: str) -> None:
    nc = await nats.connect(url)
    svc = natsreg.announce(nc, "bench-victim", version="1.0.0", prefix=PREFIX)

    @svc.endpoint("echo")
    async def echo(req: natsreg.Request) -> bytes:
        return req.data

    async with svc:
        print(svc.id, flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until killed, or the parent goes away
    await nc.close()


def spawn(role: str, url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, f"--{role}", url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


# -- observer ------------------------------------------------------------------------------


class Observer:
    """Times each (instance, kind) event per registry node, as it is received."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        self.reasons: dict[tuple[str, str], str] = {}
        self._changed = asyncio.Event()

    async def on_event(self, msg) -> None:
        received = time.perf_counter()
        event = wire.decode_event(msg.data)
        key = (event.instance.id, event.kind)
        self.seen[key].setdefault(event.node, received)
        self.reasons[key] = event.reason
        self._changed.set()

    async def wait(self, instance_id: str, kind: str) -> tuple[float, float]:
        """When the first and the last registry node reported ``kind`` for the instance."""
        key = (instance_id, kind)
        deadline = time.perf_counter() + WAIT_S
        while len(self.seen[key]) < NODES:
            self._changed.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError(f"{kind} of {instance_id}: {len(self.seen[key])} of {NODES}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        times = self.seen[key].values()
        return min(times), max(times)


async def start_to_visible(url: str, observer: Observer, starts: int) -> list[tuple]:
    nc = await nats.connect(url)
    results = []
    for _ in range(starts):
        svc = natsreg.announce(nc, "bench-fresh", version="1.0.0", prefix=PREFIX)

        @svc.endpoint("echo")
        async def echo(req: natsreg.Request) -> bytes:
            return req.data

        started = time.perf_counter()
        async with svc:
            first, last = await observer.wait(svc.id, "up")
        await observer.wait(svc.id, "down")  # gone from every view before the next start
        results.append((first - started, last - started))
    await nc.close()
    return results


async def kill_to_removal(url: str, observer: Observer, kills: int) -> list[tuple]:
    results = []
    for _ in range(kills):
        victim = spawn("service", url)
        try:
            instance_id = (await asyncio.to_thread(victim.stdout.readline)).decode().strip()
            await observer.wait(instance_id, "up")
            await asyncio.sleep(random.uniform(0.5, 1.5))  # any point of a heartbeat interval
            killed = time.perf_counter()
            os.kill(victim.pid, signal.SIGKILL)
            first, last = await observer.wait(instance_id, "down")
        finally:
            victim.kill()
            victim.wait()
        assert observer.reasons[(instance_id, "down")] == "expired"
        results.append((first - killed, last - killed))
    return results


async def plain_start_and_stop(url: str, observer: Observer, runs: int) -> list[tuple]:
    nc = await nats.connect(url)

    async def stock(req: MicroRequest) -> None:
        await req.respond(b"3")

    results = []
    for _ in range(runs):
        await asyncio.sleep(random.uniform(0.0, 1.0))  # any point of the nodes' poll interval
        started = time.perf_counter()
        micro = await add_service(nc, name="bench-plain", version="1.0.0")
        await micro.add_endpoint(name="stock", subject="bench-plain-stock", handler=stock)
        _, listed = await observer.wait(micro.id, "up")
        await asyncio.sleep(random.uniform(1.0, 2.0))  # stopped at any point of a poll
        stopped = time.perf_counter()
        await micro.stop()
        _, gone = await observer.wait(micro.id, "down")
        results.append((listed - started, gone - stopped))
    await nc.close()
    return results


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


async def bench(url: str, starts: int, kills: int, plain: int) -> None:
    observer = Observer()
    nc = await nats.connect(url)
    await nc.subscribe(f"{PREFIX}.events.>", cb=observer.on_event)
    await nc.flush()
    await asyncio.sleep(1.0)  # let the registry nodes finish warming up

    visible = await start_to_visible(url, observer, starts)
    removed = await kill_to_removal(url, observer, kills)
    plain_runs = await plain_start_and_stop(url, observer, plain)
    await nc.close()

    print(
        f"\n{NODES} registry nodes, default settings (heartbeat 1 s, expiry after 2 missed "
        "heartbeats + half an interval)\n"
    )
    print(
        "| measure | runs | first node p50 | every node p50 | every node p99 | every node max "
        "| goal |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    ms = [(f * 1000, a * 1000) for f, a in visible]
    print(
        f"| start to visible (ms) | {starts} | {statistics.median(f for f, _ in ms):.1f} "
        f"| {statistics.median(a for _, a in ms):.1f} "
        f"| {percentile([a for _, a in ms], 0.99):.1f} | {max(a for _, a in ms):.1f} "
        "| p99 <= 50 ms |"
    )
    print(
        f"| kill -9 to removal (s) | {kills} | {statistics.median(f for f, _ in removed):.2f} "
        f"| {statistics.median(a for _, a in removed):.2f} "
        f"| {percentile([a for _, a in removed], 0.99):.2f} "
        f"| {max(a for _, a in removed):.2f} | max <= 3 s |"
    )
    listed = [s * 1000 for s, _ in plain_runs]
    gone = [g for _, g in plain_runs]
    print(
        f"| plain ADR-32 start to listed (ms) | {plain} | - | {statistics.median(listed):.0f} "
        f"| {percentile(listed, 0.99):.0f} | {max(listed):.0f} | max <= 1500 ms |"
    )
    print(
        f"| plain ADR-32 stop to gone (s) | {plain} | - | {statistics.median(gone):.2f} "
        f"| {percentile(gone, 0.99):.2f} | {max(gone):.2f} | max <= 3.2 s |"
    )
    print(
        f"\nplain ADR-32 against natsreg instances, every node p50: listed "
        f"{statistics.median(listed) / statistics.median(a for _, a in ms):.0f}x later; gone "
        f"{statistics.median(gone) / statistics.median(a for _, a in removed):.2f}x the time"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 starts, 3 kills, 3 plain")
    parser.add_argument("--starts", type=int, help="instances started (default 50)")
    parser.add_argument("--kills", type=int, help="instances killed (default 10)")
    parser.add_argument("--plain", type=int, help="plain ADR-32 services (default 10)")
    parser.add_argument("--url", help="use this nats-server instead of starting one")
    parser.add_argument("--registry", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--service", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.registry:
        return asyncio.run(run_registry(args.registry))
    if args.service:
        return asyncio.run(run_service(args.service))
    starts = args.starts or (10 if args.quick else 50)
    kills = args.kills or (3 if args.quick else 10)
    plain = args.plain or (3 if args.quick else 10)

    server = None if args.url else NatsServer(host="127.0.0.1")
    url = args.url or server.url
    nodes = [spawn("registry", url) for _ in range(NODES)]
    try:
        for node in nodes:
            if node.stdout.readline().strip() != b"ready":
                raise SystemExit("a registry node did not start")
        asyncio.run(bench(url, starts, kills, plain))
    finally:
        for node in nodes:
            node.stdin.close()
            try:
                node.wait(10)
            except subprocess.TimeoutExpired:
                node.kill()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
