"""A fleet simulator: up to hundreds of thousands of virtual natsreg instances in one process.

    python bench/fleet.py --url nats://127.0.0.1:4222 --instances 125000 --heartbeat-s 10

Each virtual instance speaks the control protocol as a real one does, so a registry node
cannot tell the difference: it announces (with its own id, service, endpoints and
``heartbeat_s``), heartbeats every ``--heartbeat-s`` with its own sequence, re-announces when
asked (``<prefix>.discover``, ``<prefix>.discover.<service>``,
``<prefix>.discover.<service>.<id>``; at a random moment within the asker's jitter, at most
one pending and at most once a second each, as ``natsreg.Service`` does), and says goodbye on
SIGTERM. Heartbeats are spread evenly over the interval, as independent processes would send
them, and follow the pace registry nodes allow (``<prefix>.pace.<node>``) as real instances do:
each declares the interval it keeps, a slower one a round before keeping it. Prints ``ready
N`` once every instance has announced and nats-server has read it all.

It is built to measure the registry rather than itself. Every instance's announce,
heartbeat and goodbye is encoded once, at start, with the whole ``PUB`` frame around it; a
sequence number is the one thing patched in, padded with JSON whitespace to 10 characters
(``"seq":         7``), so a frame's length never changes. The process speaks the NATS
client protocol itself on one TCP connection (``CONNECT``, ``PUB``, ``SUB``, ``PING``/``PONG``,
``MSG``) and writes each 20 ms slice of heartbeats and re-announces with one write, waiting
for the socket to drain before the next, so a server that falls behind slows the fleet
rather than filling its memory.

Its own cost (``python bench/scale.py --fleet-cost``, no registry, on 2 cores at a load
average of 18-23; bench/RESULTS.md, "250,000 instances: the simulator and the chart"): about
**1.2 µs of CPU per message** at 50,000 instances, so **1.2 ms a second per 1,000 instances
at 1 s heartbeats** and **0.2-0.4 ms at 10 s** (250,000 instances at 10 s: 5.6% of one core,
both processes together; at 1 s about 30%). The nats-py simulator it replaces cost 7.5-8.3 µs
a message (6.5x at 50,000) and could not offer more than ~25,000 messages a second from one
process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import socket
import sys
import urllib.parse
from collections.abc import Callable, Iterable

import msgspec

from natsreg import subjects, wire
from natsreg.service._pace import Leases

TICK_S = 0.02  # one write of heartbeats and re-announces every tick
SEQ_SENTINEL = 9_876_543_210  # stands for the sequence while a message is encoded
MAX_JITTER_S = 30.0  # what natsreg.Service allows a discover to ask for
FLUSH_TIMEOUT_S = 60.0


def frame(subject: str, message: msgspec.Struct) -> tuple[bytes, bytes]:
    """The ``PUB`` frame of ``message`` on ``subject``, split where the sequence goes."""
    body = wire.encode(message)
    head, sentinel, tail = body.partition(b"%d" % SEQ_SENTINEL)
    assert sentinel and b"%d" % SEQ_SENTINEL not in tail, "the sequence appears once"
    return b"PUB %s %d\r\n%s" % (subject.encode(), len(body), head), tail + b"\r\n"


class Connection:
    """Just enough of the NATS client protocol for a fleet: publish, subscribe to discover,
    answer the server's ``PING``, and ``flush`` (a ``PING`` and its ``PONG``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pongs: collections.deque[asyncio.Future[None]] = collections.deque()

    @classmethod
    async def open(cls, url: str, name: str) -> Connection:
        parts = urllib.parse.urlsplit(url)
        reader, writer = await asyncio.open_connection(
            parts.hostname or "127.0.0.1", parts.port or 4222
        )
        if not (await reader.readline()).startswith(b"INFO "):
            raise ConnectionError(f"{url} does not speak NATS")
        options: dict[str, object] = {
            "verbose": False,
            "pedantic": False,
            "lang": "python",
            "version": "fleet",
            "protocol": 1,
            "name": name,
        }
        if parts.username:
            options["user"] = urllib.parse.unquote(parts.username)
            options["pass"] = urllib.parse.unquote(parts.password or "")
        writer.write(b"CONNECT %s\r\nPING\r\n" % json.dumps(options).encode())
        while not (line := await reader.readline()).startswith(b"PONG"):
            if not line or line.startswith(b"-ERR"):
                raise ConnectionError(f"{url}: {line.decode().strip() or 'closed'}")
        return cls(reader, writer)

    def subscribe(self, subject: str, sid: int) -> None:
        self.writer.write(b"SUB %s %d\r\n" % (subject.encode(), sid))

    async def read(self, on_msg: Callable[[str, bytes], None]) -> None:
        """Until the server closes: ``on_msg(subject, payload)`` for each ``MSG``."""
        reader = self.reader
        while line := await reader.readline():
            if line.startswith(b"MSG "):
                fields = line.split()
                payload = await reader.readexactly(int(fields[-1]) + 2)
                on_msg(fields[1].decode(), payload[:-2])
            elif line.startswith(b"PING"):
                self.writer.write(b"PONG\r\n")
            elif line.startswith(b"PONG") and self.pongs:
                self.pongs.popleft().set_result(None)
            elif line.startswith(b"-ERR"):
                print("fleet: nats-server says", line.decode().strip(), file=sys.stderr)
        raise ConnectionError("nats-server closed the fleet's connection")

    async def flush(self) -> None:
        """Returns once the server has read everything written before."""
        pong = asyncio.get_running_loop().create_future()
        self.pongs.append(pong)
        self.writer.write(b"PING\r\n")
        await self.writer.drain()
        await asyncio.wait_for(pong, FLUSH_TIMEOUT_S)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


class Fleet:
    """The virtual instances: their pre-encoded frames, sequences, and re-announces due."""

    def __init__(self, args: argparse.Namespace) -> None:
        count = args.instances
        self.prefix_tokens = len(args.prefix.split("."))
        self.heartbeat_s = args.heartbeat_s
        tag = args.tag or f"{socket.gethostname()}-{os.getpid()}"
        self.ids = [f"{tag}-{n}" for n in range(count)]
        self.names = [f"svc-{n % args.services}" for n in range(count)]
        self.index = {instance_id: n for n, instance_id in enumerate(self.ids)}
        self.by_service: dict[str, list[int]] = collections.defaultdict(list)
        for n, name in enumerate(self.names):
            self.by_service[name].append(n)
        self.seqs = [0] * count
        self.prefix = args.prefix
        self.announces: list[tuple[bytes, bytes]] = []
        # The pace registry nodes allow (docs/protocol.md, "Paced heartbeats"), obeyed as a
        # real instance obeys it; every heartbeat declares the interval kept.
        self.leases = Leases()
        self.declared_s = self.heartbeat_s
        self.heartbeats: list[tuple[bytes, bytes]] = []
        self.declare(self.heartbeat_s)
        # Re-announces due, by tick: at most one pending per instance, at most once a second.
        self.pending = bytearray(count)
        self.announced_at = [-wire.MIN_REANNOUNCE_S] * count
        self.due: dict[int, list[int]] = {}
        self.ticked = 0
        self.announced = 0
        self.late_ticks = 0

    def _announce(self, n: int, prefix: str, pace_s: float) -> tuple[bytes, bytes]:
        name = self.names[n]
        message = wire.Announce(
            id=self.ids[n],
            name=name,
            version="1.0.0",
            seq=SEQ_SENTINEL,
            metadata={"zone": "abc"[n % 3]},
            endpoints=[
                wire.Endpoint(name=e, subject=f"{name}.{e}", queue_group=name)
                for e in ("get", "list")
            ],
            host="fleet",
            pid=os.getpid(),
            heartbeat_s=self.heartbeat_s,
            pace_s=pace_s,
        )
        return frame(subjects.control_subject(prefix, "announce", name, self.ids[n]), message)

    def declare(self, pace_s: float) -> None:
        """From now on every heartbeat and announcement declares ``pace_s`` as the interval
        kept (an announcement that said otherwise would have the registry expect the
        instance's own interval again)."""
        self.declared_s = pace_s
        self.announces = [self._announce(n, self.prefix, pace_s) for n in range(len(self.ids))]
        self.heartbeats = [
            frame(
                subjects.control_subject(self.prefix, "hb", name, instance_id),
                wire.Heartbeat(id=instance_id, name=name, seq=SEQ_SENTINEL, pace_s=pace_s),
            )
            for instance_id, name in zip(self.ids, self.names, strict=True)
        ]

    def on_pace(self, subject: str, payload: bytes) -> None:
        self.leases.hear(subject.rpartition(".")[2], payload)

    def schedule(self, instances: Iterable[int], within_s: float, now: float) -> None:
        """Each of ``instances`` re-announces at a random moment within ``within_s``."""
        pending, due, announced_at = self.pending, self.due, self.announced_at
        for n in instances:
            if pending[n]:
                continue
            pending[n] = 1
            at = max(now + random.uniform(0.0, within_s), announced_at[n] + wire.MIN_REANNOUNCE_S)
            due.setdefault(max(int(at / TICK_S), self.ticked + 1), []).append(n)

    def on_discover(self, subject: str, payload: bytes, now: float) -> None:
        tokens = subject.split(".")[self.prefix_tokens + 1 :]
        try:
            jitter_s = wire.decode_discover(payload).jitter_s if payload else 0.0
        except wire.MALFORMED:
            jitter_s = 0.0
        within_s = min(max(jitter_s, 0.0), MAX_JITTER_S)
        if not tokens:
            self.schedule(range(len(self.ids)), within_s, now)
        elif len(tokens) == 1:
            self.schedule(self.by_service.get(tokens[0], ()), within_s, now)
        elif (n := self.index.get(tokens[1])) is not None and self.names[n] == tokens[0]:
            self.schedule((n,), within_s, now)

    def frames_due(self, now: float, beat: range) -> list[bytes]:
        """The re-announces due by ``now`` and the heartbeats of instances ``beat``."""
        parts: list[bytes] = []
        seqs = self.seqs
        for key in range(self.ticked + 1, int(now / TICK_S) + 1):
            for n in self.due.pop(key, ()):
                self.pending[n] = 0
                self.announced_at[n] = now
                seqs[n] = seq = seqs[n] + 1
                head, tail = self.announces[n]
                parts += (head, b"%10d" % seq, tail)
                self.announced += 1
        self.ticked = max(self.ticked, int(now / TICK_S))
        heartbeats = self.heartbeats
        for n in beat:
            seqs[n] = seq = seqs[n] + 1
            head, tail = heartbeats[n]
            parts += (head, b"%10d" % seq, tail)
        return parts

    def goodbyes(self, prefix: str) -> list[bytes]:
        parts: list[bytes] = []
        for n, (instance_id, name) in enumerate(zip(self.ids, self.names, strict=True)):
            self.seqs[n] += 1
            head, tail = frame(
                subjects.control_subject(prefix, "bye", name, instance_id),
                wire.Goodbye(id=instance_id, name=name, seq=SEQ_SENTINEL),
            )
            parts += (head, b"%10d" % self.seqs[n], tail)
        return parts


async def tick(fleet: Fleet, conn: Connection, beating: asyncio.Event) -> None:
    """Every tick: one write of what is due; heartbeats once ``beating`` is set, each
    instance once per round at its own phase (instance n at n/count of it). A round lasts the
    interval kept; a slower pace is declared one round before it is kept, as a real instance
    does."""
    loop = asyncio.get_running_loop()
    count = len(fleet.ids)
    ticks = max(1, round(fleet.heartbeat_s / TICK_S))
    period = fleet.heartbeat_s / ticks
    slot = 0
    next_at = loop.time()
    while True:
        now = loop.time()
        beat = range(0)
        if beating.is_set():
            if slot == 0:
                pace_s = fleet.leases.interval_s(fleet.heartbeat_s)
                round_s = min(pace_s, fleet.declared_s)
                if pace_s != fleet.declared_s:
                    fleet.declare(pace_s)
                ticks = max(1, round(round_s / TICK_S))
                period = round_s / ticks
            beat = range(slot * count // ticks, (slot + 1) * count // ticks)
            slot = (slot + 1) % ticks
        parts = fleet.frames_due(now, beat)
        if parts:
            conn.writer.write(b"".join(parts))
            await conn.writer.drain()
        next_at += period
        if next_at < loop.time() - period * ticks:  # a whole round behind: carry on
            fleet.late_ticks += 1
            next_at = loop.time()
        await asyncio.sleep(max(0.0, next_at - loop.time()))


async def main(args: argparse.Namespace) -> None:
    fleet = Fleet(args)
    conn = await Connection.open(args.url, f"fleet-{args.tag or os.getpid()}")
    loop = asyncio.get_running_loop()
    fleet.ticked = int(loop.time() / TICK_S)
    paces = subjects.control_subject(args.prefix, "pace") + "."

    def on_msg(subject: str, payload: bytes) -> None:
        if subject.startswith(paces):
            fleet.on_pace(subject, payload)
        else:
            fleet.on_discover(subject, payload, loop.time())

    for sid, tokens in enumerate(((), ("*",), ("*", "*")), start=1):
        conn.subscribe(subjects.control_subject(args.prefix, "discover", *tokens), sid)
    conn.subscribe(paces + "*", 4)
    reading = asyncio.create_task(conn.read(on_msg))
    beating = asyncio.Event()
    ticking = asyncio.create_task(tick(fleet, conn, beating))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    fleet.schedule(range(len(fleet.ids)), args.ramp, loop.time())
    while fleet.announced < len(fleet.ids) and not stop.is_set():
        await asyncio.wait((reading, ticking), timeout=TICK_S)
        for task in (reading, ticking):
            if task.done():
                task.result()  # raises what stopped it: the connection is gone
    await conn.flush()
    print("ready", len(fleet.ids), flush=True)
    beating.set()
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait((reading, ticking, stopping), return_when=asyncio.FIRST_COMPLETED)
    ticking.cancel()
    for failed in (t for t in (reading, ticking) if t.done() and not t.cancelled()):
        if failed.exception():
            print("fleet:", failed.exception(), file=sys.stderr)
    try:
        parts = fleet.goodbyes(args.prefix)
        for start in range(0, len(parts), 30_000):  # 10,000 goodbyes a write
            conn.writer.write(b"".join(parts[start : start + 30_000]))
            await conn.writer.drain()
        await conn.flush()
        await conn.close()
    except (OSError, TimeoutError) as exc:  # the server may be gone first at the end of a bench
        print("fleet: could not say goodbye:", exc, file=sys.stderr)
    reading.cancel()
    if fleet.late_ticks:
        print(f"fleet: fell a whole interval behind {fleet.late_ticks} times", file=sys.stderr)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--prefix", default=subjects.DEFAULT_PREFIX)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument(
        "--heartbeat-s",
        "--heartbeat",
        type=float,
        default=1.0,
        help="seconds between an instance's heartbeats, announced as its heartbeat_s",
    )
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds to announce all")
    parser.add_argument("--tag", default="", help="instance id prefix (default host-pid)")
    args = parser.parse_args()
    if not 1 <= args.instances <= 1_000_000 or args.services < 1:
        parser.error("--instances must be 1-1000000 and --services at least 1")
    if not 0.05 <= args.heartbeat_s <= 60 or args.ramp < 0:
        parser.error("--heartbeat-s must be 0.05-60 (what readers accept), --ramp at least 0")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
