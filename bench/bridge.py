"""HTTP bridges under wrk, in one run: natsreg's, a minimal aiohttp one, moleculer-web, express.

Every HTTP-to-service path is measured the same way (wrk, 2 threads, 64 connections, a warm-up
that is not counted, then ``--duration`` seconds with ``--latency``), loopback only:

- natsreg:  ``natsreg.bridge`` (uvicorn + httptools, uvloop) → NATS → a natsreg echo service
- aiohttp:  the minimal aiohttp-to-NATS bridge of ../shared/peers/seed-gateway/py-baseline.py
            (uvloop) → NATS → the same natsreg echo service
- moleculer-web: ../shared/peers/moleculer gateway.js → NATS → its ``users.echo`` action
- classic:  ../shared/peers/seed-gateway gateway.js (express, round robin) → HTTP → two
            express user-service instances (it cannot reach a NATS service; its GET /users
            answers the same small JSON)

The natsreg echo service answers GET with ``{"id":1,"name":"alice"}`` and echoes any body.
Rounds rotate which Python bridge goes first (natsreg's, the variants below, aiohttp's); the
table holds each one's median, and each figure's CPU per request of every process the run
started (wrk aside), which the machine's load moves less than req/s.

    apt-get install -y wrk                      # wrk comes from Debian's packages
    pip install -e '.[test]' aiohttp granian    # aiohttp for the baseline, granian for --stacks
    python bench/bridge.py run                  # everything, 3 rounds of 10 s
    python bench/bridge.py run --quick          # 1 round of 3 s, to check it runs
    python bench/bridge.py run --stacks         # also the HTTP stacks the bridge could use
    python bench/bridge.py run --no-peers       # skip the Node peers (no npm needed)
    python bench/bridge.py run --workers 2      # also `natsreg bridge --workers 2`
    python bench/bridge.py run --metrics        # also natsreg's bridge with NATSREG_METRICS=0
    python bench/bridge.py run --trace          # also the trace modes below
    python bench/bridge.py run --no-peers --metrics --trace   # both, in the same rounds
    python bench/bridge.py run --no-peers --dashboard         # also a bridge with a dashboard open

With ``--metrics`` the natsreg bridge (metrics recorded, the default) builds its Prometheus
exposition once a second, as a scrape would, and a second natsreg bridge runs with
``NATSREG_METRICS=0``; the report adds the CPU per request of each bridge process alone.
Goal: natsreg ≥ 0.97× metrics off.

With ``--trace``, two more natsreg bridge figures in the same rounds, against the bridge with
tracing off: wrk sending a W3C ``traceparent`` that the bridge carries on to the service (no
OpenTelemetry SDK; goal ≥ 0.97×), and a second bridge and echo service with OpenTelemetry's
SDK configured, every trace sampled, spans batched to an exporter that drops them (a CLIENT
span in the bridge, a SERVER span in the service; goal ≥ 0.8×). With ``--metrics`` too, that
bridge builds its exposition once a second as well.

With ``--dashboard``, a registry node runs beside the echo service, and a second natsreg
bridge serves a dashboard that stays open through the whole run: a client that fetches the
page's three files as a browser does, then reads ``/_natsreg/events`` (the page's one
stream: the registry's events and a fleet refresh every 2 s, for which the bridge queries the
registry and gathers ``$SRV.STATS``). Its figures are compared with the plain natsreg bridge's
in the same rounds, against the rounds' own spread; the CPU each bridge uses while idle (no
wrk) is reported too. Goal: the dashboard moves the ratio by less than that noise.

Goals: natsreg ≥ 1.2× aiohttp, ≥ 1.5× moleculer-web, ≥ 5× classic, p99 < 20 ms.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE.parent.parent / "shared" / "peers"
WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "natsreg-bench-bridge"
LOOPBACK = "127.0.0.1"
SERVICE, ENDPOINT = "user-service", "users"
METRICS_OFF = "natsreg bridge, metrics off"
TRACE_CONTEXT = "natsreg bridge, trace context"
SPANS = "natsreg bridge, OpenTelemetry spans"
GET_REPLY = b'{"id":1,"name":"alice"}'
TRACEPARENT = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SPANS_SERVICE = "user-service-spans"
DASHBOARD = "natsreg bridge, dashboard open"


# -- processes that the run starts -----------------------------------------------------------


def configure_spans() -> None:
    """OpenTelemetry's SDK as this process' tracer provider (bench/rpc.py's: every trace
    sampled, spans batched to an exporter that drops them)."""
    from opentelemetry import trace
    from rpc import span_provider  # bench/rpc.py

    trace.set_tracer_provider(span_provider())


async def echo_service(url: str, spans: bool = False) -> None:
    """The natsreg echo service every Python bridge calls, until SIGTERM; with ``spans``, as
    SPANS_SERVICE with OpenTelemetry's SDK configured."""
    import nats

    import natsreg

    if spans:
        configure_spans()
    nc = await nats.connect(url)
    name = SPANS_SERVICE if spans else SERVICE
    async with natsreg.announce(nc, name, version="1.0.0", prefix="bench") as svc:

        @svc.endpoint(ENDPOINT)
        async def users(req: natsreg.Request) -> bytes:
            return req.data or GET_REPLY

        print("READY", flush=True)
        await svc.serve_forever()
    await nc.close()


async def natsreg_bridge(url: str, port: int, scrape: bool = False, spans: bool = False) -> None:
    """natsreg's bridge on ``port`` until SIGTERM; with ``scrape``, its Prometheus exposition
    is built once a second; with ``spans``, OpenTelemetry's SDK is on."""
    import asyncio

    import nats
    from rpc import scrape_forever  # bench/rpc.py

    from natsreg import bridge

    if spans:
        configure_spans()
    scraper = asyncio.create_task(scrape_forever()) if scrape else None
    nc = await nats.connect(url)
    await bridge.serve(
        nc,
        bridge.BridgeConfig(prefix="bench"),
        host=LOOPBACK,
        port=port,
        ready=lambda _: print("READY", flush=True),
    )
    if scraper is not None:
        scraper.cancel()
    await nc.close()


def dashboard_client(base: str) -> None:
    """A browser's share of an open dashboard on the bridge at ``base``, until SIGTERM: the
    page's three files, then the event stream, read and dropped as it comes."""
    import http.client
    from urllib.parse import urlsplit

    for path in ("/_natsreg/ui", "/_natsreg/ui/dashboard.js", "/_natsreg/ui/dashboard.css"):
        wait_http(base + path)
    where = urlsplit(base)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=60)
    conn.request("GET", "/_natsreg/events", headers={"Accept": "text/event-stream"})
    response = conn.getresponse()
    assert response.status == 200, response.status
    print("READY", flush=True)
    while response.read1(65536):
        pass


def granian_app():
    """natsreg's bridge app for ``granian --factory``: connects to NATS on lifespan startup."""
    import nats

    from natsreg import bridge

    state: dict[str, object] = {}

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    nc = await nats.connect(os.environ["NATS_URL"])
                    state["app"] = bridge.create_app(nc, bridge.BridgeConfig(prefix="bench"))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await state["app"](scope, receive, send)

    return app


class Procs:
    """Every process the run starts, stopped by PID in reverse order."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        log: Path | None = None,
    ) -> subprocess.Popen:
        out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            stdout=subprocess.PIPE if log is None else out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_line(proc: subprocess.Popen, word: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"pid {proc.pid} exited before {word}")
        if line.startswith(word):
            return
    raise RuntimeError(f"pid {proc.pid}: no {word} within {timeout_s} s")


def wait_file_line(path: Path, word: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and any(line.startswith(word) for line in path.read_text().splitlines()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"no {word} in {path} within {timeout_s} s:\n{path.read_text()[-2000:]}")


def wait_http(url: str, timeout_s: float = 30.0) -> bytes:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return reply.read()
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not answering 200 within {timeout_s} s")


# -- wrk ---------------------------------------------------------------------------------------

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}
#: Targets wrk calls with a traceparent header.
TRACED_URLS: set[str] = set()


def _ms(text: str) -> float:
    m = re.match(r"([0-9.]+)(us|ms|s|m)$", text.strip())
    return float(m.group(1)) * _UNITS_MS[m.group(2)] if m else float("nan")


def wrk(url: str, duration_s: float, connections: int) -> dict[str, float]:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{duration_s:g}s", "--latency", url]
    if url in TRACED_URLS:
        command[1:1] = ["-H", TRACEPARENT]
    text = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + 60, check=True
    ).stdout

    def find(pattern: str, convert=float, default=0.0):
        m = re.search(pattern, text, re.MULTILINE)
        return convert(m.group(1)) if m else default

    return {
        "rps": find(r"Requests/sec:\s+([0-9.]+)"),
        "p50": find(r"^\s+50%\s+(\S+)", _ms, float("nan")),
        "p99": find(r"^\s+99%\s+(\S+)", _ms, float("nan")),
        "errors": find(r"Non-2xx or 3xx responses:\s+(\d+)", int, 0)
        + sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text)),
    }


def measure(
    label: str, url: str, args: argparse.Namespace, pids: list[int], bridge_pid: int | None
) -> dict[str, float]:
    """wrk's figures for ``url``, and CPU µs per request: ``cpu_us`` of every process in
    ``pids``, ``bridge_cpu_us`` of the bridge process ``bridge_pid`` alone (if known)."""
    from rpc import cpu_s  # bench/rpc.py

    wrk(url, args.warmup, args.connections)  # warm-up: JIT-free, but caches and pools fill
    loadavg = Path("/proc/loadavg").read_text().split()[0]
    counted = {"cpu_us": pids} | ({"bridge_cpu_us": [bridge_pid]} if bridge_pid else {})
    before = {key: cpu_s(group) for key, group in counted.items()}
    result = wrk(url, args.duration, args.connections)
    requests = max(1.0, result["rps"] * args.duration)
    for key, group in counted.items():
        result[key] = (cpu_s(group) - before[key]) * 1e6 / requests
    cpu = f"CPU/request {result['cpu_us']:.0f} µs"
    if bridge_pid:
        cpu += f" (the bridge {result['bridge_cpu_us']:.1f})"
    print(
        f"  {label:<35} {result['rps']:>9.0f} req/s  p50 {result['p50']:6.2f} ms  "
        f"p99 {result['p99']:6.2f} ms  errors {result['errors']}  {cpu}  (loadavg {loadavg})",
        flush=True,
    )
    return result


# -- the run -------------------------------------------------------------------------------------


def npm_ready(folder: Path, package: str) -> Path:
    """A writable copy of a peer folder with its npm dependencies installed."""
    target = WORK / folder.name
    if not (target / "node_modules" / package).is_dir():
        shutil.copytree(
            folder,
            target,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("results", "node_modules", ".venv"),
        )
        for path in target.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=target,
            check=True,
        )
    return target


def run(args: argparse.Namespace) -> None:
    from natsreg.testing import NatsServer

    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: install it with 'apt-get install -y wrk' (Debian's package)")
    me, py = str(Path(__file__).resolve()), sys.executable
    WORK.mkdir(parents=True, exist_ok=True)
    procs = Procs()
    results: dict[str, list[dict[str, float]]] = {}
    with NatsServer(host=LOOPBACK) as nats_server:
        url = nats_server.url
        try:
            service = procs.start([py, me, "service", "--server", url])
            wait_line(service, "READY")
            targets: dict[str, str] = {}

            port = free_port()
            scrape = ["--scrape"] if args.metrics else []
            argv = [py, me, "natsreg-bridge", "--server", url, "--port", str(port)]
            proc = procs.start(argv + scrape)
            wait_line(proc, "READY")
            targets["natsreg bridge"] = f"http://{LOOPBACK}:{port}/{SERVICE}/{ENDPOINT}"
            # Each natsreg bridge's process, whose own CPU per request is reported too.
            bridge_pids = {"natsreg bridge": proc.pid}

            if args.metrics:
                port = free_port()
                argv = [py, me, "natsreg-bridge", "--server", url, "--port", str(port)]
                proc = procs.start(argv, env={"NATSREG_METRICS": "0"})
                wait_line(proc, "READY")
                targets[METRICS_OFF] = f"http://{LOOPBACK}:{port}/{SERVICE}/{ENDPOINT}"
                bridge_pids[METRICS_OFF] = proc.pid

            if args.trace:
                # The same bridge, called inside a trace: a '#' keeps the URL a label of its own.
                traced = targets["natsreg bridge"] + "#traced"
                TRACED_URLS.add(traced)
                targets[TRACE_CONTEXT] = traced
                bridge_pids[TRACE_CONTEXT] = bridge_pids["natsreg bridge"]
                service = procs.start([py, me, "service", "--server", url, "--spans"])
                wait_line(service, "READY")
                port = free_port()
                argv = [py, me, "natsreg-bridge", "--server", url, "--port", str(port), "--spans"]
                proc = procs.start(argv + scrape)
                wait_line(proc, "READY")
                targets[SPANS] = f"http://{LOOPBACK}:{port}/{SPANS_SERVICE}/{ENDPOINT}"
                bridge_pids[SPANS] = proc.pid

            if args.dashboard:
                # The dashboard shows what a registry node knows: one runs for every bridge.
                natsreg_cli = str(Path(py).with_name("natsreg"))
                procs.start(
                    [natsreg_cli, "registry", "--server", url, "--prefix", "bench"],
                    log=WORK / "registry.log",
                )
                port = free_port()
                argv = [py, me, "natsreg-bridge", "--server", url, "--port", str(port)]
                proc = procs.start(argv + scrape)
                wait_line(proc, "READY")
                targets[DASHBOARD] = f"http://{LOOPBACK}:{port}/{SERVICE}/{ENDPOINT}"
                bridge_pids[DASHBOARD] = proc.pid
                page = procs.start([py, me, "dashboard", "--url", f"http://{LOOPBACK}:{port}"])
                wait_line(page, "READY")

            baseline = WORK / "py-baseline.py"
            shutil.copy(PEERS / "seed-gateway" / "py-baseline.py", baseline)
            port = free_port()
            proc = procs.start(
                [
                    py,
                    str(baseline),
                    "bridge",
                    "--loop",
                    "uvloop",
                    "--server",
                    url,
                    "--port",
                    str(port),
                ]
            )
            wait_line(proc, "READY")
            targets["aiohttp bridge"] = f"http://{LOOPBACK}:{port}/api/users/{ENDPOINT}"

            if args.workers > 1:
                # The same bridge as `natsreg bridge --workers N` runs it: N processes on one
                # port (SO_REUSEPORT) under the run supervisor.
                port = free_port()
                natsreg_cli = str(Path(py).with_name("natsreg"))
                argv = [natsreg_cli, "bridge", "--workers", str(args.workers), "--server", url]
                argv += ["--prefix", "bench", "--host", LOOPBACK, "--port", str(port)]
                procs.start(argv, log=WORK / "natsreg-bridge-workers.log")
                targets[f"natsreg bridge, {args.workers} workers"] = (
                    f"http://{LOOPBACK}:{port}/{SERVICE}/{ENDPOINT}"
                )

            if args.stacks:
                port = free_port()
                procs.start([py, me, "natsreg-bridge-h11", "--server", url, "--port", str(port)])
                targets["natsreg app, uvicorn h11"] = (
                    f"http://{LOOPBACK}:{port}/{SERVICE}/{ENDPOINT}"
                )
                port = free_port()
                granian = shutil.which("granian", path=os.path.dirname(py))
                if granian:
                    procs.start(
                        [
                            granian,
                            "--interface",
                            "asgi",
                            "--loop",
                            "uvloop",
                            "--workers",
                            "1",
                            "--host",
                            LOOPBACK,
                            "--port",
                            str(port),
                            "--log-level",
                            "warning",
                            "--no-ws",
                            "--working-dir",
                            str(HERE),
                            "--factory",
                            "bridge:granian_app",
                        ],
                        env={"NATS_URL": url},
                        log=WORK / "granian.log",
                    )
                    targets["natsreg app, granian"] = (
                        f"http://{LOOPBACK}:{port}/{SERVICE}/{ENDPOINT}"
                    )

            if args.peers:
                mol = npm_ready(PEERS / "moleculer", "moleculer-web")
                env = {"NATS_URL": url, "MOL_NAMESPACE": "bench"}
                procs.start(
                    ["node", "svc.js"],
                    cwd=mol,
                    env={**env, "NODE_ID": "svc"},
                    log=WORK / "moleculer-svc.log",
                )
                port = free_port()
                procs.start(
                    ["node", "gateway.js"],
                    cwd=mol,
                    env={**env, "NODE_ID": "gateway", "HTTP_PORT": str(port)},
                    log=WORK / "moleculer-gateway.log",
                )
                wait_file_line(WORK / "moleculer-gateway.log", "READY")
                targets["moleculer-web"] = (
                    f"http://{LOOPBACK}:{port}/api/users/echo?id=1&name=alice"
                )

                seed = npm_ready(PEERS / "seed-gateway", "express")
                ports = [free_port(), free_port()]
                for p in ports:
                    procs.start(
                        ["node", "user-service.js", str(p)],
                        cwd=seed,
                        log=WORK / f"user-service-{p}.log",
                    )
                port = free_port()
                procs.start(
                    ["node", "gateway.js"],
                    cwd=seed,
                    log=WORK / "seed-gateway.log",
                    env={
                        "GATEWAY_PORT": str(port),
                        "USER_SERVICE_INSTANCES": ",".join(f"{LOOPBACK}:{p}" for p in ports),
                    },
                )
                for p in ports:
                    wait_http(f"http://{LOOPBACK}:{p}/health")
                targets["classic gateway"] = f"http://{LOOPBACK}:{port}/api/users/users"

            for label, target in targets.items():
                print(f"# {label}: {target} -> {wait_http(target)[:80]!r}", flush=True)
            print(
                f"# {os.cpu_count()} cores, wrk -t2 -c{args.connections} "
                f"-d{args.duration:g}s --latency (after {args.warmup:g} s warm-up), "
                f"{args.rounds} round(s)",
                flush=True,
            )
            if args.dashboard:
                idle_cpu(bridge_pids["natsreg bridge"], bridge_pids[DASHBOARD], args.duration)
            labels = list(targets)
            # The Python bridges (natsreg's modes, then aiohttp's) take turns to go first.
            python = labels.index("aiohttp bridge") + 1
            pids = [nats_server.process.pid] + [p.pid for p in procs.procs]
            for round_ in range(args.rounds):
                print(f"round {round_ + 1}", flush=True)
                turn = round_ % python
                order = labels[turn:python] + labels[:turn] + labels[python:]
                for label in order:
                    result = measure(label, targets[label], args, pids, bridge_pids.get(label))
                    results.setdefault(label, []).append(result)
        finally:
            procs.stop_all()
    report(results)


def idle_cpu(plain: int, dashboard: int, seconds: float) -> None:
    """Each bridge's CPU while no request comes: the dashboard's feed is all that runs."""
    from rpc import cpu_s  # bench/rpc.py

    before = cpu_s([plain]), cpu_s([dashboard])
    time.sleep(seconds)
    used = cpu_s([plain]) - before[0], cpu_s([dashboard]) - before[1]
    print(
        f"# idle for {seconds:g} s: CPU {used[0] * 1e3 / seconds:.1f} ms/s for the plain bridge, "
        f"{used[1] * 1e3 / seconds:.1f} ms/s for the one with a dashboard open",
        flush=True,
    )


def dashboard_report(results: dict[str, list[dict[str, float]]]) -> None:
    """The dashboard's bridge against the plain one, round by round, against the noise: how
    far the plain bridge's own figures move from round to round in this run."""
    plain, watched = results["natsreg bridge"], results[DASHBOARD]
    for key, what in (("rps", "req/s"), ("bridge_cpu_us", "bridge CPU per request")):
        ratios = [w[key] / p[key] for p, w in zip(plain, watched, strict=True) if p[key]]
        own = [p[key] for p in plain]
        spread = (max(own) - min(own)) / statistics.median(own) if len(own) > 1 else math.nan
        ratio = statistics.median(ratios)
        rounds = ", ".join(f"{r:.3f}" for r in ratios)
        verdict = "met" if abs(1 - ratio) <= spread else "NOT met"
        print(
            f"goal dashboard open within noise, {what}: {ratio:.3f}× (rounds {rounds}); "
            f"the plain bridge's spread over the rounds {spread:.1%}: {verdict}"
        )


def report(results: dict[str, list[dict[str, float]]]) -> None:
    median = {
        label: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for label, runs in results.items()
    }
    ours = median["natsreg bridge"]
    print("\n| bridge | req/s | p50 ms | p99 ms | errors | natsreg ÷ this |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, m in median.items():
        ratio = ours["rps"] / m["rps"] if m["rps"] else float("nan")
        print(
            f"| {label} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | "
            f"{m['errors']:.0f} | {ratio:.2f}× |"
        )
    goals = {"aiohttp bridge": 1.2, "moleculer-web": 1.5, "classic gateway": 5.0}
    print()
    for label, goal in goals.items():
        if label in median and median[label]["rps"]:
            ratio = ours["rps"] / median[label]["rps"]
            print(
                f"goal natsreg ≥ {goal}× {label}: {ratio:.2f}× "
                f"{'met' if ratio >= goal else 'NOT met'}"
            )
    print(f"goal p99 < 20 ms: {ours['p99']:.2f} ms {'met' if ours['p99'] < 20 else 'NOT met'}")
    if METRICS_OFF in median:
        ratio = ours["rps"] / median[METRICS_OFF]["rps"]
        verdict = "met" if ratio >= 0.97 else "NOT met"
        print(f"goal natsreg ≥ 0.97× metrics off: {ratio:.3f}× {verdict}")
        on, off = ours["bridge_cpu_us"], median[METRICS_OFF]["bridge_cpu_us"]
        print(f"bridge CPU per request: {on:.1f} µs with metrics, {off:.1f} µs without")
    if DASHBOARD in results:
        dashboard_report(results)
    for label, goal in ((TRACE_CONTEXT, 0.97), (SPANS, 0.8)):
        traced = median.get(label)
        if traced is not None:
            ratio = traced["rps"] / ours["rps"]
            p50 = traced["p50"] / ours["p50"]
            print(
                f"goal natsreg bridge with {label.removeprefix('natsreg bridge, ')} ≥ {goal}× "
                f"without: {ratio:.2f}× req/s "
                f"{'met' if ratio >= goal else 'NOT met'} (p50 {p50:.2f}×); "
                f"CPU µs/request {traced['cpu_us']:.0f} against {ours['cpu_us']:.0f}: "
                f"{ours['cpu_us'] / traced['cpu_us']:.2f}×"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the whole comparison")
    # Whole seconds: wrk's -d takes no fractions.
    r.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    r.add_argument("--warmup", type=int, default=3, help="uncounted seconds before each")
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--connections", type=int, default=64)
    r.add_argument("--quick", action="store_true", help="1 round of 3 s, 1 s warm-up")
    r.add_argument("--stacks", action="store_true", help="also uvicorn h11 and granian")
    r.add_argument("--no-peers", dest="peers", action="store_false", help="skip Node peers")
    r.add_argument("--workers", type=int, default=1, help="also natsreg bridge --workers N (N > 1)")
    r.add_argument("--metrics", action="store_true", help="also a bridge with NATSREG_METRICS=0")
    r.add_argument("--trace", action="store_true", help="also trace context, and OpenTelemetry")
    r.add_argument("--dashboard", action="store_true", help="also a bridge with a dashboard open")
    d = sub.add_parser("dashboard", help="(started by run) an open dashboard's requests")
    d.add_argument("--url", required=True)
    for name in ("service", "natsreg-bridge", "natsreg-bridge-h11"):
        s = sub.add_parser(name, help="(started by run)")
        s.add_argument("--server", required=True)
        s.add_argument("--port", type=int, default=0)
        s.add_argument("--scrape", action="store_true", help="build the exposition every second")
        s.add_argument("--spans", action="store_true", help="with OpenTelemetry's SDK")
    args = parser.parse_args()
    if args.command == "run":
        if args.quick:
            args.duration, args.warmup, args.rounds = 3, 1, 1
        run(args)
        return
    if args.command == "dashboard":
        if not args.url.startswith(f"http://{LOOPBACK}:"):
            sys.exit(f"loopback only: {args.url}")
        dashboard_client(args.url)
        return
    if not re.match(r"^nats://(127\.0\.0\.1|localhost):\d+$", args.server):
        sys.exit(f"loopback only: {args.server}")
    import uvloop

    if args.command == "service":
        uvloop.run(echo_service(args.server, args.spans))
    elif args.command == "natsreg-bridge":
        uvloop.run(natsreg_bridge(args.server, args.port, args.scrape, args.spans))
    else:
        uvloop.run(_h11_bridge(args.server, args.port))


async def _h11_bridge(url: str, port: int) -> None:
    # The same app under uvicorn's pure-Python h11 parser, for the choice of HTTP stack.
    import nats
    import uvicorn

    from natsreg import bridge

    nc = await nats.connect(url)
    app = bridge.create_app(nc, bridge.BridgeConfig(prefix="bench"))
    config = uvicorn.Config(
        app,
        host=LOOPBACK,
        port=port,
        http="h11",
        lifespan="off",
        log_config=None,
        access_log=False,
        loop="none",
    )
    await uvicorn.Server(config).serve()
    await nc.close()


if __name__ == "__main__":
    main()
