"""An instance of a service that handles events, run as a separate process by the fault tests.

    python events_proc.py URL NAME PREFIX TYPE RECORD [--delay-ms N] [--max-in-flight N]
                          [--ack-wait-s S]

Handles ``TYPE`` events: waits ``--delay-ms``, then publishes the event's id and key on the
core NATS subject ``RECORD`` (the handler's side effect, which the test counts), then returns
(the event is acknowledged). Prints ``ready`` once consuming; SIGTERM drains and exits.
"""

import argparse
import asyncio

import msgspec
import nats

import natsreg


async def main(args: argparse.Namespace) -> None:
    nc = await nats.connect(
        args.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, name=args.name
    )
    async with natsreg.announce(nc, args.name, version="1.0.0", prefix=args.prefix) as svc:

        @svc.on_event(
            args.type,
            max_in_flight=args.max_in_flight,
            ack_wait_s=args.ack_wait_s,
            retry_delay_s=0.05,
        )
        async def handle(ev: natsreg.Event[object]) -> None:
            if args.delay_ms:
                await asyncio.sleep(args.delay_ms / 1000)
            await nc.publish(args.record, msgspec.json.encode([ev.id, ev.key, svc.id]))

        await svc.ready()
        print("ready", flush=True)
        await svc.serve_forever()
    await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("url", "name", "prefix", "type", "record"):
        parser.add_argument(name)
    parser.add_argument("--delay-ms", type=float, default=0)
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument("--ack-wait-s", type=float, default=1.0)
    asyncio.run(main(parser.parse_args()))
