"""Four sharded registry nodes, each its own process, on the local 3-node NATS cluster: kill
(SIGKILL) one holder of every service and both of some, and every service is still answered,
the list whole, once the dead nodes' leases end (docs/protocol.md, "Sharding")."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.to_thread
import pytest
from nats.aio.client import Client as NATS

import natsreg
from natsreg.client import RegistryApi
from natsreg.registry._shard import owners
from natsreg.testing import NatsCluster
from tests.helpers import eventually
from tests.test_cluster import connect, wait_for_routes

SERVICES = [f"svc-{n}" for n in range(8)]
INSTANCES = 2  # of each service


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster(3) as nodes:
        yield nodes


@contextlib.contextmanager
def registry_processes(
    urls: list[str], prefix: str, count: int
) -> Iterator[list[tuple[subprocess.Popen[str], str]]]:
    """``count`` processes of ``natsreg registry --shard``, started at once over ``urls``,
    each with its node id; killed on exit."""
    env = {**os.environ, "NATSREG_PREFIX": prefix}
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-m", "natsreg", "registry", "--shard"],
                    env={**env, "NATS_URL": urls[n % len(urls)]},
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            for n in range(count)
        ]
        for proc in procs:
            stack.callback(proc.send_signal, signal.SIGKILL)
        started = []
        for proc in procs:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert "registry node " in line, f"the registry did not start: {line!r}"
            started.append((proc, line.split("registry node ")[1].split()[0]))
        yield started


async def whole(api: RegistryApi, nodes: set[str]) -> bool:
    """Every node counted by each and warm; every service listed in full and answered."""
    try:
        stats = await api.nodes()
        if {s.node for s in stats} != nodes or any(
            s.warming_up or s.shard_nodes != len(nodes) for s in stats
        ):
            return False
        listed = await api.services(timeout_s=1.0)
        counts = {s.name: s.instances for s in listed.services}
        if counts != dict.fromkeys(SERVICES, INSTANCES) or listed.unanswered:
            return False
        for name in SERVICES:
            if len((await api.instances(name, timeout_s=1.0)).instances) != INSTANCES:
                return False
    except natsreg.RequestError:
        return False
    return True


@contextlib.asynccontextmanager
async def fleet(urls: list[str], prefix: str) -> AsyncIterator[NATS]:
    async with contextlib.AsyncExitStack() as stack:
        conns = [await connect(url) for url in urls]
        for conn in conns:
            stack.push_async_callback(conn.close)
        await wait_for_routes(conns[0], conns[1], f"{prefix}.routes")
        await wait_for_routes(conns[0], conns[2], f"{prefix}.routes")
        for n, name in enumerate(SERVICES):
            for i in range(INSTANCES):
                nc = conns[(n + i) % len(conns)]
                await stack.enter_async_context(
                    natsreg.announce(nc, name, version="1.0.0", prefix=prefix, heartbeat_s=0.5)
                )
        yield conns[0]


async def test_sharded_nodes_answer_for_every_service_after_one_node_of_each_shard_is_killed(
    cluster: NatsCluster, prefix: str
) -> None:
    urls = cluster.urls
    with contextlib.ExitStack() as procs:
        started = await anyio.to_thread.run_sync(
            lambda: procs.enter_context(registry_processes(urls, prefix, 4))
        )
        ids = {node_id for _, node_id in started}
        async with fleet(urls, prefix) as nc:
            api = RegistryApi(nc, prefix=prefix)
            await eventually(lambda: whole(api, ids), 15.0, what="4 sharded nodes, all answered")
            # Kill both holders of the first service: every other service loses at most one
            # of its two, and the first one has no holder until the leases end.
            doomed = set(owners(SERVICES[0], ids))
            for proc, node_id in started:
                if node_id in doomed:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
            survived = ids - doomed
            # One holder of every other service lives: its queries go on being answered, before
            # the dead nodes' leases end. A query sent while the cluster's servers still route
            # to a dead node's subscription (its server has seen the socket close, the others
            # learn it over their routes) goes unanswered: the caller asks once more.
            for name in SERVICES:
                if set(owners(name, ids)) != doomed:
                    for last in (False, True):
                        try:
                            listed = (await api.instances(name, timeout_s=1.0)).instances
                        except natsreg.errors.RequestTimeoutError:
                            if last:
                                raise
                            continue
                        assert len(listed) == INSTANCES
                        break
            await eventually(
                lambda: whole(api, survived), 10.0, what="every service answered by 2 nodes"
            )
