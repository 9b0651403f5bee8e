"""Two clusters joined by gateways (a super-cluster) on loopback: plain subjects stay local."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

import natsreg
from natsreg.testing import NatsServer, free_port
from tests.helpers import eventually


@pytest.fixture(scope="module")
def east_and_west(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    folder: Path = tmp_path_factory.mktemp("gateways")
    ports = {"east": free_port(), "west": free_port()}
    gateways = ", ".join(f'{{name: "{n}", url: "nats://127.0.0.1:{p}"}}' for n, p in ports.items())
    servers = []
    for name, port in ports.items():
        conf = folder / f"{name}.conf"
        conf.write_text(
            f'gateway {{ name: "{name}", listen: "127.0.0.1:{port}", gateways: [{gateways}] }}\n'
        )
        servers.append(NatsServer(args=("-c", str(conf))))
    try:
        yield servers[0].url, servers[1].url
    finally:
        for server in servers:
            server.stop()


async def test_each_cluster_serves_its_own_callers_and_sees_every_instance(
    east_and_west: tuple[str, str], prefix: str, unique: str
) -> None:
    east, west = [await nats.connect(url) for url in east_and_west]
    name = f"geo-{unique}"
    served: Counter[str] = Counter()
    try:
        async with (
            natsreg.Registry(east, prefix=prefix) as registry,
            natsreg.announce(
                east, name, version="1.0.0", prefix=prefix, metadata={"cluster": "east"}
            ) as in_east,
            natsreg.announce(
                west, name, version="1.0.0", prefix=prefix, metadata={"cluster": "west"}
            ) as in_west,
        ):
            for svc, where in ((in_east, "east"), (in_west, "west")):

                @svc.endpoint("where")
                async def where_am_i(req: natsreg.Request, where: str = where) -> str:
                    served[where] += 1
                    return where

                await svc.ready()
            # The east registry node sees the west instance too (announcements cross).
            await eventually(
                lambda: len(registry.snapshot().instances) == 2,
                timeout_s=10,
                what="both clusters' instances listed",
            )
            # A plain request from the west stays in the west while it has a member: the
            # queue group prefers the local cluster across gateways.
            west_caller = natsreg.Client(west, prefix=prefix, strategy="queue")

            async def reaches_west() -> bool:
                try:
                    reply = await west_caller.request(f"{name}.where", timeout_s=0.5)
                    return reply.text() == "west"
                except natsreg.NoInstanceError:
                    return False

            await eventually(reaches_west, timeout_s=10, what="west caller served")
            served.clear()
            for _ in range(50):
                assert (await west_caller.request(f"{name}.where")).text() == "west"
            assert served == {"west": 50}
    finally:
        await east.close()
        await west.close()
