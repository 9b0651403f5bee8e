"""A service behind a leaf node, a registry and a caller on the hub: the docs' example config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

import natsreg
from natsreg.testing import NatsServer, free_port
from tests.helpers import eventually


@pytest.fixture(scope="module")
def hub_and_leaf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    folder: Path = tmp_path_factory.mktemp("leaf")
    leaf_port = free_port()
    hub_conf = folder / "hub.conf"
    hub_conf.write_text(f"leafnodes {{ listen: 127.0.0.1:{leaf_port} }}\n")
    leaf_conf = folder / "leaf.conf"
    leaf_conf.write_text(
        f'leafnodes {{ remotes = [ {{ url: "nats-leaf://127.0.0.1:{leaf_port}" }} ] }}\n'
    )
    with (
        NatsServer(args=("-c", str(hub_conf))) as hub,
        NatsServer(args=("-c", str(leaf_conf))) as leaf,
    ):
        yield hub.url, leaf.url


async def test_a_service_behind_a_leaf_node_is_listed_and_called_from_the_hub(
    hub_and_leaf: tuple[str, str], prefix: str, unique: str
) -> None:
    hub_url, leaf_url = hub_and_leaf
    hub = await nats.connect(hub_url)
    leaf = await nats.connect(leaf_url)
    name = f"leafy-{unique}"
    try:
        async with natsreg.Registry(hub, prefix=prefix) as registry:
            async with natsreg.announce(leaf, name, version="1.0.0", prefix=prefix) as svc:

                @svc.endpoint("echo")
                async def echo(req: natsreg.Request) -> bytes:
                    return req.data

                await svc.ready()
                # The leaf connection comes up asynchronously: the re-announce on heartbeat
                # (or the registry's ask) makes the instance known once it is.
                await eventually(
                    lambda: [i.id for i in registry.snapshot().instances] == [svc.id],
                    timeout_s=10,
                    what="leaf service listed",
                )
                client = natsreg.Client(hub, prefix=prefix)

                async def answered() -> bool:
                    try:
                        reply = await client.request(f"{name}.echo", b"hi", timeout_s=0.5)
                        return reply.data == b"hi"
                    except natsreg.NoInstanceError:
                        return False

                await eventually(answered, timeout_s=10, what="request across the leaf")
            await eventually(
                lambda: registry.snapshot().instances == [],
                timeout_s=2,
                what="goodbye across the leaf",
            )
    finally:
        await hub.close()
        await leaf.close()
