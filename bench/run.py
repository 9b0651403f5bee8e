"""``natsreg run``: what workers and uvloop buy, each against its baseline in the same run.

1. CPU-bound: an endpoint doing about 2 ms of pure-Python work per request, served by
   ``natsreg run --workers 1`` and by ``--workers 2``; callers at concurrency 16. On a
   2-core machine the goal is >= 1.6x the requests/s with 2 workers.
2. I/O-bound: an echo endpoint served by ``natsreg run`` on uvloop and with ``--no-uvloop``
   (asyncio's own loop), at concurrency 1 and 64.

Every deployment is a real ``natsreg run`` (module written to a temporary folder) and runs
for the whole benchmark; rounds alternate between the modes being compared, and the table
shows the medians. The callers use raw nats-py requests on the queue group, in this process
(asyncio), so they cost the same whatever they call.

    python bench/run.py            # 3 rounds of 3 s per mode
    python bench/run.py --quick    # 2 rounds of 1 s, to check it runs
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import rpc  # bench/rpc.py: the same load loop, so the figures compare

from natsreg.testing import NatsServer

APP = """
import os
import natsreg

svc = natsreg.Service(os.environ["BENCH_NAME"], version="1.0.0")
WORK = int(os.environ["BENCH_WORK"])


@svc.endpoint("cpu", idempotent=True)
async def cpu(req):
    total = 0
    for i in range(WORK):  # about 2 ms of pure-Python work: the GIL holds it
        total += i * i
    return b"ok"


@svc.endpoint("echo", idempotent=True)
async def echo(req):
    return req.data


@svc.endpoint("pid", idempotent=True)
async def pid(req):
    return str(os.getpid())
"""
PAYLOAD = b'{"id":12345,"name":"user-12345","roles":["reader"]}'
TIMEOUT_S = 10.0


def calibrate(target_s: float = 0.002) -> int:
    """Loop steps that take about ``target_s`` here (the app runs the same loop)."""
    steps = 200_000
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for i in range(steps):
            total += i * i
        best = min(best, time.perf_counter() - started)
    return int(steps * target_s / best)


class Deployment:
    """One ``natsreg run`` of the bench app, under its own service name."""

    def __init__(self, folder: Path, url: str, name: str, work: int, *flags: str) -> None:
        self.name = name
        self.workers = int(flags[flags.index("--workers") + 1]) if "--workers" in flags else 1
        env = {**os.environ, "BENCH_NAME": name, "BENCH_WORK": str(work)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "natsreg", "run", "app:svc", "--server", url, *flags],
            cwd=folder,
            env=env,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    async def wait_ready(self, nc: nats.NATS) -> None:
        # Ready when every worker has answered: distinct pids on the queue group.
        pids: set[bytes] = set()
        deadline = time.monotonic() + 60
        while len(pids) < self.workers:
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: {len(pids)} of {self.workers} workers answered")
            try:
                pids.add((await nc.request(f"{self.name}.pid", b"", timeout=1)).data)
            except Exception:
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


async def load(nc: nats.NATS, subject: str, concurrency: int, duration_s: float) -> dict:
    """``concurrency`` callers until the time runs out (or 10 million calls)."""
    return await rpc.run_load(
        lambda: nc.request(subject, PAYLOAD, timeout=TIMEOUT_S), concurrency, duration_s, 10_000_000
    )


async def compare(
    nc: nats.NATS,
    modes: dict[str, str],
    concurrency: int,
    rounds: int,
    duration_s: float,
) -> dict[str, dict[str, float]]:
    """Medians per mode (label -> subject), rounds alternating which mode goes first."""
    results: dict[str, list[dict]] = {label: [] for label in modes}
    for subject in modes.values():  # warm up each deployment
        await load(nc, subject, concurrency, 0.3)
    for round_ in range(rounds):
        order = list(modes) if round_ % 2 == 0 else list(reversed(modes))
        for label in order:
            r = await load(nc, modes[label], concurrency, duration_s)
            results[label].append(r)
            print(
                f"  round {round_ + 1}/{rounds} c={concurrency:<3} {label:<12}"
                f"{r['rps']:>9.0f} req/s  p50 {r['p50']:.3f} ms  errors {r['errors']}",
                file=sys.stderr,
            )
    return {
        label: {
            "rps": statistics.median(r["rps"] for r in rs),
            "p50": statistics.median(r["p50"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
        }
        for label, rs in results.items()
    }


def table(title: str, rows: list[tuple[str, int, dict[str, float], dict[str, float]]]) -> None:
    print(f"\n{title}\n")
    print("| mode | concurrency | req/s | p50 ms | req/s vs baseline | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, concurrency, r, base in rows:
        print(
            f"| {label} | {concurrency} | {r['rps']:.0f} | {r['p50']:.3f} | "
            f"{r['rps'] / base['rps']:.2f}x | {r['errors']:.0f} |"
        )


async def bench(url: str, folder: Path, rounds: int, duration_s: float) -> None:
    # Other work on the machine takes cores from the workers: say how busy it was.
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    work = calibrate()
    print(f"cpu endpoint: {work} loop steps, about 2 ms here", file=sys.stderr)
    deployments = [
        Deployment(folder, url, "bench-w1", work, "--workers", "1"),
        Deployment(folder, url, "bench-w2", work, "--workers", "2"),
        Deployment(folder, url, "bench-uvloop", work),
        Deployment(folder, url, "bench-asyncio", work, "--no-uvloop"),
    ]
    nc = await nats.connect(url)
    try:
        for deployment in deployments:
            await deployment.wait_ready(nc)
        cpu = await compare(
            nc, {"1 worker": "bench-w1.cpu", "2 workers": "bench-w2.cpu"}, 16, rounds, duration_s
        )
        loops = {
            c: await compare(
                nc,
                {"asyncio": "bench-asyncio.echo", "uvloop": "bench-uvloop.echo"},
                c,
                rounds,
                duration_s,
            )
            for c in (1, 64)
        }
    finally:
        await nc.close()
        for deployment in deployments:
            deployment.stop()
    load_1m = os.getloadavg()[0]
    header = f"median of {rounds} rounds of {duration_s:g} s, load average {load_1m:.1f} after"
    base = cpu["1 worker"]
    table(
        f"CPU-bound endpoint (~2 ms of work), natsreg run --workers N, {header}",
        [(label, 16, r, base) for label, r in cpu.items()],
    )
    table(
        f"I/O-bound echo, natsreg run on asyncio vs uvloop, {header}",
        [(label, c, r, loops[c]["asyncio"]) for c in loops for label, r in loops[c].items()],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 s")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=float, help="seconds per round")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 3)
    duration_s = args.duration or (1.0 if args.quick else 3.0)
    with NatsServer() as server, tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "app.py").write_text(APP)
        asyncio.run(bench(server.url, Path(folder), rounds, duration_s))


if __name__ == "__main__":
    main()
