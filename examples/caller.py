"""An example caller: asks user-service for two users, one of which does not exist.

python examples/caller.py        # with `natsreg up --with examples.user_service:svc` running
"""

import asyncio
import os
import sys

import nats

import natsreg


async def quiet(error: Exception) -> None:
    """nats-py's default error callback logs a traceback per failed attempt: say it once."""


async def main() -> None:
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    try:
        # Two tries, not nats-py's default of two minutes of them (a script that makes a few
        # calls and exits needs no more): a missing server is one clear line.
        nc = await nats.connect(
            url, max_reconnect_attempts=1, reconnect_time_wait=0.2, error_cb=quiet
        )
    except (OSError, nats.errors.Error) as exc:
        sys.exit(f"caller: cannot reach NATS at {url} ({exc}): start it with natsreg up")
    client = natsreg.Client(nc, timeout_s=2.0)

    # A dict payload is sent as JSON; the reply's json() decodes it back.
    reply = await client.request("user-service.users", {"id": 1})
    print("user 1:", reply.json())

    # Errors are typed: the service's 404 comes back as a ServiceError with its code.
    try:
        await client.request("user-service.users", {"id": 99})
    except natsreg.ServiceError as exc:
        print(f"user 99: error {exc.code}: {exc.description}")

    # NoInstanceError means nothing serves the subject; it is safe to retry later.
    try:
        await client.request("billing-service.invoices", {})
    except natsreg.NoInstanceError as exc:
        print("billing:", exc)

    # The registry knows every instance, its health and its endpoints.
    snapshot = await client.instances("user-service")
    for instance in snapshot.instances:
        print(f"instance {instance.id}: {instance.name}@{instance.version} {instance.health}")

    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
