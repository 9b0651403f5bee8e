"""Decentralized JWT auth (natsreg._jwt): a real nats-server in operator mode, started with the
generated config, confines each role's creds to what natsreg.permissions says."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError

import natsreg
from natsreg._jwt import JwtSetup, render_jwt
from natsreg.errors import ConfigError
from natsreg.permissions import Role, inbox_prefix
from natsreg.testing import NatsServer
from tests.helpers import eventually
from tests.test_cli import run_cli, running


@dataclass
class Bus:
    server: NatsServer
    setup: JwtSetup
    prefix: str
    billing: str  # service names, unique per test
    users: str

    async def connect(self, user: str) -> Connection:
        errors: list[str] = []

        async def on_error(error: Exception) -> None:
            errors.append(str(error))

        nc = await nats.connect(
            self.server.url,
            user_credentials=str(self.setup.creds[user]),
            inbox_prefix=inbox_prefix(user),
            error_cb=on_error,
            allow_reconnect=False,
        )
        return Connection(nc, errors)


@dataclass
class Connection:
    nc: NATS
    errors: list[str]

    async def refused(self, what: str) -> bool:
        """Whether nats-server reported a permissions violation naming ``what``."""
        await self.nc.flush()

        def seen() -> bool:
            # nats-py lower-cases the server's -ERR text.
            return any(
                "permissions violation" in e.lower() and what.lower() in e.lower()
                for e in self.errors
            )

        await eventually(seen, timeout_s=5, what=f"a permissions violation for {what}")
        return True


@pytest.fixture
def bus(tmp_path: Path, prefix: str, unique: str) -> Iterator[Bus]:
    billing, users = f"billing-{unique}", f"users-{unique}"
    roles = [
        Role(kind="service", user="billing", name=billing),
        Role(kind="service", user="users", name=users, calls=(billing,)),
        Role(kind="registry", user="registry"),
        Role(kind="caller", user="web", calls=(billing,)),
        Role(kind="bridge", user="bridge"),
        Role(kind="operator", user="ops"),
    ]
    setup = render_jwt(roles, prefix, tmp_path)
    with NatsServer(args=("-c", str(setup.config))) as server:
        yield Bus(server, setup, prefix, billing, users)


@pytest.fixture
async def conns() -> AsyncIterator[list[Connection]]:
    opened: list[Connection] = []
    yield opened
    for conn in opened:
        await conn.nc.close()


async def open_(bus: Bus, conns: list[Connection], user: str) -> Connection:
    conn = await bus.connect(user)
    conns.append(conn)
    return conn


async def test_a_service_announces_as_its_own_name_and_is_refused_as_another(
    bus: Bus, conns: list[Connection]
) -> None:
    registry = await open_(bus, conns, "registry")
    heard: list[str] = []

    async def hear(msg: nats.aio.msg.Msg) -> None:
        heard.append(msg.subject)

    await registry.nc.subscribe(f"{bus.prefix}.announce.>", cb=hear)
    await registry.nc.flush()
    billing = await open_(bus, conns, "billing")

    await billing.nc.publish(f"{bus.prefix}.announce.{bus.billing}.i1", b"{}")
    await billing.nc.publish(f"{bus.prefix}.announce.{bus.users}.i2", b"{}")
    assert await billing.refused(f"{bus.prefix}.announce.{bus.users}.i2")
    await eventually(lambda: heard == [f"{bus.prefix}.announce.{bus.billing}.i1"])
    await registry.nc.flush()
    assert heard == [f"{bus.prefix}.announce.{bus.billing}.i1"]


async def test_a_service_may_not_read_every_direct_subject_nor_serve_outside_its_group(
    bus: Bus, conns: list[Connection]
) -> None:
    billing = await open_(bus, conns, "billing")
    await billing.nc.subscribe(f"{bus.prefix}.direct.>")
    assert await billing.refused(f"{bus.prefix}.direct.>")
    await billing.nc.subscribe(f"{bus.billing}.charge")  # no queue group: would see every call
    assert await billing.refused(f'"{bus.billing}.charge"')


async def test_a_caller_calls_a_service_and_may_not_publish_events_or_announce(
    bus: Bus, conns: list[Connection]
) -> None:
    billing = await open_(bus, conns, "billing")

    async def charge(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(b"charged " + msg.data)

    await billing.nc.subscribe(f"{bus.billing}.charge", queue=bus.billing, cb=charge)
    await billing.nc.flush()
    web = await open_(bus, conns, "web")

    reply = await web.nc.request(f"{bus.billing}.charge", b"5", timeout=5)
    assert reply.data == b"charged 5"
    await web.nc.publish(f"{bus.prefix}.events.{bus.billing}", b"{}")
    assert await web.refused(f"{bus.prefix}.events.{bus.billing}")
    await web.nc.publish(f"{bus.prefix}.announce.{bus.billing}.rogue", b"{}")
    assert await web.refused(f"{bus.prefix}.announce.{bus.billing}.rogue")
    # It calls only what it was given: the other service's endpoint is refused too.
    await web.nc.publish(f"{bus.users}.get", b"")
    assert await web.refused(f"{bus.users}.get")


async def test_a_user_reads_replies_only_in_its_own_inbox(
    bus: Bus, conns: list[Connection]
) -> None:
    web = await open_(bus, conns, "web")
    await web.nc.subscribe(f"{inbox_prefix('ops')}.>")
    assert await web.refused(f"{inbox_prefix('ops')}.>")
    bridge = await open_(bus, conns, "bridge")
    await bridge.nc.subscribe("_INBOX.>")
    assert await bridge.refused("_INBOX.>")


async def test_callers_of_every_service_still_speak_for_no_one(
    bus: Bus, conns: list[Connection]
) -> None:
    for user in ("bridge", "ops"):
        conn = await open_(bus, conns, user)
        with pytest.raises(NoRespondersError):
            # Allowed, and no one serves it: the publish went through.
            await conn.nc.request(f"{bus.users}.get", b"", timeout=5)
        await conn.nc.publish(f"{bus.prefix}.hb.{bus.users}.x", b"{}")
        assert await conn.refused(f"{bus.prefix}.hb.{bus.users}.x")


async def test_callers_get_their_permissions_from_templates_and_services_from_their_jwt(
    bus: Bus,
) -> None:
    # Queue-group rules cannot be templated (nats-server drops them from a templated list).
    assert bus.setup.templated == {"web", "bridge", "ops"}
    account = _claims(bus.setup.config.read_text().split(f"{bus.setup.account}: ")[1].split()[0])
    templates = {json.dumps(key["template"]) for key in account["nats"]["signing_keys"]}
    assert any("{{tag(calls)}}" in t and "_INBOX_{{name()}}.>" in t for t in templates)
    web = _claims(_creds_jwt(bus.setup.creds["web"]))
    assert web["nats"]["tags"] == [f"calls:{bus.billing}"]
    assert "pub" not in web["nats"] and web["iss"] != web["nats"]["issuer_account"]


def test_creds_files_are_secret_and_in_the_format_nats_tools_read(bus: Bus) -> None:
    for path in (*bus.setup.creds.values(), bus.setup.system_creds):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        lines = path.read_text().splitlines()
        assert lines[0] == "-----BEGIN NATS USER JWT-----"
        assert lines[2] == "------END NATS USER JWT------"
        seed = lines.index("-----BEGIN USER NKEY SEED-----")
        assert (
            lines[seed + 1].startswith("SU") and lines[seed + 2] == "------END USER NKEY SEED------"
        )


async def test_natsreg_runs_with_creds_registry_service_and_the_cli_lists_it(
    bus: Bus, conns: list[Connection]
) -> None:
    env = {**os.environ, "NATS_URL": bus.server.url, "PYTHONUNBUFFERED": "1"}
    registry_env = {
        **env,
        "NATS_CREDS": str(bus.setup.creds["registry"]),
        "NATS_INBOX_PREFIX": inbox_prefix("registry"),
    }
    billing = await open_(bus, conns, "billing")
    with running(registry_env, "registry", "--prefix", bus.prefix):
        async with natsreg.announce(
            billing.nc, bus.billing, version="1.0.0", prefix=bus.prefix
        ) as svc:

            @svc.endpoint("charge")
            async def charge(req: natsreg.Request) -> bytes:
                return b"ok"

            await svc.ready()

            async def listed() -> bool:
                result = await run_cli(
                    env,
                    "ls",
                    "--json",
                    "--prefix",
                    bus.prefix,
                    "--creds",
                    str(bus.setup.creds["ops"]),
                    "--inbox-prefix",
                    inbox_prefix("ops"),
                )
                return result.returncode == 0 and [
                    i["name"] for i in json.loads(result.stdout)["instances"]
                ] == [bus.billing]

            await eventually(listed, timeout_s=20, what="billing listed by natsreg ls --creds")
            assert not [e for e in billing.errors if "permissions violation" in e]


def _creds_jwt(path: Path) -> str:
    return path.read_text().splitlines()[1]


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def test_the_system_user_hears_when_a_natsreg_user_disconnects(
    bus: Bus, conns: list[Connection]
) -> None:
    # What a registry's --system-creds is for: removing a killed instance at once.
    system = await nats.connect(bus.server.url, user_credentials=str(bus.setup.system_creds))
    try:
        seen: list[str] = []

        async def on_disconnect(msg: nats.aio.msg.Msg) -> None:
            seen.append(json.loads(msg.data)["client"].get("user", ""))

        await system.subscribe(f"$SYS.ACCOUNT.{bus.setup.account}.DISCONNECT", cb=on_disconnect)
        await system.flush()
        billing = await bus.connect("billing")
        await billing.nc.close()
        billing_key = _claims(_creds_jwt(bus.setup.creds["billing"]))["sub"]
        await eventually(lambda: seen == [billing_key], what="billing's disconnect advisory")
    finally:
        await system.close()


async def test_a_caller_of_many_services_connects_and_calls_them(
    tmp_path: Path, prefix: str, unique: str
) -> None:
    # 1,400 services: past nats-server's template expansion cap, and a user JWT far longer
    # than its default 4 KB CONNECT line.
    services = [f"s{i}-{unique}" for i in range(1400)]
    setup = render_jwt(
        [
            Role(kind="service", user="last", name=services[-1]),
            Role(kind="caller", user="web", calls=tuple(services)),
        ],
        prefix,
        tmp_path,
    )
    assert setup.templated == frozenset()
    with NatsServer(args=("-c", str(setup.config))) as server:
        bus = Bus(server, setup, prefix, services[-1], services[0])
        served = await bus.connect("last")
        web = await bus.connect("web")
        try:

            async def pong(msg: nats.aio.msg.Msg) -> None:
                await msg.respond(b"pong")

            await served.nc.subscribe(f"{services[-1]}.ping", queue=services[-1], cb=pong)
            await served.nc.flush()

            # A user whose JWT is this large is set up by the server after its CONNECT is
            # answered; a request in that moment finds "no responders" (seen 1 run in 4).
            async def answered() -> bool:
                try:
                    reply = await web.nc.request(f"{services[-1]}.ping", b"", timeout=5)
                except NoRespondersError:
                    return False
                return reply.data == b"pong"

            await eventually(answered, timeout_s=10, what="a caller of 1,400 services answered")
        finally:
            await web.nc.close()
            await served.nc.close()


def test_a_caller_of_a_capitalised_service_carries_its_own_permissions(tmp_path: Path) -> None:
    # NATS tools lower-case tags, so "{{tag(calls)}}" cannot be trusted to keep "Billing".
    setup = render_jwt(
        [
            Role(kind="caller", user="web", calls=("Billing",)),
            Role(kind="caller", user="app", calls=("billing",)),
        ],
        "natsreg",
        tmp_path,
    )
    assert setup.templated == {"app"}
    web = _claims(_creds_jwt(setup.creds["web"]))
    assert "Billing.>" in web["nats"]["pub"]["allow"]


def test_no_role_may_take_the_system_users_name(tmp_path: Path) -> None:
    # Its creds file would be overwritten by the system account's, which can read $SYS.
    with pytest.raises(ConfigError, match="sys"):
        render_jwt([Role(kind="caller", user="sys", calls=("billing",))], "natsreg", tmp_path)
    assert not (tmp_path / "sys.creds").exists()
