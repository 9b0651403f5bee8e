"""An example natsreg service: a tiny user directory.

Run it with a NATS server reachable at $NATS_URL (default nats://127.0.0.1:4222):

    natsreg up --with examples/user_service.py      # NATS, a registry node and this service
    natsreg request user-service.users '{"id": 1}'  # from another terminal
"""

import asyncio
import os

import msgspec
import nats

import natsreg


# Requests and replies can be msgspec Structs: natsreg encodes them as JSON on the wire, so
# any NATS client in any language can call this service.
class UserQuery(msgspec.Struct):
    id: int


class User(msgspec.Struct):
    id: int
    name: str


USERS = {1: User(1, "alice"), 2: User(2, "bob")}


async def main() -> None:
    # The connection is yours: natsreg never dials on its own.
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))

    # Entering the block announces the instance to every registry node and starts
    # heartbeats; leaving it stops taking requests, finishes those in flight and says goodbye.
    async with natsreg.announce(
        nc,
        "user-service",
        version="1.2.0",
        description="Users by id",
        metadata={"zone": "a"},
    ) as svc:
        # Served on the subject "user-service.users", in the queue group "user-service":
        # start this program twice and NATS spreads the requests over both.
        @svc.endpoint("users")
        async def users(req: natsreg.Request) -> User:
            # decode() validates the JSON payload into the Struct: a bad request fails here
            # with a clear message, which the caller receives as an error reply.
            query = req.decode(UserQuery)
            user = USERS.get(query.id)
            if user is None:
                # A ServiceError reaches the caller with its code (ADR-32 error headers).
                raise natsreg.ServiceError(f"no user {query.id}", code=404)
            return user

        # Returns on Ctrl-C or SIGTERM; leaving the block then drains gracefully.
        await svc.serve_forever()

    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
