"""What one heartbeat costs a registry node, stage by stage, with NATS itself left out.

    python bench/heartbeat.py                 # 50,000 instances, 5 rounds of one heartbeat each
    python bench/heartbeat.py --instances 10000 --rounds 3
    python bench/heartbeat.py --instructions  # the same stages in CPU instructions (callgrind)
    python bench/heartbeat.py --delivery      # how nats-py hands a subscription its messages
    python bench/heartbeat.py --fleet 10000 --profile bench/profile   # a node's CPU, from outside

Each stage runs over the same pre-encoded heartbeats (one per instance per round, as a fleet
sends them), timed with ``time.perf_counter`` on this process' one core; the figures are
microseconds per heartbeat, medians over the rounds:

- ``nats-py parse``: nats-py's protocol parser reading the ``MSG`` frames (what its read loop
  does for every message, before any subscription sees it), with a callback that does nothing:
  the floor any Python subscriber pays, and the baseline here;
- ``decode``, ``check``, ``apply``: the node's own steps (``wire.decode_control``,
  ``wire.check``, ``View.apply``);
- ``handler``: ``Registry._on_control`` whole (size check, decode, subject against body, check,
  apply), on a node that holds every instance;
- ``read: callback`` and ``read: inbox``: what the node's read loop does for a heartbeat, from
  the bytes read to the view: nats-py's parser, then the message handed to the handler, by
  nats-py's way (a ``Msg``, its queue and a task calling back) or by natsreg's
  (``registry/_inbox.py``: the parser hands subject and payload to the node's own queue), each
  on a node of its own; the bytes come in 16 KiB reads, each followed by a turn of the event
  loop, as from a socket;
- ``apply+sweep``: ``View.apply`` and the node's sweep (``View.expire`` every 0.1 s) in a
  steady state, on a view of its own with a simulated clock: each round is one second, in
  which every instance heartbeats once, a tenth of them between two sweeps.

``--instructions`` counts the same stages in CPU instructions under valgrind's callgrind, which
a loaded machine does not move: every stage but ``decode`` and ``check`` is run alone for one
round and for three over the same instances, and the difference, over two rounds of
heartbeats, is one heartbeat's cost (``--instances 10000``: about 20 minutes).

``--delivery`` measures what comes between nats-py's parser and a handler, against a real
nats-server: the messages are let pile up in a subscription's queue, then drained through each
way nats-py's public API offers to read them (a callback, ``async for msg in sub.messages``,
``sub.next_msg()``); microseconds per message, with a handler that does nothing.

``--fleet N`` measures the whole node from outside, as bench/scale.py does but without its
fresh-node and kill runs (which a loaded machine can stall): a registry node (its own
process) under ``N`` instances of bench/fleet.py heartbeating every second, its CPU over
``--window`` seconds, then (``--profile DIR``) a py-spy profile over another window.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol.parser import Parser

import natsreg
from natsreg import _natspy, subjects, wire
from natsreg.registry._backpressure import (
    PENDING_BYTES,
    PENDING_MSGS,
    YIELD_EVERY,
    control_inbox,
)
from natsreg.registry._view import View

PREFIX = "bench"
STAGES = (
    "nats-py parse",
    "decode",
    "check",
    "handler",
    "apply",
    "apply+sweep",
    "read: callback",
    "read: inbox",
)
READ_BYTES = 16 * 1024
SWEEPS_PER_S = 10
_TOTAL = re.compile(r"^(?:summary|totals): (\d+)", re.MULTILINE)


class _Sink:
    """What the parser calls back: nothing is done with a message."""

    async def _process_msg(self, *args: Any) -> None:
        return None


def frames(beats: list[tuple[str, bytes]]) -> bytes:
    return b"".join(
        b"MSG %s 1 %d\r\n%s\r\n" % (subject.encode(), len(data), data) for subject, data in beats
    )


class Reader:
    """A node of its own (never connected) and the way its heartbeats reach it from nats-py's
    parser: ``callback`` (nats-py's) or ``inbox`` (natsreg's)."""

    def __init__(self, way: str, ids: list[str], names: list[str]) -> None:
        self.nc = NATS()
        self.node = natsreg.Registry(self.nc, prefix=PREFIX)
        for instance_id, name in zip(ids, names, strict=True):
            announce = wire.Announce(id=instance_id, name=name, version="1.0.0", seq=1)
            self.node._view.apply(announce)
        self.way = way
        self._subject = subjects.control_subject(PREFIX, "hb", ">")

    async def start(self) -> None:
        on_control = self.node._on_control
        if self.way == "callback":
            handled = [0]

            async def cb(msg: Msg) -> None:
                # As the node did: a turn of the event loop every YIELD_EVERY messages.
                await on_control(msg.subject, msg.data)
                handled[0] += 1
                if handled[0] % YIELD_EVERY == 0:
                    await asyncio.sleep(0)

            limits = {"pending_msgs_limit": PENDING_MSGS, "pending_bytes_limit": PENDING_BYTES}
            sub = Subscription(self.nc, 1, self._subject, cb=cb, **limits)
            sub._start(None)  # type: ignore[no-untyped-call]
            self.nc._subs[1] = sub
            self.pending = lambda: sub.pending_msgs
        else:
            inbox = control_inbox(self._subject, on_control, lambda _: None)
            sub = Subscription(self.nc, 1, self._subject)
            self.nc._subs[1] = sub
            _natspy.hand_over(self.nc, sub, inbox.put)
            self._task = asyncio.create_task(inbox.read())
            self.pending = lambda: inbox.pending_msgs
        await asyncio.sleep(0)

    async def read(self, wire_bytes: bytes) -> None:
        """``wire_bytes`` read as from the socket, until every heartbeat is handled."""
        for at in range(0, len(wire_bytes), READ_BYTES):
            await self.nc._ps.parse(wire_bytes[at : at + READ_BYTES])
            await asyncio.sleep(0)
        while self.pending():
            await asyncio.sleep(0)


def per_beat_us(run: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) / count * 1e6


class Round:
    """One round's heartbeats, in every form a stage takes them."""

    def __init__(self, ids: list[str], names: list[str], seq: int) -> None:
        self.beats = [
            (
                subjects.control_subject(PREFIX, "hb", name, instance_id),
                wire.encode(wire.Heartbeat(id=instance_id, name=name, seq=seq)),
            )
            for instance_id, name in zip(ids, names, strict=True)
        ]
        self.wire_bytes = frames(self.beats)
        self.decoded = [wire.decode_control(data) for _, data in self.beats]
        # apply alone gets the next number, after the handler's
        self.later = [wire.Heartbeat(id=m.id, name=m.name, seq=m.seq + 1) for m in self.decoded]


async def main(instances: int, rounds: int, only: str | None, run_rounds: int) -> None:
    ids = [f"inst-{n}" for n in range(instances)]
    names = [f"svc-{n % 100}" for n in range(instances)]
    node = natsreg.Registry(NATS(), prefix=PREFIX)  # never connected, never entered
    for instance_id, name in zip(ids, names, strict=True):
        announce = wire.Announce(id=instance_id, name=name, version="1.0.0", seq=1)
        node._view.apply(announce)
    prepared = [Round(ids, names, 2 * r + 2) for r in range(rounds)]

    def wanted(stage: str) -> bool:
        return only is None or only == stage

    simulated = [0.0]
    steady = View(clock=lambda: simulated[0])
    for instance_id, name in zip(ids, names, strict=True):
        steady.apply(wire.Announce(id=instance_id, name=name, version="1.0.0", seq=1))
    # Three simulated seconds first, so that the deadlines set by heartbeats come due.
    warm = 3 if wanted("apply+sweep") else 0
    second_beats = [
        [wire.Heartbeat(id=i, name=n, seq=s + 2) for i, n in zip(ids, names, strict=True)]
        for s in range((warm + rounds) if wanted("apply+sweep") else 0)
    ]

    def one_second(beats: list[wire.Heartbeat]) -> None:
        step = instances // SWEEPS_PER_S
        for k in range(SWEEPS_PER_S):
            for beat in beats[k * step : (k + 1) * step]:
                steady.apply(beat)
            simulated[0] += 1 / SWEEPS_PER_S
            steady.expire()

    for beats in second_beats[:warm]:
        one_second(beats)
    readers = [Reader(stage[6:], ids, names) for stage in STAGES[-2:] if wanted(stage)]
    for reader in readers:
        await reader.start()
    figures: dict[str, list[float]] = {}

    for r, data in enumerate(prepared[:run_rounds]):
        if wanted("nats-py parse"):
            parser = Parser(_Sink())
            start = time.perf_counter()
            await parser.parse(data.wire_bytes)
            figures.setdefault("nats-py parse", []).append(
                (time.perf_counter() - start) / instances * 1e6
            )
        if wanted("decode"):
            figures.setdefault("decode", []).append(
                per_beat_us(lambda d=data: [wire.decode_control(b) for _, b in d.beats], instances)
            )
        if wanted("check"):
            figures.setdefault("check", []).append(
                per_beat_us(lambda d=data: [wire.check(m) for m in d.decoded], instances)
            )
        if wanted("handler"):
            start = time.perf_counter()
            for subject, payload in data.beats:
                await node._on_control(subject, payload)
            figures.setdefault("handler", []).append(
                (time.perf_counter() - start) / instances * 1e6
            )
        if wanted("apply"):
            start = time.perf_counter()
            outcomes = [node._view.apply(m) for m in data.later]
            figures.setdefault("apply", []).append((time.perf_counter() - start) / instances * 1e6)
            assert not any(o.dropped for o in outcomes)
        if wanted("apply+sweep"):
            start = time.perf_counter()
            one_second(second_beats[warm + r])
            figures.setdefault("apply+sweep", []).append(
                (time.perf_counter() - start) / instances * 1e6
            )
        for reader in readers:
            start = time.perf_counter()
            await reader.read(data.wire_bytes)
            figures.setdefault(f"read: {reader.way}", []).append(
                (time.perf_counter() - start) / instances * 1e6
            )
            assert len(steady) == instances
    for reader in readers:
        node_heard = reader.node.messages["heartbeat"]
        assert not reader.node.dropped and node_heard == instances * run_rounds, node_heard
    assert not node.dropped and len(node._view) == instances, node.dropped
    if only is not None:
        return
    base = statistics.median(figures["nats-py parse"])
    print(f"{instances} instances, {rounds} rounds; µs per heartbeat (median), and vs parse:")
    for stage, values in figures.items():
        value = statistics.median(values)
        print(f"  {stage:14} {value:6.2f} µs  {value / base:5.2f}x")


def instructions(instances: int) -> None:
    """Each stage's instructions per heartbeat: three rounds less one, over two rounds."""
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind: apt-get install -y valgrind")
    counts: dict[str, float] = {}
    for stage in [s for s in STAGES if s not in ("decode", "check")]:  # decode, check: timed
        totals = []
        for run_rounds in (1, 3):
            with tempfile.TemporaryDirectory() as folder:
                out = Path(folder) / "callgrind.out"
                argv = ["valgrind", "-q", "--tool=callgrind", f"--callgrind-out-file={out}"]
                argv += [sys.executable, __file__, "--instances", str(instances), "--rounds", "3"]
                argv += ["--only", stage, "--run-rounds", str(run_rounds)]
                subprocess.run(argv, check=True, timeout=1800)
                match = _TOTAL.search(out.read_text())
                if match is None:
                    raise SystemExit("callgrind wrote no total")
                totals.append(int(match.group(1)))
        counts[stage] = (totals[1] - totals[0]) / (2 * instances)
        print(f"  {stage:14} {counts[stage]:8.0f} instructions", flush=True)
    base = counts["nats-py parse"]
    print(f"{instances} instances; instructions per heartbeat, and vs parse:")
    for stage, value in counts.items():
        print(f"  {stage:14} {value:8.0f}  {value / base:5.2f}x")


async def delivery(count: int, rounds: int) -> None:
    """Microseconds per message from a subscription's queue to a handler, per way of reading."""
    from natsreg.testing import NatsServer  # the test fixtures' server: loopback, a free port

    async def drain(mode: str, url: str) -> float:
        nc = await nats.connect(url)
        pub = await nats.connect(url)
        try:
            gate = asyncio.Event()
            done = asyncio.Event()
            seen = 0

            async def cb(msg: Msg) -> None:
                nonlocal seen
                await gate.wait()
                seen += 1
                if seen == count:
                    done.set()

            limits: dict[str, Any] = {"pending_msgs_limit": 2 * count}
            sub = await (
                nc.subscribe("bench.d", cb=cb, **limits)
                if mode == "callback"
                else nc.subscribe("bench.d", **limits)
            )
            await nc.flush()
            payload = b"x" * 120  # about a heartbeat's size
            for _ in range(count):
                await pub.publish("bench.d", payload)
            await pub.flush()
            while sub.pending_msgs < count - (mode == "callback"):
                await asyncio.sleep(0.01)
            start = time.perf_counter()
            if mode == "callback":
                gate.set()
                await done.wait()
            elif mode == "messages":
                async for _ in sub.messages:
                    seen += 1
                    if seen == count:
                        break
            else:
                for _ in range(count):
                    await sub.next_msg(timeout=5)
            return (time.perf_counter() - start) / count * 1e6
        finally:
            await nc.close()
            await pub.close()

    with NatsServer() as server:
        figures: dict[str, list[float]] = {}
        for _ in range(rounds):
            for mode in ("callback", "messages", "next_msg"):
                figures.setdefault(mode, []).append(await drain(mode, server.url))
    base = statistics.median(figures["callback"])
    print(f"{count} messages, {rounds} rounds; µs per message from the queue (median):")
    for mode, values in figures.items():
        value = statistics.median(values)
        print(f"  {mode:10} {value:6.2f} µs  {value / base:5.2f}x")


async def fleet(size: int, window_s: float, profile_dir: str | None) -> None:
    """The CPU of a registry node under ``size`` heartbeating instances, from outside."""
    sys.path.insert(0, str(Path(__file__).parent))
    import scale  # the fleet, the node and the py-spy profile, as scale.py runs them

    from natsreg.testing import NatsServer

    prefix = "scale"
    processes: list[subprocess.Popen[str]] = []
    with NatsServer() as server, tempfile.TemporaryFile("w+") as registry_log:
        try:
            registry = await scale.start_fleet(server.url, prefix, size, registry_log, processes)
            nc = await nats.connect(server.url)

            async def complete() -> bool:
                try:
                    return (await scale.node_stats(nc, prefix)).instances == size
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    return False

            await scale.wait_for(complete, 120, f"registry holding {size} instances")
            await asyncio.sleep(2.0)
            load = os.getloadavg()[0]
            cpu0, t0 = scale.cpu_seconds(registry.pid), time.monotonic()
            await asyncio.sleep(window_s)
            cpu_pct = 100 * (scale.cpu_seconds(registry.pid) - cpu0) / (time.monotonic() - t0)
            stats = await scale.node_stats(nc, prefix)
            print(
                f"{size} instances: registry CPU {cpu_pct:.1f}% of a core, "
                f"{cpu_pct / 100 / size * 1e6:.1f} µs per heartbeat; "
                f"dropped {dict(stats.dropped)}; load average {load:.1f} before, "
                f"{os.getloadavg()[0]:.1f} after",
                flush=True,
            )
            if profile_dir:
                scale.profile(registry.pid, window_s, Path(profile_dir) / f"registry-{size}.txt")
            await nc.close()
        finally:
            scale.stop(processes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instructions", action="store_true", help="count with callgrind")
    parser.add_argument("--delivery", action="store_true", help="nats-py's ways of reading")
    parser.add_argument("--fleet", type=int, metavar="N", help="a node under N instances")
    parser.add_argument("--window", type=float, default=10.0, help="--fleet: CPU window, s")
    parser.add_argument("--profile", help="--fleet: sample the node with py-spy, to this folder")
    parser.add_argument("--only", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--run-rounds", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.instructions:
        instructions(args.instances)
    elif args.fleet:
        asyncio.run(fleet(args.fleet, args.window, args.profile))
    elif args.delivery:
        asyncio.run(delivery(args.instances, args.rounds))
    else:
        asyncio.run(main(args.instances, args.rounds, args.only, args.run_rounds or args.rounds))
