"""Heartbeats as fast as a registry node must never be taken down by: a flood run as its own
process by tests/test_backpressure.py.

    python flood_proc.py URL PREFIX COUNT RATE

Publishes COUNT heartbeats (for 1,000 made-up instances of one service, encoded once) at about
RATE a second, in slices of 1,000; stops after 30 s whatever it has sent; prints ``sent N``.
"""

import asyncio
import sys
import time

import nats

from natsreg import subjects, wire

SLICE = 1000


async def main(url: str, prefix: str, count: int, rate: float) -> None:
    nc = await nats.connect(url, pending_size=16 * 1024 * 1024)
    beats = [
        (
            subjects.control_subject(prefix, "hb", "flood", f"f{n}"),
            wire.encode(wire.Heartbeat(id=f"f{n}", name="flood", seq=1)),
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
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
