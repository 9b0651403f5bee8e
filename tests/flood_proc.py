"""Heartbeats or announcements as fast as a registry node must never be taken down by: a
flood run as its own process by tests/test_backpressure.py.

    python flood_proc.py URL PREFIX COUNT RATE [hb|announce]

Publishes COUNT heartbeats (or announcements, with two endpoints each: the storm of a fleet
starting, or re-announcing) for 1,000 made-up instances of one service, encoded once, at about
RATE a second, in slices of 1,000; stops after 30 s whatever it has sent; prints ``sent N``.
"""

import asyncio
import sys
import time

import nats

from natsreg import subjects, wire

SLICE = 1000


def message(kind: str, n: int) -> wire.ControlMessage:
    if kind == "hb":
        return wire.Heartbeat(id=f"f{n}", name="flood", seq=1)
    endpoints = [wire.Endpoint(name=e, subject=f"flood.{e}", queue_group="flood") for e in "ab"]
    return wire.Announce(
        id=f"f{n}", name="flood", version="1.0.0", seq=1, endpoints=endpoints, host="flood"
    )


async def main(url: str, prefix: str, count: int, rate: float, kind: str) -> None:
    nc = await nats.connect(url, pending_size=16 * 1024 * 1024)
    beats = [
        (
            subjects.control_subject(prefix, kind, "flood", f"f{n}"),
            wire.encode(message(kind, n)),
        )
        for n in range(SLICE)
    ]
    start = time.monotonic()
    sent = 0
    while sent < count and time.monotonic() - start < 30:
        for subject, payload in beats:
            await nc.publish(subject, payload)
        sent += SLICE
        await nc.flush()
        await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
    print("sent", sent, flush=True)
    await nc.close()


if __name__ == "__main__":
    kind = sys.argv[5] if len(sys.argv) > 5 else "hb"
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), kind))
