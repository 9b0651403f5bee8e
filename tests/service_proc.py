"""A natsreg service run as a separate process by the fault tests.

    python service_proc.py URL NAME PREFIX [VERSION]

Serves ``<NAME>.echo`` (replies with the request) and prints ``id <instance id>`` once
announced; SIGTERM makes it leave its block (drain, goodbye) and exit.
"""

import asyncio
import sys

import nats

import natsreg


async def main(url: str, name: str, prefix: str, version: str = "1.0.0") -> None:
    nc = await nats.connect(url)
    async with natsreg.announce(nc, name, version=version, prefix=prefix) as svc:

        @svc.endpoint("echo")
        async def echo(req: natsreg.Request) -> bytes:
            return req.data

        await svc.ready()
        print("id", svc.id, flush=True)
        await svc.serve_forever()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
