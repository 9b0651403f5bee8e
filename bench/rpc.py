"""RPC throughput and latency: natsreg against raw nats-py, in the same run.

Both sides echo a ~50-byte JSON payload over loopback:

- raw:     ``nc.subscribe(subject, queue=..., cb=...)`` whose callback does
           ``await msg.respond(data)``; the caller does ``await nc.request(...)``.
- natsreg: ``natsreg.announce(nc, ...)`` with an ``echo`` endpoint returning ``req.data``;
           the caller does ``await natsreg.Client(nc).request(...)``.

The responders run in a subprocess (one connection each), the callers in this process, so
each side has a core of its own. Concurrency N is N request coroutines on one connection.
Rounds rotate which mode goes first; the table shows the median of the rounds.

With ``--metrics``, a third mode runs in the same rounds: ``no-metrics``, natsreg with
``NATSREG_METRICS=0`` on both sides (its own client, its own service ``bench-nometrics``),
while ``natsreg`` keeps its default (metrics recorded) and every process builds the Prometheus
exposition once a second, as a scrape would.

With ``--trace``, two more modes in the same rounds, each against natsreg with tracing off:

- trace-context: the calls are made inside a trace (as from a handler or the bridge), so
  each carries a ``traceparent`` and the service continues the trace; no OpenTelemetry SDK.
- trace-spans:   OpenTelemetry's SDK configured on both sides, every trace sampled, spans
  handed to a batch processor whose exporter discards them: a CLIENT and a SERVER span per
  call. (Its service runs in a responder process of its own, the SDK's tracer provider being
  global to a process.)

Every round also records the CPU per request of every process (caller, responders,
nats-server), which a shared machine's load moves less than req/s.

With ``--work MS``, every responder's handler (raw and natsreg alike) first spends MS
milliseconds of CPU, as a handler with real work would, instead of echoing at once: what a
feature costs set against a request that does something.

Goal: natsreg >= 0.9x raw requests/s, and p50 <= 1.1x raw, at concurrency 1 and 64; with
metrics, natsreg >= 0.97x no-metrics; with tracing, trace-context >= 0.97x and trace-spans
>= 0.8x natsreg.

    python bench/rpc.py            # 5 rounds of 2 s per mode and concurrency
    python bench/rpc.py --quick    # 3 rounds of 0.5 s, to check it runs
    python bench/rpc.py --metrics  # also natsreg without metrics: the cost of recording them
    python bench/rpc.py --trace    # also the two trace modes (needs natsreg[test] for the SDK)
    python bench/rpc.py --metrics --trace   # both, in the same rounds
    python bench/rpc.py --trace --work 1    # a handler with 1 ms of CPU work
    python bench/rpc.py --url nats://127.0.0.1:4222   # an existing server, not a new one
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats

import natsreg
from natsreg import _trace
from natsreg.testing import NatsServer

RAW_SUBJECT = "bench-raw.echo"
SERVICE = "bench-natsreg"
NATSREG_SUBJECT = f"{SERVICE}.echo"
NO_METRICS_SERVICE = "bench-nometrics"
SCRAPE_S = 1.0
PAYLOAD = b'{"id":12345,"name":"user-12345","roles":["reader"]}'
REQUEST_TIMEOUT_S = 5.0
SPANS_SERVICE = "bench-spans"
#: The trace the trace-context mode's calls are made in.
TRACE = _trace.TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")


# -- metrics on and off ----------------------------------------------------------------------


@contextlib.contextmanager
def metrics_off() -> Iterator[None]:
    """Roles built inside record no metrics (``NATSREG_METRICS=0``)."""
    old = os.environ.get("NATSREG_METRICS")
    os.environ["NATSREG_METRICS"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["NATSREG_METRICS"]
        else:
            os.environ["NATSREG_METRICS"] = old


async def scrape_forever() -> None:
    """Build the exposition every SCRAPE_S, as a Prometheus scrape of this process would."""
    from natsreg import metrics

    while True:
        await asyncio.sleep(SCRAPE_S)
        metrics.exposition()


# -- tracing -------------------------------------------------------------------------------


def span_provider():
    """An SDK tracer provider sampling every trace, whose exporter drops what it gets."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    return provider


class _Tracing:
    """The trace modes' settings, on for one round: the trace the calls are made in, or the
    SDK's provider as the process' global one (natsreg reads it on every call)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.provider = span_provider() if mode == "trace-spans" else None

    def __enter__(self) -> None:
        if self.mode == "trace-context":
            self.token = _trace.current.set(TRACE)  # inherited by run_load's worker tasks
        elif self.provider is not None:
            from opentelemetry import trace

            trace._TRACER_PROVIDER = self.provider

    def __exit__(self, *exc_info: object) -> None:
        if self.mode == "trace-context":
            _trace.current.reset(self.token)
        elif self.provider is not None:
            from opentelemetry import trace

            trace._TRACER_PROVIDER = None


# -- CPU -----------------------------------------------------------------------------------


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes ``pids`` have used so far, from /proc."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


# -- responder subprocess ------------------------------------------------------------------


def work(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU time (not the wall clock's: other processes'
    time slices do not count)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


async def serve(url: str, scrape: bool, spans: bool, work_s: float = 0.0) -> None:
    """Serve the echoes, raw on its own connection, until stdin closes; with ``spans``, only
    the natsreg echo, as SPANS_SERVICE, with OpenTelemetry's SDK configured; ``work_s``: the
    CPU time each handler spends before it answers."""
    raw_nc = await nats.connect(url)
    svc_nc = await nats.connect(url)

    async def raw_echo(msg):
        if work_s:
            work(work_s)
        await msg.respond(msg.data)

    async def echo(req: natsreg.Request) -> bytes:
        if work_s:
            work(work_s)
        return req.data

    if spans:
        from opentelemetry import trace

        trace.set_tracer_provider(span_provider())
        services = [natsreg.announce(svc_nc, SPANS_SERVICE, version="1.0.0", prefix="bench")]
    else:
        await raw_nc.subscribe(RAW_SUBJECT, queue="bench-raw", cb=raw_echo)
        await raw_nc.flush()
        with metrics_off():
            quiet = natsreg.announce(svc_nc, NO_METRICS_SERVICE, version="1.0.0", prefix="bench")
        services = [natsreg.announce(svc_nc, SERVICE, version="1.0.0", prefix="bench"), quiet]
    for svc in services:
        svc.endpoint("echo")(echo)
    scraper = asyncio.create_task(scrape_forever()) if scrape else None
    async with contextlib.AsyncExitStack() as stack:
        for svc in services:  # endpoints declared before entering are subscribed on the way in
            await stack.enter_async_context(svc)
        await svc_nc.flush()
        print("ready", flush=True)
        # The parent closes our stdin to stop us, or dies, which closes it too.
        await asyncio.to_thread(sys.stdin.read)
    if scraper is not None:
        scraper.cancel()
    await raw_nc.close()
    await svc_nc.close()


# -- load ----------------------------------------------------------------------------------


async def run_load(call, concurrency: int, duration_s: float, max_requests: int) -> dict:
    """``concurrency`` coroutines calling ``call()`` until the time or the count runs out."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal errors
        while len(latencies) + errors < max_requests and time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                await call()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return {
        "rps": n / elapsed,
        "p50": latencies[n // 2] * 1000 if n else float("nan"),
        "p99": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else float("nan"),
        "errors": errors,
    }


async def bench(
    url: str,
    rounds: int,
    duration_s: float,
    concurrencies: list[int],
    pids: list[int],
    with_metrics: bool = False,
    tracing: bool = False,
    work_ms: float = 0.0,
) -> None:
    """Every mode's rounds, then the tables; ``pids``: the processes whose CPU is counted
    besides this one."""
    pids = [os.getpid(), *pids]
    nc = await nats.connect(url)
    client = natsreg.Client(nc, timeout_s=REQUEST_TIMEOUT_S)
    calls = {
        "raw": lambda: nc.request(RAW_SUBJECT, PAYLOAD, timeout=REQUEST_TIMEOUT_S),
        "natsreg": lambda: client.request(NATSREG_SUBJECT, PAYLOAD),
    }
    scraper = None
    if with_metrics:
        with metrics_off():
            quiet = natsreg.Client(nc, timeout_s=REQUEST_TIMEOUT_S)
        calls["no-metrics"] = lambda: quiet.request(f"{NO_METRICS_SERVICE}.echo", PAYLOAD)
        scraper = asyncio.create_task(scrape_forever())
    if tracing:
        calls["trace-context"] = calls["natsreg"]
        calls["trace-spans"] = lambda: client.request(f"{SPANS_SERVICE}.echo", PAYLOAD)
    modes = list(calls)
    settings = {mode: _Tracing(mode) for mode in modes}
    for mode, call in calls.items():  # check each echoes, and warm up caches and the inbox
        with settings[mode]:
            reply = await call()
            assert reply.data == PAYLOAD, reply.data
            await run_load(call, 8, 0.3, 2_000)

    results: dict[tuple[str, int], list[dict]] = {}
    for concurrency in concurrencies:
        for round_ in range(rounds):
            # Rotate which mode goes first, so none always runs on a warmer machine.
            order = modes[round_ % len(modes) :] + modes[: round_ % len(modes)]
            for mode in order:
                with settings[mode]:
                    cpu = cpu_s(pids)
                    r = await run_load(calls[mode], concurrency, duration_s, 1_000_000)
                    # All processes' CPU per request: on a shared, CPU-bound machine it moves
                    # less than req/s with what else runs.
                    r["cpu_us"] = (cpu_s(pids) - cpu) / max(1, r["rps"] * duration_s) * 1e6
                results.setdefault((mode, concurrency), []).append(r)
                print(
                    f"  round {round_ + 1}/{rounds} c={concurrency:<3} {mode:<13}"
                    f"{r['rps']:>9.0f} req/s  p50 {r['p50']:.3f} ms  p99 {r['p99']:.3f} ms",
                    file=sys.stderr,
                )
    if scraper is not None:
        scraper.cancel()
    await nc.close()

    def med(mode: str, c: int, key: str) -> float:
        return statistics.median(r[key] for r in results[(mode, c)])

    print(
        f"\nmedian of {rounds} rounds of {duration_s:g} s, payload {len(PAYLOAD)} bytes, "
        f"{'uvloop' if 'uvloop' in sys.modules else 'asyncio'}, handler work {work_ms:g} ms, "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| mode | concurrency | req/s | p50 ms | p99 ms | req/s vs raw | p50 vs raw | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c in concurrencies:
        for mode in modes:
            rps, p50, p99 = (med(mode, c, k) for k in ("rps", "p50", "p99"))
            errors = sum(r["errors"] for r in results[(mode, c)])
            rps_ratio = rps / med("raw", c, "rps")
            p50_ratio = p50 / med("raw", c, "p50")
            print(
                f"| {mode} | {c} | {rps:.0f} | {p50:.3f} | {p99:.3f} | "
                f"{rps_ratio:.2f}x | {p50_ratio:.2f}x | {errors} |"
            )
    if with_metrics:
        print("\n| concurrency | natsreg req/s ÷ no-metrics | p50 natsreg ÷ no-metrics |")
        print("|---:|---:|---:|")
        for c in concurrencies:
            rps_ratio = med("natsreg", c, "rps") / med("no-metrics", c, "rps")
            p50_ratio = med("natsreg", c, "p50") / med("no-metrics", c, "p50")
            print(f"| {c} | {rps_ratio:.3f}x | {p50_ratio:.3f}x |")
    if tracing:
        print(
            "\n| mode | concurrency | req/s vs natsreg (tracing off) | p50 vs natsreg "
            "| CPU µs/request, all processes | natsreg's ÷ this | goal |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for c in concurrencies:
            for mode, goal in (("natsreg", 1.0), ("trace-context", 0.97), ("trace-spans", 0.8)):
                rps_ratio = med(mode, c, "rps") / med("natsreg", c, "rps")
                p50_ratio = med(mode, c, "p50") / med("natsreg", c, "p50")
                cpu, cpu_ratio = med(mode, c, "cpu_us"), med("natsreg", c, "cpu_us")
                print(
                    f"| {mode} | {c} | {rps_ratio:.2f}x | {p50_ratio:.2f}x | {cpu:.1f} | "
                    f"{cpu_ratio / cpu:.2f}x | >= {goal}x |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.5 s")
    parser.add_argument("--rounds", type=int, help="rounds per mode and concurrency")
    parser.add_argument("--duration", type=float, help="seconds per round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--uvloop", action="store_true", help="run both sides on uvloop")
    parser.add_argument(
        "--metrics", action="store_true", help="also natsreg with NATSREG_METRICS=0, and scrape"
    )
    parser.add_argument(
        "--trace", action="store_true", help="also trace context alone, and OpenTelemetry spans"
    )
    parser.add_argument(
        "--work", type=float, default=0.0, metavar="MS", help="CPU ms each handler spends"
    )
    parser.add_argument("--url", help="use this nats-server instead of starting one")
    parser.add_argument("--serve", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--spans", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.serve:
        asyncio.run(serve(args.serve, args.metrics, args.spans, args.work / 1000))
        return
    rounds = args.rounds or (3 if args.quick else 5)
    duration_s = args.duration or (0.5 if args.quick else 2.0)

    server = None if args.url else NatsServer(host="127.0.0.1")
    url = args.url or server.url
    command = [sys.executable, __file__, "--serve", url] + (["--uvloop"] if args.uvloop else [])
    command += ["--metrics"] if args.metrics else []
    command += ["--work", str(args.work)] if args.work else []
    responders = [
        subprocess.Popen(
            command + extra,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for extra in ([[], ["--spans"]] if args.trace else [[]])
    ]
    try:
        for responder in responders:
            if responder.stdout.readline().strip() != b"ready":
                raise SystemExit("the responder did not start")
        pids = [r.pid for r in responders] + ([server.process.pid] if server else [])
        asyncio.run(
            bench(
                url,
                rounds,
                duration_s,
                args.concurrency,
                pids,
                args.metrics,
                args.trace,
                args.work,
            )
        )
    finally:
        for responder in responders:
            responder.stdin.close()
            try:
                responder.wait(10)
            except subprocess.TimeoutExpired:
                responder.kill()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
