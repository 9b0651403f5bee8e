"""CPU instructions a responder spends per request: natsreg against raw nats-py, same run.

Throughput on a shared 2-core machine moves by 20% from one run to the next; the number of
instructions a process executes does not. This runs bench/rpc.py's responder (a raw nats-py
echo and a natsreg echo endpoint in one process) under valgrind's callgrind, sends it N and
then 4N requests of one mode at concurrency 16, and takes the difference, so start-up cancels
out: what is left is the cost of one request, in instructions, for that mode.

    python bench/instructions.py              # 1,000 and 4,000 requests per mode (~3 min)
    python bench/instructions.py --requests 500
    python bench/instructions.py --metrics    # also natsreg with NATSREG_METRICS=0
    python bench/instructions.py --metrics --caller   # the same, counted in the caller
    python bench/instructions.py --metrics --caller --bridge   # and the bridge's ASGI app as
                                                               # the caller (no HTTP server)
    python bench/instructions.py --trace      # also natsreg calls made inside a trace
    python bench/instructions.py --trace --caller     # the same, counted in the caller
    python bench/instructions.py --trace --caller --bridge    # and an HTTP request with a
                                                              # traceparent through the bridge

Needs valgrind (Debian: apt-get install -y valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats

import natsreg
from natsreg import _trace
from natsreg.testing import NatsServer

sys.path.insert(0, str(Path(__file__).parent))
import rpc

CONCURRENCY = 16
_TOTAL = re.compile(r"^(?:summary|totals): (\d+)", re.MULTILINE)


async def _load(url: str, mode: str, requests: int) -> None:
    nc = await nats.connect(url)
    client = natsreg.Client(nc, timeout_s=60.0)
    calls = {
        "raw": lambda: nc.request(rpc.RAW_SUBJECT, rpc.PAYLOAD, timeout=60.0),
        "natsreg": lambda: client.request(rpc.NATSREG_SUBJECT, rpc.PAYLOAD),
    }
    calls["trace-context"] = calls["natsreg"]
    if mode == "trace-context":
        _trace.current.set(rpc.TRACE)  # each call carries a traceparent
    if mode.startswith("bridge"):
        call = _bridge_call(nc, traced=mode == "bridge-trace-context")
    else:
        call = calls[mode]
    result = await rpc.run_load(call, CONCURRENCY, 600.0, requests)
    await client.aclose()
    await nc.close()
    if result["errors"]:
        raise SystemExit(f"{result['errors']} requests failed")


def _bridge_call(nc: nats.NATS, traced: bool = False) -> Callable[[], Awaitable[None]]:
    """One GET through the bridge's ASGI app to the echo service, without an HTTP server;
    ``traced``: with rpc.TRACE's ``traceparent`` header, as from a traced HTTP client."""
    from natsreg import bridge

    app = bridge.create_app(nc, bridge.BridgeConfig(prefix="bench"))
    path = f"/{rpc.SERVICE}/echo"
    headers = [(b"host", b"127.0.0.1")]
    if traced:
        headers.append((b"traceparent", _trace.outgoing(rpc.TRACE)[0].encode()))
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
    }

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"the bridge answered {message['status']}")

    return lambda: app(scope, receive, send)


def _callgrind(out: Path, *argv: str) -> list[str]:
    return [
        "valgrind",
        "-q",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        *argv,
    ]


def _total(out: Path) -> int:
    match = _TOTAL.search(out.read_text())
    if match is None:
        raise SystemExit("callgrind wrote no total")
    return int(match.group(1))


def counted_parts(script: str, count: int) -> list[int]:
    """Run ``python script --run count`` under callgrind, which dumps its count each time the
    script calls ``os.getppid()`` (around each part it measures): the parts' totals in order,
    start-up first."""
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind: apt-get install -y valgrind")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        argv = _callgrind(out, script, "--run", str(count))
        argv.insert(3, "--dump-before=getppid")
        subprocess.run(argv, check=True, timeout=3600)
        parts = sorted(Path(folder).glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
        return [_total(part) for part in parts]


def count(step: Callable[[], object], n: int, settle: Callable[[], object] = lambda: None) -> None:
    """One count for :func:`counted_parts`, in the process callgrind runs: ``step`` 50 times
    as a warm-up (first-use costs, caches), then ``n`` times between two dumps (each
    ``os.getppid()``); ``settle`` runs before each dump (a span processor's queue flushed, so
    its export thread's work falls in the count it belongs to)."""
    for _ in range(50):
        step()
    settle()
    os.getppid()
    for _ in range(n):
        step()
    settle()
    os.getppid()


def counted_main(
    doc: str, script: str, run: Callable[[int], None], steps: str, counts: int
) -> tuple[int, list[int]] | None:
    """The command line of a script measured by :func:`counted_parts`: ``--<steps> N`` (the
    steps in each count, 2000 by default). Run again by callgrind with ``--run N``, it calls
    ``run(N)`` and returns None; else N and the totals of the ``counts`` counts, each between
    two dumps (the parts before them, start-up and warm-ups, left out)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument(f"--{steps}", type=int, default=2000, help=f"N: {steps} per count (2000)")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run is not None:
        run(args.run)
        return None
    n: int = getattr(args, steps)
    totals = counted_parts(script, n)
    if len(totals) != 2 * counts:
        raise SystemExit(f"expected a dump before and after each count, got {len(totals)}")
    return n, totals[1::2]


def caller_instructions(
    url: str, mode: str, requests: int, env: dict[str, str] | None = None
) -> int:
    """Instructions a caller process executed, start to end, making ``requests`` calls."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        argv = _callgrind(out, __file__, "--load", url, mode, str(requests))
        subprocess.run(argv, env={**os.environ, **(env or {})}, check=True, timeout=1200)
        return _total(out)


def instructions(url: str, mode: str, requests: int, env: dict[str, str] | None = None) -> int:
    """Instructions the responder process executed, start to end, serving ``requests``."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        responder = subprocess.Popen(
            _callgrind(out, str(Path(__file__).with_name("rpc.py")), "--serve", url),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        try:
            assert responder.stdout is not None and responder.stdin is not None
            if responder.stdout.readline().strip() != "ready":
                raise SystemExit("the responder did not start under valgrind")
            asyncio.run(_load(url, mode, requests))
            responder.stdin.close()
            responder.wait(timeout=300)
        finally:
            if responder.poll() is None:
                responder.kill()
        return _total(out)


@contextlib.contextmanager
def _plain_responder(url: str, wanted: bool) -> Iterator[None]:
    """bench/rpc.py's responder, not under valgrind, while the callers are counted."""
    if not wanted:
        yield
        return
    responder = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("rpc.py")), "--serve", url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert responder.stdout is not None and responder.stdin is not None
        if responder.stdout.readline().strip() != "ready":
            raise SystemExit("the responder did not start")
        yield
    finally:
        if responder.stdin is not None:
            responder.stdin.close()
        try:
            responder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            responder.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=1000,
        help="N: runs of N and 4N requests per mode (default: 1000)",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="also 'no-metrics': the natsreg echo with NATSREG_METRICS=0 in the responder",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="also 'trace-context': natsreg calls made inside a trace (no OpenTelemetry SDK)",
    )
    parser.add_argument(
        "--caller",
        action="store_true",
        help="count the caller's instructions (the responder runs without valgrind)",
    )
    parser.add_argument(
        "--bridge",
        action="store_true",
        help="with --caller: also the bridge's ASGI app as the caller ('bridge' modes)",
    )
    parser.add_argument("--load", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        url, mode, requests = args.load
        asyncio.run(_load(url, mode, int(requests)))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind: apt-get install -y valgrind")
    n = args.requests
    per_request = {}
    # label -> (the caller's mode, the responder's environment)
    modes = {"raw": ("raw", {}), "natsreg": ("natsreg", {})}
    if args.metrics:
        modes["no-metrics"] = ("natsreg", {"NATSREG_METRICS": "0"})
    if args.trace:
        modes["trace-context"] = ("trace-context", {})
    if args.bridge and args.caller:
        modes["bridge"] = ("bridge", {})
        if args.metrics:
            modes["bridge, no-metrics"] = ("bridge", {"NATSREG_METRICS": "0"})
        if args.trace:
            modes["bridge, trace-context"] = ("bridge-trace-context", {})
    with NatsServer() as server, _plain_responder(server.url, args.caller):
        count = caller_instructions if args.caller else instructions
        for mode, (call, env) in modes.items():
            small = count(server.url, call, n, env)
            large = count(server.url, call, 4 * n, env)
            per_request[mode] = (large - small) / (3 * n)
            print(
                f"  {mode:<8} {per_request[mode]:>10,.0f} instructions per request", file=sys.stderr
            )
    raw = per_request["raw"]
    print(
        f"\n{'caller' if args.caller else 'responder'} instructions per request, "
        f"concurrency {CONCURRENCY}, "
        f"{n:,} and {4 * n:,} requests per mode (python {sys.version.split()[0]})\n"
    )
    print("| mode | instructions per request | vs raw |")
    print("|---|---:|---:|")
    for mode, value in per_request.items():
        print(f"| {mode} | {value:,.0f} | {value / raw:.2f}x |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
