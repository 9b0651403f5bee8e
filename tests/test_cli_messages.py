"""What a newcomer reads when something goes wrong: the one line each mistake gets, from the
natsreg command run as a real process against a real nats-server (and the client's own words,
which the bridge passes on)."""

from __future__ import annotations

import signal
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS

import natsreg
from tests.helpers import eventually
from tests.run_helpers import Lines
from tests.test_cli import assert_one_line_error, free_port, run_cli, running
from tests.test_run import run_once

EXAMPLES = Path(__file__).parents[1] / "examples"


class UserQuery(msgspec.Struct):
    id: int


class User(msgspec.Struct):
    id: int
    name: str


@asynccontextmanager
async def user_service(nc: NATS, prefix: str, name: str) -> AsyncIterator[natsreg.Registry]:
    """A registry node and ``name`` serving a typed ``users`` and a ``nap`` that sleeps."""
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        natsreg.announce(nc, name, version="1.0.0", prefix=prefix, drain_timeout_s=0.1) as svc,
    ):

        @svc.endpoint("users")
        async def users(req: natsreg.Request[UserQuery]) -> User:
            return User(req.body.id, "alice")

        @svc.endpoint("nap")
        async def nap(req: natsreg.Request) -> None:
            await anyio.sleep(5)

        await svc.ready()
        await eventually(
            lambda: any(len(i.endpoints) == 2 for i in registry.snapshot().instances),
            what="the service listed with its endpoints",
        )
        yield registry


# -- natsreg run: the user's module ----------------------------------------------------------

HOOK_FAILS = """\
import natsreg

svc = natsreg.Service("hooked", version="1.0.0")


@svc.on_start
async def open_db(ctx):
    ctx.state.db = await connect_db()
"""


def test_a_failing_on_start_hook_is_one_line_naming_the_hook_and_the_users_line(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    (tmp_path / "user_service.py").write_text(HOOK_FAILS)
    result = run_once(tmp_path, cli_env, "user_service:svc")
    assert_one_line_error(
        result,
        "on_start hook open_db failed: NameError: name 'connect_db' is not defined "
        "(user_service.py, line 8)",
    )
    # -v: the traceback too, for a bug report, and the same line last.
    verbose = run_once(tmp_path, cli_env, "user_service:svc", "-v")
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == result.stderr.strip()


def test_a_bad_service_declaration_names_the_users_file_and_line(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    (tmp_path / "bad.py").write_text(
        'import natsreg\nsvc = natsreg.Service("bad name", version="1.0.0")\n'
    )
    result = run_once(tmp_path, cli_env, "bad:svc")
    assert_one_line_error(result, "'bad name'", "(bad.py, line 2)")
    assert "natsreg/service" not in result.stderr


# -- natsreg request: timeouts, typos, a missing payload --------------------------------------


async def test_a_timeout_names_the_subject_asked_for_the_timeout_given_and_what_to_do(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    name = f"slow-{unique}"
    async with user_service(nc, prefix, name):
        # With a registry the call goes to one instance's own subject: not what was asked.
        result = await run_cli(
            cli_env, "request", f"{name}.nap", "{}", "--timeout", "0.5", "--prefix", prefix
        )
        assert_one_line_error(
            result,
            f"no reply from '{name}.nap' within 0.5 s",
            "raise --timeout",
            f"'natsreg info {name}'",
        )
        assert ".direct." not in result.stderr

        # The client's own error, which the bridge passes on, says the same in its words.
        async with natsreg.Client(nc, prefix=prefix) as client:
            with pytest.raises(natsreg.RequestTimeoutError) as caught:
                await client.request(f"{name}.nap", {}, timeout_s=0.25)
        assert str(caught.value) == (
            f"no reply from '{name}.nap' within 0.25 s (the handler may still be running): "
            f"allow it more time, or check the service with 'natsreg info {name}'"
        )


async def test_a_request_nothing_serves_says_what_the_registry_knows_instead(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    name = f"user-service-{unique}"

    async def request(subject: str) -> subprocess.CompletedProcess[str]:
        return await run_cli(cli_env, "request", subject, '{"id": 1}', "--prefix", prefix)

    async with user_service(nc, prefix, name):
        assert_one_line_error(
            await request(f"{name}.user"),
            f"{name} has no endpoint 'user'",
            f"'{name}.users'",  # a close match among two endpoints
            f"{name}.nap",
        )
        assert_one_line_error(
            await request(name),
            f"'{name}' is a service, not an endpoint",
            "SERVICE.ENDPOINT",
            f"{name}.users",
        )
        assert_one_line_error(
            await request(f"{name[:-1]}.users"),
            f"no service '{name[:-1]}' is known",
            f"did you mean '{name}.users'?",
            "natsreg ls",
        )


async def test_a_request_without_the_payload_a_typed_endpoint_needs_shows_its_form(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    name = f"typed-{unique}"
    async with user_service(nc, prefix, name):
        result = await run_cli(cli_env, "request", f"{name}.users", "--prefix", prefix)
        assert_one_line_error(
            result,
            f"{name}.users needs a payload (UserQuery {{id: integer}})",
            f"""e.g. natsreg request {name}.users '{{"id": 1}}'""",
            "nothing was sent",
        )
        # The example it shows is one the endpoint takes.
        taken = await run_cli(cli_env, "request", f"{name}.users", '{"id": 1}', "--prefix", prefix)
        assert msgspec.json.decode(taken.stdout) == {"id": 1, "name": "alice"}


# -- natsreg watch and info of a service that is not there ------------------------------------


async def test_watching_a_service_no_one_runs_says_so_in_one_line_and_keeps_watching(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    name = f"watched-{unique}"
    async with user_service(nc, prefix, name):
        with running(cli_env, "watch", name[:-1], "--prefix", prefix) as watcher:
            said = Lines(watcher)
            await eventually(lambda: bool(said.lines), 10, "the watch's first line")
            await anyio.sleep(0.5)  # a second line would come now
            assert watcher.poll() is None, "the watch gave up"
            watcher.send_signal(signal.SIGINT)
            assert await anyio.to_thread.run_sync(watcher.wait, 5) == 0
        (line,) = said.lines[:-1]  # then "stopping"
        assert line.startswith(f"natsreg: no service '{name[:-1]}' is known now")
        assert f"did you mean '{name}'?" in line and "watching for it" in line

        info = await run_cli(cli_env, "info", name[:-1], "--prefix", prefix)
        assert_one_line_error(info, f"did you mean '{name}'?", "natsreg ls")


async def test_info_counts_an_instances_requests_as_its_endpoints_do(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    name = f"counted-{unique}"
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        # Heartbeats far apart: the registry's load figures stay those of the announcement.
        natsreg.announce(nc, name, version="1.0.0", prefix=prefix, heartbeat_s=30) as svc,
    ):

        @svc.endpoint("echo")
        async def echo(req: natsreg.Request) -> bytes:
            return req.data

        await svc.ready()
        await eventually(lambda: bool(registry.snapshot().instances), what="the instance listed")
        await run_cli(cli_env, "request", f"{name}.echo", "1", "--prefix", prefix)
        info = await run_cli(cli_env, "info", name, "--prefix", prefix)
    assert info.returncode == 0, info.stderr
    row = next(line.split() for line in info.stdout.splitlines() if line.startswith(svc.id))
    endpoint = next(line.split() for line in info.stdout.splitlines() if line.startswith("echo"))
    served, requests = row[6], endpoint[3]  # INSTANCE VERSION HEALTH HOST PID IN-FLIGHT SERVED
    assert (served, requests) == ("1", "1"), info.stdout


# -- connecting: what listens is not NATS --------------------------------------------------


@contextmanager
def listening(banner: bytes | None) -> Iterator[int]:
    """A TCP port on loopback that takes connections and sends ``banner`` (None: it never
    accepts, so a connection is made but nothing is ever said on it)."""
    if banner is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen(8)
            yield sock.getsockname()[1]
        return

    class Greet(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(banner)

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Greet) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()


@pytest.mark.parametrize(
    ("banner", "words"),
    [
        (None, ["sent no NATS greeting"]),
        (b"SSH-2.0-OpenSSH_9.6\r\n", ["it answered 'SSH-2.0-OpenSSH"]),
    ],
)
async def test_a_server_that_is_not_nats_is_named_as_such(
    cli_env: dict[str, str], banner: bytes | None, words: list[str]
) -> None:
    with listening(banner) as port:
        url = f"nats://127.0.0.1:{port}"
        result = await run_cli({**cli_env, "NATS_URL": url}, "ls")
    assert_one_line_error(result, f"not a NATS server at {url}", "4222", *words)


async def test_a_url_that_is_not_a_nats_url_says_to_use_nats(cli_env: dict[str, str]) -> None:
    result = await run_cli(cli_env, "ls", "-s", "http://127.0.0.1:4222")
    assert_one_line_error(
        result, "'http://127.0.0.1:4222' is not a NATS URL", "nats://127.0.0.1:4222"
    )


# -- examples/caller.py ----------------------------------------------------------------------


def test_the_example_caller_without_a_server_says_so_in_one_line(
    cli_env: dict[str, str],
) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "caller.py")],
        env={**cli_env, "NATS_URL": url},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"caller: cannot reach NATS at {url}") and "natsreg up" in line
