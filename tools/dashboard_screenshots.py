"""Screenshots of the dashboard for the docs: the overview and a service page.

Starts a nats-server, a registry node, a few services with some traffic and a bridge, all in
this process, then opens the two pages in headless Chromium (Playwright) and saves
docs/dashboard-overview.png and docs/dashboard-service.png.

    pip install -e '.[test]'        # playwright; Chromium from the OS (apt-get install chromium)
    python tools/dashboard_screenshots.py [--width 1280] [--out docs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import shutil
from pathlib import Path

import msgspec
import nats
from nats.micro import add_service
from nats.micro.request import Request as MicroRequest
from playwright.async_api import async_playwright

import natsreg
from natsreg import bridge
from natsreg.testing import NatsServer

PREFIX = "natsreg"


class UserQuery(msgspec.Struct):
    id: int


class User(msgspec.Struct):
    id: int
    name: str


async def services(url: str, stop: asyncio.Event) -> None:
    """Four services until ``stop``: two versions of one, one not healthy, one a plain ADR-32
    service."""
    conns = [await nats.connect(url) for _ in range(4)]
    try:
        async with (
            natsreg.announce(
                conns[0], "user-service", version="1.2.0", metadata={"zone": "eu-1"}
            ) as users_a,
            natsreg.announce(
                conns[1], "user-service", version="1.3.0", metadata={"zone": "eu-2"}
            ) as users_b,
            natsreg.announce(conns[2], "orders", version="0.9.1") as orders,
            natsreg.announce(
                conns[3], "billing", version="2.0.0", health=lambda: "warning"
            ) as billing,
        ):
            for svc in (users_a, users_b):

                @svc.endpoint("users", idempotent=True)
                async def users(req: natsreg.Request[UserQuery]) -> User:
                    await asyncio.sleep(random.uniform(0.001, 0.004))
                    return User(id=req.body.id, name="alice")

            @orders.endpoint("place")
            async def place(req: natsreg.Request) -> dict[str, str]:
                if random.random() < 0.1:
                    raise natsreg.ServiceError("out of stock", code=409)
                return {"status": "placed"}

            @billing.endpoint("charge")
            async def charge(req: natsreg.Request) -> dict[str, str]:
                return {"status": "charged"}

            for svc in (users_a, users_b, orders, billing):
                await svc.ready()
            # A plain ADR-32 service (nats.micro), which the registry lists as "micro".
            inventory = await add_service(conns[3], name="inventory", version="0.3.0")

            async def stock(req: MicroRequest) -> None:
                await req.respond(b'{"in_stock": 12}')

            await inventory.add_endpoint(name="stock", subject="inventory.stock", handler=stock)
            await stop.wait()
            await inventory.stop()
    finally:
        for nc in conns:
            await nc.close()


async def traffic(url: str, stop: asyncio.Event) -> None:
    """Some requests each second, so that the rates are not all zero."""
    nc = await nats.connect(url)
    async with natsreg.Client(nc) as client:
        while not stop.is_set():
            for subject in ("user-service.users", "orders.place", "billing.charge"):
                with contextlib.suppress(natsreg.NatsregError):
                    await client.request(subject, b'{"id": 1}', timeout_s=1.0)
            await asyncio.sleep(0.05)
    await nc.close()


async def main(args: argparse.Namespace, out: Path) -> None:
    stop = asyncio.Event()
    with NatsServer() as server:
        nc = await nats.connect(server.url)
        async with natsreg.Registry(nc, prefix=PREFIX, discover_jitter_s=0, micro_poll_s=0.5):
            tasks = [
                asyncio.create_task(services(server.url, stop)),
                asyncio.create_task(traffic(server.url, stop)),
            ]
            async with (
                bridge.run(nc, bridge.BridgeConfig(), port=0) as running,
                async_playwright() as pw,
            ):
                browser = await pw.chromium.launch(executable_path=shutil.which("chromium"))
                page = await browser.new_page(viewport={"width": args.width, "height": 760})
                await page.goto(running.url + "/_natsreg/ui")
                await page.get_by_role("link", name="user-service").wait_for()
                # The rates come from the difference between two refreshes.
                await page.get_by_text(re.compile(r"^[1-9][0-9.]*/s$")).first.wait_for()
                # A service that comes and goes, for the event log.
                reports_nc = await nats.connect(server.url)
                async with natsreg.announce(reports_nc, "reports", version="0.1.0") as reports:
                    await reports.ready()
                    await page.get_by_role("link", name="reports").wait_for()
                await page.get_by_role("link", name="reports").wait_for(state="detached")
                await reports_nc.close()
                await page.screenshot(path=str(out / "dashboard-overview.png"), full_page=True)
                await page.get_by_role("link", name="user-service").click()
                await page.get_by_role("heading", name="Instances").wait_for()
                await page.get_by_text("request", exact=True).click()  # its schema
                await page.get_by_label("Payload (JSON)").fill('{"id": 1}')
                await page.get_by_role("button", name="Send").click()
                await page.get_by_text("Reply (200)").wait_for(timeout=20_000)
                await page.screenshot(path=str(out / "dashboard-service.png"), full_page=True)
                await browser.close()
            stop.set()
            await asyncio.gather(*tasks)
        await nc.close()
    print(f"wrote {out / 'dashboard-overview.png'} and {out / 'dashboard-service.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(args, out))
