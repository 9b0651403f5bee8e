"""``natsreg run``: what workers and uvloop buy, each against its baseline in the same run.

1. CPU-bound: an endpoint doing about 2 ms of pure-Python work per request, served by
   ``natsreg run --workers 1`` and by ``--workers 2``; callers at concurrency 16. On a
   2-core machine the goal is >= 1.6x the requests/s with 2 workers.
2. I/O-bound: an echo endpoint served by ``natsreg run`` on uvloop and with ``--no-uvloop``
   (asyncio's own loop), at concurrency 1 and 64.

Every deployment is a real ``natsreg run`` (module written to a temporary folder) and runs
for the whole benchmark; rounds alternate between the modes being compared, and the table
shows the medians. The callers, in this process, send nats-py requests on the queue group
with a pre-encoded payload through natsreg's own reply inbox (one subscription, each reply
handed to its caller from the read loop: ``natsreg.client._mux``), on uvloop where it is
installed, so they cost the same whatever they call, and as little as a caller can: on two
cores, every microsecond the load generator spends is taken from the workers. It is counted
all the same: each round records the CPU time per request of the callers, nats-server and
the deployment's workers, which shows where the two cores went.

    python bench/run.py            # 3 rounds of 3 s per mode
    python bench/run.py --quick    # 2 rounds of 1 s, to check it runs
    python bench/run.py --callers nc.request --no-uvloop   # the load generator of before
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import rpc  # bench/rpc.py: the same load loop and CPU reading, so the figures compare

from natsreg.client._mux import ReplyMux
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
    """Loop steps that take about ``target_s`` of CPU here (the app runs the same loop).
    Timed in this process's CPU time: on a busy machine the wall clock also counts the time
    slices other processes took, and made the work too short (0.7 ms at load average 9)."""
    steps = 200_000
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        total = 0
        for i in range(steps):
            total += i * i
        best = min(best, time.process_time() - started)
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
        #: The worker processes and the supervisor, idle while they serve (with one worker,
        #: ``natsreg run`` is that worker itself: counted once).
        self.pids = sorted({self.process.pid, *(int(pid) for pid in pids)})

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Callers:
    """The load generator: ``concurrency`` callers on one connection. ``mux``: through
    natsreg's reply inbox (a counter for a token, the reply handed over from the read loop);
    ``nc.request``: nats-py's own (random token and NUID per call, ``asyncio.wait_for``, the
    reply through its inbox subscription's task)."""

    def __init__(self, nc: nats.NATS, how: str) -> None:
        self.nc = nc
        self.how = how
        self.mux = ReplyMux(nc)

    def call(self, subject: str):
        if self.how == "mux":
            return lambda: self.mux.request(subject, PAYLOAD, TIMEOUT_S, None)
        return lambda: self.nc.request(subject, PAYLOAD, timeout=TIMEOUT_S)

    async def load(self, subject: str, concurrency: int, duration_s: float) -> dict:
        """``concurrency`` callers until the time runs out (or 10 million calls)."""
        return await rpc.run_load(self.call(subject), concurrency, duration_s, 10_000_000)


async def compare(
    callers: Callers,
    modes: dict[str, Deployment],
    endpoint: str,
    concurrency: int,
    rounds: int,
    duration_s: float,
    server_pid: int,
) -> dict[str, dict[str, float]]:
    """Medians per mode (label -> deployment), rounds alternating which mode goes first, with
    the CPU time per request of this process (the callers), nats-server and the workers."""
    results: dict[str, list[dict]] = {label: [] for label in modes}
    for deployment in modes.values():  # warm up each deployment
        await callers.load(f"{deployment.name}.{endpoint}", concurrency, 0.3)
    for round_ in range(rounds):
        order = list(modes) if round_ % 2 == 0 else list(reversed(modes))
        for label in order:
            deployment = modes[label]
            groups = {"callers": [os.getpid()], "server": [server_pid], "workers": deployment.pids}
            before = {group: rpc.cpu_s(pids) for group, pids in groups.items()}
            r = await callers.load(f"{deployment.name}.{endpoint}", concurrency, duration_s)
            served = max(1, r["rps"] * duration_s)
            for group, pids in groups.items():
                r[group] = (rpc.cpu_s(pids) - before[group]) / served * 1e6
            results[label].append(r)
            print(
                f"  round {round_ + 1}/{rounds} c={concurrency:<3} {label:<12}"
                f"{r['rps']:>9.0f} req/s  p50 {r['p50']:.3f} ms  errors {r['errors']}  "
                f"CPU µs/request: workers {r['workers']:.0f}, callers {r['callers']:.0f}, "
                f"nats-server {r['server']:.0f}",
                file=sys.stderr,
            )
    return {
        label: {
            **{
                key: statistics.median(r[key] for r in rs)
                for key in ("rps", "p50", "workers", "callers", "server")
            },
            "errors": sum(r["errors"] for r in rs),
        }
        for label, rs in results.items()
    }


def table(title: str, rows: list[tuple[str, int, dict[str, float], dict[str, float]]]) -> None:
    print(f"\n{title}\n")
    print(
        "| mode | concurrency | req/s | p50 ms | req/s vs baseline | errors "
        "| CPU µs/request: workers | callers | nats-server |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, concurrency, r, base in rows:
        print(
            f"| {label} | {concurrency} | {r['rps']:.0f} | {r['p50']:.3f} | "
            f"{r['rps'] / base['rps']:.2f}x | {r['errors']:.0f} | {r['workers']:.0f} "
            f"| {r['callers']:.0f} | {r['server']:.0f} |"
        )


async def bench(
    url: str, server_pid: int, folder: Path, rounds: int, duration_s: float, how: str
) -> None:
    # Other work on the machine takes cores from the workers: say how busy it was.
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    work = calibrate()
    print(f"cpu endpoint: {work} loop steps, about 2 ms here", file=sys.stderr)
    w1 = Deployment(folder, url, "bench-w1", work, "--workers", "1")
    w2 = Deployment(folder, url, "bench-w2", work, "--workers", "2")
    on_uvloop = Deployment(folder, url, "bench-uvloop", work)
    on_asyncio = Deployment(folder, url, "bench-asyncio", work, "--no-uvloop")
    deployments = [w1, w2, on_uvloop, on_asyncio]
    nc = await nats.connect(url)
    callers = Callers(nc, how)
    try:
        for deployment in deployments:
            await deployment.wait_ready(nc)
        cpu = await compare(
            callers, {"1 worker": w1, "2 workers": w2}, "cpu", 16, rounds, duration_s, server_pid
        )
        loops = {
            c: await compare(
                callers,
                {"asyncio": on_asyncio, "uvloop": on_uvloop},
                "echo",
                c,
                rounds,
                duration_s,
                server_pid,
            )
            for c in (1, 64)
        }
    finally:
        await callers.mux.aclose()
        await nc.close()
        for deployment in deployments:
            deployment.stop()
    load_1m = os.getloadavg()[0]
    loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
    header = (
        f"median of {rounds} rounds of {duration_s:g} s, callers: {how} on {loop}, "
        f"load average {load_1m:.1f} after"
    )
    base = cpu["1 worker"]
    table(
        f"CPU-bound endpoint (~2 ms of work), natsreg run --workers N, {header}",
        [(label, 16, r, base) for label, r in cpu.items()],
    )
    # The most two cores allow at the CPU per request measured: one worker can do at most a
    # core's worth (1 s / its CPU per request); two workers share two cores with the callers
    # and nats-server (2 s / everything's CPU per request).
    two = cpu["2 workers"]
    spent = two["workers"] + two["callers"] + two["server"]
    print(
        f"\nwith 2 workers: {spent:.0f} µs of CPU per request in all (workers "
        f"{two['workers']:.0f}, callers {two['callers']:.0f}, nats-server {two['server']:.0f}); "
        f"1 worker: {base['workers']:.0f} µs in the worker. At most {2e6 / spent:.0f} req/s "
        f"against {1e6 / base['workers']:.0f}: {2 * base['workers'] / spent:.2f}x is the "
        "most 2 workers can do at these costs"
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
    parser.add_argument(
        "--callers",
        choices=["mux", "nc.request"],
        default="mux",
        help="how the load generator sends: natsreg's reply inbox (default) or nc.request",
    )
    parser.add_argument(
        "--no-uvloop", action="store_true", help="the load generator on asyncio's own loop"
    )
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 3)
    duration_s = args.duration or (1.0 if args.quick else 3.0)
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with NatsServer() as server, tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "app.py").write_text(APP)
        asyncio.run(
            bench(server.url, server.process.pid, Path(folder), rounds, duration_s, args.callers)
        )


if __name__ == "__main__":
    main()
