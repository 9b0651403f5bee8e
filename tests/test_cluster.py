"""natsreg on a local 3-node NATS cluster, with NATS nodes killed under it."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import anyio
import nats
import pytest
from nats.aio.client import Client as NATS

import natsreg
from natsreg import wire
from natsreg.client import RegistryApi
from natsreg.testing import NatsCluster
from tests.helpers import eventually


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    # Not advertised: a client reconnects only to the servers it lists, so killing a node
    # makes a real outage for the clients that list only that node.
    with NatsCluster(3, advertise=False) as nodes:
        yield nodes


async def connect(servers: str | list[str], **options: object) -> NATS:
    return await nats.connect(
        servers, reconnect_time_wait=0.2, max_reconnect_attempts=-1, **options
    )  # type: ignore[arg-type]


@pytest.fixture
async def on_node() -> AsyncIterator[list[NATS]]:
    connections: list[NATS] = []
    yield connections
    for conn in connections:
        await conn.close()


async def wait_for_routes(a: NATS, b: NATS, subject: str) -> None:
    # Interest travels between nodes asynchronously: wait until b hears what a sends.
    sub = await b.subscribe(subject)
    await b.flush()
    try:

        async def heard() -> bool:
            await a.publish(subject, b"?")
            try:
                await sub.next_msg(timeout=0.1)
                return True
            except nats.errors.TimeoutError:
                return False

        await eventually(heard, what="routes between cluster nodes")
    finally:
        await sub.unsubscribe()


async def test_services_callers_and_registry_on_different_nodes_work_together(
    cluster: NatsCluster, on_node: list[NATS], prefix: str, unique: str
) -> None:
    service_nc, registry_nc, caller_nc = [await connect(url) for url in cluster.urls]
    on_node += [service_nc, registry_nc, caller_nc]
    await wait_for_routes(service_nc, caller_nc, f"routes.{unique}")
    name = f"spread-{unique}"
    async with (
        natsreg.Registry(registry_nc, prefix=prefix),
        natsreg.announce(service_nc, name, version="1.0.0", prefix=prefix) as svc,
    ):

        @svc.endpoint("echo")
        async def echo(req: natsreg.Request) -> bytes:
            return req.data

        await svc.ready()
        client = natsreg.Client(caller_nc, prefix=prefix)

        async def listed() -> bool:
            try:
                return [i.id for i in (await client.instances(name)).instances] == [svc.id]
            except natsreg.NoInstanceError:  # the registry's subscription is not routed yet
                return False

        await eventually(listed, what="instance listed from another node")
        await eventually(lambda: _answers(client, f"{name}.echo"), what="request across nodes")


async def _answers(client: natsreg.Client, subject: str) -> bool:
    try:
        return (await client.request(subject, b"hi", timeout_s=0.5)).data == b"hi"
    except natsreg.NoInstanceError:
        return False


async def test_a_registry_whose_nats_node_dies_loses_no_instance(
    cluster: NatsCluster, on_node: list[NATS], prefix: str, unique: str
) -> None:
    # Services stay on node 0; the registry's node 1 dies for longer than the expiry.
    service_nc = await connect(cluster.urls[0])
    registry_nc = await connect(cluster.urls[1])
    watcher_nc = await connect(cluster.urls[2])
    on_node += [service_nc, registry_nc, watcher_nc]
    await wait_for_routes(service_nc, registry_nc, f"routes.{unique}")
    downs: list[wire.Event] = []

    async def watch() -> None:
        async for event in natsreg.Client(watcher_nc, prefix=prefix).watch():
            if event.kind == "down":
                downs.append(event)

    async with (
        natsreg.Registry(registry_nc, prefix=prefix) as registry,
        natsreg.announce(service_nc, f"a-{unique}", version="1.0.0", prefix=prefix),
        natsreg.announce(service_nc, f"b-{unique}", version="1.0.0", prefix=prefix),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(watch)
        await eventually(lambda: len(registry.snapshot().instances) == 2)
        cluster.kill(1)
        await anyio.sleep(3.5)  # more than the 2.5 s expiry
        cluster.restart(1)
        await eventually(lambda: registry_nc.is_connected, timeout_s=10, what="reconnected")
        await wait_for_routes(service_nc, registry_nc, f"again.{unique}")
        await anyio.sleep(3.0)  # warm-up, then several sweeps
        assert len(registry.snapshot().instances) == 2
        assert downs == []
        tg.cancel_scope.cancel()


async def test_services_on_a_dead_nats_node_reconnect_elsewhere_and_stay_listed(
    cluster: NatsCluster, on_node: list[NATS], prefix: str, unique: str
) -> None:
    # The service's node dies; its connection (with every node in its server list) moves to
    # another node fast enough that no registry view loses it.
    service_nc = await connect(cluster.urls, dont_randomize=True)
    registry_nc = await connect(cluster.urls[2])
    on_node += [service_nc, registry_nc]
    await wait_for_routes(service_nc, registry_nc, f"routes.{unique}")
    name = f"moved-{unique}"
    async with (
        natsreg.Registry(registry_nc, prefix=prefix) as registry,
        natsreg.announce(service_nc, name, version="1.0.0", prefix=prefix) as svc,
    ):

        @svc.endpoint("echo")
        async def echo(req: natsreg.Request) -> bytes:
            return req.data

        await svc.ready()
        # Listed with its endpoint: the announcement that added it is a change of its own.
        await eventually(lambda: [len(i.endpoints) for i in registry.snapshot().instances] == [1])
        events_before = registry.revision
        cluster.kill(0)
        client = natsreg.Client(registry_nc, prefix=prefix)
        await eventually(
            lambda: _answers(client, f"{name}.echo"),
            timeout_s=10,
            what="requests served again after the node died",
        )
        await anyio.sleep(3.0)
        assert [i.id for i in registry.snapshot().instances] == [svc.id]
        assert registry.revision == events_before, "the instance went down and up"
    cluster.restart(0)


async def test_all_registry_nodes_restarted_at_once_lose_nothing(
    cluster: NatsCluster, on_node: list[NATS], prefix: str, unique: str
) -> None:
    service_nc, first_nc, second_nc = [await connect(url) for url in cluster.urls]
    on_node += [service_nc, first_nc, second_nc]
    await wait_for_routes(service_nc, second_nc, f"routes.{unique}")
    names = [f"keep{n}-{unique}" for n in range(5)]
    async with contextlib.AsyncExitStack() as services:
        ids = {
            (
                await services.enter_async_context(
                    natsreg.announce(service_nc, name, version="1.0.0", prefix=prefix)
                )
            ).id
            for name in names
        }
        for _ in range(2):  # the nodes' first lives, then both restarted empty at once
            async with (
                natsreg.Registry(first_nc, prefix=prefix) as first,
                natsreg.Registry(second_nc, prefix=prefix) as second,
            ):
                started = anyio.current_time()
                for node in (first, second):
                    await eventually(
                        lambda n=node: {i.id for i in n.snapshot().instances} == ids,
                        timeout_s=3,
                        what="full view",
                    )
                # Within one re-announce round (0.5 s jitter) and a round trip.
                assert anyio.current_time() - started < 1.5


async def test_a_registry_node_killed_and_restarted_20_times_never_answers_short(
    cluster: NatsCluster, on_node: list[NATS], prefix: str, unique: str
) -> None:
    # Services on node 0, a warm registry node on node 1, a second registry node (a process,
    # killed -9 and restarted) on node 2, and a checker asking through node 2 every 0.1 s.
    service_nc, warm_nc, checker_nc = [await connect(url) for url in cluster.urls]
    on_node += [service_nc, warm_nc, checker_nc]
    await wait_for_routes(service_nc, checker_nc, f"routes.{unique}")
    await wait_for_routes(warm_nc, checker_nc, f"routes2.{unique}")
    env = {**os.environ, "NATS_URL": cluster.urls[2], "NATSREG_PREFIX": prefix}
    answers: list[tuple[str, int]] = []
    unanswered = 0
    restarted_ids: set[str] = set()
    async with contextlib.AsyncExitStack() as stack:
        warm = await stack.enter_async_context(natsreg.Registry(warm_nc, prefix=prefix))
        for n in range(3):
            await stack.enter_async_context(
                natsreg.announce(service_nc, f"s{n}-{unique}", version="1.0.0", prefix=prefix)
            )
        await eventually(lambda: len(warm.snapshot().instances) == 3 and not warm.warming_up)
        api = RegistryApi(checker_nc, prefix=prefix)
        await eventually(lambda: _lists(api, 3), what="the warm node answers through node 2")

        async def check() -> None:
            nonlocal unanswered
            while True:
                try:
                    answer = await api.instances(timeout_s=1.0)
                except natsreg.RequestError:
                    unanswered += 1
                else:
                    answers.append((answer.node, len(answer.instances)))
                await anyio.sleep(0.1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(check)
            for _ in range(20):
                with subprocess.Popen(
                    [sys.executable, "-m", "natsreg", "registry"],
                    env=env,
                    stderr=subprocess.PIPE,
                    text=True,
                ) as node:
                    try:
                        assert node.stderr is not None
                        line = await anyio.to_thread.run_sync(node.stderr.readline)
                        restarted_ids.add(line.split("registry node ")[1].split()[0])
                        # Killed anywhere from warming up to well after it is warm.
                        await anyio.sleep(random.uniform(0.2, 2.0))
                    finally:
                        node.send_signal(signal.SIGKILL)
            tg.cancel_scope.cancel()
    short = [(node, n) for node, n in answers if n < 3]
    assert short == [], f"{len(short)} of {len(answers)} answers listed fewer than 3"
    assert len(answers) >= 0.95 * (len(answers) + unanswered), unanswered
    # The restarted node took its share once warm: the check covered it.
    assert {node for node, _ in answers} & restarted_ids


async def _lists(api: RegistryApi, count: int) -> bool:
    try:
        return len((await api.instances(timeout_s=1.0)).instances) == count
    except natsreg.RequestError:
        return False
