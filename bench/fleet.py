"""A synthetic fleet: many virtual natsreg instances in one process, for scale benchmarks.

    python bench/fleet.py --url nats://127.0.0.1:4222 --instances 10000 [--prefix natsreg]

Each virtual instance speaks the control protocol exactly as a real one does (announce on
start and when asked, a heartbeat every interval with its own sequence, goodbye on SIGTERM),
without serving endpoints: the registry cannot tell the difference, and one process can play
thousands of instances. Heartbeats are spread evenly over the interval, as independent
processes would send them, and follow the pace registry nodes allow as real instances do
(docs/protocol.md, "Paced heartbeats"). Prints ``ready N`` once every instance has announced.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import sys

import msgspec
import nats

from natsreg import subjects, wire
from natsreg.service._pace import Leases

SLICES_PER_INTERVAL = 50


class Fleet:
    def __init__(self, nc: nats.NATS, args: argparse.Namespace) -> None:
        self.nc = nc
        self.prefix = args.prefix
        self.heartbeat_s = args.heartbeat
        self.leases = Leases()
        tag = args.tag or f"{socket.gethostname()}-{os.getpid()}"
        self.ids = [f"{tag}-{n}" for n in range(args.instances)]
        self.names = [f"svc-{n % args.services}" for n in range(args.instances)]
        self.seqs = [0] * args.instances
        self.index = {instance_id: n for n, instance_id in enumerate(self.ids)}
        self.endpoints = {
            name: [
                wire.Endpoint(name=e, subject=f"{name}.{e}", queue_group=name)
                for e in ("get", "list")
            ]
            for name in set(self.names)
        }

    def _next(self, n: int) -> int:
        self.seqs[n] += 1
        return self.seqs[n]

    async def announce(self, n: int) -> None:
        message = wire.Announce(
            id=self.ids[n],
            name=self.names[n],
            version="1.0.0",
            seq=self._next(n),
            metadata={"zone": "abc"[n % 3]},
            endpoints=self.endpoints[self.names[n]],
            host="fleet",
            pid=os.getpid(),
            heartbeat_s=self.heartbeat_s,
        )
        subject = subjects.control_subject(self.prefix, "announce", self.names[n], self.ids[n])
        await self.nc.publish(subject, wire.encode(message))

    async def announce_all(self, over_s: float, chosen: list[int] | None = None) -> None:
        # Spread over the window in slices, as instances with random jitter would.
        order = list(range(len(self.ids))) if chosen is None else chosen
        random.shuffle(order)
        slices = max(1, int(over_s * SLICES_PER_INTERVAL))
        step = -(-len(order) // slices)
        for start in range(0, len(order), step):
            for n in order[start : start + step]:
                await self.announce(n)
            await asyncio.sleep(over_s / slices)
        await self.nc.flush()

    async def on_pace(self, msg: nats.aio.msg.Msg) -> None:
        self.leases.hear(msg.subject.rsplit(".", 1)[-1], msg.data)

    async def heartbeats(self) -> None:
        count = len(self.ids)
        per_slice = -(-count // SLICES_PER_INTERVAL)
        loop = asyncio.get_running_loop()
        start = 0
        next_at = loop.time()
        declared_s = self.heartbeat_s
        pause = declared_s / SLICES_PER_INTERVAL
        while True:
            if start == 0:
                # Each round goes no slower than the last one declared: a slower pace is
                # declared one round before it is kept, as a real instance does.
                pace_s = self.leases.interval_s(self.heartbeat_s)
                pause = min(pace_s, declared_s) / SLICES_PER_INTERVAL
                declared_s = pace_s
            for n in range(start, min(start + per_slice, count)):
                beat = wire.Heartbeat(
                    id=self.ids[n], name=self.names[n], seq=self._next(n), pace_s=declared_s
                )
                await self.nc.publish(
                    subjects.control_subject(self.prefix, "hb", self.names[n], self.ids[n]),
                    wire.encode(beat),
                )
            start = 0 if start + per_slice >= count else start + per_slice
            next_at += pause
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def on_discover(self, msg: nats.aio.msg.Msg) -> None:
        tokens = msg.subject.split(".")
        try:
            jitter_s = wire.decode_discover(msg.data).jitter_s if msg.data else 0.0
        except msgspec.DecodeError:
            jitter_s = 0.0
        if len(tokens) == len(self.prefix.split(".")) + 3:  # <prefix>.discover.<name>.<id>
            n = self.index.get(tokens[-1])
            if n is not None:
                await self.announce(n)
        elif len(tokens) == len(self.prefix.split(".")) + 2:  # <prefix>.discover.<name>
            name = tokens[-1]
            chosen = [n for n, named in enumerate(self.names) if named == name]
            asyncio.get_running_loop().create_task(self.announce_all(max(jitter_s, 0.02), chosen))
        elif len(tokens) == len(self.prefix.split(".")) + 1:  # everyone
            asyncio.get_running_loop().create_task(self.announce_all(max(jitter_s, 0.02)))

    async def goodbye_all(self) -> None:
        for n in range(len(self.ids)):
            bye = wire.Goodbye(id=self.ids[n], name=self.names[n], seq=self._next(n))
            await self.nc.publish(
                subjects.control_subject(self.prefix, "bye", self.names[n], self.ids[n]),
                wire.encode(bye),
            )
        await self.nc.flush()


async def main(args: argparse.Namespace) -> None:
    nc = await nats.connect(args.url, pending_size=64 * 1024 * 1024)
    fleet = Fleet(nc, args)
    await nc.subscribe(subjects.control_subject(args.prefix, "discover"), cb=fleet.on_discover)
    for tokens in (("*",), ("*", "*")):  # one service's instances (sharded nodes), or one
        await nc.subscribe(
            subjects.control_subject(args.prefix, "discover", *tokens), cb=fleet.on_discover
        )
    await nc.subscribe(subjects.control_subject(args.prefix, "pace", "*"), cb=fleet.on_pace)
    await fleet.announce_all(over_s=args.ramp)
    print("ready", len(fleet.ids), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    beats = asyncio.create_task(fleet.heartbeats())
    await stop.wait()
    beats.cancel()
    try:
        await fleet.goodbye_all()
        await nc.close()
    except nats.errors.Error as exc:  # the server may be gone first at the end of a bench
        print("fleet: could not say goodbye:", exc, file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--prefix", default=subjects.DEFAULT_PREFIX)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--heartbeat", type=float, default=1.0, help="seconds")
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds to announce all")
    parser.add_argument("--tag", default="", help="instance id prefix (default host-pid)")
    asyncio.run(main(parser.parse_args()))
