"""Sharded registry nodes on one server: each service held by two of them, every question
answered, a joining node takes its share (docs/protocol.md, "Sharding")."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro import add_service
from nats.micro.request import Request as MicroRequest

import natsreg
from natsreg import subjects, wire
from natsreg.client import RegistryApi
from natsreg.registry._shard import REPLICAS, owners
from tests.helpers import eventually

SERVICES = [f"svc-{n}" for n in range(6)]
INSTANCES = 2  # of each service


async def connect(url: str) -> NATS:
    nc = NATS()
    await nc.connect(url)
    return nc


@contextlib.asynccontextmanager
async def sharded_node(
    url: str, prefix: str, *, joining: list[str] | None = None
) -> AsyncIterator[natsreg.Registry]:
    """A sharded node; ``joining`` the nodes of those ids, one that owns some of SERVICES (a
    node's id is random: a fifth node would own none of six services one time in twenty)."""
    nc = await connect(url)

    def node() -> natsreg.Registry:
        return natsreg.Registry(nc, prefix=prefix, shard=True, discover_jitter_s=0.2)

    def owns_some(candidate: natsreg.Registry, ids: list[str]) -> bool:
        return any(
            candidate.node_id in owners(name, [*ids, candidate.node_id]) for name in SERVICES
        )

    try:
        chosen = node()
        while joining is not None and not owns_some(chosen, joining):
            chosen = node()  # never started: nothing of it reached NATS
        async with chosen:
            yield chosen
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def fleet(nc: NATS, prefix: str) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for name in SERVICES:
            for _ in range(INSTANCES):
                await stack.enter_async_context(
                    natsreg.announce(nc, name, version="1.0.0", prefix=prefix, heartbeat_s=0.5)
                )
        yield


@contextlib.asynccontextmanager
async def subscription(
    nc: NATS, subject: str, cb: Callable[[Msg], Awaitable[None]]
) -> AsyncIterator[None]:
    sub = await nc.subscribe(subject, cb=cb)
    try:
        yield
    finally:
        await sub.unsubscribe()


def local(node: natsreg.Registry, name: str) -> dict[str, wire.InstanceView]:
    """The node's view of ``name`` as a user compares two nodes: all but what each heartbeat
    moves (a beat may be in flight between the two looks)."""
    return {
        i.id: msgspec.structs.replace(i, age_s=0.0, seq=0, load=wire.Load())
        for i in node.snapshot(name=name).instances
    }


async def settled(nodes: list[natsreg.Registry]) -> None:
    """Until every node counts them all, is warm, and answers for its services."""
    ids = sorted(node.node_id for node in nodes)

    def done() -> bool:
        for node in nodes:
            shard = node.shard
            assert shard is not None
            if list(shard.nodes) != ids or node.warming_up:
                return False
            for name in SERVICES:
                mine = node.node_id in owners(name, ids)
                held = len(local(node, name))
                if mine != shard.answers_for(name) or held != (INSTANCES if mine else 0):
                    return False
        return True

    await eventually(done, 8.0, what="sharded nodes settled")


async def test_sharded_nodes_hold_two_each_and_answer_every_question(
    nats_url: str, nc: NATS, prefix: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(sharded_node(nats_url, prefix)) for _ in range(4)]
        await stack.enter_async_context(fleet(nc, prefix))
        await settled(nodes)
        for name in SERVICES:
            holders = [n for n in nodes if local(n, name)]
            assert len(holders) == REPLICAS
            assert local(holders[0], name) == local(holders[1], name)
        api = RegistryApi(nc, prefix=prefix)
        listed = await api.services()
        assert sorted(s.name for s in listed.services) == SERVICES
        assert all(s.instances == 2 for s in listed.services)  # one holder's count, not two
        assert listed.unanswered == []
        whole = await api.instances()
        assert len(whole.instances) == 2 * len(SERVICES) and whole.unanswered == []
        for name in SERVICES:
            assert len((await api.instances(name)).instances) == 2
        one = whole.instances[0]
        assert (await api.instance(one.id)).id == one.id
        # A node holds no heartbeat of a service it does not hold.
        ids = [n.node_id for n in nodes]
        for node in nodes:
            mine = [s for s in SERVICES if node.node_id in owners(s, ids)]
            assert node.stats().services == len(mine) and node.stats().shard_nodes == 4

        # A node that joins takes its share from the nodes that hold it, its view of it
        # equal to a holder's, and no instance is asked to announce again.
        asked: list[str] = []

        async def on_discover(msg: Msg) -> None:
            asked.append(msg.subject)

        for tail in ((), (">",)):
            subject = subjects.control_subject(prefix, "discover", *tail)
            await stack.enter_async_context(subscription(nc, subject, on_discover))
        await nc.flush()
        joining = [n.node_id for n in nodes]
        late = await stack.enter_async_context(sharded_node(nats_url, prefix, joining=joining))
        nodes.append(late)
        await settled(nodes)
        ids = [n.node_id for n in nodes]
        taken = [name for name in SERVICES if late.node_id in owners(name, ids)]
        assert taken
        for name in taken:
            other = next(n for n in nodes if n is not late and local(n, name))
            assert local(late, name) == local(other, name)
        await nc.flush()
        assert asked == []
        listed = await api.services()
        assert sorted(s.name for s in listed.services) == SERVICES


async def test_a_forged_presence_is_dropped_and_a_phantom_node_is_named_unanswered(
    nats_url: str, nc: NATS, prefix: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(sharded_node(nats_url, prefix)) for _ in range(2)]
        await stack.enter_async_context(fleet(nc, prefix))
        await settled(nodes)
        # Speaking for another node, or too long: dropped and counted.
        forged = wire.encode(wire.ShardPresence(node="someone-else", valid_s=3.0))
        await nc.publish(subjects.control_subject(prefix, "shard", "phantom"), forged)
        await nc.publish(subjects.control_subject(prefix, "shard", "big"), b"{" + b" " * 600)
        await nc.flush()
        await eventually(
            lambda: all(
                n.dropped["subject_mismatch"] >= 1 and n.dropped["oversized"] >= 1 for n in nodes
            ),
            what="forged presences dropped",
        )
        assert all(len(n.shard.nodes) == 2 for n in nodes if n.shard)
        # A phantom that says it is a node (it would need the registry's permission) holds
        # places for its lease; the lists say which services went unanswered meanwhile.
        phantom = wire.encode(wire.ShardPresence(node="phantom", valid_s=1.0))
        await nc.publish(subjects.control_subject(prefix, "shard", "phantom"), phantom)
        await eventually(lambda: all(len(n.shard.nodes) == 3 for n in nodes if n.shard))
        ids = [*(n.node_id for n in nodes), "phantom"]
        lost = sorted(s for s in SERVICES if set(owners(s, ids)) == {"phantom"})
        listed = await RegistryApi(nc, prefix=prefix).services()
        assert listed.unanswered == lost
        await eventually(lambda: all(len(n.shard.nodes) == 2 for n in nodes if n.shard))


async def test_a_peers_part_is_checked_before_its_instances_are_taken(
    nats_url: str, prefix: str
) -> None:
    # A part of service "a" (what a gaining node restores) may hold nothing of another service
    # and nothing that breaks the wire's limits: each such instance is dropped and counted.
    async with sharded_node(nats_url, prefix) as node:
        part = [
            wire.InstanceView(id="i1", name="a", version="1.0.0", seq=1),
            wire.InstanceView(id="i2", name="b", version="1.0.0", seq=1),
            wire.InstanceView(id="i3", name="a", version="not a version", seq=1),
        ]
        sharded = node._part  # what _takeover.py restores a gained service's parts with
        assert sharded is not None and sharded.restore(part, "a") == 1
        assert [i.id for i in node.snapshot(name="a").instances] == ["i1"]
        assert node.snapshot(name="b").instances == []
        assert node.dropped["subject_mismatch"] == 1 and sum(node.dropped.values()) == 2
        # The view's own rules hold after the checks: what it holds at that sequence stays.
        again = wire.InstanceView(id="i1", name="a", version="1.0.0", seq=1)
        assert sharded.restore([again], "a") == 0 and node.dropped["stale"] == 1


async def test_a_plain_adr32_service_is_held_and_answered_for_by_its_owners_alone(
    nats_url: str, nc: NATS, prefix: str, unique: str
) -> None:
    # Plain ADR-32 services are polled, not announced: a sharded node keeps those it holds
    # and answers for them, as for any other service; the rest it only knows by name.
    name = f"plain-{unique}"
    async with contextlib.AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(sharded_node(nats_url, prefix)) for _ in range(3)]
        await stack.enter_async_context(fleet(nc, prefix))
        await settled(nodes)
        micro = await add_service(nc, name=name, version="0.3.0")
        stack.push_async_callback(micro.stop)
        await micro.add_endpoint(name="add", subject=f"{name}.add", handler=_never)
        ids = [n.node_id for n in nodes]
        holders = [n for n in nodes if n.node_id in owners(name, ids)]
        assert len(holders) == REPLICAS
        await eventually(
            lambda: all(len(local(n, name)) == 1 for n in holders),
            what="its owners hold it",
        )
        api = RegistryApi(nc, prefix=prefix)
        (found,) = (await api.instances(name)).instances
        assert found.kind == "micro" and found.version == "0.3.0"
        listed = await api.services()
        assert [s.instances for s in listed.services if s.name == name] == [1]
        # Polled again and again, it stays with its owners alone.
        await anyio.sleep(2.5)
        for node in nodes:
            assert len(local(node, name)) == (1 if node in holders else 0), node.node_id

        # Members change until it has an owner it had not: it moves there, and only there.
        while True:
            nodes.append(await stack.enter_async_context(sharded_node(nats_url, prefix)))
            ids = [n.node_id for n in nodes]
            if nodes[-1].node_id in owners(name, ids):
                break
        await settled(nodes)

        def moved() -> bool:
            return all(
                len(local(n, name)) == (1 if n.node_id in owners(name, ids) else 0) for n in nodes
            )

        await eventually(moved, what="held by its new owners alone")
        assert len((await api.instances(name)).instances) == 1


async def _never(request: MicroRequest) -> None:
    await request.respond(b"")
