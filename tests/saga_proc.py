"""A saga coordinator run as a separate process by the saga fault test.

    python saga_proc.py URL PREFIX SERVICE SAGA_ID

Runs ``three_steps(SERVICE)`` under id SAGA_ID and prints its status when it ends (the test
kills it with SIGKILL before that).
"""

import asyncio
import sys

import nats

import natsreg


def three_steps(service: str) -> natsreg.Saga:
    """The saga of the fault test: SERVICE.one (undone by SERVICE.undo-one), SERVICE.two,
    SERVICE.three; a lease of 1 s so that a resumer takes over quickly."""
    return natsreg.Saga(
        f"order-{service}",
        steps=[
            natsreg.Step(f"{service}.one", compensate=f"{service}.undo-one"),
            natsreg.Step(f"{service}.two"),
            natsreg.Step(f"{service}.three"),
        ],
        lease_s=1.0,
    )


async def main(url: str, prefix: str, service: str, saga_id: str) -> None:
    nc = await nats.connect(url)
    client = natsreg.Client(nc, prefix=prefix)
    result = await three_steps(service).run(client, {"order": 42}, saga_id=saga_id)
    print(result.status, flush=True)
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
