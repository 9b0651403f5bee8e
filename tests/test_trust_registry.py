"""A registry node and its watchers against forged and flooding control traffic, on a real
nats-server with no permissions configured (the development default): what any connection
may publish must not hijack, erase or swamp the registry's view."""

from __future__ import annotations

import logging
import subprocess
import sys

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import natsreg
from natsreg import subjects, wire
from natsreg.errors import BUDGET_HEADER
from tests.helpers import eventually, until_warm

DEEP = b"[" * 30_000 + b"]" * 30_000  # 60 KB, deeper than any C stack


def _ann(name: str, instance_id: str, seq: int = 1, **fields: object) -> wire.Announce:
    return wire.Announce(id=instance_id, name=name, version="1.0.0", seq=seq, **fields)  # type: ignore[arg-type]


async def _send(
    nc: NATS, prefix: str, verb: str, name: str, instance_id: str, body: msgspec.Struct | bytes
) -> None:
    data = body if isinstance(body, bytes) else wire.encode(body)
    await nc.publish(subjects.control_subject(prefix, verb, name, instance_id), data)


async def _settle(nc: NATS) -> None:
    await nc.flush()
    await anyio.sleep(0.2)


async def test_a_body_that_speaks_for_another_service_or_instance_is_not_listed(
    nc: NATS, prefix: str, unique: str
) -> None:
    victim, other = f"user-service-{unique}", f"other-svc-{unique}"
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        await _send(nc, prefix, "announce", other, "X", _ann(victim, "X"))
        await _send(nc, prefix, "announce", victim, "Y", _ann(victim, "X"))
        await _send(nc, prefix, "hb", victim, "X", _ann(victim, "X"))  # verb and type differ
        await _settle(nc)
        assert registry.snapshot().instances == []
        assert registry.stats().dropped["subject_mismatch"] == 3
        await _send(nc, prefix, "announce", victim, "X", _ann(victim, "X"))
        await eventually(lambda: [i.name for i in registry.snapshot().instances] == [victim])


async def test_announcements_beyond_the_limits_are_dropped_and_counted_by_reason(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"big-{unique}"
    endpoint = wire.Endpoint(name="e", subject=f"{name}.e", queue_group=name)
    forged = {
        "a": _ann(name, "a", metadata={f"k{n}": "v" for n in range(1000)}),
        "b": _ann(name, "b", description="x" * 5000),
        "c": _ann(name, "c", endpoints=[endpoint] * (wire.MAX_ENDPOINTS + 1)),
        "d": msgspec.structs.replace(_ann(name, "d"), version="latest"),
        "e": _ann(
            name, "e", endpoints=[wire.Endpoint(name="e", subject="svc.*", queue_group=name)]
        ),
        "f": _ann(name, "f", metadata={"k": "v" * 513}),
    }
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        for instance_id, body in forged.items():
            await _send(nc, prefix, "announce", name, instance_id, body)
        await _send(nc, prefix, "announce", name, "slow", _ann(name, "slow", heartbeat_s=1e9))
        await eventually(lambda: len(registry.snapshot().instances) == 1)
        await _settle(nc)
        (instance,) = registry.snapshot().instances
        assert (instance.id, instance.heartbeat_s) == ("slow", wire.MAX_HEARTBEAT_S)
        dropped = registry.stats().dropped
        assert (
            dropped["invalid_metadata"],
            dropped["invalid_description"],
            dropped["invalid_endpoints"],
            dropped["invalid_version"],
        ) == (2, 1, 2, 1)


async def test_one_heartbeat_with_an_absurd_sequence_neither_erases_nor_hijacks_an_instance(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"seq-{unique}"
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        natsreg.announce(nc, name, version="1.0.0", prefix=prefix, heartbeat_s=0.1) as svc,
    ):
        await svc.ready()
        await eventually(lambda: svc.id in {i.id for i in registry.snapshot().instances})
        for seq in (2**63 - 1, 10**6):
            await _send(
                nc,
                prefix,
                "hb",
                name,
                svc.id,
                wire.Heartbeat(id=svc.id, name=name, seq=seq, health="critical"),
            )
        await _send(
            nc, prefix, "bye", name, svc.id, wire.Goodbye(id=svc.id, name=name, seq=2**63 - 1)
        )
        await anyio.sleep(1.0)  # ten heartbeats: the forged numbers would have shut them out
        (instance,) = registry.snapshot().instances
        assert (instance.id, instance.health) == (svc.id, "passing")
        assert instance.seq < 1000 and instance.age_s < 0.5
        assert registry.stats().dropped["seq_jump"] == 3


async def test_a_node_holds_no_more_instances_than_its_caps_and_says_so_once(
    nc: NATS, prefix: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = f"a-{unique}", f"b-{unique}"
    caplog.set_level(logging.WARNING, logger="natsreg.registry")
    async with natsreg.Registry(nc, prefix=prefix, max_per_service=5, max_instances=8) as registry:
        for n in range(10):
            await _send(nc, prefix, "announce", a, f"a{n}", _ann(a, f"a{n}", heartbeat_s=60))
        for n in range(5):
            await _send(nc, prefix, "announce", b, f"b{n}", _ann(b, f"b{n}", heartbeat_s=60))
        await _settle(nc)
        names = [i.name for i in registry.snapshot().instances]
        assert (names.count(a), names.count(b)) == (5, 3)
        stats = registry.stats()
        assert (stats.dropped["capacity"], stats.max_per_service, stats.max_instances) == (7, 5, 8)
        assert len([r for r in caplog.records if "instance cap" in r.getMessage()]) == 1


async def test_fake_announcements_that_never_heartbeat_expire_without_a_mass_expiry_alarm(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"fake-{unique}"
    async with (
        natsreg.Registry(nc, prefix=prefix, discover_jitter_s=0) as registry,
        natsreg.announce(
            nc, f"real-{unique}", version="1.0.0", prefix=prefix, heartbeat_s=0.1
        ) as svc,
    ):
        await svc.ready()
        await anyio.sleep(0.6)  # out of warm-up, and the real one heartbeating
        for n in range(3000):
            await _send(
                nc, prefix, "announce", name, f"f{n}", _ann(name, f"f{n}", heartbeat_s=0.05)
            )
        await nc.flush()
        await eventually(
            lambda: [i.id for i in registry.snapshot().instances] == [svc.id],
            what="the fakes expired",
        )
        await anyio.sleep(0.3)
        assert registry.stats().mass_expiry is None


async def test_a_discover_flood_makes_a_service_re_announce_only_about_once_a_second(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"disc-{unique}"
    announces: list[float] = []

    async def count(msg: Msg) -> None:
        announces.append(anyio.current_time())

    sub = await nc.subscribe(subjects.control_subject(prefix, "announce", name, ">"), cb=count)
    async with natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc:
        await svc.ready()
        await _settle(nc)
        announces.clear()
        flood = wire.encode(wire.Discover())
        for n in range(50_000):
            subject = subjects.control_subject(
                prefix, "discover", *((name, svc.id) if n % 2 else ())
            )
            await nc.publish(subject, flood)
            if n % 5000 == 0:
                await nc.flush()
        await nc.flush()
        await anyio.sleep(2.5)
    await sub.unsubscribe()
    assert 1 <= len(announces) <= 5, len(announces)


async def test_a_deeply_nested_control_message_is_counted_as_malformed(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"deep-{unique}"
    deep = (
        b'{"type":"announce","id":"x","name":"'
        + name.encode()
        + b'","seq":1,"version":"1.0.0","junk":'
        + DEEP
        + b"}"
    )
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        await _send(nc, prefix, "announce", name, "x", deep)
        await _send(nc, prefix, "announce", name, "y", _ann(name, "y"))
        await eventually(lambda: len(registry.snapshot().instances) == 1)
        assert registry.stats().dropped["malformed"] == 1


def _event(prefix: str, name: str, instance_id: str, revision: int) -> bytes:
    return wire.encode(
        wire.Event(
            node="forger",
            revision=revision,
            kind="up",
            instance=(wire.InstanceView(id=instance_id, name=name, version="9.9.9", seq=revision)),
        )
    )


async def test_watch_skips_events_whose_subject_names_another_service(
    nc: NATS, prefix: str, unique: str
) -> None:
    victim, rogue = f"victim-{unique}", f"rogue-{unique}"
    client = natsreg.Client(nc, prefix=prefix)
    seen: list[str] = []

    async def watch() -> None:
        async for event in client.watch():
            seen.append(event.instance.id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await anyio.sleep(0.2)
        events = subjects.control_subject(prefix, "events", victim)
        await nc.publish(events, _event(prefix, rogue, "forged", 1))
        await nc.publish(events, b'{"node":"x","revision":1,"kind":"up","instance":' + DEEP + b"}")
        await nc.publish(events, _event(prefix, victim, "genuine", 2))
        await eventually(lambda: seen == ["genuine"])
        tg.cancel_scope.cancel()


async def test_natsreg_watch_survives_a_deeply_nested_event(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    name = f"w-{unique}"
    events = subjects.control_subject(prefix, "events", name)
    deep = b'{"node":"x","revision":1,"kind":"up","instance":{"junk":' + DEEP + b"}}"
    with subprocess.Popen(
        [sys.executable, "-m", "natsreg", "watch", "--prefix", prefix, "--json"],
        stdout=subprocess.PIPE,
        env=cli_env,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        lines: list[str] = []

        async def read_lines() -> None:
            while line := await anyio.to_thread.run_sync(proc.stdout.readline):
                lines.append(line)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_lines)
                # Until the CLI has subscribed nothing it prints can be expected: repeat a
                # genuine event until it shows.
                for revision in range(1, 100):
                    await nc.publish(events, _event(prefix, name, "before", revision))
                    await nc.flush()
                    await anyio.sleep(0.1)
                    if lines:
                        break
                await nc.publish(events, deep)
                await nc.publish(events, _event(prefix, name, "after", 1000))
                await nc.flush()
                await eventually(
                    lambda: any('"after"' in line for line in lines),
                    what="an event after the deep one printed",
                )
                assert proc.poll() is None, "natsreg watch died"
                proc.terminate()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


async def test_registry_answers_go_only_to_inboxes_never_to_a_named_subject(
    nc: NATS, prefix: str, unique: str
) -> None:
    target = f"user-service-{unique}.users"
    reached: list[Msg] = []

    async def land(msg: Msg) -> None:
        reached.append(msg)

    sub = await nc.subscribe(target, cb=land)

    async def forge(*tokens: str) -> None:
        for _ in range(20):
            await nc.publish(subjects.control_subject(prefix, *tokens), b"", reply=target)
        await _settle(nc)

    # A long warm-up, so that the questions asked of warming nodes reach this one.
    async with natsreg.Registry(nc, prefix=prefix, discover_jitter_s=2.0) as registry:
        await forge("warming", "list")
        await forge("nodes")
        assert registry.warming_up
        assert registry.stats().dropped["reply_subject"] == 40
        await until_warm(nc, prefix)
        await forge("registry", "list")
        assert reached == []
        assert registry.stats().dropped["reply_subject"] == 60
        await _send(nc, prefix, "announce", "svc", "i1", _ann("svc", "i1"))
        await eventually(lambda: len(registry.snapshot().instances) == 1)
        reply = await nc.request(subjects.control_subject(prefix, "registry", "list"), b"")
        assert [i.id for i in wire.decode_snapshot(reply.data).instances] == ["i1"]
    await sub.unsubscribe()


async def test_a_query_whose_budget_ran_out_in_the_queue_is_dropped(nc: NATS, prefix: str) -> None:
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        await until_warm(nc, prefix)
        inbox = nc.new_inbox()
        answers: list[Msg] = []

        async def land(msg: Msg) -> None:
            answers.append(msg)

        sub = await nc.subscribe(inbox, cb=land)
        for _ in range(5):
            await nc.publish(
                subjects.control_subject(prefix, "registry", "list"),
                b"",
                reply=inbox,
                headers={BUDGET_HEADER: "0"},
            )
        await _settle(nc)
        assert answers == []
        assert registry.stats().dropped["query_expired"] == 5
        await sub.unsubscribe()


async def test_a_flood_of_list_queries_is_encoded_once_per_revision(nc: NATS, prefix: str) -> None:
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        for n in range(50):
            await _send(nc, prefix, "announce", "svc", f"i{n}", _ann("svc", f"i{n}"))
        await eventually(lambda: len(registry.snapshot().instances) == 50)
        await until_warm(nc, prefix)
        revision = registry.revision
        subject = subjects.control_subject(prefix, "registry", "list")
        replies = [await nc.request(subject, b"") for _ in range(30)]
        assert {wire.decode_snapshot(r.data).revision for r in replies} == {revision}
        assert registry.answers_encoded <= 2  # one, or two if a second passed meanwhile


async def test_a_plain_adr32_info_reply_beyond_the_limits_is_dropped_and_counted(
    nc: NATS, prefix: str, unique: str
) -> None:
    good = wire.SrvInfo(
        name=f"go-{unique}",
        id=f"good{unique}",
        version="1.0.0",
        endpoints=[wire.SrvEndpointInfo(name="add", subject=f"go-{unique}.add", queue_group="q")],
    )
    bad = wire.SrvInfo(
        name=f"go-{unique}",
        id=f"bad{unique}",
        version="1.0.0",
        metadata={f"k{n}": "v" for n in range(1000)},
    )

    async def answer(msg: Msg) -> None:
        await nc.publish(msg.reply, wire.encode(good))
        await nc.publish(msg.reply, wire.encode(bad))

    sub = await nc.subscribe(subjects.srv_subject("INFO"), cb=answer)
    async with natsreg.Registry(nc, prefix=prefix, micro_poll_s=0.3) as registry:
        await eventually(lambda: registry.stats().dropped.get("invalid_metadata", 0) >= 1)
        assert [
            i.id for i in registry.snapshot().instances if i.kind == "micro" and i.name == good.name
        ] == [good.id]
    await sub.unsubscribe()


async def test_forged_ping_replies_cost_a_bounded_number_of_info_asks_and_build_no_subject(
    nc: NATS, prefix: str, unique: str
) -> None:
    from natsreg.registry import MAX_INFO_ASKS

    made_up = [
        wire.encode(wire.SrvPing(name=f"fake-{unique}", id=f"f{n}", version="1.0.0"))
        for n in range(MAX_INFO_ASKS * 3)
    ]
    hostile = [
        wire.encode(wire.SrvPing(name=bad, id="x", version="1.0.0"))
        for bad in ("a.b", "a.>", "*", "a b")
    ]

    async def flood(msg: Msg) -> None:
        for data in (*hostile, *made_up):
            await nc.publish(msg.reply, data)

    asks: dict[str, list[str]] = {}

    async def count(msg: Msg) -> None:
        asks.setdefault(msg.reply, []).append(msg.subject)

    pinged = await nc.subscribe(subjects.srv_subject("PING"), cb=flood)
    watched = await nc.subscribe(subjects.srv_subject("INFO", ">"), cb=count)
    async with natsreg.Registry(nc, prefix=prefix, micro_poll_s=0.3) as registry:
        await eventually(lambda: len(asks) >= 2, what="two pings answered")
        await _settle(nc)
        assert registry.dropped["invalid_name"] >= 4
    await pinged.unsubscribe()
    await watched.unsubscribe()
    # One poll's replies make at most MAX_INFO_ASKS asks, each of a made-up id by its name.
    assert all(len(subjects_asked) <= MAX_INFO_ASKS for subjects_asked in asks.values())
    assert {s.rsplit(".", 1)[0] for ss in asks.values() for s in ss} == {f"$SRV.INFO.fake-{unique}"}
