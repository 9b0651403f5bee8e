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

Needs valgrind (Debian: apt-get install -y valgrind). Results: bench/RESULTS.md, "Typed
endpoints".
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="N (then 4N) per mode")
    parser.add_argument("--run", choices=sorted(HANDLERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.requests < 1:
        parser.error("--requests must be at least 1")
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
