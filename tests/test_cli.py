"""The natsreg command, run as a real process against a real nats-server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import natsreg
from natsreg import subjects, wire
from natsreg._server import is_listening
from tests.helpers import SERVICE_PROC, eventually
from tests.run_helpers import Lines


def natsreg_cli(
    env: dict[str, str], *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natsreg", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def run_cli(
    env: dict[str, str], *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    # In a thread: the service and registry under test share this test's event loop.
    return await anyio.to_thread.run_sync(lambda: natsreg_cli(env, *args, input=input))


@contextmanager
def running(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen(
        [sys.executable, "-m", "natsreg", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            yield proc
        finally:
            proc.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("natsreg: "), result.stderr
    for word in words:
        assert word in lines[0]


async def test_ls_info_and_request_show_a_running_service(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    name = f"users-{unique}"
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        natsreg.announce(
            nc, name, version="1.2.0", prefix=prefix, description="Users", metadata={"zone": "a"}
        ) as svc,
    ):

        @svc.endpoint("users")
        async def users(req: natsreg.Request) -> dict[str, object]:
            return {"id": req.json()["id"], "name": "alice"}

        await svc.ready()
        await eventually(
            lambda: bool(
                registry.snapshot().instances and registry.snapshot().instances[0].endpoints
            )
        )

        listed = await run_cli(cli_env, "ls", "--json", "--prefix", prefix)
        assert listed.returncode == 0, listed.stderr
        (instance,) = json.loads(listed.stdout)["instances"]
        assert (instance["name"], instance["version"], instance["id"]) == (name, "1.2.0", svc.id)

        table = await run_cli(cli_env, "ls", "--prefix", prefix)
        assert name in table.stdout and "1.2.0" in table.stdout and "passing" in table.stdout

        reply = await run_cli(cli_env, "request", f"{name}.users", '{"id": 1}')
        assert reply.returncode == 0, reply.stderr
        assert json.loads(reply.stdout) == {"id": 1, "name": "alice"}

        info = await run_cli(cli_env, "info", name, "--prefix", prefix)
        assert info.returncode == 0, info.stderr
        for text in (svc.id, f"{name}.users", "zone=a", "Users"):
            assert text in info.stdout
        info_json = json.loads(
            (await run_cli(cli_env, "info", name, "--json", "--prefix", prefix)).stdout
        )
        assert info_json["stats"][0]["endpoints"][0]["num_requests"] == 1


async def test_request_reads_the_payload_from_stdin_and_sends_headers(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    async with natsreg.announce(nc, f"h-{unique}", version="1.0.0", prefix=prefix) as svc:

        @svc.endpoint("echo")
        async def echo(req: natsreg.Request) -> dict[str, object]:
            return {"body": req.json(), "who": req.headers.get("Who")}

        await svc.ready()
        result = await run_cli(
            cli_env, "request", f"h-{unique}.echo", "-", "-H", "Who: me", input='{"a": [1, 2]}'
        )
        assert json.loads(result.stdout) == {"body": {"a": [1, 2]}, "who": "me"}


async def test_request_failures_are_one_clear_line_and_exit_1(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    async with natsreg.announce(nc, f"f-{unique}", version="1.0.0", prefix=prefix) as svc:

        @svc.endpoint("missing")
        async def missing(req: natsreg.Request) -> None:
            raise natsreg.ServiceError("no user 9", code=404)

        await svc.ready()
        assert_one_line_error(
            await run_cli(cli_env, "request", f"f-{unique}.missing"), "404", "no user 9"
        )
    assert_one_line_error(await run_cli(cli_env, "request", "a.*", "{}"), "not a subject")
    assert_one_line_error(await run_cli(cli_env, "request", "a.b", "{bad"), "not valid JSON")
    assert_one_line_error(
        await run_cli(cli_env, "request", f"nobody-{unique}.x", "--prefix", prefix), "no instance"
    )
    assert_one_line_error(await run_cli(cli_env, "request", "a.b", "-H", "no colon"), "header")
    assert_one_line_error(await run_cli(cli_env, "ls", "--prefix", prefix), "natsreg registry")
    unreachable = {**cli_env, "NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    assert_one_line_error(await run_cli(unreachable, "ls"), "cannot reach NATS", "natsreg up")


async def test_watch_streams_changes_as_json_lines(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    name = f"w-{unique}"

    def events_of(instance_id: str) -> list[tuple[str, str]]:
        events = [json.loads(line) for line in out.lines]
        return [
            (e["kind"], e["instance"]["id"]) for e in events if e["instance"]["id"] == instance_id
        ]

    async with natsreg.Registry(nc, prefix=prefix):
        with running(cli_env, "watch", "--json", "--prefix", prefix) as watcher:
            assert watcher.stdout is not None
            out = Lines(watcher, watcher.stdout)
            # The watcher says nothing once it has subscribed: instances come and go until it
            # has seen one whole life (bounded: 30 tries, about a second each).
            for _ in range(30):
                async with natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc:
                    pass
                with contextlib.suppress(AssertionError):
                    await eventually(lambda: len(events_of(svc.id)) == 2, 1.0, "up and down")
                    break
            watcher.send_signal(signal.SIGINT)
            assert watcher.wait(5) == 0
    assert events_of(svc.id) == [("up", svc.id), ("down", svc.id)]


def listed_names(env: dict[str, str], timeout_s: float = 15.0) -> list[str]:
    """The services ``natsreg ls`` lists once it lists any, waiting up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = natsreg_cli(env, "ls", "--json")
        if result.returncode == 0 and (instances := json.loads(result.stdout)["instances"]):
            return [i["name"] for i in instances]
        if time.monotonic() > deadline:
            return []
        time.sleep(0.1)


def test_up_starts_an_embedded_server_a_registry_and_the_programs() -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    env = {**os.environ, "NATS_URL": url}
    bridge_port = free_port()
    with running(
        env, "up", "--port", str(bridge_port), "--with", f"{SERVICE_PROC} {url} up-svc natsreg"
    ) as up:
        assert listed_names(env) == ["up-svc"]
        reply = natsreg_cli(env, "request", "up-svc.echo", '{"ok": true}')
        assert json.loads(reply.stdout) == {"ok": True}
        # The HTTP bridge is served too.
        http = httpx.post(f"http://127.0.0.1:{bridge_port}/up-svc/echo", content=b'{"a": 1}')
        assert (http.status_code, http.json()) == (200, {"a": 1})
        # And the dashboard, where natsreg up says it is.
        page = httpx.get(f"http://127.0.0.1:{bridge_port}/_natsreg/ui")
        assert page.status_code == 200 and "natsreg dashboard" in page.text
        up.send_signal(signal.SIGINT)
        assert up.wait(20) == 0
        said = up.stderr.read() if up.stderr else ""
    assert f"dashboard on http://127.0.0.1:{bridge_port}/_natsreg/ui" in said
    assert not is_listening("127.0.0.1", port), "the embedded nats-server was left running"


async def test_bridge_serves_http_requests_to_services(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    port = free_port()
    async with natsreg.announce(nc, f"web-{unique}", version="1.0.0", prefix=prefix) as svc:

        @svc.endpoint("hello")
        async def hello(req: natsreg.Request) -> dict[str, str]:
            return {"hello": req.json()["name"]}

        await svc.ready()
        with running(cli_env, "bridge", "--port", str(port), "--prefix", prefix) as bridge:
            async with httpx.AsyncClient() as http:

                async def up() -> bool:
                    try:
                        await http.get(f"http://127.0.0.1:{port}/_natsreg/health")
                        return True
                    except httpx.TransportError:
                        return False

                await eventually(up, timeout_s=15, what="bridge listening")
                reply = await http.post(
                    f"http://127.0.0.1:{port}/web-{unique}/hello", json={"name": "ada"}
                )
                assert (reply.status_code, reply.json()) == (200, {"hello": "ada"})
                missing = await http.post(f"http://127.0.0.1:{port}/nobody-{unique}/x")
                assert missing.status_code == 503
            bridge.send_signal(signal.SIGTERM)
            assert bridge.wait(15) == 0


def test_a_bridge_that_cannot_listen_says_so_in_one_line(cli_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = natsreg_cli(cli_env, "up", "--port", str(port))
    assert result.returncode == 1
    assert "--no-bridge" in result.stderr and "Traceback" not in result.stderr


async def test_registry_with_system_server_removes_a_killed_instance_at_once(
    prefix: str, unique: str
) -> None:
    from natsreg.testing import NatsServer
    from tests.helpers import read_id, start_service
    from tests.test_system_events import CONFIG

    with NatsServer(args=("-c", str(CONFIG))) as server:
        app_url = server.url.replace("nats://", "nats://app:app@")
        sys_url = server.url.replace("nats://", "nats://sys:sys@")
        env = {**os.environ, "NATS_URL": app_url}
        with (
            running(env, "registry", "--prefix", prefix, "--system-server", sys_url),
            start_service(app_url, f"sys-{unique}", prefix) as proc,
        ):
            read_id(proc)

            async def listed() -> int:
                result = await run_cli(env, "ls", "--json", "--prefix", prefix)
                return len(json.loads(result.stdout)["instances"]) if result.returncode == 0 else -1

            await eventually(lambda: _is(listed(), 1), timeout_s=15)
            # The registry says why an instance went: "disconnected" comes from the server's
            # advisory, at once; expiry would say "expired", 1.5 s or more after the kill.
            downs: list[str] = []

            async def heard(msg: Msg) -> None:
                event = wire.decode_event(msg.data)
                if event.kind == "down":
                    downs.append(event.reason)

            nc = await nats.connect(app_url)
            try:
                await nc.subscribe(
                    subjects.control_subject(prefix, "events", f"sys-{unique}"), cb=heard
                )
                await nc.flush()
                proc.kill()
                await eventually(lambda: _is(listed(), 0), timeout_s=5)
                await eventually(lambda: bool(downs), timeout_s=5, what="the down event")
            finally:
                await nc.close()
            assert downs == ["disconnected"]


async def _is(value: object, expected: int) -> bool:
    return await value == expected  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--tls-ca", "{missing}"], ["--tls-ca", "No such file"]),
        (["--tls-ca", "{tmp}"], ["--tls-ca", "Is a directory"]),
        (["--tls-ca", "{garbage}"], ["--tls-ca", "no usable CA certificate"]),
        (["--tls-cert", "{missing}"], ["--tls-cert", "No such file"]),
        (["--tls-cert", "{garbage}"], ["--tls-cert", "not a PEM certificate"]),
        (["--tls-cert", "{garbage}", "--tls-key", "{missing}"], ["--tls-key", "No such file"]),
        (["--tls-key", "{garbage}"], ["--tls-key needs --tls-cert"]),
        (["--creds", "{missing}"], ["--creds", "No such file"]),
    ],
)
def test_a_tls_or_creds_file_that_cannot_be_used_is_one_line_and_exit_1(
    tmp_path: Path, options: list[str], words: list[str]
) -> None:
    # Checked before connecting: nothing needs to listen at --server.
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    paths = {
        "missing": str(tmp_path / "missing.pem"),
        "tmp": str(tmp_path),
        "garbage": str(garbage),
    }
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    result = natsreg_cli(env, "ls", *(option.format(**paths) for option in options))
    assert_one_line_error(result, *words)


def test_docs_name_every_flag_of_every_command_and_no_other() -> None:
    import argparse
    import re

    from natsreg.cli import _parser

    def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        # Commands with actions of their own (``saga show``) nest a second level.
        nested = [
            parsers(sub)
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for sub in action.choices.values()
        ]
        return [parser, *(p for level in nested for p in level)]

    flags = {
        option
        for command in parsers(_parser())[1:]
        for action in command._actions
        for option in action.option_strings
        if option.startswith("--")
    }
    docs = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", docs))
    assert named <= flags, f"docs/operations.md names flags that do not exist: {named - flags}"
    assert flags <= named, f"flags docs/operations.md does not name: {flags - named}"
