"""The API documents of a live fleet, end to end: a real registry, bridge and services (typed,
untyped, a plain ADR-32 one from nats.micro), the OpenAPI document the bridge serves checked
by openapi-spec-validator, and the AsyncAPI one `natsreg docs asyncapi` writes checked by the
official AsyncAPI parser under node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
import yaml
from helpers import eventually, until_warm
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro import add_service
from nats.micro.request import Request as MicroRequest
from openapi_spec_validator import validate
from test_apidocs_rules import HOSTILE, endpoint, hostile_fleet, instance
from test_cli import run_cli

import natsreg
from natsreg import bridge, subjects, wire
from natsreg._apidocs import asyncapi
from natsreg.bridge import Auth, BridgeConfig, Route

JS = Path(__file__).parent / "js"
VALIDATE_ASYNCAPI = JS / "asyncapi-validate.mjs"


class UserQuery(msgspec.Struct):
    id: int


class User(msgspec.Struct):
    id: int
    name: str


@dataclass
class Fleet:
    natsreg: str
    foreign: str
    micro: str


async def announce_foreign(nc: NATS, prefix: str, name: str) -> None:
    """A service in another language, as the bus sees it: a hand-made announcement whose
    endpoint ``lookup`` carries JSON Schemas (and ``bad``, a schema no document may hold), and
    a responder on its subject."""

    async def lookup(msg: Msg) -> None:
        await msg.respond(b'{"id": 1, "name": "alice"}')

    await nc.subscribe(f"{name}.lookup", queue=name, cb=lookup)
    announcement = wire.Announce(
        id=f"{name}-1",
        name=name,
        seq=1,
        version="1.2.0",
        heartbeat_s=wire.MAX_HEARTBEAT_S,
        endpoints=[
            wire.Endpoint(
                name="lookup",
                subject=f"{name}.lookup",
                queue_group=name,
                schemas=wire.Schemas(
                    request=msgspec.json.schema(UserQuery), response=msgspec.json.schema(User)
                ),
            ),
            wire.Endpoint(
                name="bad",
                subject=f"{name}.bad",
                queue_group=name,
                schemas=wire.Schemas(request={"$ref": "http://127.0.0.1:1/x.json"}),
            ),
        ],
    )
    await nc.publish(
        subjects.control_subject(prefix, "announce", name, announcement.id),
        wire.encode(announcement),
    )


@asynccontextmanager
async def live_fleet(nc: NATS, prefix: str, unique: str) -> AsyncIterator[Fleet]:
    """A registry node and three services: a natsreg one (``users`` typed, ``echo`` not), one
    in another language (a hand-made announcement), and a plain ADR-32 one (nats.micro, its
    request schema in its endpoint metadata)."""
    fleet = Fleet(f"py-{unique}", f"foreign-{unique}", f"micro-{unique}")
    svc = natsreg.announce(nc, fleet.natsreg, version="1.0.0", prefix=prefix)

    @svc.endpoint("users", request=UserQuery, response=User)
    async def users(req: natsreg.Request[UserQuery]) -> User:
        return User(id=req.body.id, name="alice")

    @svc.endpoint("echo")
    async def echo(req: natsreg.Request) -> bytes:
        return req.data

    async def add(req: MicroRequest) -> None:
        await req.respond(b"3")

    micro = await add_service(nc, name=fleet.micro, version="0.3.0")
    await micro.add_endpoint(
        name="add",
        subject=f"{fleet.micro}.add",
        handler=add,
        metadata={"request_schema": json.dumps({"type": "array", "items": {"type": "number"}})},
    )
    try:
        async with natsreg.Registry(nc, prefix=prefix, micro_poll_s=0.2) as registry, svc:
            await until_warm(nc, prefix)
            await announce_foreign(nc, prefix, fleet.foreign)
            # The plain ADR-32 service with its endpoint: it may be listed first without
            # (its library adds endpoints after it answers), and the node asks it again.
            await eventually(
                lambda: (
                    {fleet.natsreg, fleet.foreign, f"{fleet.micro}.add"}
                    <= {i.name for i in registry.snapshot().instances}
                    | {e.subject for i in registry.snapshot().instances for e in i.endpoints}
                ),
                what="the three services listed, the plain one with its endpoint",
            )
            yield fleet
    finally:
        await micro.stop()


@asynccontextmanager
async def serving(nc: NATS, **settings: Any) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    async with (
        bridge.run(nc, BridgeConfig(**settings), host="127.0.0.1", port=0) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as http,
    ):
        yield running.url, http


def schema_of(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``schema``, or the component it refers to."""
    if "$ref" not in schema:
        return schema
    found: dict[str, Any] = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return found


async def test_the_bridge_serves_a_valid_openapi_document_of_every_route(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with live_fleet(nc, prefix, unique) as fleet:
        routes = (
            Route(
                path="/api/people", subject=f"{fleet.natsreg}.users", methods=frozenset({"POST"})
            ),
        )
        async with serving(nc, prefix=prefix, routes=routes, registry_refresh_s=0.1) as (
            url,
            http,
        ):
            reply = await http.get("/_natsreg/openapi.json")
            assert reply.status_code == 200
            assert reply.headers["content-type"] == "application/json"
            document = reply.json()
            validate(document)
            assert document["servers"] == [{"url": url}]
            paths = document["paths"]
            for typed in (f"/{fleet.natsreg}/users", f"/{fleet.foreign}/lookup", "/api/people"):
                operation = paths[typed]["post"]
                request = operation["requestBody"]["content"]["application/json"]["schema"]
                assert schema_of(document, request)["required"] == ["id"], typed
                reply_schema = operation["responses"]["200"]["content"]["application/json"]
                assert schema_of(document, reply_schema["schema"])["required"] == ["id", "name"]
            assert paths[f"/{fleet.natsreg}/echo"]["post"]["requestBody"]["content"] == {"*/*": {}}
            micro = paths[f"/{fleet.micro}/add"]
            assert "plain ADR-32" in micro["description"]
            assert micro["post"]["requestBody"]["content"]["application/json"]["schema"] == {
                "type": "array",
                "items": {"type": "number"},
            }
            # The schema that reaches out of itself is dropped; the endpoint stays.
            assert paths[f"/{fleet.foreign}/bad"]["post"]["requestBody"]["content"] == {"*/*": {}}
            # What the document says, the bridge does.
            called = await http.post("/api/people", json={"id": 7})
            assert called.json() == {"id": 7, "name": "alice"}

            # Built once per registry revision: the same bytes until the view changes...
            again = await http.get("/_natsreg/openapi.json")
            assert again.content == reply.content
            # ...and a new service appears by itself.
            newcomer = natsreg.announce(nc, f"new-{unique}", version="1.0.0", prefix=prefix)

            @newcomer.endpoint("hello")
            async def hello(req: natsreg.Request) -> str:
                return "hi"

            async with newcomer:

                async def listed() -> bool:
                    latest = await http.get("/_natsreg/openapi.json")
                    return f"/new-{unique}/hello" in latest.json()["paths"]

                await eventually(listed, what="the new service in the document")


async def test_the_openapi_document_is_behind_the_bridges_auth(
    nc: NATS, prefix: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIDOCS_TOKEN", "s3cret")
    auth = Auth(scheme="bearer", tokens_env="APIDOCS_TOKEN")
    async with serving(nc, prefix=prefix, auth=auth) as (_, http):
        refused = await http.get("/_natsreg/openapi.json")
        assert refused.status_code == 401
        assert refused.json()["error"] == "unauthorized"
    async with serving(nc, prefix=prefix, expose_registry=False) as (_, http):
        assert (await http.get("/_natsreg/openapi.json")).status_code == 404


def asyncapi_parser() -> list[str]:
    """The command that validates an AsyncAPI document; skips the test where node or the
    parser is missing, but fails it under CI, which installs both."""
    node = shutil.which("node")
    installed = (JS / "node_modules" / "@asyncapi" / "parser").is_dir()
    if node is None or not installed:
        reason = (
            "node is not installed"
            if node is None
            else "@asyncapi/parser is not installed: run 'npm install --prefix tests/js'"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must install it)")
        pytest.skip(reason)
    return [node, str(VALIDATE_ASYNCAPI)]


async def test_docs_asyncapi_writes_a_document_the_official_parser_accepts(
    nc: NATS, nats_url: str, prefix: str, unique: str, tmp_path: Path
) -> None:
    parser = asyncapi_parser()
    env = {**os.environ, "NATS_URL": nats_url, "NATSREG_PREFIX": prefix}
    async with live_fleet(nc, prefix, unique) as fleet:
        results: dict[str, subprocess.CompletedProcess[str]] = {}

        async def cli(key: str, *args: str) -> None:
            results[key] = await run_cli(env, "docs", "asyncapi", *args)

        async with anyio.create_task_group() as tg:
            tg.start_soon(cli, "printed")
            tg.start_soon(cli, "written", "-o", str(tmp_path / "fleet.json"))
            tg.start_soon(cli, "unwritable", "-o", str(tmp_path / "no" / "x.yaml"))
    printed, written, unwritable = results["printed"], results["written"], results["unwritable"]
    assert printed.returncode == 0, printed.stderr
    assert written.returncode == 0, written.stderr
    assert "wrote" in written.stderr
    assert unwritable.returncode == 1 and "cannot write" in unwritable.stderr
    (tmp_path / "fleet.yaml").write_text(printed.stdout)
    document = yaml.safe_load(printed.stdout)
    assert json.loads((tmp_path / "fleet.json").read_text())["channels"].keys() == (
        document["channels"].keys()
    )
    # One run of the parser for them all: beside the two written, the document of a fleet
    # whose schemas and names no document could hold as they are (tagged unions, tuples,
    # every hostile schema of the pure tests, unicode, a queue group over the binding's
    # limit); and a broken document, which shows that the parser reports errors and names
    # the file.
    odd = [instance("odd", "1.0.0", endpoint("odd", "x", subject="odd.x.ü", queue_group="q" * 256))]
    hostile = asyncapi([*hostile_fleet(*HOSTILE), *odd], ["tls://127.0.0.1:4443"])
    assert hostile["operations"]["odd.x._"]["x-natsreg-queue-group"] == "q" * 256
    (tmp_path / "hostile.json").write_text(json.dumps(hostile))
    broken = {"asyncapi": "3.0.0", "info": {"title": "x"}, "operations": {"o": {"action": "x"}}}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    names = [
        str(tmp_path / name) for name in ("fleet.yaml", "fleet.json", "hostile.json", "broken.json")
    ]
    checked = await anyio.to_thread.run_sync(
        lambda: subprocess.run([*parser, *names], capture_output=True, text=True, timeout=120)
    )
    assert checked.returncode == 1
    errors = checked.stderr.splitlines()
    assert errors and all(line.startswith(names[-1] + ": ") for line in errors), errors
    assert document["servers"]["nats"]["host"] == nats_url.removeprefix("nats://")
    for typed in (f"{fleet.natsreg}.users", f"{fleet.foreign}.lookup"):
        operation = document["operations"][typed]
        assert operation["action"] == "send"
        assert operation["bindings"]["nats"]["queue"] == typed.split(".")[0]
        channel = document["channels"][typed]
        assert channel["address"] == typed
        payload = channel["messages"]["request"]["payload"]
        assert schema_of(document, payload)["required"] == ["id"]
    assert f"{fleet.natsreg}.echo" in document["operations"]
    micro = document["channels"][f"{fleet.micro}.add"]["messages"]["request"]
    assert micro["payload"] == {"type": "array", "items": {"type": "number"}}
