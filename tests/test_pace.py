"""Paced heartbeats on a real server with a system account (docs/protocol.md, "Paced
heartbeats"): a registry node that reads disconnect advisories lets the fleet heartbeat slower,
takes it back when it loses them, and a frozen instance under the slow pace costs callers no
request."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS

import natsreg
from natsreg import subjects, wire
from natsreg.testing import NatsServer
from tests.helpers import eventually
from tests.test_cli import assert_one_line_error, natsreg_cli
from tests.test_resilience import TIMEOUT_S, in_view, services, under_load
from tests.test_system_events import accounts_server  # noqa: F401 (a fixture)

OWN_S = 0.1


@pytest.fixture
async def app_and_system(
    accounts_server: NatsServer,  # noqa: F811 (the fixture)
) -> AsyncIterator[tuple[NATS, NATS]]:
    app = await nats.connect(accounts_server.url, user="app", password="app")
    system = await nats.connect(accounts_server.url, user="sys", password="sys")
    yield app, system
    await app.close()
    await system.close()


def paces(registry: natsreg.Registry) -> list[float]:
    return [i.pace_s for i in registry.snapshot().instances]


async def test_a_node_reading_system_events_paces_the_fleet_until_it_loses_them(
    app_and_system: tuple[NATS, NATS], prefix: str, unique: str
) -> None:
    app, system = app_and_system
    async with natsreg.announce(
        app, f"paced-{unique}", version="1.0.0", prefix=prefix, heartbeat_s=OWN_S
    ) as svc:
        await svc.ready()
        async with natsreg.Registry(app, prefix=prefix, system_nc=system, pace_s=1.0) as registry:
            await eventually(lambda: svc.pace_s == 1.0, what="the instance keeps the pace")
            # Every reader now waits for it 2.5 s, not 0.25 s: its beats say so.
            await eventually(lambda: paces(registry) == [1.0], what="the registry sees the pace")
            assert registry.stats().pace_s == 1.0
            await asyncio.sleep(0.5)
            assert [i.id for i in registry.snapshot().instances] == [svc.id]
            # Without disconnect advisories a crash is only seen by silence: the node takes
            # the pace back, and the instance is back to its own interval at once.
            await system.close()
            await eventually(lambda: svc.pace_s == OWN_S, what="the instance back to its own")
            await eventually(lambda: paces(registry) == [OWN_S], what="the registry sees it")
            assert registry.stats().pace_s == 0.0


async def test_without_system_events_no_node_paces_anyone(
    nc: NATS, prefix: str, unique: str
) -> None:
    paced = await nc.subscribe(subjects.control_subject(prefix, "pace", "*"))
    async with (
        natsreg.Registry(nc, prefix=prefix, pace_s=1.0) as registry,
        natsreg.announce(nc, f"own-{unique}", version="1.0.0", prefix=prefix, heartbeat_s=OWN_S),
    ):
        await eventually(lambda: paces(registry) == [OWN_S], what="the instance listed")
        await asyncio.sleep(0.3)
        assert registry.stats().pace_s == 0.0
    with pytest.raises(nats.errors.TimeoutError):
        await paced.next_msg(timeout=0.05)


async def test_a_forged_pace_slows_an_instance_no_further_than_max_pace_s(
    nc: NATS, prefix: str, unique: str
) -> None:
    # No permissions on this server: anyone may publish on <prefix>.pace.<node>.
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        natsreg.announce(
            nc, f"forged-{unique}", version="1.0.0", prefix=prefix, heartbeat_s=OWN_S
        ) as svc,
    ):
        await svc.ready()
        await eventually(lambda: paces(registry) == [OWN_S], what="the instance listed")
        forged = wire.Pace(node="evil", heartbeat_s=1e9, valid_s=1e9)
        # One that names another node than its subject is not believed.
        await nc.publish(subjects.control_subject(prefix, "pace", "other"), wire.encode(forged))
        await nc.publish(subjects.control_subject(prefix, "pace", "evil"), wire.encode(forged))
        await eventually(lambda: svc.pace_s == wire.MAX_PACE_S, what="the forged pace, clamped")
        # The registry hears of it with the instance's next beat, which declares it.
        await eventually(
            lambda: paces(registry) == [wire.MAX_PACE_S], what="the registry sees it clamped"
        )
        # The forger may take it back, and a genuine faster lease outvotes it meanwhile.
        genuine = wire.Pace(node="genuine", heartbeat_s=0.5, valid_s=60)
        await nc.publish(subjects.control_subject(prefix, "pace", "genuine"), wire.encode(genuine))
        await eventually(lambda: svc.pace_s == 0.5, what="the faster lease wins")


async def test_a_frozen_instance_under_the_slow_pace_is_avoided_with_no_failed_request(
    accounts_server: NatsServer,  # noqa: F811 (the fixture)
    app_and_system: tuple[NATS, NATS],
    prefix: str,
    unique: str,
) -> None:
    app, system = app_and_system
    name = f"frozen-{unique}"
    url = accounts_server.url.replace("nats://", "nats://app:app@")
    pace_s = 10.0
    with services(url, name, prefix, 3, "--idempotent") as procs:
        # The node starts after the instances, so its first lease reaches all of them.
        async with (
            natsreg.Registry(app, prefix=prefix, system_nc=system, pace_s=pace_s) as registry,
            natsreg.Client(app, prefix=prefix) as client,
        ):
            ids = {i for _, i in procs}
            await eventually(
                lambda: sorted(paces(registry)) == [pace_s] * 3,
                timeout_s=10,
                what="three instances at the slow pace",
            )
            await in_view(client, name, ids)
            async with under_load(client, f"{name}.work") as load:
                await asyncio.sleep(0.5)
                frozen, frozen_id = procs[0]
                frozen.send_signal(signal.SIGSTOP)
                stopped_at = time.monotonic()
                # Every attempt sent to it before it froze has timed out by then, and it is
                # avoided from its first timeout on.
                await asyncio.sleep(TIMEOUT_S + 0.5)
                figures = client.stats()["instances"][frozen_id]
                sent_until_avoided = figures["calls"] + figures["in_flight"]
                # Past the 2.5 s a 1 s heartbeat would have allowed: only avoidance keeps
                # callers off it now.
                await asyncio.sleep(max(0.0, stopped_at + 4.0 - time.monotonic()))
                listed = {i.id for i in await client.view(name)}
            figures = client.stats()["instances"][frozen_id]
            frozen.send_signal(signal.SIGCONT)
    assert load.errors == []
    assert max(load.latencies) < TIMEOUT_S
    # Still listed: its slow pace gives it 25 s, which is what this test is about.
    assert frozen_id in listed
    assert figures["calls"] + figures["in_flight"] == sent_until_avoided
    assert len(load.by_instance(since=stopped_at + TIMEOUT_S)) == 2


@pytest.mark.pure
@pytest.mark.parametrize("value", ["31", "-1", "nan"])
def test_a_pace_out_of_bounds_is_refused_in_one_line_before_connecting(value: str) -> None:
    env = {**os.environ, "NATS_URL": "nats://127.0.0.1:1"}  # nothing listens: not reached
    result = natsreg_cli(env, "registry", "--pace", value)
    assert_one_line_error(result, "pace must be between 0 (off) and 30 seconds")
