"""What one heartbeat costs a registry node, stage by stage, with NATS itself left out.

    python bench/heartbeat.py                 # 50,000 instances, 5 rounds of one heartbeat each
    python bench/heartbeat.py --instances 10000 --rounds 3

Each stage runs over the same pre-encoded heartbeats (one per instance per round, as a fleet
sends them), timed with ``time.perf_counter`` on this process' one core; the figures are
microseconds per heartbeat, medians over the rounds:

- ``nats-py parse``: nats-py's protocol parser reading the ``MSG`` frames (what its read loop
  does for every message, before any subscription sees it), with a callback that does nothing:
  the floor any Python subscriber pays, and the baseline here;
- ``decode``, ``check``, ``apply``: the node's own steps (``wire.decode_control``,
  ``wire.check``, ``View.apply``);
- ``handler``: ``Registry._on_control`` whole (size check, decode, subject against body, check,
  apply, pacing), on a node that holds every instance.

What nats-py adds between its parser and the handler (building the ``Msg``, the subscription's
queue and task) is in the py-spy profile of ``bench/scale.py --profile`` instead.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg
from nats.protocol.parser import Parser

import natsreg
from natsreg import subjects, wire

PREFIX = "bench"


class _Sink:
    """What the parser calls back: nothing is done with a message."""

    async def _process_msg(self, *args: Any) -> None:
        return None


def frames(beats: list[tuple[str, bytes]]) -> bytes:
    return b"".join(
        b"MSG %s 1 %d\r\n%s\r\n" % (subject.encode(), len(data), data) for subject, data in beats
    )


def per_beat_us(run: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) / count * 1e6


async def main(instances: int, rounds: int) -> None:
    ids = [f"inst-{n}" for n in range(instances)]
    names = [f"svc-{n % 100}" for n in range(instances)]
    node = natsreg.Registry(None, prefix=PREFIX)  # type: ignore[arg-type]  # never entered
    for instance_id, name in zip(ids, names, strict=True):
        announce = wire.Announce(id=instance_id, name=name, version="1.0.0", seq=1)
        node._view.apply(announce)
    figures: dict[str, list[float]] = {}
    for round_ in range(rounds):
        seq = 2 * round_ + 2  # the handler's; apply alone gets the next number
        beats = [
            (
                subjects.control_subject(PREFIX, "hb", name, instance_id),
                wire.encode(wire.Heartbeat(id=instance_id, name=name, seq=seq)),
            )
            for instance_id, name in zip(ids, names, strict=True)
        ]
        wire_bytes = frames(beats)
        parser = Parser(_Sink())
        decoded = [wire.decode_control(data) for _, data in beats]
        msgs = [Msg(None, subject=s, data=d) for s, d in beats]  # type: ignore[arg-type]

        start = time.perf_counter()
        await parser.parse(wire_bytes)
        figures.setdefault("nats-py parse", []).append(
            (time.perf_counter() - start) / instances * 1e6
        )
        figures.setdefault("decode", []).append(
            per_beat_us(lambda beats=beats: [wire.decode_control(d) for _, d in beats], instances)
        )
        figures.setdefault("check", []).append(
            per_beat_us(lambda decoded=decoded: [wire.check(m) for m in decoded], instances)
        )
        start = time.perf_counter()
        for msg in msgs:
            await node._on_control(msg)
        figures.setdefault("handler", []).append((time.perf_counter() - start) / instances * 1e6)
        later = [wire.Heartbeat(id=m.id, name=m.name, seq=m.seq + 1) for m in decoded]
        start = time.perf_counter()
        outcomes = [node._view.apply(m) for m in later]
        figures.setdefault("apply", []).append((time.perf_counter() - start) / instances * 1e6)
        assert not any(o.dropped for o in outcomes)
    assert not node.dropped and len(node._view) == instances, node.dropped
    base = statistics.median(figures["nats-py parse"])
    print(f"{instances} instances, {rounds} rounds; µs per heartbeat (median), and vs parse:")
    for stage, values in figures.items():
        value = statistics.median(values)
        print(f"  {stage:14} {value:6.2f} µs  {value / base:5.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.instances, args.rounds))
