"""What parsing one received header block costs, in instructions: nats-py's parser against
natsreg's (natsreg/_headers.py), in one process under valgrind's callgrind.

Callgrind writes what it counted so far whenever the process calls ``getppid()``, which the
script does around each count (N parses after a warm-up) and nothing else in it does.

    python bench/headers.py                  # 2,000 parses per block and parser
    python bench/headers.py --parses 500

Needs valgrind (Debian: apt-get install -y valgrind).
"""

from __future__ import annotations

import functools
import os

from instructions import count, counted_main

BUDGET_AND_ID = b"Natsreg-Budget-Ms: 4999\r\nNatsreg-Request-Id: Wq3x9J0PqYH7mRhYvN6zQb-17\r\n\r\n"
BLOCKS = {
    "budget and request id": BUDGET_AND_ID,
    "budget, request id and traceparent": BUDGET_AND_ID[:-2]
    + b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-3e1f0a9b8c7d6e5f-01\r\n\r\n",
}


def _run(parses: int) -> None:
    from nats.aio.client import Client

    from natsreg._headers import parse_header_lines

    for parse in (Client._parse_header_lines, parse_header_lines):
        for raw in BLOCKS.values():
            # The warm-up teaches natsreg's parser the names, as a service's learns them.
            count(functools.partial(parse, raw), parses)


def main() -> None:
    measured = counted_main(__doc__, __file__, _run, "parses", 2 * len(BLOCKS))
    if measured is None:
        return
    n, totals = measured
    counts = [total / n for total in totals]
    print(f"\ninstructions per parse, {n:,} parses per count, in one process\n")
    print("| headers | nats-py's parser | natsreg's |")
    print("|---|---:|---:|")
    for i, name in enumerate(BLOCKS):
        print(f"| {name} | {counts[i]:,.0f} | {counts[len(BLOCKS) + i]:,.0f} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
