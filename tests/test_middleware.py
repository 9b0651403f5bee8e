"""A declared Service: middleware around every handler, hooks and per-process state."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from nats.aio.client import Client as NATS

import natsreg
from natsreg.service import Context, Handler
from tests.helpers import eventually


async def test_middleware_wraps_every_handler_in_declaration_order_and_sees_the_request(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"mw-{unique}"
    svc = natsreg.Service(name, version="1.0.0", prefix=prefix)
    seen: list[str] = []

    @svc.middleware
    async def outer(req: natsreg.Request, call_next: Handler) -> Any:
        seen.append("outer in")
        if req.headers.get("X-Caller") != "ok":
            raise natsreg.ServiceError("who is calling?", code=401)
        # The caller's budget reaches the middleware as a deadline on this clock.
        assert req.deadline is not None and req.deadline > time.monotonic()
        reply = await call_next(req)
        seen.append("outer out")
        return reply

    @svc.endpoint("hello")
    async def hello(req: natsreg.Request) -> dict[str, str]:
        seen.append("handler")
        return {"hello": req.json()["name"]}

    # Declared after the endpoint: it still wraps it, inside the first.
    @svc.middleware
    async def inner(req: natsreg.Request, call_next: Handler) -> Any:
        seen.append("inner in")
        return await call_next(req)

    async with natsreg.announce(nc, svc) as instance, natsreg.Client(nc, prefix=prefix) as c:
        await instance.ready()
        reply = await c.request(f"{name}.hello", {"name": "ada"}, headers={"X-Caller": "ok"})
        assert reply.json() == {"hello": "ada"}
        assert seen == ["outer in", "inner in", "handler", "outer out"]

        seen.clear()
        with pytest.raises(natsreg.ServiceError) as refused:
            await c.request(f"{name}.hello", {"name": "eve"})
        assert refused.value.code == 401 and seen == ["outer in"]
        # A refusal by middleware is counted like a handler's, in the ADR-32 stats.
        stats = json.loads((await nc.request(f"$SRV.STATS.{name}", b"")).data)
        (endpoint,) = stats["endpoints"]
        assert (endpoint["num_requests"], endpoint["num_errors"]) == (2, 1)
        assert endpoint["last_error"] == "401: who is calling?"


async def test_hooks_open_state_before_serving_and_close_it_after_the_goodbye(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"hooks-{unique}"
    svc = natsreg.Service(name, version="2.0.0", prefix=prefix, metadata={"zone": "a"})
    events: list[str] = []

    @svc.on_start
    async def open_db(ctx: Context) -> None:
        events.append("start")
        ctx.state.db = {"1": "alice"}

    goodbyes: list[bytes] = []

    async def heard(msg: Any) -> None:
        goodbyes.append(msg.data)

    @svc.on_stop
    async def close_db(ctx: Context) -> None:
        # The goodbye was sent before this hook: it arrives (a round trip through the server)
        # while the hook waits. Were it sent after the hook, this wait would time out.
        await eventually(lambda: bool(goodbyes), timeout_s=2.0, what="the goodbye, before on_stop")
        events.append("stop, after the goodbye")
        ctx.state.db = None

    @svc.endpoint("users", idempotent=True)
    async def users(req: natsreg.Request) -> str:
        return str(req.state.db[req.json()["id"]])

    async with natsreg.Registry(nc, prefix=prefix) as registry:
        await nc.subscribe(f"{prefix}.bye.{name}.*", cb=heard)
        async with natsreg.announce(nc, svc, metadata={"worker": "3"}) as instance:
            await eventually(lambda: bool(registry.snapshot(name=name).instances))
            (view,) = registry.snapshot(name=name).instances
            # Settings given to announce override the declaration's.
            assert view.metadata == {"worker": "3"} and view.version == "2.0.0"
            async with natsreg.Client(nc, prefix=prefix) as client:
                assert (await client.request(f"{name}.users", {"id": "1"})).data == b"alice"
            assert instance.state.db == {"1": "alice"}
        await eventually(lambda: len(events) == 2)
    assert events == ["start", "stop, after the goodbye"]


async def test_the_declared_health_check_asks_the_process_state_at_every_heartbeat(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"health-{unique}"
    svc = natsreg.Service(name, version="1.0.0", prefix=prefix, heartbeat_s=0.1)

    @svc.on_start
    async def open_db(ctx: Context) -> None:
        ctx.state.db_up = True

    @svc.health
    async def check(ctx: Context) -> natsreg.wire.Health:
        return "passing" if ctx.state.db_up else "critical"

    def health() -> str:
        (view,) = registry.snapshot(name=name).instances
        return view.health

    async with natsreg.Registry(nc, prefix=prefix) as registry, natsreg.announce(nc, svc) as it:
        await eventually(lambda: bool(registry.snapshot(name=name).instances))
        await eventually(lambda: health() == "passing", what="passing while the db is up")
        it.state.db_up = False
        await eventually(lambda: health() == "critical", what="critical once the db is down")
        it.state.db_up = True
        await eventually(lambda: health() == "passing", what="passing again")


@pytest.mark.pure
def test_a_declaration_is_checked_when_the_module_is_imported() -> None:
    with pytest.raises(natsreg.ConfigError, match="SemVer"):
        natsreg.Service("svc", version="1")
    svc = natsreg.Service("svc", version="1.0.0")
    with pytest.raises(natsreg.ConfigError, match="must be async"):
        svc.endpoint("sync")(lambda req: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(natsreg.ConfigError, match="must be async"):
        svc.middleware(lambda req, call_next: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(natsreg.ConfigError, match="must be async"):
        svc.on_start(lambda ctx: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(natsreg.ConfigError, match="must be async"):
        svc.health(lambda ctx: "passing")  # type: ignore[arg-type,return-value]

    @svc.health
    async def check(ctx: Context) -> natsreg.wire.Health:
        return "passing"

    with pytest.raises(natsreg.ConfigError, match="health check is already declared"):
        svc.health(check)
    with_callback = natsreg.Service("svc2", version="1.0.0", health=lambda: "passing")
    with pytest.raises(natsreg.ConfigError, match="health check is already declared"):
        with_callback.health(check)

    @svc.endpoint("users")
    async def users(req: natsreg.Request) -> None:
        return None

    with pytest.raises(natsreg.ConfigError, match="already declared"):
        svc.endpoint("users")
    with pytest.raises(natsreg.ConfigError, match="not valid"):
        svc.endpoint("a.b")
    # A custom subject or queue group is checked at declaration too, not when a worker starts.
    with pytest.raises(natsreg.ConfigError, match="'a b' is not a valid literal subject"):
        svc.endpoint("custom", subject="a b")
    with pytest.raises(natsreg.ConfigError, match=r"queue group 'x\.y' is not valid"):
        svc.endpoint("custom", queue_group="x.y")
    svc.endpoint("custom", subject="legacy.users.get", queue_group="users")


@pytest.mark.pure
def test_announce_by_name_needs_a_version_and_a_declared_service_keeps_its_own() -> None:
    nc = NATS()
    with pytest.raises(natsreg.ConfigError, match="version="):
        natsreg.announce(nc, "svc")  # type: ignore[call-overload]
    with pytest.raises(natsreg.ConfigError, match="the Service's own"):
        natsreg.announce(nc, natsreg.Service("svc", version="1.0.0"), version="2.0.0")  # type: ignore[call-overload]
