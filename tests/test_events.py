"""Durable events against a real nats-server with JetStream: emit, balanced and per-service
delivery, retries and dead letters (and the CLI that shows and replays them), ordering per key,
broadcast, and what the registry shows. The fault tests are in test_events_faults.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import APIError

import natsreg
from natsreg import ConfigError, subjects, wire
from natsreg.client._registry_api import RegistryApi
from natsreg.events import EventsUnavailableError, StreamSettings
from natsreg.events._dead import dead_letters
from natsreg.testing import NatsServer, free_port
from tests.helpers import eventually
from tests.test_metrics import value as metric


class UserCreated(msgspec.Struct):
    id: int
    email: str


def cli(js_server: NatsServer, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natsreg", "events", *args, "--prefix", prefix],
        env={**os.environ, "NATS_URL": js_server.url},
        capture_output=True,
        text=True,
        timeout=30,
    )


async def run_cli(js_server: NatsServer, prefix: str, *args: str) -> Any:
    result = await asyncio.to_thread(cli, js_server, prefix, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_emit_returns_once_stored_and_a_retried_key_is_stored_once(
    js: NATS, prefix: str
) -> None:
    events = natsreg.Events(js, prefix=prefix)
    first = await events.emit("user.created", UserCreated(id=7, email="a@b"), key="user-7")
    again = await events.emit("user.created", UserCreated(id=7, email="a@b"), key="user-7")
    other = await events.emit("user.deleted", {"id": 7}, key="user-7")
    assert (first.duplicate, again.duplicate, again.seq) == (False, True, first.seq)
    assert not other.duplicate and other.seq == first.seq + 1
    info = await js.jetstream().stream_info(f"{prefix}_events")
    assert info.state.messages == 2


async def test_an_event_jetstream_refuses_is_an_error_that_says_why(js: NATS, prefix: str) -> None:
    events = natsreg.Events(js, prefix=prefix)
    stored = await events.emit("user.created", {"id": 1})
    # A condition the caller set that does not hold: JetStream stores nothing, and says so.
    expected = {"Nats-Expected-Last-Sequence": str(stored.seq + 5)}
    with pytest.raises(EventsUnavailableError, match=r"refused the event: wrong last sequence"):
        await events.emit("user.created", {"id": 2}, headers=expected)
    info = await js.jetstream().stream_info(f"{prefix}_events")
    assert info.state.messages == 1


async def test_an_oversized_or_forged_event_is_refused_or_dead_lettered_at_once(
    js: NATS, prefix: str, unique: str
) -> None:
    events = natsreg.Events(js, prefix=prefix, settings=StreamSettings(max_body_bytes=1024))
    with pytest.raises(ConfigError, match="max_body_bytes"):
        await events.emit("user.created", b"x" * 1025)
    await events.ensure()
    subject = subjects.event_subject(prefix, "user.created", "3")
    # Past the emitter, the stream itself refuses what no emitter may send.
    with pytest.raises(APIError):
        await js.jetstream().publish(subject, b"x" * 8192)
    seen: list[tuple[int, UserCreated]] = []
    async with natsreg.announce(js, f"mail-{unique}", version="1.0.0", prefix=prefix) as svc:

        @svc.on_event("user.created")
        async def welcome(ev: natsreg.Event[UserCreated]) -> None:
            seen.append((ev.id, ev.body))

        await svc.ready()
        # Bytes that no retry can decode as UserCreated: dead at the first delivery. And a
        # claimed id (only replays may carry one) that is not believed.
        forged = await js.jetstream().publish(subject, b'{"id": "seven"}')
        good = await js.jetstream().publish(
            subject, b'{"id": 8, "email": "c@d"}', headers={"Natsreg-Event-Id": "1"}
        )
        await eventually(lambda: len(seen) == 1, what="the good event handled")
    assert seen == [(good.seq, UserCreated(id=8, email="c@d"))]
    dead = await dead_letters(js.jetstream(), prefix, "user.created")
    assert [(d.event_id, d.deliveries) for d in dead] == [(forged.seq, 1)]
    assert "does not decode" in dead[0].error


async def test_each_service_gets_its_own_copy_and_its_instances_share_one(
    js: NATS, prefix: str, unique: str
) -> None:
    handled: dict[str, list[int]] = defaultdict(list)

    def instance(service: str, tag: str) -> Any:
        svc = natsreg.announce(js, f"{service}-{unique}", version="1.0.0", prefix=prefix)

        @svc.on_event("order.placed", max_in_flight=2)
        async def on_order(ev: natsreg.Event[dict[str, int]]) -> None:
            await asyncio.sleep(0.005)
            handled[tag].append(ev.body["n"])

        return svc

    async with (
        instance("billing", "billing-1") as b1,
        instance("billing", "billing-2") as b2,
        instance("shipping", "shipping") as s1,
    ):
        for svc in (b1, b2, s1):
            await svc.ready()
        events = natsreg.Events(js, prefix=prefix)
        for n in range(40):
            await events.emit("order.placed", {"n": n})
        await eventually(
            lambda: (
                len(handled["shipping"]) == 40
                and len(handled["billing-1"]) + len(handled["billing-2"]) >= 40
            ),
            what="every event handled by each service",
        )
    billing = handled["billing-1"] + handled["billing-2"]
    assert sorted(billing) == list(range(40)), "each event once per service"
    assert handled["billing-1"] and handled["billing-2"], "both instances took a share"
    assert sorted(handled["shipping"]) == list(range(40))


async def test_a_poison_event_is_dead_lettered_while_others_flow_then_replayed_after_a_fix(
    js: NATS, js_server: NatsServer, prefix: str, unique: str
) -> None:
    broken = True
    good: list[int] = []
    poisoned: list[tuple[int, int]] = []
    other: list[int] = []
    async with (
        natsreg.announce(js, f"mail-{unique}", version="1.0.0", prefix=prefix) as svc,
        natsreg.announce(js, f"audit-{unique}", version="1.0.0", prefix=prefix) as audit,
    ):

        @svc.on_event("user.created", max_deliveries=3, retry_delay_s=0.05)
        async def welcome(ev: natsreg.Event[dict[str, Any]]) -> None:
            if ev.body.get("poison"):
                poisoned.append((ev.id, ev.delivery))
                if broken:
                    raise RuntimeError("no mail server for [bold]poison[/]")
                return
            good.append(ev.body["n"])

        @audit.on_event("user.created")
        async def log_it(ev: natsreg.Event[Any]) -> None:
            other.append(ev.id)

        await svc.ready()
        await audit.ready()
        events = natsreg.Events(js, prefix=prefix)
        bad = await events.emit("user.created", {"poison": True})
        for n in range(20):
            await events.emit("user.created", {"n": n})
        await eventually(lambda: len(good) == 20, what="the other events handled")
        await eventually(lambda: len(poisoned) == 3, what="three deliveries of the poison")
        assert [d for _, d in poisoned] == [1, 2, 3]
        labels = {"service": f"mail-{unique}", "event": "user.created"}
        await eventually(
            lambda: metric("natsreg_service_events_total", outcome="dead", **labels) == 1,
            what="the dead letter counted",
        )
        assert metric("natsreg_service_events_total", outcome="failed", **labels) == 3
        assert metric("natsreg_service_events_total", outcome="handled", **labels) == 20

        listed = await run_cli(js_server, prefix, "dead", "user.created")
        assert [(d["event_id"], d["deliveries"], d["service"]) for d in listed] == [
            (bad.seq, 3, f"mail-{unique}")
        ]
        assert "RuntimeError: no mail server" in listed[0]["error"]
        table = await asyncio.to_thread(cli, js_server, prefix, "dead", "user.created")
        assert "[bold]poison[/]" in table.stdout, "an error is shown as written, not as markup"
        overview = await run_cli(js_server, prefix, "ls")
        (row,) = overview
        figures = {c["service"]: (c["dead"], c["pending"]) for c in row["consumers"]}
        assert figures == {f"mail-{unique}": (1, 0), f"audit-{unique}": (0, 0)}
        assert row["stored"] == 21

        refused = await asyncio.to_thread(cli, js_server, prefix, "replay", "user.created")
        assert refused.returncode == 1 and "--dead" in refused.stderr
        broken = False
        replayed = await run_cli(js_server, prefix, "replay", "user.created", "--dead")
        assert replayed == {"replayed": 1}
        await eventually(lambda: len(poisoned) == 4, what="the replayed event handled")
        assert poisoned[-1][0] == bad.seq, "a replayed event keeps its id"
        assert await run_cli(js_server, prefix, "dead", "user.created") == []
    # The replay went to the service that failed, not to every service again.
    assert sorted(other) == sorted({*other}) and len(other) == 21


async def test_the_lag_a_consumer_sees_in_its_fetches_is_a_metric(
    js: NATS, prefix: str, unique: str
) -> None:
    labels = {"service": f"mail-{unique}", "event": "user.created"}
    events = natsreg.Events(js, prefix=prefix)
    for n in range(10):
        await events.emit("user.created", {"n": n})
    release = asyncio.Event()
    handled: list[int] = []
    async with natsreg.announce(js, f"mail-{unique}", version="1.0.0", prefix=prefix) as svc:

        @svc.on_event("user.created", max_in_flight=2)
        async def welcome(ev: natsreg.Event[dict[str, int]]) -> None:
            await release.wait()
            handled.append(ev.body["n"])

        @svc.on_event("cache.flushed", broadcast=True)
        async def flush(ev: natsreg.Event[Any]) -> None:
            pass

        await svc.ready()
        # Two events held by the blocked handler, eight stored that no instance has taken.
        await eventually(lambda: metric("natsreg_service_event_lag", **labels) == 8, what="8")
        assert svc.event_lags() == {"user.created": 8}, "no figure for a broadcast handler"
        release.set()
        await eventually(lambda: len(handled) == 10, what="all handled")
        await eventually(lambda: metric("natsreg_service_event_lag", **labels) == 0, what="0")


async def test_ordered_handlers_take_the_events_of_one_key_in_order_one_at_a_time(
    js: NATS, prefix: str, unique: str
) -> None:
    seen: dict[str, list[int]] = defaultdict(list)
    busy: dict[str, int] = defaultdict(int)
    most_at_once = 0
    failed_once: set[tuple[str, int]] = set()

    def instance() -> Any:
        svc = natsreg.announce(js, f"ledger-{unique}", version="1.0.0", prefix=prefix)

        @svc.on_event("account.moved", ordered=True, retry_delay_s=0.05)
        async def move(ev: natsreg.Event[dict[str, int]]) -> None:
            nonlocal most_at_once
            assert ev.key is not None
            busy[ev.key] += 1
            most_at_once = max(most_at_once, busy[ev.key])
            try:
                await asyncio.sleep(random.uniform(0, 0.004))
                n = ev.body["n"]
                if n == 5 and (ev.key, n) not in failed_once:
                    failed_once.add((ev.key, n))
                    raise RuntimeError("once")  # a retry must not let 6 overtake 5
                seen[ev.key].append(n)
            finally:
                busy[ev.key] -= 1

        return svc

    async with instance() as one, instance() as two:
        await one.ready()
        await two.ready()
        events = natsreg.Events(js, prefix=prefix)
        keys = [f"acct-{k}" for k in range(4)]
        for n in range(12):
            for key in keys:
                await events.emit("account.moved", {"n": n}, order_key=key)
        await eventually(
            lambda: all(len(seen[k]) == 12 for k in keys), timeout_s=20, what="all handled"
        )
    assert all(seen[k] == list(range(12)) for k in keys), dict(seen)
    assert most_at_once == 1


async def test_broadcast_handlers_run_on_every_instance(js: NATS, prefix: str, unique: str) -> None:
    got: dict[str, list[int]] = defaultdict(list)

    def instance(tag: str) -> Any:
        svc = natsreg.announce(js, f"cache-{unique}", version="1.0.0", prefix=prefix)

        @svc.on_event("price.changed", broadcast=True)
        async def invalidate(ev: natsreg.Event[dict[str, int]]) -> None:
            got[tag].append(ev.body["n"])

        return svc

    async with instance("a") as a, instance("b") as b:
        await a.ready()
        await b.ready()
        events = natsreg.Events(js, prefix=prefix)
        for n in range(5):
            await events.emit("price.changed", {"n": n})
        await eventually(lambda: len(got["a"]) == len(got["b"]) == 5, what="both got all")


async def test_the_registry_shows_which_services_consume_which_events(
    js: NATS, js_server: NatsServer, prefix: str, unique: str
) -> None:
    async with natsreg.Registry(js, prefix=prefix):
        svc = natsreg.Service(f"mail-{unique}", version="1.0.0", prefix=prefix)

        @svc.on_event("user.created")
        async def welcome(ev: natsreg.Event[Any]) -> None:
            pass

        async with natsreg.announce(js, svc) as instance:
            await instance.ready()

            @instance.on_event("user.deleted", ordered=True)
            async def farewell(ev: natsreg.Event[Any]) -> None:
                pass

            await instance.ready()
            api = RegistryApi(js, prefix=prefix)

            async def listed() -> list[str]:
                services = (await api.services()).services
                return services[0].events if services else []

            await eventually(
                lambda: _is(listed(), ["user.created", "user.deleted"]), what="events listed"
            )
            (view,) = (await api.instances(f"mail-{unique}")).instances
            assert [(e.type, e.ordered) for e in view.events] == [
                ("user.created", False),
                ("user.deleted", True),
            ]
            url = js_server.url
            info = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "natsreg", "info", f"mail-{unique}", "--prefix", prefix],
                env={**os.environ, "NATS_URL": url},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert "CONSUMES EVENT" in info.stdout
            assert info.stdout.split()[-2:] == ["user.deleted", "ordered"]


async def test_the_registry_and_the_cli_show_who_emits_each_event_type_and_drop_forged_lists(
    js: NATS, js_server: NatsServer, prefix: str, unique: str
) -> None:
    name = f"orders-{unique}"
    async with (
        natsreg.Registry(js, prefix=prefix) as registry,
        natsreg.announce(
            js, name, version="1.0.0", prefix=prefix, emits=["order.placed", "user.created"]
        ) as svc,
    ):
        await svc.ready()
        forged = wire.Announce(
            id="forged",
            name=name,
            version="1.0.0",
            seq=1,
            emits=[f"t{n}" for n in range(wire.MAX_EVENT_INTERESTS + 1)],
        )
        await js.publish(
            subjects.control_subject(prefix, "announce", name, "forged"), wire.encode(forged)
        )
        await eventually(
            lambda: registry.stats().dropped.get("invalid_events", 0) == 1, what="forged dropped"
        )
        (view,) = registry.snapshot().instances
        assert (view.id, view.emits) == (svc.id, ("order.placed", "user.created"))
        api = RegistryApi(js, prefix=prefix)
        (summary,) = (await api.services()).services
        assert summary.emits == ["order.placed", "user.created"]
        listed = await run_cli(js_server, prefix, "ls")
        assert [(t["type"], t["stored"], t["emitters"]) for t in listed] == [
            ("order.placed", 0, [name]),
            ("user.created", 0, [name]),
        ]
        info = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "natsreg", "info", name, "--prefix", prefix],
            env={**os.environ, "NATS_URL": js_server.url},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "EMITS EVENT" in info.stdout
        assert info.stdout.split()[-2:] == ["order.placed", "user.created"]


async def test_an_instance_emitting_a_type_it_does_not_declare_is_warned_once(
    js: NATS, prefix: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with natsreg.announce(
        js, f"orders-{unique}", version="1.0.0", prefix=prefix, emits=["order.placed"]
    ) as svc:
        with caplog.at_level(logging.WARNING, logger="natsreg.events"):
            await svc.events.emit("order.placed", {"n": 1})
            assert caplog.records == []
            for n in range(2):
                stored = await svc.events.emit("order.paid", {"n": n})
        assert stored.seq == 3, "an undeclared type is emitted all the same"
        (warning,) = caplog.records
        assert "'order.paid'" in warning.getMessage()
        assert "emits=" in warning.getMessage()


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


def test_up_keeps_events_in_its_store_across_a_restart(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{port}", "PYTHONUNBUFFERED": "1"}
    store = tmp_path / "store"

    def up() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "natsreg", "up", "--no-bridge", "--store-dir", str(store)],
            env=env,
            text=True,
            stderr=subprocess.PIPE,
        )

    async def emit() -> None:
        nc = await nats.connect(env["NATS_URL"])
        await natsreg.Events(nc).emit("user.created", {"id": 1}, key="user-1")
        await nc.close()

    def ls() -> Any:
        result = subprocess.run(
            [sys.executable, "-m", "natsreg", "events", "ls", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    for round_ in range(2):
        with up() as proc:
            try:
                assert proc.stderr is not None
                said: list[str] = []
                for line in proc.stderr:
                    said.append(line)
                    if "registry node" in line:
                        break
                assert f"JetStream in {store}" in "".join(said)
                if round_ == 0:
                    asyncio.run(emit())
                assert [row["stored"] for row in ls()] == [1]
                proc.send_signal(signal.SIGINT)
                assert proc.wait(20) == 0
            finally:
                proc.kill()
    assert (store / "jetstream").is_dir()


async def test_a_stopping_instance_finishes_the_event_it_handles_and_takes_no_more(
    js: NATS, prefix: str, unique: str
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    handled: list[int] = []
    events = natsreg.Events(js, prefix=prefix)

    async def serve() -> None:
        async with natsreg.announce(
            js, f"mail-{unique}", version="1.0.0", prefix=prefix, drain_timeout_s=10
        ) as svc:

            @svc.on_event("user.created", max_in_flight=1)
            async def slow(ev: natsreg.Event[dict[str, int]]) -> None:
                started.set()
                await release.wait()
                handled.append(ev.body["n"])

            await svc.ready()
            await events.emit("user.created", {"n": 1})
            await events.emit("user.created", {"n": 2})
            await started.wait()
        # Left the block: the running event was finished and acknowledged.

    serving = asyncio.create_task(serve())
    await started.wait()
    await asyncio.sleep(0.1)
    release.set()
    await serving
    assert handled == [1]
    info = await js.jetstream().consumer_info(f"{prefix}_events", f"mail-{unique}~user~created")
    assert (info.num_ack_pending, info.num_pending) == (0, 1), "the second is left for others"


async def test_without_jetstream_emit_handlers_and_the_cli_say_so_at_once(
    nc: NATS, nats_url: str, prefix: str, unique: str
) -> None:
    # The session's plain server: no JetStream. Nothing waits for one that will never come.
    started = asyncio.get_running_loop().time()
    with pytest.raises(EventsUnavailableError, match="JetStream"):
        await natsreg.Events(nc, prefix=prefix).emit("user.created", {})
    svc = natsreg.announce(nc, f"mail-{unique}", version="1.0.0", prefix=prefix)

    @svc.on_event("user.created")
    async def welcome(ev: natsreg.Event[Any]) -> None:
        pass

    with pytest.raises(EventsUnavailableError, match="nats-server -js"):
        async with svc:
            pass
    assert asyncio.get_running_loop().time() - started < 5
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "natsreg", "events", "ls"],
        env={**os.environ, "NATS_URL": nats_url},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "JetStream" in result.stderr
