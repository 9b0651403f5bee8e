"""How many Prometheus series a scanner can make a bridge expose: GETs to made-up paths.

The bridge maps any ``/service/endpoint`` path to a NATS request, and its client keeps call
figures per ``service.endpoint`` pair, up to a cap (``natsreg._figures.MAX_CALL_SERIES``), then
under ``_other``. This starts a nats-server and a bridge with default routes, sends N requests
to paths nobody serves (each a 503), and counts the series and bytes of one scrape of
``/_natsreg/metrics``. Not a timing: the same figures on any machine.

    python bench/series.py            # 1,100 made-up paths
    python bench/series.py -n 300
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

import httpx
import nats

from natsreg import bridge
from natsreg.bridge import BridgeConfig
from natsreg.testing import NatsServer


async def scrape_after(paths: int) -> str:
    """One scrape of a fresh bridge's metrics after ``paths`` requests to made-up paths."""
    async with NatsServer() as server:
        nc = await nats.connect(server.url)
        try:
            async with (
                bridge.run(nc, BridgeConfig(timeout_s=0.2), port=0) as running,
                httpx.AsyncClient(base_url=running.url, timeout=5) as http,
            ):
                for _ in range(paths):
                    await http.get(f"/s{uuid.uuid4().hex[:8]}/e")
                return (await http.get("/_natsreg/metrics")).text
        finally:
            await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1100, help="made-up paths (default: 1100)")
    args = parser.parse_args()
    text = asyncio.run(scrape_after(args.n))
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    print(f"{args.n} made-up paths: {series:,} series, {len(text.encode()) / 1e6:.2f} MB a scrape")


if __name__ == "__main__":
    main()
