"""CPU instructions a typed endpoint adds to a request: the same handler work, typed against
untyped, counted in one run under valgrind's callgrind.

Each mode builds a Request and runs the handler chain the service runs for it (no NATS: what
is measured is the service's own part, which the typed check changes), N and then 4N times,
and takes the difference so that start-up cancels out:

- ``untyped``: the handler decodes the payload itself (``req.decode(UserQuery)``) and returns
  a Struct, which is encoded: what a careful untyped endpoint does;
- ``typed``: the same handler typed (``req: Request[UserQuery]) -> User``), behind the check
  natsreg puts innermost (``natsreg/service/_typed.py``).

    python bench/typed.py                  # 2,000 and 8,000 requests per mode (~1 min)
    python bench/typed.py --requests 500
    python bench/typed.py --fleet 50000    # a peer's snapshot of typed instances, decoded and
                                           # checked as a warming registry node does, against
                                           # the same fleet untyped (time, same run)

Needs valgrind (Debian: apt-get install -y valgrind). Results: bench/RESULTS.md, "Typed
endpoints".
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from natsreg import _schemas, wire
from natsreg._codec import to_bytes
from natsreg.service._request import Request
from natsreg.service._typed import BodyTypes, validating

_TOTAL = re.compile(r"^(?:summary|totals): (\d+)", re.MULTILINE)


class UserQuery(msgspec.Struct):
    id: int


class User(msgspec.Struct):
    id: int
    name: str


class _Msg:
    subject = "user-service.users"
    data = b'{"id": 1}'
    headers = None
    reply = "_INBOX.x"


async def _untyped(req: Request[Any]) -> User:
    query = req.decode(UserQuery)
    return User(id=query.id, name="alice")


async def _typed(req: Request[UserQuery]) -> User:
    return User(id=req.body.id, name="alice")


HANDLERS = {"untyped": _untyped, "typed": validating(_typed, BodyTypes(UserQuery, User))}


async def _serve(mode: str, requests: int) -> None:
    handler, msg = HANDLERS[mode], _Msg()
    for _ in range(requests):
        to_bytes(await handler(Request(msg)))  # type: ignore[arg-type]


def _instructions(mode: str, requests: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--run",
                mode,
                "--requests",
                str(requests),
            ],
            check=True,
            capture_output=True,
        )
        match = _TOTAL.search(out.read_text(errors="replace"))
        assert match is not None, "no instruction total in callgrind's output"
        return int(match.group(1))


class Profile(msgspec.Struct):
    id: int
    name: str
    email: str
    roles: list[str]
    address: dict[str, str] = {}


def _fleet(instances: int) -> None:
    """Decode and check a snapshot of ``instances`` (two endpoints each), typed and not."""
    schemas = wire.Schemas(request=_schemas.of_type(UserQuery), response=_schemas.of_type(Profile))
    print(f"| {instances:,} instances | decode | check | bytes |")
    print("|---|---:|---:|---:|")
    for typed in (None, schemas):
        endpoints = [
            wire.Endpoint(name=f"e{n}", subject=f"svc.e{n}", queue_group="svc", schemas=typed)
            for n in range(2)
        ]
        views = [
            wire.InstanceView(id=f"i{n}", name="svc", version="1.0.0", endpoints=endpoints)
            for n in range(instances)
        ]
        data = wire.encode(wire.Snapshot(node="n", revision=1, instances=views))
        del views
        gc.collect()
        started = time.perf_counter()
        snapshot = wire.decode_snapshot(data)
        decoded = time.perf_counter()
        for view in snapshot.instances:
            wire.check(view)
        checked = time.perf_counter()
        del snapshot
        print(
            f"| {'typed' if typed else 'untyped'} | {decoded - started:.2f} s "
            f"| {checked - decoded:.2f} s | {len(data) / 1e6:.1f} MB |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="N (then 4N) per mode")
    parser.add_argument("--fleet", type=int, metavar="N", help="decode and check N instances")
    parser.add_argument("--run", choices=sorted(HANDLERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.requests < 1 or (args.fleet is not None and not 1 <= args.fleet <= 200_000):
        parser.error("--requests must be at least 1, --fleet between 1 and 200000")
    if args.fleet:
        _fleet(args.fleet)
        return
    if args.run:
        asyncio.run(_serve(args.run, args.requests))
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench/typed.py: valgrind is not installed (apt-get install -y valgrind)")
    per_request = {}
    for mode in ("untyped", "typed"):
        n = args.requests
        print(f"{mode}: {n} and {4 * n} requests under callgrind...", file=sys.stderr)
        per_request[mode] = (_instructions(mode, 4 * n) - _instructions(mode, n)) / (3 * n)
    base = per_request["untyped"]
    print("| handler chain | instructions per request | vs untyped |")
    print("|---|---:|---:|")
    for mode, count in per_request.items():
        print(f"| {mode} | {count:,.0f} | {count / base:.2f}x |")


if __name__ == "__main__":
    main()
