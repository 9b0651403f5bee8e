"""Failover under steady load: natsreg's client against plain queue-group requests.

Three instances of one service (real processes) serve ``work``, declared idempotent, which
waits ``--delay-ms`` and replies. A closed loop of ``--concurrency`` callers sends requests
with a 2 s timeout, while one of the faults below happens:

- ``kill9``:   one instance is killed with SIGKILL after 1 s of load;
- ``sigstop``: one instance is frozen with SIGSTOP (its connection stays open) after 1 s;
- ``rolling``: each instance in turn is replaced: a new one starts, the old one gets SIGTERM;
- ``slow``:    one of the three is 5x slower than the others from the start.

Each scenario runs twice on a fresh fleet: ``natsreg`` (``natsreg.Client`` with its defaults,
a registry node running) and ``plain`` (``nc.request`` on the queue-group subject: what any
NATS client does, without natsreg's resilience). The table gives requests sent, succeeded,
failed, and latency percentiles of the successful ones.

    python bench/failover.py                       # every scenario
    python bench/failover.py --scenario slow kill9 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time

import nats

import natsreg
from natsreg.testing import NatsServer

PREFIX = "fo"
SERVICE = "fo-svc"
SUBJECT = f"{SERVICE}.work"
TIMEOUT_S = 2.0
SCENARIOS = ("kill9", "sigstop", "rolling", "slow")


# -- service subprocess --------------------------------------------------------------------


async def serve(url: str, delay_ms: float) -> None:
    nc = await nats.connect(url)
    async with natsreg.announce(nc, SERVICE, version="1.0.0", prefix=PREFIX) as svc:

        @svc.endpoint("work", idempotent=True)
        async def work(req: natsreg.Request) -> bytes:
            await asyncio.sleep(delay_ms / 1000)
            return svc.id.encode()

        await svc.ready()
        print("id", svc.id, flush=True)
        await svc.serve_forever()
    await nc.close()


class Fleet:
    """Service processes started and stopped by PID; everything left is killed on exit."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, delay_ms: float) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", self.url, str(delay_ms)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("id "):
            raise RuntimeError(f"service did not start: {line!r}")
        return proc, line.split()[1]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()


# -- load ----------------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.failed = 0
        self.errors: dict[str, int] = {}

    def row(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        n = len(lat)

        def pct(p: float) -> float:
            return lat[min(n - 1, int(n * p))] * 1000 if n else float("nan")

        return {
            "sent": n + self.failed,
            "ok": n,
            "failed": self.failed,
            "p50": pct(0.5),
            "p99": pct(0.99),
            "max": lat[-1] * 1000 if n else float("nan"),
        }


async def load(
    call,
    concurrency: int,
    stop: asyncio.Event,
    tally: Tally,
    max_s: float = 30.0,
    max_requests: int = 500_000,
) -> None:
    deadline = time.monotonic() + max_s

    async def caller() -> None:
        while (
            not stop.is_set()
            and time.monotonic() < deadline
            and len(tally.latencies) + tally.failed < max_requests
        ):
            t0 = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                tally.failed += 1
                name = type(exc).__name__
                tally.errors[name] = tally.errors.get(name, 0) + 1
                continue
            tally.latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(caller() for _ in range(concurrency)))


async def wait_listed(client: natsreg.Client, ids: set[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        snapshot = await client.instances(SERVICE)
        if {i.id for i in snapshot.instances} >= ids:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("instances not listed within 10 s")


async def run_scenario(
    url: str, scenario: str, mode: str, concurrency: int, delay_ms: float
) -> Tally:
    fleet = Fleet(url)
    nc = await nats.connect(url)
    tally, stop = Tally(), asyncio.Event()
    try:
        async with (
            natsreg.Registry(nc, prefix=PREFIX),
            natsreg.Client(nc, prefix=PREFIX, timeout_s=TIMEOUT_S) as client,
        ):
            slow = 5 * delay_ms if scenario == "slow" else delay_ms
            started = [fleet.start(delay_ms), fleet.start(delay_ms), fleet.start(slow)]
            await wait_listed(client, {i for _, i in started})
            if mode == "natsreg":

                async def call() -> object:
                    return await client.request(SUBJECT)
            else:

                async def call() -> object:
                    return await nc.request(SUBJECT, b"", timeout=TIMEOUT_S)

            for _ in range(20):  # warm-up, not counted: the view, the inbox, the EWMAs
                await call()
            runner = asyncio.ensure_future(load(call, concurrency, stop, tally))
            await asyncio.sleep(1.0)
            victim = started[0][0]
            if scenario == "kill9":
                victim.send_signal(signal.SIGKILL)
                await asyncio.sleep(4.0)
            elif scenario == "sigstop":
                victim.send_signal(signal.SIGSTOP)
                # Past the expiry (2.5 s) and one full timeout after it.
                await asyncio.sleep(5.0)
            elif scenario == "rolling":
                for n in range(3):
                    old = started[n][0]
                    started[n] = fleet.start(delay_ms)
                    await wait_listed(client, {started[n][1]})
                    old.send_signal(signal.SIGTERM)
                    await asyncio.to_thread(old.wait, 15)
                await asyncio.sleep(1.0)
            else:
                await asyncio.sleep(4.0)
            stop.set()
            await runner
    finally:
        stop.set()
        fleet.close()
        await nc.close()
    return tally


async def bench(url: str, scenarios: list[str], concurrency: int, delay_ms: float) -> None:
    rows = []
    for scenario in scenarios:
        for mode in ("natsreg", "plain"):
            tally = await run_scenario(url, scenario, mode, concurrency, delay_ms)
            row = tally.row()
            rows.append((scenario, mode, row, tally.errors))
            print(
                f"  {scenario:<8} {mode:<8} sent {row['sent']:>6} failed {row['failed']:>4} "
                f"p50 {row['p50']:.1f} ms p99 {row['p99']:.1f} ms max {row['max']:.1f} ms "
                f"{tally.errors or ''}",
                file=sys.stderr,
                flush=True,
            )
    print(
        f"\n3 instances, handler {delay_ms:g} ms (slow: {5 * delay_ms:g} ms), closed loop of "
        f"{concurrency} callers, timeout {TIMEOUT_S:g} s\n"
    )
    print("| scenario | caller | sent | succeeded | failed | p50 ms | p99 ms | max ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for scenario, mode, r, _ in rows:
        print(
            f"| {scenario} | {mode} | {r['sent']} | {r['ok']} | {r['failed']} | "
            f"{r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--delay-ms", type=float, default=2.0, help="handler time (default 2)")
    parser.add_argument("--url", help="use this nats-server instead of starting one")
    parser.add_argument("--serve", nargs=2, metavar=("URL", "DELAY_MS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve[0], float(args.serve[1])))
        return
    if args.url:
        asyncio.run(bench(args.url, args.scenario, args.concurrency, args.delay_ms))
        return
    with NatsServer() as server:
        asyncio.run(bench(server.url, args.scenario, args.concurrency, args.delay_ms))


if __name__ == "__main__":
    main()
