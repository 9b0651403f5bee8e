"""An example saga: place an order across three steps, undone step by step when one fails.

Serve the shop, then run two orders against it, from the folder that holds examples/:

    natsreg up --with examples.place_order:shop     # NATS with JetStream, a registry, the shop
    python examples/place_order.py                  # from another terminal
    natsreg saga show order-2                       # what happened to the declined order

The first order completes; the second is declined by billing, so its stock reservation is
released again. docs/sagas.md explains every part.
"""

import asyncio
import os
from typing import Any

import nats

import natsreg

# -- the services the saga calls (one service with five endpoints, to keep the example short) --

shop = natsreg.Service("shop", version="1.0.0", description="Stock, billing and shipping")

# What each endpoint did, by the saga's idempotency key: a step the saga sends again (its
# coordinator died after the call) answers with what it did the first time.
done: dict[str, Any] = {}


def once(req: natsreg.Request, action: Any) -> Any:
    # Every saga call carries `saga.key`, the same each time this step is sent.
    key = req.json()["saga"]["key"]
    if key not in done:
        done[key] = action
    return done[key]


@shop.endpoint("reserve")
async def reserve(req: natsreg.Request) -> dict[str, Any]:
    order = req.json()["payload"]
    return once(req, {"reservation": f"r-{order['order']}", "items": order["items"]})


@shop.endpoint("release")
async def release(req: natsreg.Request) -> dict[str, Any]:
    # A compensation sees the reply of the step it undoes under "replies".
    reservation = req.json()["replies"].get("shop.reserve", {}).get("reservation")
    return once(req, {"released": reservation})


@shop.endpoint("charge")
async def charge(req: natsreg.Request) -> dict[str, Any]:
    order = req.json()["payload"]
    if order["total"] > 100:
        # An error reply: the step failed and took no effect, so only earlier steps are undone.
        raise natsreg.ServiceError("card declined: over the limit", code=402)
    return once(req, {"charged": order["total"]})


@shop.endpoint("refund")
async def refund(req: natsreg.Request) -> dict[str, Any]:
    return once(req, {"refunded": req.json()["replies"].get("shop.charge")})


@shop.endpoint("ship")
async def ship(req: natsreg.Request) -> dict[str, Any]:
    return once(req, {"tracking": f"t-{req.json()['payload']['order']}"})


# -- the saga: defined once, in every process that may run or resume it --

place_order = natsreg.Saga(
    "place-order",
    steps=[
        natsreg.Step("shop.reserve", compensate="shop.release"),
        natsreg.Step("shop.charge", compensate="shop.refund"),
        natsreg.Step("shop.ship"),  # the last step: nothing after it can fail
    ],
)


async def main() -> None:
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    client = natsreg.Client(nc, timeout_s=2.0)

    # Sagas left behind by a coordinator that died are finished first (none, the first time).
    for result in await place_order.recover(client):
        print(f"recovered {result.id}: {result.status}")

    for number, total in ((1, 40), (2, 400)):
        order = {"order": number, "items": ["book"], "total": total}
        # The id names the saga in the bucket: running it again returns its result.
        result = await place_order.run(client, order, saga_id=f"order-{number}")
        print(f"order-{number}: {result.status}", result.error or result.replies["shop.ship"])

    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
