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
from test_cli import run_cli

import natsreg
from natsreg import bridge, subjects, wire
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
    typed: str
    untyped: str
    micro: str


async def announce_typed(nc: NATS, prefix: str, name: str) -> None:
    """A service in another language, as the bus sees it: a hand-made announcement whose
    endpoint ``users`` carries JSON Schemas (and ``bad``, a schema no document may hold), and
    a responder on its subject."""

    async def users(msg: Msg) -> None:
        await msg.respond(b'{"id": 1, "name": "alice"}')

    await nc.subscribe(f"{name}.users", queue=name, cb=users)
    announcement = wire.Announce(
        id=f"{name}-1",
        name=name,
        seq=1,
        version="1.2.0",
        heartbeat_s=wire.MAX_HEARTBEAT_S,
        endpoints=[
            wire.Endpoint(
                name="users",
                subject=f"{name}.users",
                queue_group=name,
                schemas=wire.Schemas(
                    request=msgspec.json.schema(UserQuery),
                    response=msgspec.json.schema(User),
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
    """A registry node and three services: typed (hand-made announcement), untyped (a
    natsreg service), and a plain ADR-32 one (nats.micro)."""
    fleet = Fleet(f"typed-{unique}", f"untyped-{unique}", f"micro-{unique}")
    untyped = natsreg.announce(nc, fleet.untyped, version="1.0.0", prefix=prefix)

    @untyped.endpoint("echo")
    async def echo(req: natsreg.Request) -> bytes:
        return req.data

    async def add(req: MicroRequest) -> None:
        await req.respond(b"3")

    micro = await add_service(nc, name=fleet.micro, version="0.3.0")
    await micro.add_endpoint(name="add", subject=f"{fleet.micro}.add", handler=add)
    try:
        async with natsreg.Registry(nc, prefix=prefix, micro_poll_s=0.2) as registry, untyped:
            await until_warm(nc, prefix)
            await announce_typed(nc, prefix, fleet.typed)
            await eventually(
                lambda: (
                    {fleet.typed, fleet.untyped, fleet.micro}
                    <= {i.name for i in registry.snapshot().instances}
                ),
                what="the three services listed",
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


def schema_of(document: dict[str, Any], ref: dict[str, str]) -> dict[str, Any]:
    name = ref["$ref"].removeprefix("#/components/schemas/")
    found: dict[str, Any] = document["components"]["schemas"][name]
    return found


async def test_the_bridge_serves_a_valid_openapi_document_of_every_route(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with live_fleet(nc, prefix, unique) as fleet:
        routes = (
            Route(path="/api/people", subject=f"{fleet.typed}.users", methods=frozenset({"POST"})),
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
            typed = paths[f"/{fleet.typed}/users"]["post"]
            request = typed["requestBody"]["content"]["application/json"]["schema"]
            assert schema_of(document, request)["required"] == ["id"]
            reply_schema = typed["responses"]["200"]["content"]["application/json"]["schema"]
            assert schema_of(document, reply_schema)["required"] == ["id", "name"]
            assert paths["/api/people"]["post"]["requestBody"]["content"] == {
                "application/json": {"schema": request}
            }
            assert paths[f"/{fleet.untyped}/echo"]["post"]["requestBody"]["content"] == {"*/*": {}}
            assert "plain ADR-32" in paths[f"/{fleet.micro}/add"]["description"]
            # The schema that reaches out of itself is dropped; the endpoint stays.
            assert paths[f"/{fleet.typed}/bad"]["post"]["requestBody"]["content"] == {"*/*": {}}
            # What the document says, the bridge does.
            called = await http.post("/api/people", json={"id": 1})
            assert called.json() == {"id": 1, "name": "alice"}

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
    # One run of the parser for all three: a broken document beside them shows that it
    # reports errors, and names the file.
    broken = {"asyncapi": "3.0.0", "info": {"title": "x"}, "operations": {"o": {"action": "x"}}}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    names = [str(tmp_path / name) for name in ("fleet.yaml", "fleet.json", "broken.json")]
    checked = await anyio.to_thread.run_sync(
        lambda: subprocess.run([*parser, *names], capture_output=True, text=True, timeout=120)
    )
    assert checked.returncode == 1
    errors = checked.stderr.splitlines()
    assert errors and all(line.startswith(names[2] + ": ") for line in errors), errors
    assert document["servers"]["nats"]["host"] == nats_url.removeprefix("nats://")
    operation = document["operations"][f"{fleet.typed}.users"]
    assert operation["action"] == "send"
    assert operation["bindings"]["nats"]["queue"] == fleet.typed
    channel = document["channels"][f"{fleet.typed}.users"]
    assert channel["address"] == f"{fleet.typed}.users"
    payload = channel["messages"]["request"]["payload"]
    assert document["components"]["schemas"][payload["$ref"].rsplit("/", 1)[1]]["required"] == [
        "id"
    ]
    assert f"{fleet.untyped}.echo" in document["operations"]
    assert f"{fleet.micro}.add" in document["operations"]


async def test_docs_asyncapi_says_what_to_do_without_a_registry(
    nats_url: str, prefix: str, tmp_path: Path
) -> None:
    env = {**os.environ, "NATS_URL": nats_url, "NATSREG_PREFIX": prefix}
    target = tmp_path / "fleet.yaml"
    target.write_text("previous\n")
    result = await run_cli(env, "docs", "asyncapi", "-o", str(target))
    assert result.returncode == 1
    assert "natsreg registry" in result.stderr and len(result.stderr.splitlines()) == 1
    assert target.read_text() == "previous\n"
