"""ADR-32 interoperability: $SRV replies the NATS CLI accepts, and plain micro services found."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro import add_service
from nats.micro.request import Request as MicroRequest

import natsreg
from natsreg import _schemas, subjects, wire
from natsreg.client import RegistryApi
from tests.helpers import eventually
from tests.test_bridge import serving
from tests.test_cli import run_cli

# The NATS CLI's own schemas (from nats-io/jsm.go), kept beside the project in shared/.
SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "adr32-schemas"


class UserQuery(msgspec.Struct):
    id: int


class User(msgspec.Struct):
    id: int
    name: str


def _schema(name: str) -> dict[str, object]:
    path = SCHEMAS / f"{name}_response.json"
    if not path.is_file():
        pytest.skip(
            f"the NATS CLI's ADR-32 schemas are not at {SCHEMAS}: nothing to validate "
            "against (they come from nats-io/jsm.go schemas/micro/v1)"
        )
    return json.loads(path.read_text())


async def _gather(nc: NATS, subject: str, wait_s: float = 0.3) -> list[dict[str, object]]:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    replies = []
    try:
        while True:
            msg = await sub.next_msg(timeout=wait_s)
            if msg.data:  # not the server's "no responders" status
                replies.append(json.loads(msg.data))
    except TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return replies


@pytest.mark.parametrize("verb", ["PING", "INFO", "STATS"])
async def test_srv_replies_validate_against_the_nats_cli_schemas(
    nc: NATS, prefix: str, unique: str, verb: str
) -> None:
    import jsonschema

    schema = _schema(verb.lower())
    name = f"adr-{unique}"
    # No description and no metadata: the case where nats.micro for Python sends null.
    async with natsreg.announce(nc, name, version="1.0.0-rc.1+build.5", prefix=prefix) as svc:

        @svc.endpoint("echo", metadata={"kind": "test"})
        async def echo(req: natsreg.Request) -> bytes:
            return req.data

        # Typed: its schemas go in the endpoint's metadata, as JSON text.
        @svc.endpoint("users")
        async def users(req: natsreg.Request[UserQuery]) -> User:
            return User(id=req.body.id, name="alice")

        await svc.ready()
        await natsreg.Client(nc).request(f"{name}.echo", b"x")
        for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{name}", f"$SRV.{verb}.{name}.{svc.id}"):
            replies = [r for r in await _gather(nc, subject) if r["id"] == svc.id]
            assert len(replies) == 1, subject
            jsonschema.validate(replies[0], schema, format_checker=jsonschema.FormatChecker())
            assert replies[0]["name"] == name
        if verb == "STATS":
            endpoint, _ = replies[0]["endpoints"]  # type: ignore[misc]
            assert endpoint["num_requests"] == 1
            assert endpoint["subject"] == f"{name}.echo"
        if verb == "INFO":
            assert replies[0]["description"] == ""
            echo_info, users_info = replies[0]["endpoints"]  # type: ignore[misc]
            assert echo_info["metadata"] == {"kind": "test"}
            assert json.loads(users_info["metadata"]["request_schema"]) == _schemas.of_type(
                UserQuery
            )
            assert json.loads(users_info["metadata"]["response_schema"]) == _schemas.of_type(User)


async def test_srv_addressed_to_another_name_or_id_gets_no_reply(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with natsreg.announce(nc, f"only-{unique}", version="1.0.0", prefix=prefix) as svc:
        assert await _gather(nc, f"$SRV.PING.other-{unique}") == []
        assert await _gather(nc, f"$SRV.PING.only-{unique}.not-the-id") == []
        assert len(await _gather(nc, f"$SRV.PING.only-{unique}.{svc.id}")) == 1


async def _add(req: MicroRequest) -> None:
    await req.respond(b"3")


async def test_a_plain_nats_micro_service_is_listed_as_such(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"micro-{unique}"

    micro = await add_service(nc, name=name, version="0.3.0", description="plain ADR-32")
    await micro.add_endpoint(name="add", subject=f"{name}.add", handler=_add)
    try:
        async with natsreg.Registry(nc, prefix=prefix, micro_poll_s=0.2) as registry:
            await eventually(
                lambda: [i.name for i in registry.snapshot().instances] == [name],
                what="micro service listed",
            )
            (instance,) = registry.snapshot().instances
            assert (instance.kind, instance.version, instance.description) == (
                "micro",
                "0.3.0",
                "plain ADR-32",
            )
            assert [e.subject for e in instance.endpoints] == [f"{name}.add"]
            # Callers reach it like any natsreg endpoint.
            reply = await natsreg.Client(nc).request(f"{name}.add", b"1+2")
            assert reply.data == b"3"
    finally:
        await micro.stop()


async def test_natsreg_ls_shows_an_endpoint_a_plain_service_added_after_it_was_listed(
    nc: NATS, prefix: str, unique: str
) -> None:
    # ADR-32 libraries add endpoints after the service starts answering: ls (the registry's
    # kept summaries) follows the later INFO reply, as the instance list does.
    name = f"late-{unique}"

    micro = await add_service(nc, name=name, version="0.3.0")
    try:
        async with natsreg.Registry(nc, prefix=prefix, micro_poll_s=0.2):
            api = RegistryApi(nc, prefix=prefix)

            async def shows(expected: list[tuple[str, int, list[str]]]) -> bool:
                listed = (await api.services()).services
                lines = [(s.version, s.instances, s.endpoints) for s in listed if s.name == name]
                return lines == expected

            await eventually(lambda: shows([("0.3.0", 1, [])]), what="listed with no endpoint")
            await micro.add_endpoint(name="add", subject=f"{name}.add", handler=_add)
            await eventually(lambda: shows([("0.3.0", 1, ["add"])]), what="ls shows 'add'")
    finally:
        await micro.stop()


async def test_a_plain_micro_service_that_publishes_schemas_in_metadata_is_typed_in_the_view(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"typed-micro-{unique}"
    request_schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    huge = json.dumps({"description": "x" * 40_000})  # over the cap: shown as left out

    micro = await add_service(nc, name=name, version="0.3.0")
    await micro.add_endpoint(
        name="add",
        subject=f"{name}.add",
        handler=_add,
        metadata={"request_schema": json.dumps(request_schema), "owner": "ops"},
    )
    await micro.add_endpoint(
        name="big", subject=f"{name}.big", handler=_add, metadata={"response_schema": huge}
    )
    try:
        async with natsreg.Registry(nc, prefix=prefix, micro_poll_s=0.2) as registry:
            await eventually(
                lambda: sum(len(i.endpoints) for i in registry.snapshot(name=name).instances) == 2,
                what="micro service listed with both endpoints",
            )
            (instance,) = registry.snapshot(name=name).instances
            add_view, big_view = sorted(instance.endpoints, key=lambda e: e.name)
            assert add_view.schemas == wire.Schemas(request=request_schema)
            assert add_view.metadata == {"owner": "ops"}
            assert big_view.schemas is not None and big_view.schemas.request is None
            assert _schemas.is_truncated(big_view.schemas.response)
    finally:
        await micro.stop()


async def test_natsreg_instances_are_not_listed_twice_as_micro(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with (
        natsreg.Registry(nc, prefix=prefix, micro_poll_s=0.1) as registry,
        natsreg.announce(nc, f"once-{unique}", version="1.0.0", prefix=prefix),
    ):
        await eventually(lambda: len(registry.snapshot().instances) == 1)
        await eventually(lambda: registry.dropped["malformed"] == 0)

        await anyio.sleep(0.5)  # several $SRV polls
        assert [i.kind for i in registry.snapshot().instances] == ["natsreg"]


async def _micro(nc: NATS, name: str, version: str, subject: str) -> Any:
    """A plain nats.micro service whose ``stock`` endpoint, on ``subject``, says its version."""

    async def stock(req: MicroRequest) -> None:
        await req.respond(json.dumps({"version": version}).encode())

    micro = await add_service(nc, name=name, version=version)
    await micro.add_endpoint(name="stock", subject=subject, handler=stock)
    return micro


async def test_a_plain_services_endpoint_on_its_own_subject_is_called_by_name_everywhere(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    name = f"inventory-{unique}"
    # Served on "stock-<unique>", which "<name>.stock" would never reach by itself.
    micro = await _micro(nc, name, "1.4.0", f"stock-{unique}")
    try:
        async with natsreg.Registry(nc, prefix=prefix, micro_poll_s=0.2) as registry:
            await eventually(
                lambda: [i.name for i in registry.snapshot().instances] == [name],
                what="micro service listed",
            )
            client = natsreg.Client(nc, prefix=prefix)
            reply = await client.request(f"{name}.stock", timeout_s=2)
            assert json.loads(reply.data) == {"version": "1.4.0"}
            reply = await client.request(f"{name}@~1.4.stock", timeout_s=2)
            assert json.loads(reply.data) == {"version": "1.4.0"}
            with pytest.raises(natsreg.NoInstanceError, match="matches version"):
                await client.request(f"{name}@^2.stock", timeout_s=2)
            await client.aclose()

            result = await run_cli(cli_env, "request", "--prefix", prefix, f"{name}.stock")
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout) == {"version": "1.4.0"}

            async with serving(nc, prefix=prefix) as http:
                response = await http.get(f"/{name}/stock")
            assert response.status_code == 200, response.text
            assert response.json() == {"version": "1.4.0"}
    finally:
        await micro.stop()


async def test_version_constraints_pick_a_plain_services_subject_only_if_no_other_version_shares_it(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"inventory-{unique}"
    old = await _micro(nc, name, "1.4.0", f"stock-{unique}-a")
    new = await _micro(nc, name, "2.1.0", f"stock-{unique}-b")
    late = None
    try:
        async with natsreg.Registry(nc, prefix=prefix, micro_poll_s=0.2) as registry:
            await eventually(
                lambda: len(registry.snapshot(name=name).instances) == 2, what="both listed"
            )
            client = natsreg.Client(nc, prefix=prefix)
            for _ in range(5):
                reply = await client.request(f"{name}@^2.stock", timeout_s=2)
                assert json.loads(reply.data) == {"version": "2.1.0"}
                reply = await client.request(f"{name}@~1.4.stock", timeout_s=2)
                assert json.loads(reply.data) == {"version": "1.4.0"}
            # A 2.x now shares the 1.4 subject: a request there could reach either version.
            late = await _micro(nc, name, "2.2.0", f"stock-{unique}-a")
            await eventually(
                lambda: len(registry.snapshot(name=name).instances) == 3, what="third listed"
            )
            await eventually(
                lambda: _listed(client, name, 3), what="the client's view has all three"
            )
            with pytest.raises(natsreg.NoInstanceError, match="matches version"):
                await client.request(f"{name}@~1.4.stock", timeout_s=2)
            await client.aclose()
    finally:
        for micro in (old, new, late):
            if micro is not None:
                await micro.stop()


async def _listed(client: natsreg.Client, name: str, count: int) -> bool:
    return len(await client.view(name)) == count


async def test_a_plain_service_found_by_ping_is_asked_its_info_and_expires_when_silent(
    nc: NATS, prefix: str, unique: str
) -> None:
    # Answers $SRV.PING and its own $SRV.INFO.<name>.<id>, never the broadcast $SRV.INFO:
    # listed only if a ping's reply makes the node ask it by name and id.
    name, instance_id = f"pinged-{unique}", f"id{unique}"
    info = wire.SrvInfo(
        name=name,
        id=instance_id,
        version="1.0.0",
        endpoints=[wire.SrvEndpointInfo(name="add", subject=f"{name}.add", queue_group="q")],
    )

    async def pong(msg: Msg) -> None:
        await nc.publish(
            msg.reply, wire.encode(wire.SrvPing(name=name, id=instance_id, version="1.0.0"))
        )

    async def own_info(msg: Msg) -> None:
        await nc.publish(msg.reply, wire.encode(info))

    ping = await nc.subscribe(subjects.srv_subject("PING"), cb=pong)
    asked = await nc.subscribe(subjects.srv_subject("INFO", name, instance_id), cb=own_info)
    async with natsreg.Registry(nc, prefix=prefix, micro_poll_s=0.2) as registry:
        await eventually(
            lambda: (
                [(i.id, i.kind) for i in registry.snapshot(name=name).instances]
                == [(instance_id, "micro")]
            ),
            what="listed from a ping and its own INFO",
        )
        assert [e.subject for e in registry.snapshot(name=name).instances[0].endpoints] == [
            f"{name}.add"
        ]
        # Pings keep it listed over many times its three-poll expiry...
        await anyio.sleep(1.5)
        assert len(registry.snapshot(name=name).instances) == 1
        # ...and it is gone three polls after it stops answering.
        await ping.unsubscribe()
        await asked.unsubscribe()
        await eventually(
            lambda: not registry.snapshot(name=name).instances, timeout_s=3.0, what="expired"
        )
