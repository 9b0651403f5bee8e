"""Typed endpoints on a real nats-server: a payload that does not match the request type is
refused before the handler runs, a good one reaches it decoded, and the schemas travel in the
announcement and $SRV.INFO; forged schemas stay bounded."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

import natsreg
from natsreg import _schemas, subjects, wire
from tests.helpers import eventually
from tests.test_cli import assert_one_line_error, run_cli


class UserQuery(msgspec.Struct):
    id: int


class User(msgspec.Struct):
    id: int
    name: str


def _user_service(name: str, prefix: str, calls: list[Any]) -> natsreg.Service:
    svc = natsreg.Service(name, version="1.0.0", prefix=prefix)

    @svc.endpoint("users")
    async def users(req: natsreg.Request[UserQuery]) -> User:
        calls.append(req.body)
        return User(id=req.body.id, name="alice")

    return svc


async def _stats(nc: NATS, name: str) -> wire.SrvEndpointStats:
    reply = await nc.request(subjects.srv_subject("STATS", name), b"", timeout=2)
    (endpoint,) = msgspec.json.decode(reply.data, type=wire.SrvStats).endpoints
    return endpoint


async def _announced(registry: natsreg.Registry, name: str, count: int) -> list[wire.Endpoint]:
    """The endpoints of the one instance of ``name``, once the registry has all ``count``
    (endpoints declared inside the block are announced one after the other)."""

    def endpoints() -> list[wire.Endpoint]:
        instances = registry.snapshot(name=name).instances
        return instances[0].endpoints if instances else []

    await eventually(lambda: len(endpoints()) == count, what=f"{count} endpoints announced")
    return endpoints()


async def test_a_payload_that_does_not_match_gets_a_400_naming_the_field_and_the_handler_never_runs(
    nc: NATS, prefix: str, unique: str
) -> None:
    name, calls = f"typed-{unique}", []
    async with natsreg.announce(nc, _user_service(name, prefix, calls)):
        client = natsreg.Client(nc, prefix=prefix)
        for payload, field in (({"id": "x"}, "$.id"), ({}, "$"), (b"{not json", "JSON")):
            with pytest.raises(natsreg.ServiceError) as refused:
                await client.request(f"{name}.users", payload, timeout_s=2)
            assert refused.value.code == 400
            assert field in refused.value.description
        assert calls == []
        # Counted as any 400 is: in the errors of $SRV.STATS, with the reason.
        stats = await _stats(nc, name)
        assert (stats.num_requests, stats.num_errors) == (3, 3)
        assert stats.last_error.startswith("400: ")
        await client.aclose()


async def test_the_field_path_and_reason_reach_the_caller(
    nc: NATS, prefix: str, unique: str
) -> None:
    name, calls = f"typed-{unique}", []
    async with natsreg.announce(nc, _user_service(name, prefix, calls)):
        client = natsreg.Client(nc, prefix=prefix)
        with pytest.raises(natsreg.ServiceError) as refused:
            await client.request(f"{name}.users", {"id": "x"}, timeout_s=2)
        assert refused.value.description == "bad request: $.id: expected `int`, got `str`"
        await client.aclose()


async def test_a_good_payload_reaches_the_handler_as_the_struct_and_the_reply_is_the_response(
    nc: NATS, prefix: str, unique: str
) -> None:
    name, calls = f"typed-{unique}", []
    async with natsreg.announce(nc, _user_service(name, prefix, calls)):
        client = natsreg.Client(nc, prefix=prefix)
        reply = await client.request(f"{name}.users", {"id": 7}, timeout_s=2)
        assert calls == [UserQuery(id=7)]
        assert type(calls[0]) is UserQuery
        assert reply.decode(User) == User(id=7, name="alice")
        await client.aclose()


async def test_explicit_types_on_an_inline_endpoint_check_both_ways(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"inline-{unique}"
    seen: list[str] = []
    async with natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc:

        @svc.endpoint("users", request=UserQuery, response=User)
        async def users(req: natsreg.Request[Any]) -> Any:
            seen.append(type(req.body).__name__)
            if req.body.id == 1:
                return {"id": 1, "name": "dict converted", "extra": "dropped"}
            return {"id": "not an int"}  # the handler's bug: a 500, not a malformed reply

        await svc.ready()
        client = natsreg.Client(nc, prefix=prefix)
        reply = await client.request(f"{name}.users", {"id": 1}, timeout_s=2)
        assert json.loads(reply.data) == {"id": 1, "name": "dict converted"}
        with pytest.raises(natsreg.ServiceError) as failed:
            await client.request(f"{name}.users", {"id": 2}, timeout_s=2)
        assert failed.value.code == 500
        assert "not the declared response type User" in failed.value.description
        assert seen == ["UserQuery", "UserQuery"]
        await client.aclose()


async def test_validation_runs_inside_the_services_middleware(
    nc: NATS, prefix: str, unique: str
) -> None:
    name, calls = f"mw-{unique}", []
    svc = _user_service(name, prefix, calls)
    outcomes: list[str] = []

    @svc.middleware
    async def record(req: natsreg.Request[Any], call_next: natsreg.service.Handler) -> Any:
        try:
            result = await call_next(req)
        except natsreg.ServiceError as exc:
            outcomes.append(str(exc.code))
            raise
        outcomes.append("ok")
        return result

    async with natsreg.announce(nc, svc):
        client = natsreg.Client(nc, prefix=prefix)
        await client.request(f"{name}.users", {"id": 1}, timeout_s=2)
        with pytest.raises(natsreg.ServiceError):
            await client.request(f"{name}.users", {"id": "x"}, timeout_s=2)
        assert outcomes == ["ok", "400"]
        assert len(calls) == 1
        await client.aclose()


async def test_the_announcement_and_srv_info_carry_the_schemas(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"schemas-{unique}"
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        natsreg.announce(nc, _user_service(name, prefix, [])) as instance,
    ):
        await eventually(lambda: len(registry.snapshot(name=name).instances) == 1)
        (endpoint,) = registry.snapshot(name=name).instances[0].endpoints
        assert endpoint.schemas == wire.Schemas(
            request=_schemas.of_type(UserQuery), response=_schemas.of_type(User)
        )
        assert endpoint.schemas.request is not None
        assert endpoint.schemas.request["properties"] == {"id": {"type": "integer"}}
        reply = await nc.request(subjects.srv_subject("INFO", name, instance.id), b"", timeout=2)
        (info,) = msgspec.json.decode(reply.data, type=wire.SrvInfo).endpoints or []
        metadata = info.metadata or {}
        assert json.loads(metadata["request_schema"]) == _schemas.of_type(UserQuery)
        assert json.loads(metadata["response_schema"]) == _schemas.of_type(User)


async def test_untyped_endpoints_announce_no_schema_and_work_as_before(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"untyped-{unique}"
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc,
    ):

        @svc.endpoint("echo")
        async def echo(req: natsreg.Request) -> bytes:  # type: ignore[type-arg]
            return req.data

        @svc.endpoint("sum")
        async def total(req):  # type: ignore[no-untyped-def]
            return sum(req.body)

        await svc.ready()
        endpoints = await _announced(registry, name, 2)
        assert [e.schemas for e in endpoints] == [None, None]
        client = natsreg.Client(nc, prefix=prefix)
        assert (await client.request(f"{name}.echo", b"\x00raw", timeout_s=2)).data == b"\x00raw"
        assert (await client.request(f"{name}.sum", [1, 2], timeout_s=2)).data == b"3"
        reply = await nc.request(subjects.srv_subject("INFO", name), b"", timeout=2)
        for e in msgspec.json.decode(reply.data, type=wire.SrvInfo).endpoints or []:
            assert not set(e.metadata or {}) & set(_schemas.METADATA_KEYS)
        await client.aclose()


async def test_a_schema_too_big_for_the_announcement_is_left_out_with_a_marker(
    nc: NATS, prefix: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    # 120 fields with long names: a schema over the per-schema cap.
    Big = msgspec.defstruct("Big", [(f"field_{n}_{'x' * 120}", int) for n in range(120)])
    name = f"big-{unique}"
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc,
    ):

        @svc.endpoint("big", request=Big, response=User)
        async def big(req: natsreg.Request[Any]) -> User:
            return User(id=1, name="big")

        await svc.ready()
        (endpoint,) = await _announced(registry, name, 1)
        assert endpoint.schemas is not None
        assert _schemas.is_truncated(endpoint.schemas.request)
        assert endpoint.schemas.response == _schemas.of_type(User)
        assert "request schema left out of the announcement" in caplog.text
        # The service itself still checks the whole type.
        client = natsreg.Client(nc, prefix=prefix)
        with pytest.raises(natsreg.ServiceError, match="missing required field"):
            await client.request(f"{name}.big", {"id": 1}, timeout_s=2)
        await client.aclose()


async def test_many_schemas_give_way_so_the_announcement_fits(
    nc: NATS, prefix: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Ten endpoints with schemas of ~12 KB each: each within its cap, 120 KB together.
    Wide = msgspec.defstruct("Wide", [(f"f{n}_{'y' * 100}", int) for n in range(60)])
    assert _schemas.problem(_schemas.of_type(Wide)) is None
    name = f"wide-{unique}"
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc,
    ):
        for n in range(10):

            @svc.endpoint(f"e{n}", request=Wide)
            async def handler(req: natsreg.Request[Any]) -> None:
                return None

        await svc.ready()
        endpoints = await _announced(registry, name, 10)
        kept = [e.name for e in endpoints if not _schemas.is_truncated(e.schemas.request)]  # type: ignore[union-attr]
        assert 1 <= len(kept) < 10
        assert "left out to keep the announcement within" in caplog.text


async def test_forged_announcements_with_oversized_or_deep_schemas_are_dropped(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"forged-{unique}"
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(_schemas.MAX_SCHEMA_DEPTH + 5):
        node["items"] = {}
        node = node["items"]
    forged = {
        "big": wire.Schemas(request={"description": "x" * (_schemas.MAX_SCHEMA_BYTES + 1)}),
        "deep": wire.Schemas(response=deep),
    }
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        for instance_id, schemas in forged.items():
            endpoint = wire.Endpoint(
                name="e", subject=f"{name}.e", queue_group=name, schemas=schemas
            )
            announcement = wire.Announce(
                id=instance_id, name=name, version="1.0.0", seq=1, endpoints=[endpoint]
            )
            subject = subjects.control_subject(prefix, "announce", name, instance_id)
            await nc.publish(subject, wire.encode(announcement))
        await eventually(lambda: registry.stats().dropped.get("invalid_schemas") == 2)
        assert registry.snapshot(name=name).instances == []


async def test_natsreg_info_shows_each_endpoints_schemas(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    name = f"info-{unique}"
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        natsreg.announce(nc, _user_service(name, prefix, [])),
    ):
        await _announced(registry, name, 1)
        result = await run_cli({**cli_env, "COLUMNS": "200"}, "info", name, "--prefix", prefix)
        assert result.returncode == 0, result.stderr
        assert "REQUEST" in result.stdout and "RESPONSE" in result.stdout
        assert "UserQuery {id: integer}" in result.stdout
        assert "User {id: integer, name: string}" in result.stdout
        raw = await run_cli(cli_env, "info", name, "--prefix", prefix, "--json")
        (endpoint,) = json.loads(raw.stdout)["instances"][0]["endpoints"]
        assert endpoint["schemas"]["request"] == _schemas.of_type(UserQuery)


async def test_natsreg_request_refuses_a_payload_the_schema_refuses_and_sends_nothing(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    name, calls = f"cli-{unique}", []
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        natsreg.announce(nc, _user_service(name, prefix, calls)),
    ):
        await _announced(registry, name, 1)
        request = ("request", "--prefix", prefix, f"{name}.users")
        refused = await run_cli(cli_env, *request, '{"id": "x"}')
        assert_one_line_error(refused, '$.id: expected integer, got "x"', "--no-validate")
        assert (await _stats(nc, name)).num_requests == 0
        # --no-validate sends it: the service refuses it in turn, and counts it.
        sent = await run_cli(cli_env, *request, '{"id": "x"}', "--no-validate")
        assert_one_line_error(sent, "error 400", "$.id: expected `int`, got `str`")
        assert (await _stats(nc, name)).num_requests == 1
        good = await run_cli(cli_env, *request, '{"id": 3}')
        assert good.returncode == 0, good.stderr
        assert json.loads(good.stdout) == {"id": 3, "name": "alice"}
        assert calls == [UserQuery(id=3)]
