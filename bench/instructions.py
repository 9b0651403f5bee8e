"""CPU instructions a responder spends per request: natsreg against raw nats-py, same run.

Throughput on a shared 2-core machine moves by 20% from one run to the next; the number of
instructions a process executes does not. This runs bench/rpc.py's responder (a raw nats-py
echo and a natsreg echo endpoint in one process) under valgrind's callgrind, sends it N and
then 4N requests of one mode at concurrency 16, and takes the difference, so start-up cancels
out: what is left is the cost of one request, in instructions, for that mode.

    python bench/instructions.py              # 1,000 and 4,000 requests per mode (~3 min)
    python bench/instructions.py --requests 500
    python bench/instructions.py --trace      # also natsreg calls made inside a trace
    python bench/instructions.py --caller     # the calling process instead of the responder

Needs valgrind (Debian: apt-get install -y valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
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
        "trace-context": lambda: client.request(rpc.NATSREG_SUBJECT, rpc.PAYLOAD),
    }
    if mode == "trace-context":
        _trace.current.set(rpc.TRACE)  # each call carries a traceparent
    result = await rpc.run_load(calls[mode], CONCURRENCY, 600.0, requests)
    await client.aclose()
    await nc.close()
    if result["errors"]:
        raise SystemExit(f"{result['errors']} requests failed")


def instructions(url: str, mode: str, requests: int, caller: bool = False) -> int:
    """Instructions the responder process executed, start to end, serving ``requests``; with
    ``caller``, those of the process that sends them."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        responder = subprocess.Popen(
            [
                *([] if caller else valgrind),
                sys.executable,
                str(Path(__file__).with_name("rpc.py")),
                "--serve",
                url,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert responder.stdout is not None and responder.stdin is not None
            if responder.stdout.readline().strip() != "ready":
                raise SystemExit("the responder did not start")
            if caller:
                load = [sys.executable, __file__, "--load", url, mode, str(requests)]
                subprocess.run([*valgrind, *load], check=True, stderr=subprocess.DEVNULL)
            else:
                asyncio.run(_load(url, mode, requests))
            responder.stdin.close()
            responder.wait(timeout=300)
        finally:
            if responder.poll() is None:
                responder.kill()
        match = _TOTAL.search(out.read_text())
        if match is None:
            raise SystemExit("callgrind wrote no total")
        return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=1000,
        help="N: runs of N and 4N requests per mode (default: 1000)",
    )
    parser.add_argument("--trace", action="store_true", help="also calls made in a trace")
    parser.add_argument("--caller", action="store_true", help="count the caller's instead")
    parser.add_argument("--load", nargs=3, metavar=("URL", "MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        url, mode, requests = args.load
        asyncio.run(_load(url, mode, int(requests)))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind: apt-get install -y valgrind")
    n = args.requests
    per_request = {}
    with NatsServer() as server:
        for mode in ("raw", "natsreg", "trace-context") if args.trace else ("raw", "natsreg"):
            small = instructions(server.url, mode, n, args.caller)
            large = instructions(server.url, mode, 4 * n, args.caller)
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
