"""Sagas on a real nats-server with JetStream: compensation in reverse order, a dead-lettered
compensation, a coordinator killed with SIGKILL and finished by another process, forged
entries in the bucket, and ``natsreg saga show``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

import natsreg
from natsreg import subjects
from natsreg.saga import KEY_HEADER, SAGA_HEADER, SagaState
from natsreg.saga._state import StepState, note
from natsreg.saga._store import Bucket
from natsreg.testing import NatsCluster, NatsServer
from tests.helpers import eventually
from tests.saga_proc import three_steps

SAGA_PROC = Path(__file__).with_name("saga_proc.py")
QUICK = natsreg.RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.02)


class Shop:
    """A service whose endpoints record every call (endpoint, body, headers) in order."""

    def __init__(
        self, svc: natsreg.Instance, failing: set[str], slow: set[str] = frozenset()
    ) -> None:
        self.calls: list[tuple[str, Any, dict[str, str]]] = []
        for endpoint in ("reserve", "release", "charge", "refund", "ship"):
            self._serve(svc, endpoint, endpoint in failing, endpoint in slow)

    def _serve(self, svc: natsreg.Instance, endpoint: str, failing: bool, slow: bool) -> None:
        @svc.endpoint(endpoint)
        async def handle(req: natsreg.Request) -> dict[str, str]:
            self.calls.append((endpoint, req.json(), dict(req.headers)))
            if slow:
                await asyncio.sleep(0.5)
            if failing:
                raise natsreg.ServiceError(f"{endpoint}: warehouse offline", code=500)
            return {endpoint: "ok"}

    def endpoints(self) -> list[str]:
        return [endpoint for endpoint, _, _ in self.calls]


def order(service: str, **options: Any) -> natsreg.Saga:
    return natsreg.Saga(
        f"order-{service}",
        steps=[
            natsreg.Step(f"{service}.reserve", compensate=f"{service}.release"),
            natsreg.Step(f"{service}.charge", compensate=f"{service}.refund"),
            natsreg.Step(f"{service}.ship"),
        ],
        **options,
    )


async def stored(nc: NATS, prefix: str, saga_id: str) -> SagaState:
    bucket = await Bucket.find(nc, prefix)
    assert bucket is not None
    entry = await bucket.get(saga_id)
    assert entry is not None and entry[0] is not None
    return entry[0]


def events(state: SagaState) -> list[tuple[str, int]]:
    return [(entry.event, entry.step) for entry in state.history]


async def test_a_saga_whose_second_step_fails_undoes_the_first_once_and_returns_compensated(
    js: NATS, prefix: str, unique: str
) -> None:
    service = f"shop-{unique}"
    async with natsreg.announce(js, service, version="1.0.0", prefix=prefix) as svc:
        shop = Shop(svc, failing={"charge"})
        await js.flush()
        client = natsreg.Client(js, prefix=prefix)
        result = await order(service).run(client, {"order": 42}, saga_id=f"o-{unique}")

    assert result.status == "compensated"
    assert "warehouse offline" in result.error
    # The charge failed with an answer (it did not take effect): only the reservation is undone.
    assert shop.endpoints() == ["reserve", "charge", "release"]
    _, release, headers = shop.calls[2]
    assert release["payload"] == {"order": 42}
    assert release["replies"] == {f"{service}.reserve": {"reserve": "ok"}}
    assert release["saga"]["compensation"] is True
    assert headers[SAGA_HEADER] == f"o-{unique}"
    assert headers[KEY_HEADER] == f"o-{unique}.0.undo"
    state = await stored(js, prefix, f"o-{unique}")
    assert [s.status for s in state.steps] == ["compensated", "failed", "pending"]
    assert events(state) == [
        ("started", -1),
        ("step-started", 0),
        ("step-succeeded", 0),
        ("step-started", 1),
        ("step-failed", 1),
        ("compensation-succeeded", 0),
        ("compensated", -1),
    ]
    # Running the same id again answers from the bucket and calls nothing.
    async with natsreg.announce(js, service, version="1.0.0", prefix=prefix) as svc:
        again = Shop(svc, failing=set())
        await js.flush()
        assert (await order(service).run(client, {"order": 42}, saga_id=f"o-{unique}")).status == (
            "compensated"
        )
    assert again.calls == []


async def test_a_step_that_timed_out_may_have_taken_effect_so_its_compensation_runs_too(
    js: NATS, prefix: str, unique: str
) -> None:
    service = f"shop-{unique}"
    saga = natsreg.Saga(
        f"t-{unique}",
        steps=[
            natsreg.Step(f"{service}.reserve", compensate=f"{service}.release"),
            natsreg.Step(f"{service}.charge", compensate=f"{service}.refund", timeout_s=0.2),
        ],
    )
    async with natsreg.announce(js, service, version="1.0.0", prefix=prefix) as svc:
        shop = Shop(svc, failing=set(), slow={"charge"})
        await js.flush()
        result = await saga.run(natsreg.Client(js, prefix=prefix), {"order": 3})
    assert result.status == "compensated"
    assert shop.endpoints() == ["reserve", "charge", "refund", "release"]


async def test_a_completed_saga_hands_each_step_the_replies_before_it(
    js: NATS, prefix: str, unique: str
) -> None:
    service = f"shop-{unique}"
    async with natsreg.announce(js, service, version="1.0.0", prefix=prefix) as svc:
        shop = Shop(svc, failing=set())
        await js.flush()
        result = await order(service).run(natsreg.Client(js, prefix=prefix), {"order": 7})
    assert result.status == "completed"
    assert shop.endpoints() == ["reserve", "charge", "ship"]
    _, ship, _ = shop.calls[2]
    assert ship["replies"] == {
        f"{service}.reserve": {"reserve": "ok"},
        f"{service}.charge": {"charge": "ok"},
    }
    assert result.replies[f"{service}.ship"] == {"ship": "ok"}
    assert len(result.id) == 32


async def test_a_failing_compensation_is_retried_then_dead_lettered_and_saga_show_prints_it(
    js: NATS, prefix: str, unique: str, js_server: NatsServer
) -> None:
    service = f"shop-{unique}"
    saga_id = f"dead-{unique}"
    async with natsreg.announce(js, service, version="1.0.0", prefix=prefix) as svc:
        shop = Shop(svc, failing={"charge", "release"})
        await js.flush()
        client = natsreg.Client(js, prefix=prefix)
        with pytest.raises(natsreg.SagaCompensationError) as raised:
            await order(service, compensation=QUICK).run(client, {"order": 1}, saga_id=saga_id)

    assert raised.value.saga_id == saga_id
    assert f"natsreg saga show {saga_id}" in str(raised.value)
    assert shop.endpoints() == ["reserve", "charge", "release", "release", "release"]
    # Every attempt carries the same idempotency key.
    assert {headers[KEY_HEADER] for _, _, headers in shop.calls[2:]} == {f"{saga_id}.0.undo"}
    state = await stored(js, prefix, saga_id)
    assert state.status == "failed-compensation"
    assert state.steps[0].status == "dead" and state.steps[0].attempts == 3
    assert "release: warehouse offline" in state.steps[0].error
    assert events(state)[-4:] == [
        ("compensation-failed", 0),
        ("compensation-failed", 0),
        ("compensation-dead", 0),
        ("failed-compensation", -1),
    ]

    env = {**os.environ, "NATS_URL": js_server.url, "NATSREG_PREFIX": prefix}
    commands = {
        "show": ["saga", "show", saga_id],
        "ls": ["saga", "ls", "--json"],
        "missing": ["saga", "show", "nope"],
    }
    done: dict[str, subprocess.CompletedProcess[bytes]] = {}

    async def cli(label: str) -> None:
        done[label] = await anyio.run_process(
            [sys.executable, "-m", "natsreg", *commands[label]], env=env, check=False
        )

    async with anyio.create_task_group() as tg:
        for label in commands:
            tg.start_soon(cli, label)
    out = done["show"].stdout.decode()
    assert done["show"].returncode == 0, done["show"].stderr
    assert "failed-compensation" in out and "compensation-dead" in out
    assert "warehouse offline" in out and f"{service}.release" in out
    listed = {saga["id"]: saga["status"] for saga in json.loads(done["ls"].stdout)}
    assert listed[saga_id] == "failed-compensation"
    assert done["missing"].returncode == 1
    assert done["missing"].stderr.decode().startswith("natsreg: no saga 'nope'")


async def test_saga_ls_before_any_saga_says_none_yet_and_saga_show_still_fails(
    js_server: NatsServer, prefix: str
) -> None:
    env = {**os.environ, "NATS_URL": js_server.url, "NATSREG_PREFIX": prefix}
    commands = {
        "ls": ["ls"],
        "json": ["ls", "--json"],
        "running": ["ls", "--running"],
        "show": ["show", "order-1"],
    }
    done: dict[str, subprocess.CompletedProcess[bytes]] = {}

    async def cli(label: str) -> None:
        done[label] = await anyio.run_process(
            [sys.executable, "-m", "natsreg", "saga", *commands[label]], env=env, check=False
        )

    async with anyio.create_task_group() as tg:
        for label in commands:
            tg.start_soon(cli, label)
    for label in ("ls", "json", "running"):
        assert done[label].returncode == 0, done[label].stderr
    # What a user sees first, and where a saga comes from.
    assert done["ls"].stdout.decode().startswith("no sagas yet (natsreg.Saga(")
    assert json.loads(done["json"].stdout) == []
    assert done["running"].stdout.decode().startswith("no saga is running")
    assert done["show"].returncode == 1
    assert done["show"].stderr.decode().startswith("natsreg: no saga 'order-1'")


async def test_a_coordinator_killed_mid_saga_is_finished_by_another_process(
    js: NATS, prefix: str, unique: str, js_server: NatsServer
) -> None:
    service = f"kill-{unique}"
    saga_id = f"k-{unique}"
    runs: list[str] = []
    two_called = asyncio.Event()
    release_two = asyncio.Event()
    async with natsreg.announce(js, service, version="1.0.0", prefix=prefix) as svc:
        for name in ("one", "undo-one", "three"):

            @svc.endpoint(name)
            async def step(req: natsreg.Request, name: str = name) -> dict[str, str]:
                runs.append(name)
                return {name: "ok"}

        @svc.endpoint("two")
        async def two(req: natsreg.Request) -> dict[str, str]:
            runs.append("two")
            two_called.set()
            await release_two.wait()
            return {"two": "ok"}

        await js.flush()
        with subprocess.Popen(
            [sys.executable, str(SAGA_PROC), js_server.url, prefix, service, saga_id],
            stdout=subprocess.PIPE,
        ) as proc:
            try:
                with anyio.fail_after(10):
                    await two_called.wait()
                # Step one is recorded, step two is in flight: the coordinator dies here.
                os.kill(proc.pid, signal.SIGKILL)
                assert proc.wait(5) == -signal.SIGKILL
            finally:
                proc.kill()
        release_two.set()
        before = await stored(js, prefix, saga_id)
        assert before.status == "running" and before.steps[1].status == "started"

        client = natsreg.Client(js, prefix=prefix)
        result = await three_steps(service).resume(client, saga_id)

    assert result.status == "completed"
    # Step two was sent again under the same request id: the service answered the repeat
    # from memory instead of running it twice.
    assert runs == ["one", "two", "three"]
    coordinators = list(dict.fromkeys(entry.coordinator for entry in result.history))
    assert len(coordinators) == 2
    assert f"/{proc.pid}/" in coordinators[0] and f"/{os.getpid()}/" in coordinators[1]
    assert ("resumed", -1) in [(e.event, e.step) for e in result.history]


async def test_recovery_finishes_one_orphan_compensates_another_and_skips_forged_entries(
    js: NATS, prefix: str, unique: str
) -> None:
    service = f"rec-{unique}"
    saga = natsreg.Saga(
        f"r-{unique}",
        steps=[
            natsreg.Step(f"{service}.reserve", compensate=f"{service}.release"),
            natsreg.Step(f"{service}.charge"),
        ],
        lease_s=0.3,
    )
    bucket = await Bucket.open(js, prefix)
    kv = await js.jetstream().key_value(subjects.saga_bucket(prefix))

    def orphan(saga_id: str, status: str, *steps: str) -> SagaState:
        state = SagaState(
            id=saga_id,
            name=saga.name,
            status=status,  # type: ignore[arg-type]
            steps=[
                StepState(subject=f"{service}.reserve", compensate=f"{service}.release"),
                StepState(subject=f"{service}.charge"),
            ],
            coordinator="gone/1/dead",
            lease_s=0.3,
        )
        for step, step_status in zip(state.steps, steps, strict=False):
            step.status = step_status  # type: ignore[assignment]
        note(state, 0.0, "started")
        return state

    forward = orphan(f"fwd-{unique}", "running")
    backward = orphan(f"back-{unique}", "compensating", "succeeded", "failed")
    for state in (forward, backward):
        await bucket.create(state)
    # Garbage, an entry under another saga's key, a lease out of bounds, a large non-saga.
    await kv.put("junk", b"\x00\xff not json")
    await kv.put("forged", msgspec.json.encode(msgspec.structs.replace(forward, id="other")))
    await kv.put(
        f"lease-{unique}",
        msgspec.json.encode(msgspec.structs.replace(forward, id=f"lease-{unique}", lease_s=1e9)),
    )
    await kv.put("big", b"[" + b"1," * 400_000 + b"1]")

    async with natsreg.announce(js, service, version="1.0.0", prefix=prefix) as svc:
        shop = Shop(svc, failing=set())
        await js.flush()
        # Two resumers at once: each orphan is taken over by one of them only.
        first, second = await asyncio.gather(
            saga.recover(natsreg.Client(js, prefix=prefix)),
            saga.recover(natsreg.Client(js, prefix=prefix)),
        )

    assert {r.id: r.status for r in first + second} == {
        f"fwd-{unique}": "completed",
        f"back-{unique}": "compensated",
    }
    assert len(first + second) == 2
    assert sorted(shop.endpoints()) == ["charge", "release", "reserve"]
    assert (await kv.get("junk")).value == b"\x00\xff not json"


async def test_a_coordinator_whose_saga_was_taken_over_stops_with_saga_lost(
    js: NATS, prefix: str, unique: str
) -> None:
    service = f"lost-{unique}"
    saga_id = f"l-{unique}"
    saga = natsreg.Saga(
        f"l-{unique}", steps=[natsreg.Step(f"{service}.reserve", timeout_s=5.0)], lease_s=0.3
    )
    hold = asyncio.Event()
    async with natsreg.announce(js, service, version="1.0.0", prefix=prefix) as svc:

        @svc.endpoint("reserve")
        async def reserve(req: natsreg.Request) -> None:
            await hold.wait()

        await js.flush()
        client = natsreg.Client(js, prefix=prefix)
        running = asyncio.create_task(saga.run(client, None, saga_id=saga_id))
        # Another process writes the saga as if it had taken it over.
        bucket = await Bucket.open(js, prefix)
        for _ in range(100):
            entry = await bucket.get(saga_id)
            if entry is not None and entry[0] is not None:
                break
            await asyncio.sleep(0.02)
        assert entry is not None and entry[0] is not None
        entry[0].coordinator = "thief/1/x"
        await bucket.update(entry[0], entry[1])
        with pytest.raises(natsreg.SagaLostError):
            with anyio.fail_after(5):
                await running
        hold.set()


@pytest.mark.parametrize(
    "bad_id", ["", "has.dot", "has space", "x" * 49, "star*", "../etc"], ids=repr
)
async def test_bad_saga_ids_are_refused_before_anything_is_sent(
    js: NATS, prefix: str, bad_id: str
) -> None:
    saga = natsreg.Saga("s", steps=[natsreg.Step("a.b")])
    with pytest.raises(natsreg.ConfigError, match="saga id"):
        await saga.run(natsreg.Client(js, prefix=prefix), None, saga_id=bad_id)


async def test_without_jetstream_a_saga_says_so_in_one_line(nc: NATS, prefix: str) -> None:
    saga = natsreg.Saga("s", steps=[natsreg.Step("a.b")])
    with pytest.raises(natsreg.SagaUnavailableError, match="JetStream is not enabled"):
        await saga.run(natsreg.Client(nc, prefix=prefix), None)


async def test_a_coordinator_user_runs_sagas_under_generated_permissions_and_no_more(
    tmp_path: Path, unique: str
) -> None:
    from natsreg import _authconfig
    from natsreg.permissions import Role

    service = f"shop-{unique}"
    roles = [
        Role(kind="service", user=service, name=service),
        Role(kind="coordinator", user="orders", calls=(service,)),
    ]
    rendered = _authconfig.render_static(roles, "natsreg")
    (tmp_path / "nats.conf").write_text(rendered.config)
    secrets = {s.role.user: s for s in rendered.users}
    violations: list[str] = []

    async def login(user: str) -> NATS:
        async def on_error(exc: Exception) -> None:
            violations.append(f"{user}: {exc}")

        return await nats.connect(
            server.url,
            user=user,
            password=secrets[user].password,
            inbox_prefix=secrets[user].inbox,
            error_cb=on_error,
        )

    async with NatsServer(jetstream=True, args=("-c", str(tmp_path / "nats.conf"))) as server:
        svc_nc, orders = await login(service), await login("orders")
        try:
            async with natsreg.announce(svc_nc, service, version="1.0.0") as svc:
                shop = Shop(svc, failing={"ship"})
                await svc_nc.flush()
                client = natsreg.Client(orders)
                result = await order(service).run(client, {"order": 5}, saga_id="p-1")
                assert result.status == "compensated"
                assert shop.endpoints() == ["reserve", "charge", "ship", "refund", "release"]
                recovered = await order(service).recover(client)
                assert recovered == []
                assert not violations
                # Its own bucket only: no other stream, and no deleting its own.
                for subject in (
                    "$JS.API.STREAM.DELETE.KV_natsreg_sagas",
                    "$JS.API.STREAM.PURGE.KV_natsreg_sagas",
                    "$KV.other.x",
                    "$JS.API.STREAM.INFO.KV_other",
                ):
                    await orders.publish(subject, b"")
                await orders.flush()
                await eventually(lambda: len(violations) == 4, what="four violations")
        finally:
            await svc_nc.close()
            await orders.close()


async def test_the_place_order_example_completes_one_order_and_compensates_the_declined_one(
    js: NATS, js_server: NatsServer
) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "NATS_URL": js_server.url, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, "-m", "natsreg", "run", "examples.place_order:shop"], cwd=root, env=env
    ) as shop:
        try:

            async def serving() -> bool:
                try:
                    await js.request(
                        "shop.ship", b'{"saga": {"key": "probe"}, "payload": {"order": 0}}'
                    )
                except nats.errors.NoRespondersError:
                    return False
                return True

            await eventually(serving, timeout_s=15, what="the example shop serving")
            example = await anyio.run_process(
                [sys.executable, "examples/place_order.py"], cwd=root, env=env
            )
        finally:
            shop.terminate()
            shop.wait(10)
    lines = example.stdout.decode().splitlines()
    assert lines == [
        "order-1: completed {'tracking': 't-1'}",
        "order-2: compensated shop.charge: 402 card declined: over the limit",
    ]


async def test_in_a_cluster_the_bucket_has_3_replicas_and_sagas_outlive_its_leader(
    prefix: str, unique: str
) -> None:
    service = f"shop-{unique}"
    async with NatsCluster(jetstream=True) as cluster:
        nc = await nats.connect(
            servers=cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.1
        )
        try:
            async with natsreg.announce(nc, service, version="1.0.0", prefix=prefix) as svc:
                Shop(svc, failing=set())
                await nc.flush()
                client = natsreg.Client(nc, prefix=prefix)
                assert (await order(service).run(client, {"order": 1})).status == "completed"
                info = await nc.jetstream().stream_info(f"KV_{subjects.saga_bucket(prefix)}")
                assert info.config.num_replicas == 3, "min(3, the cluster's size)"
                assert info.cluster is not None and info.cluster.leader is not None
                await asyncio.to_thread(cluster.kill, int(info.cluster.leader.rsplit("-", 1)[1]))
                # At once: its writes wait out the election of the bucket's next leader.
                result = await order(service).run(client, {"order": 2})
                assert result.status == "completed"
        finally:
            await nc.close()
