"""Crash detection from nats-server's disconnect advisories (a system-account connection)."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import nats
import pytest
from nats.aio.client import Client as NATS

import natsreg
from natsreg.testing import NatsServer
from tests.helpers import eventually, read_id, start_service

CONFIG = Path(__file__).with_name("sys-accounts.conf")


@pytest.fixture(scope="module")
def accounts_server() -> Iterator[NatsServer]:
    with NatsServer(args=("-c", str(CONFIG))) as server:
        yield server


@pytest.fixture
async def app_and_system(accounts_server: NatsServer) -> AsyncIterator[tuple[NATS, NATS]]:
    url = accounts_server.url
    app = await nats.connect(url, user="app", password="app")
    system = await nats.connect(url, user="sys", password="sys")
    yield app, system
    await app.close()
    await system.close()


async def test_a_killed_process_is_removed_as_soon_as_its_connection_closes(
    accounts_server: NatsServer, app_and_system: tuple[NATS, NATS], prefix: str, unique: str
) -> None:
    app, system = app_and_system
    url = accounts_server.url.replace("nats://", "nats://app:app@")
    downs: list[str] = []
    async with natsreg.Registry(app, prefix=prefix, system_nc=system) as registry:
        with start_service(url, f"crash-{unique}", prefix) as proc:
            instance_id = read_id(proc)
            await eventually(lambda: [i.id for i in registry.snapshot().instances] == [instance_id])
            events = await app.subscribe(f"{prefix}.events.>")
            proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await eventually(lambda: registry.snapshot().instances == [], timeout_s=3)
            removal_s = time.monotonic() - killed
            msg = await events.next_msg(timeout=1)
            downs.append(natsreg.wire.decode_event(msg.data).reason)
    assert downs == ["disconnected"]
    # Heartbeat expiry could not be this fast: the last beat was under a second old at most.
    assert removal_s < 1.0


async def test_another_clients_disconnect_removes_nothing(
    app_and_system: tuple[NATS, NATS], accounts_server: NatsServer, prefix: str, unique: str
) -> None:
    app, system = app_and_system
    async with (
        natsreg.Registry(app, prefix=prefix, system_nc=system) as registry,
        natsreg.announce(app, f"stay-{unique}", version="1.0.0", prefix=prefix),
    ):
        await eventually(lambda: len(registry.snapshot().instances) == 1)
        advisories = await system.subscribe(natsreg.subjects.SYS_DISCONNECT)
        other = await nats.connect(accounts_server.url, user="app", password="app")
        await other.close()
        await advisories.next_msg(timeout=2)  # the registry got the same advisory
        await anyio.sleep(0.2)
        assert len(registry.snapshot().instances) == 1
