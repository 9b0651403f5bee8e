"""A starting registry node warms from a warm peer's view, and falls back to re-announce when
no whole, well-formed view comes: on a local 3-node NATS cluster, and against forged peers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import natsreg
from natsreg import subjects, wire
from natsreg.registry import _sync
from natsreg.testing import NatsCluster
from tests.helpers import eventually, until_warm
from tests.test_cluster import connect, wait_for_routes

FLEET = 1200
#: Instances per chunk in the tests that sync a fleet: the view comes in several chunks.
CHUNK_ROWS = 256


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster(3) as nodes:
        yield nodes


@pytest.fixture
async def three(cluster: NatsCluster) -> AsyncIterator[list[NATS]]:
    """A connection to each cluster node, with routes up between them."""
    conns = [await connect(url) for url in cluster.urls]
    try:
        await wait_for_routes(conns[0], conns[1], "routes.sync")
        await wait_for_routes(conns[0], conns[2], "routes.sync")
        yield conns
    finally:
        for conn in conns:
            await conn.close()


def fake(n: int, name: str, seq: int = 1) -> wire.Announce:
    return wire.Announce(
        id=f"{name}-{n}",
        name=name,
        version="1.0.0",
        seq=seq,
        metadata={"zone": "abc"[n % 3]},
        endpoints=[wire.Endpoint(name="get", subject=f"{name}.get", queue_group=name)],
        heartbeat_s=60.0,
    )


async def announce_fleet(nc: NATS, prefix: str, name: str, count: int = FLEET) -> None:
    for n in range(count):
        await nc.publish(
            subjects.control_subject(prefix, "announce", name, f"{name}-{n}"),
            wire.encode(fake(n, name)),
        )
    await nc.flush()


def held(registry: natsreg.Registry) -> dict[str, wire.InstanceView]:
    """The node's view as a user compares two nodes: every field but the age."""
    return {i.id: msgspec.structs.replace(i, age_s=0.0) for i in registry.snapshot().instances}


@contextlib.asynccontextmanager
async def counting(nc: NATS, subject: str) -> AsyncIterator[list[Msg]]:
    seen: list[Msg] = []

    async def keep(msg: Msg) -> None:
        seen.append(msg)

    sub = await nc.subscribe(subject, cb=keep)
    await nc.flush()
    try:
        yield seen
    finally:
        await sub.unsubscribe()


async def test_a_new_node_takes_a_warm_peers_view_and_the_changes_heard_meanwhile(
    three: list[NATS], prefix: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sync, "CHUNK_ROWS", CHUNK_ROWS)
    fleet_nc, peer_nc, fresh_nc = three
    name = f"sync-{unique}"
    async with natsreg.Registry(peer_nc, prefix=prefix) as peer:
        await until_warm(peer_nc, prefix)
        await announce_fleet(fleet_nc, prefix, name)
        async with natsreg.announce(fleet_nc, f"real-{unique}", version="2.0.0", prefix=prefix):
            await eventually(lambda: len(peer.snapshot().instances) == FLEET + 1)
            beating = anyio.Event()

            async def heartbeats() -> None:
                # The fleet goes on while the view streams: changes the peer's view may or may
                # not hold, which the new node must end up with all the same. Ten beats a
                # second: faster than the fleet's 1 s interval, yet within the sequence-jump
                # allowance (32 + 4 a second) for as long as a sync under load takes; at a
                # hundred a second a sync slower than 0.3 s made the node ask, rightly.
                seq = 1
                while not beating.is_set() and seq < 200:
                    seq += 1
                    for n in range(0, FLEET, 7):
                        await fleet_nc.publish(
                            subjects.control_subject(prefix, "hb", name, f"{name}-{n}"),
                            wire.encode(wire.Heartbeat(id=f"{name}-{n}", name=name, seq=seq)),
                        )
                    await anyio.sleep(0.1)
                beating.set()

            async with (
                counting(fleet_nc, subjects.control_subject(prefix, "discover", ">")) as asks,
                counting(fleet_nc, subjects.control_subject(prefix, "discover")) as rounds,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(heartbeats)
                await anyio.sleep(0.05)
                async with natsreg.Registry(fresh_nc, prefix=prefix) as fresh:
                    await eventually(lambda: not fresh.warming_up, what="warm from the peer")
                    beating.set()
                    await fleet_nc.flush()
                    await eventually(
                        lambda: held(fresh) == held(peer), what="the same view as the peer's"
                    )
                    assert len(held(fresh)) == FLEET + 1
                    stats = fresh.stats()
                    assert stats.instances == FLEET + 1 and not stats.warming_up
                # It asked no instance to re-announce: its whole view came from the peer.
                assert rounds == [] and asks == []


async def test_a_peer_that_vanishes_mid_snapshot_leaves_the_node_warming_then_warm_by_reannounce(
    three: list[NATS], cluster: NatsCluster, prefix: str, unique: str
) -> None:
    fleet_nc, _, fresh_nc = three
    name = f"half-{unique}"
    dying = await connect(cluster.urls[2])  # the new node's NATS node: no route delay
    first_chunk = snapshot(ghosts(f"ghost-{unique}", 3), node="dying-peer", more=True, total=6)

    async def answer_then_die(msg: Msg) -> None:
        await dying.publish(msg.reply, first_chunk)
        await dying.flush()
        await dying.close()  # mid-transfer: the rest never comes

    await dying.subscribe(
        subjects.control_subject(prefix, "sync", "*"),
        queue=subjects.REGISTRY_QUEUE,
        cb=answer_then_die,
    )
    await dying.flush()
    await wait_for_routes(fleet_nc, fresh_nc, f"routes.{unique}")
    async with (
        natsreg.announce(fleet_nc, name, version="1.0.0", prefix=prefix) as svc,
        counting(fleet_nc, subjects.control_subject(prefix, "discover")) as rounds,
        natsreg.Registry(fresh_nc, prefix=prefix) as fresh,
    ):
        await eventually(lambda: dying.is_closed, what="the peer gone mid-transfer")
        # Not warm on half a view: warming until the re-announce round is over.
        assert fresh.warming_up
        await eventually(lambda: len(rounds) == 1, what="the fallback's re-announce round")
        await until_warm(fresh_nc, prefix, timeout_s=10)
        assert [i.id for i in fresh.snapshot().instances] == [svc.id]


@contextlib.asynccontextmanager
async def forged_peer(
    nc: NATS, prefix: str, chunks: Callable[[str], list[bytes]]
) -> AsyncIterator[list[str]]:
    """A "registry node" that answers every sync request with ``chunks(subject)``; yields
    the subjects it was asked on."""
    asked: list[str] = []

    async def answer(msg: Msg) -> None:
        asked.append(msg.subject)
        for chunk in chunks(msg.subject):
            await nc.publish(msg.reply, chunk)

    sub = await nc.subscribe(
        subjects.control_subject(prefix, "sync", "*"), queue=subjects.REGISTRY_QUEUE, cb=answer
    )
    await nc.flush()
    try:
        yield asked
    finally:
        await sub.unsubscribe()


def snapshot(instances: list[wire.InstanceView], **fields: object) -> bytes:
    """A sync answer's chunk holding ``instances``, with ``fields`` set as a forger likes."""
    [whole] = _sync.sync_chunks("rogue", 1, [(i, 0.0) for i in instances], 1 << 20)
    return wire.encode(msgspec.structs.replace(wire.decode_sync_chunk(whole), **fields))


def ghosts(name: str, count: int) -> list[wire.InstanceView]:
    return [wire.instance_view(fake(n, name)) for n in range(count)]


def edited(instances: list[wire.InstanceView], edit: Callable[[wire.SyncChunk], None]) -> bytes:
    """A one-chunk sync answer holding ``instances``, then changed by ``edit``."""
    chunk = wire.decode_sync_chunk(snapshot(instances))
    edit(chunk)
    return wire.encode(chunk)


def unsent_shape(chunk: wire.SyncChunk) -> None:
    chunk.rows[-1].shape = len(chunk.shapes)


def negative_shape(chunk: wire.SyncChunk) -> None:
    chunk.rows[-1].shape = -1


def shapes_doubled(chunk: wire.SyncChunk) -> None:
    chunk.shapes *= 2


def wildcard_id(chunk: wire.SyncChunk) -> None:
    chunk.rows[-1].id = "ghost.>"


@pytest.mark.parametrize(
    "forgery",
    [
        "beyond the node's cap",
        "a wildcard endpoint",
        "a lost chunk",
        "fewer instances than announced",
        "more instances than announced",
        "a warming node's view",
        "not JSON",
        "an instance of a shape never sent",
        "an instance of a negative shape",
        "more shapes than instances",
        "a wildcard instance id",
        "a list query's answer",
    ],
)
async def test_a_forged_snapshot_is_refused_whole_and_the_node_warms_by_reannounce(
    nc: NATS, prefix: str, unique: str, forgery: str
) -> None:
    name = f"forged-{unique}"
    bad = ghosts(name, 4)
    wildcard = wire.Endpoint(name="all", subject=f"{name}.>", queue_group=name)
    chunks = {
        "beyond the node's cap": [snapshot(ghosts(name, 20))],
        "a wildcard endpoint": [
            snapshot([*bad, msgspec.structs.replace(bad[0], endpoints=[wildcard])])
        ],
        "a lost chunk": [
            snapshot(bad[:2], more=True, total=4),
            snapshot(bad[2:], part=2, total=4),
        ],
        "fewer instances than announced": [snapshot(bad, total=9)],
        "more instances than announced": [
            snapshot(bad[:2], more=True, total=3),
            snapshot(bad[2:], part=1, total=3),
        ],
        "a warming node's view": [snapshot(bad, warming_up=True)],
        "not JSON": [b"{" * 100],
        "an instance of a shape never sent": [edited(bad, unsent_shape)],
        "an instance of a negative shape": [edited(bad, negative_shape)],
        "more shapes than instances": [edited(bad, shapes_doubled)],
        "a wildcard instance id": [edited(bad, wildcard_id)],
        # The other form of a whole view (an older node's answer): refused, not misread.
        "a list query's answer": [
            wire.encode(wire.Snapshot(node="rogue", revision=1, instances=bad, total=len(bad)))
        ],
    }[forgery]
    async with (
        natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc,
        forged_peer(nc, prefix, lambda subject: chunks) as asked,
        natsreg.Registry(nc, prefix=prefix, max_instances=10) as fresh,
    ):
        await until_warm(nc, prefix, timeout_s=10)
        # The request named who asked; nothing of the forged answer was taken.
        assert asked == [subjects.control_subject(prefix, "sync", fresh.node_id)]
        assert [i.id for i in fresh.snapshot().instances] == [svc.id]


async def test_a_forged_snapshot_cannot_make_a_node_hold_more_than_announcements_could(
    nc: NATS, prefix: str, unique: str
) -> None:
    # Well formed, within the cap in all but over it for one service: a forged view is
    # believed as far as the same announcements would be, and no further.
    name = f"many-{unique}"
    views = ghosts(name, 8)
    async with (
        forged_peer(nc, prefix, lambda subject: [snapshot(views)]),
        natsreg.Registry(nc, prefix=prefix, max_per_service=5) as fresh,
    ):
        await eventually(lambda: not fresh.warming_up, what="warm from the forged peer")
        assert len(fresh.snapshot().instances) == 5
        assert fresh.stats().dropped["capacity"] == 3
        # They expire as fake announcements would: at most 60 s of heartbeat interval.
        assert all(i.heartbeat_s <= wire.MAX_HEARTBEAT_S for i in fresh.snapshot().instances)


async def test_two_nodes_starting_together_with_no_warm_peer_both_warm_by_reannounce(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with (
        natsreg.announce(nc, f"pair-{unique}", version="1.0.0", prefix=prefix) as svc,
        counting(nc, subjects.control_subject(prefix, "discover")) as rounds,
        natsreg.Registry(nc, prefix=prefix) as a,
        natsreg.Registry(nc, prefix=prefix) as b,
    ):
        await eventually(lambda: not (a.warming_up or b.warming_up), timeout_s=10)
        assert len(rounds) == 2
        for node in (a, b):
            assert [i.id for i in node.snapshot().instances] == [svc.id]


@pytest.mark.pure
def test_a_sync_answer_sends_each_shape_once_and_stands_for_every_instance_as_held() -> None:
    # Three services in two zones each: six shapes for 600 instances, over several chunks.
    held = [
        (
            wire.instance_view(
                msgspec.structs.replace(
                    fake(n, f"svc-{n % 3}", seq=n + 1), metadata={"zone": "ab"[n % 2]}
                )
            ),
            n / 100,
        )
        for n in range(600)
    ]
    chunks = [wire.decode_sync_chunk(c) for c in _sync.sync_chunks("peer", 7, held, 16_000)]
    assert len(chunks) > 1
    assert all(len(wire.encode(c)) <= 16_000 for c in chunks)
    assert [c.part for c in chunks] == list(range(len(chunks)))
    assert [c.more for c in chunks] == [True] * (len(chunks) - 1) + [False]
    assert {(c.node, c.revision, c.total) for c in chunks} == {("peer", 7, 600)}
    shapes = [shape for c in chunks for shape in c.shapes]
    assert len(shapes) == 6
    rows = [row for c in chunks for row in c.rows]
    views = wire.sync_views(shapes, rows)
    assert views == [msgspec.structs.replace(v, age_s=round(age, 3)) for v, age in held]


@pytest.mark.pure
def test_a_sync_answer_of_an_empty_view_is_one_chunk_of_nothing() -> None:
    [only] = [wire.decode_sync_chunk(c) for c in _sync.sync_chunks("peer", 1, [], 1 << 20)]
    assert (only.total, only.more, only.shapes, only.rows) == (0, False, [], [])


@pytest.mark.pure
def test_a_sync_shape_is_checked_as_an_announcement_is() -> None:
    view = ghosts("shape", 1)[0]
    [chunk] = [wire.decode_sync_chunk(c) for c in _sync.sync_chunks("p", 1, [(view, 0.0)], 1 << 20)]
    wire.check(chunk.shapes[0])
    wildcard = wire.Endpoint(name="all", subject="shape.>", queue_group="shape")
    with pytest.raises(wire.Invalid) as bad:
        wire.check(msgspec.structs.replace(chunk.shapes[0], endpoints=[wildcard]))
    assert bad.value.reason == "invalid_endpoints"
    for field, value, reason in [
        ("id", "a b", "invalid_id"),
        ("age_s", float("inf"), "invalid_age"),
        ("pace_s", float("nan"), "invalid_pace"),
    ]:
        with pytest.raises(wire.Invalid) as bad:
            wire.check_sync_rows(
                [chunk.rows[0], msgspec.structs.replace(chunk.rows[0], **{field: value})]
            )
        assert bad.value.reason == reason
    wire.check_sync_rows(chunk.rows)


@pytest.mark.pure
def test_a_sync_answer_with_one_bad_row_among_many_is_refused_for_that_row() -> None:
    views = ghosts("rows", 300)
    [chunk] = [
        wire.decode_sync_chunk(c)
        for c in _sync.sync_chunks("p", 1, [(v, 0.0) for v in views], 1 << 20)
    ]
    longest = "i" * wire.MAX_TOKEN_CHARS
    wire.check_sync_rows([*chunk.rows, msgspec.structs.replace(chunk.rows[0], id=longest)])
    for field, value, reason in [
        ("id", longest + "i", "invalid_id"),
        ("id", "", "invalid_id"),
        ("id", "a.b", "invalid_id"),
        ("pace_s", float("-inf"), "invalid_pace"),
        ("age_s", float("nan"), "invalid_age"),
    ]:
        rows = list(chunk.rows)
        rows[150] = msgspec.structs.replace(rows[150], **{field: value})
        with pytest.raises(wire.Invalid) as bad:
            wire.check_sync_rows(rows)
        assert bad.value.reason == reason
