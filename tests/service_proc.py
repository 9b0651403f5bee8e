"""A natsreg service run as a separate process by the fault tests.

    python service_proc.py URL NAME PREFIX [VERSION] [--delay-ms N] [--idempotent]
                           [--meta KEY=VALUE ...] [--emits TYPE ...] [--broadcast TYPE ...]

Serves ``<NAME>.echo`` (replies with the request), ``<NAME>.work`` (waits ``--delay-ms``,
then replies ``{"id": <instance id>}``; declared idempotent with ``--idempotent``) and
``<NAME>.greet`` (typed: ``{"name": <str>}`` in, ``{"greeting": <str>}`` out), and prints
``id <instance id>`` once announced; SIGTERM makes it leave its block (drain, goodbye) and
exit. ``--emits`` declares an event type it emits; ``--broadcast`` handles one as a broadcast
(core NATS: no JetStream needed), doing nothing with it.
"""

import argparse
import asyncio

import msgspec
import nats

import natsreg


class Greeting(msgspec.Struct):
    name: str


class Greeted(msgspec.Struct):
    greeting: str


async def main(args: argparse.Namespace) -> None:
    nc = await nats.connect(args.url)
    metadata = dict(pair.split("=", 1) for pair in args.meta)
    async with natsreg.announce(
        nc,
        args.name,
        version=args.version,
        prefix=args.prefix,
        metadata=metadata,
        emits=args.emits,
    ) as svc:
        for event_type in args.broadcast:

            @svc.on_event(event_type, broadcast=True)
            async def ignore(ev: natsreg.Event) -> None:
                pass

        @svc.endpoint("echo")
        async def echo(req: natsreg.Request) -> bytes:
            return req.data

        @svc.endpoint("work", idempotent=args.idempotent)
        async def work(req: natsreg.Request) -> dict[str, str]:
            if args.delay_ms:
                await asyncio.sleep(args.delay_ms / 1000)
            return {"id": svc.id}

        @svc.endpoint("greet")
        async def greet(req: natsreg.Request[Greeting]) -> Greeted:
            return Greeted(greeting=f"hello, {req.body.name}")

        await svc.ready()
        print("id", svc.id, flush=True)
        await svc.serve_forever()
    await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("name")
    parser.add_argument("prefix")
    parser.add_argument("version", nargs="?", default="1.0.0")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--idempotent", action="store_true")
    parser.add_argument("--meta", action="append", default=[])
    parser.add_argument("--emits", action="append", default=[])
    parser.add_argument("--broadcast", action="append", default=[])
    asyncio.run(main(parser.parse_args()))
