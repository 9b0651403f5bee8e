"""NATS permissions from ``natsreg auth``, on a real nats-server started with the generated
config: the known attacks on the control plane, run as another service's user or as a plain
caller, are refused by NATS, and the real service keeps all of its traffic."""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import nats
import pytest
from nats.aio.client import Client as NATS

import natsreg
from natsreg import _authconfig, wire
from natsreg._server import NatsServer, free_port, is_listening, server_binary
from natsreg.errors import ConfigError
from natsreg.permissions import ALL_SERVICES, REGISTRY_MAX_RESPONSES, Role, permissions
from tests.helpers import eventually, until_warm

PREFIX = "natsreg"
ROLES = [
    Role(kind="registry", user="reg"),
    Role(kind="bridge", user="web", calls=(ALL_SERVICES,)),
    Role(kind="operator", user="ops", calls=(ALL_SERVICES,)),
    Role(kind="service", user="user-service", name="user-service"),
    Role(kind="service", user="billing", name="billing"),
    Role(kind="caller", user="shop", calls=("user-service", "billing")),
]
CALLS = 100


@dataclass
class Secured:
    server: NatsServer
    users: dict[str, _authconfig.UserSecret]
    folder: Path


@dataclass
class Login:
    """A connection as one user, and the permission violations NATS reported to it."""

    nc: NATS
    violations: list[str] = field(default_factory=list)

    async def refused(self, subject: str) -> None:
        """Wait for NATS to report that it refused ``subject`` to this user."""
        await self.nc.flush()
        await eventually(
            lambda: any(f'"{subject.lower()}"' in v for v in self.violations),
            what=f"a permissions violation on {subject}",
        )


@pytest.mark.pure
def test_generated_passwords_can_be_given_as_flag_values() -> None:
    # A password starting with '-' would be read by `--password` as the next flag.
    for _ in range(50):
        rendered = _authconfig.render_static(ROLES, PREFIX)
        for secret in rendered.users:
            assert re.fullmatch(r"[0-9a-f]{48}", secret.password), secret


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    folder = tmp_path_factory.mktemp("auth")
    rendered = _authconfig.render_static(ROLES, PREFIX)
    _authconfig.write_static(rendered, PREFIX, folder)
    # A small max_payload makes the registry answer a listing in several chunks, which only
    # works if the registry may send more than one response per query.
    config = folder / "nats.conf"
    config.write_text(f"max_payload: 4096\ninclude {_authconfig.CONFIG_FILE}\n")
    with NatsServer(args=("-c", str(config))) as server:
        yield Secured(server, {s.role.user: s for s in rendered.users}, folder)


async def login(secured: Secured, user: str) -> Login:
    secret = secured.users[user]
    result = Login(nc=None)  # type: ignore[arg-type]

    async def on_error(exc: Exception) -> None:
        result.violations.append(str(exc))

    result.nc = await nats.connect(
        secured.server.url,
        user=user,
        password=secret.password,
        inbox_prefix=secret.inbox,
        error_cb=on_error,
    )
    return result


@dataclass
class System:
    svc: natsreg.Instance
    served: list[str]
    registry: natsreg.Registry


@asynccontextmanager
async def running(secured: Secured) -> AsyncIterator[System]:
    """A registry node and a user-service instance, each as its own user. (Not a fixture:
    the registry's task group must be entered and left by the test's own task.)"""
    reg, users = await login(secured, "reg"), await login(secured, "user-service")
    served: list[str] = []
    try:
        async with (
            natsreg.Registry(reg.nc, prefix=PREFIX) as registry,
            natsreg.announce(users.nc, "user-service", version="1.0.0", prefix=PREFIX) as svc,
        ):

            @svc.endpoint("users")
            async def handle(req: natsreg.Request) -> dict[str, str]:
                served.append(svc.id)
                return {"id": svc.id}

            await svc.ready()
            await eventually(
                lambda: any(
                    i.id == svc.id for i in registry.snapshot(name="user-service").instances
                ),
                what="user-service listed",
            )
            yield System(svc, served, registry)
            assert not reg.violations + users.violations, "the real roles were refused"
    finally:
        await reg.nc.close()
        await users.nc.close()


async def all_calls_reach(secured: Secured, system: System, user: str = "shop") -> None:
    """``CALLS`` calls from a fresh caller, every one answered by the real instance."""
    caller = await login(secured, user)
    try:
        client = natsreg.Client(caller.nc, prefix=PREFIX)
        answers = [
            (await client.request("user-service.users", {}, timeout_s=2.0)).json()["id"]
            for _ in range(CALLS)
        ]
        assert answers == [system.svc.id] * CALLS
        await client.aclose()
        assert not caller.violations
    finally:
        await caller.nc.close()


def listed_ids(system: System) -> list[str]:
    return sorted(i.id for i in system.registry.snapshot(name="user-service").instances)


def rogue_announce(instance_id: str) -> bytes:
    # The hijack: one announcement with a higher version and a heartbeat that never comes due.
    return wire.encode(
        wire.Announce(
            id=instance_id,
            name="user-service",
            seq=1,
            version="9.9.9",
            heartbeat_s=3600.0,
            endpoints=[
                wire.Endpoint(
                    name="users", subject="user-service.users", queue_group="user-service"
                )
            ],
        )
    )


# -- attacks, refused by NATS ------------------------------------------------------------------


async def test_another_service_cannot_announce_on_a_user_service_subject(secured: Secured) -> None:
    async with running(secured) as system:
        billing = await login(secured, "billing")
        try:
            subject = f"{PREFIX}.announce.user-service.rogue"
            await billing.nc.publish(subject, rogue_announce("rogue"))
            await billing.refused(subject)
            # Its own announcement goes through: once the registry lists it, the forged one
            # (sent before it on the same connection) would have been seen too.
            await billing.nc.publish(
                f"{PREFIX}.announce.billing.canary",
                wire.encode(wire.Announce(id="canary", name="billing", seq=1, version="1.0.0")),
            )
            await eventually(
                lambda: bool(system.registry.snapshot(name="billing").instances),
                what="billing's own announcement listed",
            )
            assert listed_ids(system) == [system.svc.id]
            await all_calls_reach(secured, system)
        finally:
            await billing.nc.close()


async def test_another_services_body_on_its_own_subject_is_dropped_by_the_registry(
    secured: Secured,
) -> None:
    async with running(secured) as system:
        # NATS lets billing publish here: only natsreg's subject/body check can drop it.
        billing = await login(secured, "billing")
        try:
            await billing.nc.publish(f"{PREFIX}.announce.billing.rogue", rogue_announce("rogue"))
            await billing.nc.publish(
                f"{PREFIX}.announce.billing.canary",
                wire.encode(wire.Announce(id="canary", name="billing", seq=1, version="1.0.0")),
            )
            await eventually(
                lambda: any(
                    i.id == "canary" for i in system.registry.snapshot(name="billing").instances
                ),
                what="billing's own announcement listed",
            )
            assert listed_ids(system) == [system.svc.id]
            assert system.registry.dropped["subject_mismatch"] == 1
            assert not billing.violations
            await all_calls_reach(secured, system)
        finally:
            await billing.nc.close()


async def test_a_goodbye_for_user_services_id_on_another_services_subject_removes_nothing(
    secured: Secured,
) -> None:
    # The erase, as billing: its own subject, the real instance's id. NATS allows it;
    # the registry keeps each id with the service it came up with.
    async with running(secured) as system:
        billing = await login(secured, "billing")
        real = system.svc.id
        try:
            for verb, message in (
                ("hb", wire.Heartbeat(id=real, name="billing", seq=2**63 - 1)),
                ("bye", wire.Goodbye(id=real, name="billing", seq=2**63 - 1)),
            ):
                await billing.nc.publish(f"{PREFIX}.{verb}.billing.{real}", wire.encode(message))
            await billing.nc.flush()
            await eventually(
                lambda: system.registry.dropped["subject_mismatch"] >= 2,
                what="both forgeries dropped",
            )
            assert listed_ids(system) == [real]
            assert not billing.violations
            await all_calls_reach(secured, system)
        finally:
            await billing.nc.close()


async def test_another_service_cannot_listen_to_user_service_requests(secured: Secured) -> None:
    async with running(secured) as system:
        billing = await login(secured, "billing")
        seen: list[str] = []

        async def spy(msg: Any) -> None:
            seen.append(msg.subject)

        try:
            for subject, queue in (
                (f"{PREFIX}.direct.>", ""),
                ("user-service.>", ""),
                ("user-service.>", "user-service"),
            ):
                await billing.nc.subscribe(subject, queue=queue, cb=spy)
                await billing.refused(subject)
            await all_calls_reach(secured, system)
            assert seen == []
        finally:
            await billing.nc.close()


async def test_another_service_cannot_heartbeat_or_say_goodbye_for_user_service(
    secured: Secured,
) -> None:
    async with running(secured) as system:
        billing = await login(secured, "billing")
        real = system.svc.id
        try:
            hb = f"{PREFIX}.hb.user-service.{real}"
            # The erase: one heartbeat with the largest sequence number.
            await billing.nc.publish(
                hb,
                wire.encode(
                    wire.Heartbeat(id=real, name="user-service", seq=2**63 - 1, health="critical")
                ),
            )
            await billing.refused(hb)
            bye = f"{PREFIX}.bye.user-service.{real}"
            await billing.nc.publish(
                bye, wire.encode(wire.Goodbye(id=real, name="user-service", seq=2**63 - 1))
            )
            await billing.refused(bye)
            assert listed_ids(system) == [real]
            await all_calls_reach(secured, system)
        finally:
            await billing.nc.close()


async def test_a_caller_cannot_publish_events_discover_or_announcements(secured: Secured) -> None:
    async with running(secured) as system:
        watcher = await login(secured, "ops")
        events: list[bytes] = []

        async def on_event(msg: Any) -> None:
            events.append(msg.data)

        await watcher.nc.subscribe(f"{PREFIX}.events.>", cb=on_event)
        await watcher.nc.flush()
        forged = wire.encode(
            wire.Event(
                kind="down",
                revision=10**6,
                node="rogue",
                instance=system.registry.snapshot().instances[0],
            )
        )
        try:
            for user in ("shop", "web", "ops"):
                caller = await login(secured, user)
                try:
                    for subject, data in (
                        (f"{PREFIX}.events.user-service", forged),
                        (f"{PREFIX}.discover", b""),
                        (f"{PREFIX}.discover.user-service", b""),
                        (f"{PREFIX}.announce.user-service.rogue", rogue_announce("rogue")),
                    ):
                        await caller.nc.publish(subject, data)
                        await caller.refused(subject)
                finally:
                    await caller.nc.close()
            assert events == []
            assert listed_ids(system) == [system.svc.id]
            await all_calls_reach(secured, system)
        finally:
            await watcher.nc.close()


async def test_only_a_registry_user_may_set_the_heartbeat_pace(secured: Secured) -> None:
    # docs/security.md: a forged pace would let a frozen instance stay listed up to 2.5 ×
    # wire.MAX_PACE_S; under these permissions no service or caller can send one.
    slowest = wire.encode(wire.Pace(node="rogue", heartbeat_s=wire.MAX_PACE_S, valid_s=1e9))
    subject = f"{PREFIX}.pace.rogue"
    async with running(secured) as system:
        for user in ("billing", "user-service", "shop", "web", "ops"):
            forger = await login(secured, user)
            try:
                await forger.nc.publish(subject, slowest)
                await forger.refused(subject)
            finally:
                await forger.nc.close()
        # A genuine one, from a registry user, reaches the instance (and is believed at the
        # next heartbeat): the forgeries would have been heard too, had NATS let them by.
        reg = await login(secured, "reg")
        try:
            genuine = wire.Pace(node="reg2", heartbeat_s=2.0, valid_s=60.0)
            await reg.nc.publish(f"{PREFIX}.pace.reg2", wire.encode(genuine))
            await eventually(lambda: system.svc.pace_s == 2.0, what="the genuine pace kept")
            assert not reg.violations
        finally:
            await reg.nc.close()


async def test_a_caller_cannot_plainly_subscribe_to_an_endpoint_or_a_direct_subject(
    secured: Secured,
) -> None:
    async with running(secured) as system:
        seen: list[str] = []

        async def spy(msg: Any) -> None:
            seen.append(msg.subject)

        for user in ("shop", "web"):
            caller = await login(secured, user)
            try:
                for subject, queue in (
                    ("user-service.users", ""),
                    ("user-service.users", "user-service"),
                    (f"{PREFIX}.direct.user-service.>", ""),
                    (f"{PREFIX}.registry.>", "natsreg-registry"),
                ):
                    await caller.nc.subscribe(subject, queue=queue, cb=spy)
                    await caller.refused(subject)
                await all_calls_reach(secured, system)
                assert seen == []
            finally:
                await caller.nc.close()


async def test_an_instance_serves_its_own_endpoints_only_in_its_queue_group(
    secured: Secured,
) -> None:
    # A plain subscriber would see every request and race the real instances for replies.
    own = await login(secured, "user-service")
    try:
        for subject, queue in (("user-service.users", ""), ("user-service.users", "other")):
            await own.nc.subscribe(subject, queue=queue)
            await own.refused(subject)
        await own.nc.subscribe("user-service.users", queue="user-service")
        await own.nc.flush()
        assert len(own.violations) == 2
    finally:
        await own.nc.close()


async def test_no_user_can_publish_into_another_users_inbox(secured: Secured) -> None:
    shop, web = await login(secured, "shop"), await login(secured, "web")
    got: list[str] = []

    async def on_reply(msg: Any) -> None:
        got.append(msg.subject)

    try:
        for victim, user in ((shop, "shop"), (web, "web")):
            await victim.nc.subscribe(f"{secured.users[user].inbox}.>", cb=on_reply)
            await victim.nc.flush()
        # A bridge publishes on "*.>", which also matches inboxes: each is denied by name.
        for sender, subject in (
            (web, "_INBOX_shop.forged"),
            (shop, "_INBOX_web.forged"),
            (web, "_INBOX.forged"),
            (shop, "_INBOX_reg.forged"),
        ):
            await sender.nc.publish(subject, b'{"id": "rogue"}')
            await sender.refused(subject)
        await shop.nc.flush()
        await web.nc.flush()
        assert got == []
    finally:
        await shop.nc.close()
        await web.nc.close()


# -- what must keep working ---------------------------------------------------------------------


async def test_a_starting_registry_node_warms_from_a_peer_that_only_registry_users_can_be(
    secured: Secured,
) -> None:
    async with running(secured) as system:
        # Nobody else may hear a sync request (and so answer one), or ask for a view.
        for user in ("shop", "web", "ops", "billing"):
            other = await login(secured, user)
            try:
                sync = f"{PREFIX}.sync.*"
                await other.nc.subscribe(sync, queue="natsreg-registry")
                await other.refused(sync)
                await other.nc.publish(f"{PREFIX}.sync.rogue", b"")
                await other.refused(f"{PREFIX}.sync.rogue")
            finally:
                await other.nc.close()
        ops = await login(secured, "ops")
        try:
            await until_warm(ops.nc, PREFIX)
        finally:
            await ops.nc.close()
        second = await login(secured, "reg")
        try:
            async with (
                counting_discovers(secured) as rounds,
                natsreg.Registry(second.nc, prefix=PREFIX) as fresh,
            ):
                # Small max_payload: the view comes in chunks, each a response NATS allows.
                await eventually(lambda: not fresh.warming_up, what="warm from the peer")
                assert [i.id for i in fresh.snapshot().instances] == [system.svc.id]
                assert rounds == []
            assert not second.violations
        finally:
            await second.nc.close()


@asynccontextmanager
async def counting_discovers(secured: Secured) -> AsyncIterator[list[bytes]]:
    """Re-announce rounds asked on the bus, as a user-service instance hears them."""
    rounds: list[bytes] = []

    async def keep(msg: Any) -> None:
        rounds.append(msg.data)

    listener = await login(secured, "user-service")
    await listener.nc.subscribe(f"{PREFIX}.discover", cb=keep)
    await listener.nc.flush()
    try:
        yield rounds
    finally:
        await listener.nc.close()


async def test_registry_services_and_callers_work_under_the_generated_permissions(
    secured: Secured,
) -> None:
    async with running(secured) as system:
        billing = await login(secured, "billing")
        try:
            # Several billing instances: the registry's listing no longer fits in one 4 KB
            # message and goes out in chunks, each a response NATS must let through.
            async with (
                natsreg.announce(
                    billing.nc, "billing", version="2.0.0", prefix=PREFIX, description="x" * 400
                ) as b1,
                natsreg.announce(
                    billing.nc, "billing", version="2.0.0", prefix=PREFIX, description="x" * 400
                ) as b2,
                natsreg.announce(
                    billing.nc, "billing", version="2.0.0", prefix=PREFIX, description="x" * 400
                ) as b3,
                natsreg.announce(
                    billing.nc, "billing", version="2.0.0", prefix=PREFIX, description="x" * 400
                ) as b4,
                natsreg.announce(
                    billing.nc, "billing", version="2.0.0", prefix=PREFIX, description="x" * 400
                ) as b5,
                natsreg.announce(
                    billing.nc, "billing", version="2.0.0", prefix=PREFIX, description="x" * 400
                ) as b6,
            ):
                fleet = [b1, b2, b3, b4, b5, b6]
                for b in fleet:

                    @b.endpoint("charge")
                    async def charge(req: natsreg.Request, b: natsreg.Instance = b) -> str:
                        return b.id

                    await b.ready()
                expected = sorted([system.svc.id, *(b.id for b in fleet)])
                for user in ("shop", "web", "ops"):
                    caller = await login(secured, user)
                    try:
                        client = natsreg.Client(caller.nc, prefix=PREFIX)

                        async def everyone(client: natsreg.Client = client) -> bool:
                            listing = await client.instances(timeout_s=2.0)
                            return sorted(i.id for i in listing.instances) == expected

                        await eventually(everyone, what=f"every instance listed for {user}")
                        reply = await client.request("billing.charge", b"", timeout_s=2.0)
                        assert reply.text() in {b.id for b in fleet}
                        await client.aclose()
                        assert not caller.violations
                    finally:
                        await caller.nc.close()
                # A service may call the services it was given (billing calls none: refused).
                await billing.nc.publish("user-service.users", b"")
                await billing.refused("user-service.users")
            await all_calls_reach(secured, system)
            await all_calls_reach(secured, system, user="web")
        finally:
            await billing.nc.close()


async def test_the_cli_connects_with_a_generated_users_env_file(secured: Secured) -> None:
    async with running(secured) as system:
        env = {**os.environ, "NATS_URL": secured.server.url}
        for line in (secured.folder / "ops.env").read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
        listing = await _acli(env, "ls", "--json")
        assert listing.returncode == 0, listing.stderr
        assert system.svc.id in listing.stdout
        reply = await _acli(env, "request", "user-service.users", "{}")
        assert (reply.returncode, json.loads(reply.stdout or "null")) == (0, {"id": system.svc.id})
        # The same user without its inbox prefix gets no reply: its default inbox is not its own.
        env.pop("NATS_INBOX_PREFIX")
        lost = await _acli(env, "request", "user-service.users", "{}", "--timeout", "1")
        assert lost.returncode == 1
        # Flags work as well as the environment.
        secret = secured.users["shop"]
        flags = await _acli(
            {**os.environ, "NATS_URL": secured.server.url},
            "request",
            "user-service.users",
            "{}",
            "--user",
            "shop",
            "--password",
            secret.password,
            "--inbox-prefix",
            secret.inbox,
        )
        assert (flags.returncode, json.loads(flags.stdout or "null")) == (0, {"id": system.svc.id})


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natsreg", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def _acli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # In a thread: the registry and the service run on this test's event loop.
    return await anyio.to_thread.run_sync(functools.partial(_cli, env, *args))


# -- natsreg up with credentials ----------------------------------------------------------------


def server_answer(port: int, connect: dict[str, str]) -> str:
    """What nats-server answers a client that connects with ``connect``'s credentials: PONG,
    or an error line. (Raw protocol: nats-py leaks its socket when it is refused.)"""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        sock.makefile("rwb") as stream,
    ):
        assert stream.readline().startswith(b"INFO ")
        stream.write(
            b"CONNECT " + json.dumps({"verbose": False, **connect}).encode() + b"\r\nPING\r\n"
        )
        stream.flush()
        return stream.readline().decode()


@contextmanager
def natsreg_up(
    env: dict[str, str], *args: str, child: Path, url_only: bool = True
) -> Iterator[subprocess.Popen[str]]:
    """``natsreg up ARGS --with CHILD``, stopped on exit; returns once the child is connected
    (reading only NATS_URL, as the examples do, or also NATS_USER and NATS_PASSWORD)."""
    credentials = (
        "" if url_only else (", user=os.environ['NATS_USER'], password=os.environ['NATS_PASSWORD']")
    )
    child.write_text(
        "import asyncio, os, nats\n"
        "async def main():\n"
        f"    nc = await nats.connect(os.environ['NATS_URL']{credentials})\n"
        "    print('child connected', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    with subprocess.Popen(
        [sys.executable, "-m", "natsreg", "up", "--no-bridge", *args, "--with", str(child)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as up:
        try:
            assert up.stdout is not None
            line = up.stdout.readline().strip()
            assert line == "child connected", up.stderr.read() if up.stderr else line
            yield up
        finally:
            up.terminate()
            up.wait(20)


async def test_up_with_a_token_starts_a_nats_server_that_requires_it(tmp_path: Path) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    env = {**os.environ, "NATS_URL": url}
    with natsreg_up(env, "--token", "s3cret", child=tmp_path / "child.py"):
        assert "Authorization Violation" in server_answer(port, {})
        assert "Authorization Violation" in server_answer(port, {"auth_token": "wrong"})
        assert server_answer(port, {"auth_token": "s3cret"}).startswith("PONG")
        nc = await nats.connect(url, token="s3cret")
        await nc.close()
        listing = await _acli({**env, "NATS_TOKEN": "s3cret"}, "ls", "--json")
        assert listing.returncode == 0, listing.stderr
    assert not is_listening("127.0.0.1", port)


async def test_up_with_a_user_and_password_starts_a_nats_server_that_requires_them(
    tmp_path: Path,
) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    env = {**os.environ, "NATS_URL": url}
    password = "p@ss:w/rd%"
    # Not URL-safe: the child gets it in NATS_PASSWORD only.
    with natsreg_up(
        env, "--user", "me", "--password", password, child=tmp_path / "child.py", url_only=False
    ):
        assert "Authorization Violation" in server_answer(port, {})
        assert "Authorization Violation" in server_answer(port, {"user": "me", "pass": "wrong"})
        assert server_answer(port, {"user": "me", "pass": password}).startswith("PONG")
        nc = await nats.connect(url, user="me", password=password)
        await nc.close()


def test_up_refuses_creds_for_an_embedded_server(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{port}"}
    result = _cli(env, "up", "--no-bridge", "--creds", str(tmp_path / "user.creds"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "--creds" in result.stderr, result.stderr
    assert not is_listening("127.0.0.1", port)


# -- the rules, without a server ----------------------------------------------------------------


def test_a_caller_of_every_service_is_denied_every_other_users_inbox() -> None:
    perms = permissions(ROLES[1], PREFIX, users=[r.user for r in ROLES])
    assert "*.>" in perms.publish
    assert {f"_INBOX_{r.user}.>" for r in ROLES if r.user != "web"} <= set(perms.deny_publish)
    assert "_INBOX_web.>" not in perms.deny_publish


def test_only_the_registry_may_answer_a_query_in_several_messages() -> None:
    assert permissions(ROLES[0], PREFIX).max_responses == REGISTRY_MAX_RESPONSES
    assert {permissions(r, PREFIX).max_responses for r in ROLES[1:]} == {1}


def test_a_service_that_calls_every_service_is_refused() -> None:
    with pytest.raises(ConfigError, match="every service"):
        permissions(Role(kind="service", user="a", name="a", calls=(ALL_SERVICES,)), PREFIX)


def test_one_user_with_two_roles_is_refused() -> None:
    with pytest.raises(ConfigError, match="two roles"):
        _authconfig.render_static(
            [Role(kind="registry", user="x"), Role(kind="caller", user="x", calls=("a",))], PREFIX
        )


def test_generated_secrets_are_private_and_never_overwritten(tmp_path: Path) -> None:
    first = _authconfig.render_static(ROLES, PREFIX)
    paths = _authconfig.write_static(first, PREFIX, tmp_path)
    assert {p.name for p in paths} == {"auth.conf", *(f"{r.user}.env" for r in ROLES)}
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {0o600}
    passwords = {s.password for s in first.users}
    assert len(passwords) == len(ROLES)
    with pytest.raises(ConfigError, match="exists"):
        _authconfig.write_static(_authconfig.render_static(ROLES, PREFIX), PREFIX, tmp_path)
    assert all(s.password in (tmp_path / "auth.conf").read_text() for s in first.users)


def test_the_auth_command_prints_a_config_nats_server_accepts(tmp_path: Path) -> None:
    result = _cli(
        dict(os.environ),
        "auth",
        "--registry",
        "reg",
        "--bridge",
        "web",
        "--operator",
        "ops",
        "--service",
        "user-service",
        "--service",
        "billing:user-service",
        "--caller",
        "shop:user-service,billing",
    )
    assert result.returncode == 0, result.stderr
    config = tmp_path / "auth.conf"
    config.write_text(result.stdout)
    check = subprocess.run(
        [server_binary(), "-c", str(config), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert result.stdout.count("NATS_PASSWORD=") == 6


def test_the_auth_command_writes_jwt_accounts_nats_server_accepts(tmp_path: Path) -> None:
    result = _cli(
        dict(os.environ),
        "auth",
        "--format",
        "jwt",
        "--registry",
        "reg",
        "--service",
        "user-service",
        "--caller",
        "shop:user-service",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.glob("*.creds")} == {
        "reg.creds",
        "user-service.creds",
        "shop.creds",
        "sys.creds",
    }
    check = subprocess.run(
        [server_binary(), "-c", str(tmp_path / "nats-jwt.conf"), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
