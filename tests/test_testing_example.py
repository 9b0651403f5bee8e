# tests/test_greeter.py of a project with `pytest_plugins = ["natsreg.testing"]` in conftest.py
import pytest
from nats.aio.client import Client as NATS

import natsreg

pytestmark = pytest.mark.asyncio


async def test_the_greeter_greets_by_name(nats_client: NATS) -> None:
    # nats_client: a connection to a real nats-server that natsreg.testing started.
    async with natsreg.announce(nats_client, "greeter", version="1.0.0") as svc:

        @svc.endpoint("hello")
        async def hello(req: natsreg.Request) -> dict[str, str]:
            return {"greeting": f"hello, {req.json()['name']}"}

        async with natsreg.Client(nats_client) as client:
            reply = await client.request("greeter.hello", {"name": "Ada"})
            assert reply.json() == {"greeting": "hello, Ada"}

            with pytest.raises(natsreg.NoInstanceError):
                await client.request("greeter.missing", {})
