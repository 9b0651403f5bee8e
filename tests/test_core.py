"""Services, registry and client together, on a real nats-server."""

from __future__ import annotations

import asyncio
import dataclasses
import typing

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

import natsreg
from natsreg import subjects, wire
from natsreg.service import ServiceConfig
from natsreg.service._config import ServiceSettings
from tests.helpers import eventually, until_warm


class User(msgspec.Struct):
    id: int
    name: str


async def test_an_announced_service_is_visible_in_the_registry(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        natsreg.announce(
            nc,
            f"users-{unique}",
            version="1.2.0",
            prefix=prefix,
            description="Users",
            metadata={"zone": "a"},
        ) as svc,
    ):

        @svc.endpoint("users")
        async def users(req: natsreg.Request) -> dict[str, int]:
            return {"id": 1}

        await svc.ready()
        client = natsreg.Client(nc, prefix=prefix)

        async def listed() -> bool:
            snapshot = await client.instances(f"users-{unique}")
            return any(i.endpoints for i in snapshot.instances)

        await eventually(listed, what="instance with its endpoint in the registry")
        (instance,) = (await client.instances()).instances
        assert (instance.id, instance.version, instance.description) == (svc.id, "1.2.0", "Users")
        assert instance.metadata == {"zone": "a"}
        assert [e.subject for e in instance.endpoints] == [f"users-{unique}.users"]
        assert registry.snapshot().instances[0].id == svc.id


async def test_a_request_gets_the_handlers_reply_in_every_encoding(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"enc-{unique}"
    async with natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc:

        @svc.endpoint("struct")
        async def struct(req: natsreg.Request) -> User:
            return User(id=req.decode(User).id, name="alice")

        @svc.endpoint("raw")
        async def raw(req: natsreg.Request) -> bytes:
            return bytes(reversed(req.data))

        @svc.endpoint("text")
        async def text(req: natsreg.Request) -> str:
            return f"hello {req.headers.get('Who', '?')}"

        await svc.ready()
        client = natsreg.Client(nc)
        reply = await client.request(f"{name}.struct", User(id=7, name=""))
        assert reply.decode(User) == User(id=7, name="alice")
        assert reply.json() == {"id": 7, "name": "alice"}
        assert (await client.request(f"{name}.raw", b"\x00\x01\xff")).data == b"\xff\x01\x00"
        reply = await client.request(f"{name}.text", headers={"Who": "bob"})
        assert reply.text() == "hello bob"


async def test_a_handler_error_reaches_the_caller_with_its_code(
    nc: NATS, unique: str, prefix: str
) -> None:
    name = f"err-{unique}"
    async with natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc:

        @svc.endpoint("missing")
        async def missing(req: natsreg.Request) -> None:
            raise natsreg.ServiceError("no such user", code=404)

        @svc.endpoint("crash")
        async def crash(req: natsreg.Request) -> None:
            raise RuntimeError("disk on fire")

        @svc.endpoint("typed")
        async def typed(req: natsreg.Request) -> User:
            return req.decode(User)

        await svc.ready()
        client = natsreg.Client(nc)
        with pytest.raises(natsreg.ServiceError) as caught:
            await client.request(f"{name}.missing")
        assert (caught.value.code, caught.value.description) == (404, "no such user")
        with pytest.raises(natsreg.ServiceError) as caught:
            await client.request(f"{name}.crash")
        assert caught.value.code == 500
        assert "disk on fire" in caught.value.description
        with pytest.raises(natsreg.ServiceError) as caught:
            await client.request(f"{name}.typed", {"id": "not a number"})
        assert caught.value.code == 400

        # Any NATS client sees the ADR-32 headers.
        msg = await nc.request(f"{name}.missing", b"", timeout=2)
        assert msg.headers == {
            "Nats-Service-Error": "no such user",
            "Nats-Service-Error-Code": "404",
        }


async def test_nothing_serving_a_subject_is_a_no_instance_error(nc: NATS, unique: str) -> None:
    with pytest.raises(natsreg.NoInstanceError) as caught:
        await natsreg.Client(nc).request(f"nobody-{unique}.here", timeout_s=2)
    assert caught.value.retryable


async def test_a_slow_handler_is_a_timeout_error(nc: NATS, unique: str, prefix: str) -> None:
    async with natsreg.announce(
        nc, f"slow-{unique}", version="1.0.0", prefix=prefix, drain_timeout_s=0.1
    ) as svc:

        @svc.endpoint("wait")
        async def wait(req: natsreg.Request) -> None:
            await asyncio.sleep(5)

        await svc.ready()
        with pytest.raises(natsreg.RequestTimeoutError):
            await natsreg.Client(nc).request(f"slow-{unique}.wait", timeout_s=0.2)


@pytest.mark.parametrize("subject", ["a.*", "a.>", "a..b", "has space.x", "$SYS.x", "", "a\r\nb"])
async def test_a_subject_that_is_not_literal_is_refused_before_sending(
    nc: NATS, subject: str
) -> None:
    with pytest.raises(natsreg.ConfigError):
        await natsreg.Client(nc).request(subject)


async def test_handlers_run_concurrently_up_to_the_bound(
    nc: NATS, unique: str, prefix: str
) -> None:
    running = 0
    peak = 0

    async with natsreg.announce(
        nc, f"conc-{unique}", version="1.0.0", prefix=prefix, max_in_flight=4
    ) as svc:

        @svc.endpoint("work")
        async def work(req: natsreg.Request) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.1)
            running -= 1

        await svc.ready()
        client = natsreg.Client(nc)
        await asyncio.gather(*(client.request(f"conc-{unique}.work") for _ in range(12)))
    assert peak == 4


async def test_leaving_the_block_finishes_in_flight_requests_then_says_goodbye(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"drain-{unique}"
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        client = natsreg.Client(nc, prefix=prefix)
        async with natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc:
            started, finished = asyncio.Event(), asyncio.Event()

            @svc.endpoint("slow")
            async def slow(req: natsreg.Request) -> str:
                started.set()
                await asyncio.sleep(0.3)
                finished.set()
                return "done"

            await svc.ready()
            await eventually(lambda: len(registry.snapshot().instances) == 1)
            pending = asyncio.ensure_future(client.request(f"{name}.slow"))
            await started.wait()
        # The block returned only after the in-flight handler finished, and its caller got
        # the reply rather than a timeout...
        assert finished.is_set()
        assert (await pending).text() == "done"
        # ...and the goodbye removes the instance at once, not at expiry.
        await eventually(
            lambda: registry.snapshot().instances == [], timeout_s=0.5, what="removal on goodbye"
        )


async def test_a_late_heartbeat_after_goodbye_does_not_revive_the_instance(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"late-{unique}"
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        async with natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc:
            await eventually(lambda: len(registry.snapshot().instances) == 1)
            instance_id = svc.id
        await eventually(lambda: registry.snapshot().instances == [])
        late = wire.Heartbeat(id=instance_id, name=name, seq=999)
        await nc.publish(
            subjects.control_subject(prefix, "hb", name, instance_id), wire.encode(late)
        )
        announcement = wire.Announce(id=instance_id, name=name, version="1.0.0", seq=1000)
        await nc.publish(
            subjects.control_subject(prefix, "announce", name, instance_id),
            wire.encode(announcement),
        )
        await nc.flush()
        await eventually(lambda: registry.dropped["stale"] >= 2, what="stale messages dropped")
        assert registry.snapshot().instances == []


async def test_malformed_and_oversized_control_messages_are_dropped_and_counted(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        for payload in (b"not json", b'{"type": "announce"}', b'{"type": "nope"}', b"\xff", b"[]"):
            await nc.publish(subjects.control_subject(prefix, "announce", "x", "y"), payload)
        await nc.publish(
            subjects.control_subject(prefix, "hb", "x", "y"), b" " * (wire.MAX_CONTROL_BYTES + 1)
        )
        await nc.flush()
        await eventually(
            lambda: registry.dropped["malformed"] == 5 and registry.dropped["oversized"] == 1,
            what="drops counted",
        )
        # The node still works.
        async with natsreg.announce(nc, f"ok-{unique}", version="1.0.0", prefix=prefix):
            await eventually(lambda: len(registry.snapshot().instances) == 1)


async def test_a_restarted_registry_rebuilds_the_full_view(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with (
        natsreg.announce(nc, f"a-{unique}", version="1.0.0", prefix=prefix) as a,
        natsreg.announce(nc, f"b-{unique}", version="2.0.0", prefix=prefix) as b,
        natsreg.Registry(nc, prefix=prefix, discover_jitter_s=0.2) as registry,
    ):
        await eventually(
            lambda: {i.id for i in registry.snapshot().instances} == {a.id, b.id},
            timeout_s=2,
            what="full view on start",
        )


async def test_a_registry_learns_of_an_instance_it_only_hears_heartbeats_from(
    nc: NATS, prefix: str, unique: str
) -> None:
    # No re-announce round at all: only a heartbeat can reveal the instance.
    async with (
        natsreg.announce(
            nc, f"hb-{unique}", version="1.0.0", prefix=prefix, heartbeat_s=0.1
        ) as svc,
        natsreg.Registry(nc, prefix=prefix, discover_jitter_s=0) as registry,
    ):
        await eventually(
            lambda: [i.id for i in registry.snapshot().instances] == [svc.id], timeout_s=2
        )


async def test_every_change_is_published_as_an_event_with_rising_revisions(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"ev-{unique}"
    client = natsreg.Client(nc, prefix=prefix)
    events: list[wire.Event] = []

    async def collect() -> None:
        # One by one, as they come: the test reads the list while this still runs.
        async for event in client.watch(name):
            events.append(event)

    async with natsreg.Registry(nc, prefix=prefix):
        watcher = asyncio.ensure_future(collect())
        await asyncio.sleep(0.05)
        health = "passing"
        async with natsreg.announce(
            nc, name, version="1.0.0", prefix=prefix, heartbeat_s=0.1, health=lambda: health
        ) as svc:
            await eventually(lambda: len(events) == 1)
            health = "critical"
            await eventually(lambda: len(events) == 2)
        await eventually(lambda: len(events) == 3)
        watcher.cancel()
    assert [(e.kind, e.instance.health, e.reason) for e in events] == [
        ("up", "passing", ""),
        ("health", "critical", ""),
        ("down", "critical", "goodbye"),
    ]
    assert all(e.instance.id == svc.id for e in events)
    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions)
    assert len(set(revisions)) == 3


async def test_registry_queries_are_answered_for_one_instance_and_unknown_ones(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        natsreg.announce(nc, f"q-{unique}", version="1.0.0", prefix=prefix) as svc,
    ):
        await eventually(lambda: len(registry.snapshot().instances) == 1)
        client = natsreg.Client(nc, prefix=prefix)
        assert (await client.instance(svc.id)).name == f"q-{unique}"
        with pytest.raises(natsreg.ServiceError) as caught:
            await client.instance("unknown")
        assert caught.value.code == 404
        assert (await client.instances("nothing-here")).instances == []


async def test_asking_with_no_registry_running_says_how_to_start_one(nc: NATS, prefix: str) -> None:
    with pytest.raises(natsreg.NoInstanceError, match="natsreg registry"):
        await natsreg.Client(nc, prefix=prefix).instances()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bad name"}, "not valid"),
        ({"name": "a.b"}, "not valid"),
        ({"version": "1.0"}, "SemVer"),
        ({"version": "v1.0.0"}, "SemVer"),
        ({"metadata": {f"k{i}": "v" for i in range(65)}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "512"),
        ({"heartbeat_s": 0}, "heartbeat_s"),
        ({"queue_group": "q*"}, "queue group"),
    ],
)
async def test_an_invalid_service_is_refused_at_construction(
    nc: NATS, kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"name": "svc", "version": "1.0.0", **kwargs}
    with pytest.raises(natsreg.ConfigError, match=message):
        natsreg.announce(nc, **arguments)  # type: ignore[arg-type]


def test_announce_takes_exactly_the_fields_of_service_config() -> None:
    # announce()'s keyword arguments are typed by ServiceSettings and built into a
    # ServiceConfig: the two field lists must not drift apart.
    config_fields = {f.name for f in dataclasses.fields(ServiceConfig)} - {"name", "version"}
    assert set(typing.get_type_hints(ServiceSettings)) == config_fields


def test_announce_keeps_its_defaults_and_takes_no_metadata_as_none() -> None:
    svc = natsreg.announce(None, "svc", version="1.0.0", metadata=None)  # type: ignore[arg-type]
    assert svc.config == ServiceConfig(name="svc", version="1.0.0")
    with pytest.raises(TypeError):
        natsreg.announce(None, "svc", version="1.0.0", heartbeat=1)  # type: ignore[arg-type, call-arg]


async def test_an_invalid_endpoint_is_refused_when_declared(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with natsreg.announce(nc, f"ep-{unique}", version="1.0.0", prefix=prefix) as svc:
        with pytest.raises(natsreg.ConfigError):
            svc.endpoint("a.b")
        with pytest.raises(natsreg.ConfigError):
            svc.endpoint("x", subject="a.*")


async def test_a_service_on_a_closed_connection_still_leaves_its_block(
    nats_url: str, unique: str
) -> None:
    conn = await nats.connect(nats_url)
    async with natsreg.announce(conn, f"closed-{unique}", version="1.0.0") as svc:

        @svc.endpoint("x")
        async def x(req: natsreg.Request) -> None:
            return None

        await svc.ready()
        await conn.close()


async def test_an_error_inside_the_block_comes_out_as_itself(
    nc: NATS, prefix: str, unique: str
) -> None:
    with pytest.raises(KeyError):
        async with natsreg.announce(nc, f"raise-{unique}", version="1.0.0", prefix=prefix):
            raise KeyError("mine")
    with pytest.raises(KeyError):
        async with natsreg.Registry(nc, prefix=prefix):
            raise KeyError("mine")


async def test_a_view_larger_than_one_nats_message_arrives_whole(nc: NATS, prefix: str) -> None:
    # 3000 instances with some metadata encode to ~2 MB: twice NATS' 1 MB max_payload.
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        for n in range(3000):
            announcement = wire.Announce(
                id=f"i{n}",
                name=f"svc{n % 7}",
                version="1.0.0",
                seq=1,
                metadata={"zone": "a", "notes": "x" * 400},
            )
            await nc.publish(
                subjects.control_subject(prefix, "announce", f"svc{n % 7}", f"i{n}"),
                wire.encode(announcement),
            )
        await nc.flush()
        await eventually(lambda: len(registry.snapshot().instances) == 3000)
        snapshot = await natsreg.Client(nc, prefix=prefix).instances()
        assert sorted(i.id for i in snapshot.instances) == sorted(f"i{n}" for n in range(3000))


async def test_a_registry_node_reports_its_own_figures(nc: NATS, prefix: str, unique: str) -> None:
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        natsreg.announce(nc, f"s1-{unique}", version="1.0.0", prefix=prefix),
        natsreg.announce(nc, f"s1-{unique}", version="1.0.0", prefix=prefix),
        natsreg.announce(nc, f"s2-{unique}", version="1.0.0", prefix=prefix),
    ):
        await nc.publish(subjects.control_subject(prefix, "hb", "x", "y"), b"junk")
        await eventually(lambda: len(registry.snapshot().instances) == 3)
        await until_warm(nc, prefix)
        reply = await nc.request(subjects.control_subject(prefix, "registry", "stats"), b"")
        stats = wire.decode_node_stats(reply.data)
        assert (stats.node, stats.instances, stats.services) == (registry.node_id, 3, 2)
        assert stats.dropped == {"malformed": 1}
