"""The bridge against hostile HTTP clients: slow heads, connection floods, foreign Host
names, cross-site browsers, and a public address without auth."""

from __future__ import annotations

import asyncio
import os
import resource
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

import natsreg
from natsreg import ConfigError, bridge
from natsreg._server import is_listening
from natsreg.bridge import Auth, BridgeConfig, Cors, Route
from tests.test_bridge import raw_http as raw_response
from tests.test_cli import assert_one_line_error, free_port, natsreg_cli

# -- helpers ---------------------------------------------------------------------------------


async def published(nc: NATS, seen: list[str]) -> list[str]:
    """What the spy saw, once everything the bridge sent so far has gone through the server."""
    await nc.flush()
    await asyncio.sleep(0.1)
    return list(seen)


def echo_service(nc: NATS, name: str, prefix: str) -> natsreg.Instance:
    svc = natsreg.announce(nc, name, version="1.0.0", prefix=prefix)

    @svc.endpoint("echo")
    async def echo(req: natsreg.Request) -> bytes:
        return req.data or b"{}"

    return svc


async def raw_http(url: str, request: bytes) -> int:
    """Send bytes as they are and read the status of one response."""
    status, _ = await raw_response(url, request)
    return status


async def closed_by_peer_within(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """Whether the other end closes the connection within ``timeout_s`` (sending nothing)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await reader.read(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


# -- the request head must arrive in time ----------------------------------------------------


async def test_a_connection_that_sends_no_request_head_in_time_is_closed(
    nc: NATS, prefix: str
) -> None:
    config = BridgeConfig(prefix=prefix, header_timeout_s=0.5)
    async with bridge.run(nc, config, port=0) as running:
        host, port = running.host, running.port
        silent = await asyncio.open_connection(host, port)
        partial = await asyncio.open_connection(host, port)
        partial[1].write(b"GET /svc/echo HTTP/1.1\r\nHost: localhost\r\n")
        dripping = await asyncio.open_connection(host, port)
        started = time.monotonic()

        async def drip() -> bool:
            # One byte of an endless header every 0.1 s: each byte arrives in time, the head
            # never does.
            dripping[1].write(b"GET /svc/echo HTTP/1.1\r\nX-Slow: ")
            for _ in range(50):
                await asyncio.sleep(0.1)
                if dripping[0].at_eof() or dripping[1].is_closing():
                    return True
                try:
                    dripping[1].write(b"a")
                    await dripping[1].drain()
                except ConnectionError:
                    return True
            return await closed_by_peer_within(dripping[0], 0.1)

        results = await asyncio.gather(
            closed_by_peer_within(silent[0], 4.0), closed_by_peer_within(partial[0], 4.0), drip()
        )
        elapsed_s = time.monotonic() - started
        for _, writer in (silent, partial, dripping):
            writer.close()
        async with httpx.AsyncClient(base_url=running.url) as http:
            still_served = await http.get("/_natsreg/health")
    assert results == [True, True, True]
    assert elapsed_s < 4.0
    assert still_served.status_code == 200


async def test_a_keep_alive_connection_gets_the_timeout_afresh_for_each_head_and_no_more(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"svc-{unique}"
    config = BridgeConfig(prefix=prefix, header_timeout_s=0.6)
    async with echo_service(nc, name, prefix), bridge.run(nc, config, port=0) as running:
        reader, writer = await asyncio.open_connection(running.host, running.port)
        statuses = []
        try:
            for i in range(3):
                # Idle between requests for longer than the timeout: keep-alive is not a
                # slow head.
                await asyncio.sleep(0.9 if i else 0)
                writer.write(f"GET /{name}/echo HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
                await writer.drain()
                async with asyncio.timeout(5):
                    statuses.append(int((await reader.readline()).split()[1]))
                    while (await reader.readline()) not in (b"\r\n", b""):
                        pass
                    await reader.readexactly(2)  # the body, b"{}"
            # After requests served on it, a slow head on the same connection is closed.
            writer.write(f"GET /{name}/echo HTTP/1.1\r\nHost: localhost\r\n".encode())
            closed = await closed_by_peer_within(reader, 4.0)
        finally:
            writer.close()
    assert statuses == [200, 200, 200]
    assert closed


# -- connection caps -------------------------------------------------------------------------

# The bridge as a library user runs it, on asyncio's own loop (the CLI runs it on uvloop).
BRIDGE_PROC = """
import asyncio, sys
import nats
from natsreg import bridge

async def main(url, prefix):
    nc = await nats.connect(url)
    await bridge.serve(nc, bridge.BridgeConfig(prefix=prefix), host="127.0.0.1", port=0,
                       ready=lambda running: print("HTTP bridge on", running.url, flush=True))
    await nc.close()

asyncio.run(main(*sys.argv[1:]))
"""
FILE_LIMIT = 1024
SLOWLORIS = 1500


def _limit_files() -> None:
    # Runs in the child between fork and exec; setrlimit takes no lock, so the threads of
    # the test process (PLW1509) cannot deadlock it.
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))


@contextmanager
def bridge_process(how: str, url: str, prefix: str) -> Iterator[str]:
    """The bridge in a process of its own whose file limit is 1024; yields its URL."""
    argv = (
        ["-c", BRIDGE_PROC, url, prefix]
        if how == "asyncio"
        else ["-m", "natsreg", "bridge", "--server", url, "--prefix", prefix, "--port", "0"]
    )
    # The CLI says where it listens on stderr, the script on stdout: both go to one pipe.
    with subprocess.Popen(
        [sys.executable, *argv],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_limit_files,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    ) as proc:
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 15
            line = ""
            while "HTTP bridge on http://" not in line and time.monotonic() < deadline:
                if select.select([proc.stdout], [], [], 0.5)[0]:
                    line = proc.stdout.readline()
                    if not line:
                        break
            assert "HTTP bridge on http://" in line, f"bridge did not start: {line!r}"
            yield line.split()[-1]
        finally:
            proc.kill()


async def open_slow_heads(url: str, sources: list[str], count: int) -> list[asyncio.StreamWriter]:
    """``count`` connections spread over the source addresses, each with half a request head."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    writers: list[asyncio.StreamWriter] = []

    async def one(source: str) -> None:
        try:
            _, writer = await asyncio.open_connection(host, int(port), local_addr=(source, 0))
        except OSError:
            return  # refused or reset at once: the cap at work
        writers.append(writer)
        writer.write(b"GET /svc/echo HTTP/1.1\r\nHost: localhost\r\n")

    async with asyncio.timeout(30):
        for start in range(0, count, 100):
            await asyncio.gather(
                *(one(sources[i % len(sources)]) for i in range(start, min(count, start + 100)))
            )
    return writers


@pytest.mark.parametrize("how", ["cli", "asyncio"])
@pytest.mark.parametrize(
    "sources",
    [
        pytest.param(["127.0.0.2"], id="from one address"),
        pytest.param([f"127.0.1.{i}" for i in range(1, 31)], id="from 30 addresses"),
    ],
)
async def test_a_new_client_gets_200_while_1500_slow_connections_are_open_at_a_file_limit_of_1024(
    nc: NATS, nats_url: str, prefix: str, unique: str, sources: list[str], how: str
) -> None:
    name = f"svc-{unique}"
    async with echo_service(nc, name, prefix):
        with bridge_process(how, nats_url, prefix) as url:
            writers = await open_slow_heads(url, sources, SLOWLORIS)
            try:
                # Well inside the 10 s head timeout: the caps, not the timeout, make room.
                async with httpx.AsyncClient(base_url=url, timeout=5) as http:
                    reply = await http.post(f"/{name}/echo", content=b'{"id": 1}')
            finally:
                for writer in writers:
                    writer.close()
    assert reply.status_code == 200
    assert reply.content == b'{"id": 1}'


# -- Host allow-list -------------------------------------------------------------------------


async def test_a_foreign_host_name_gets_421_and_nothing_reaches_nats(
    quiet_nats: tuple[NATS, list[str]],
) -> None:
    nc, seen = quiet_nats
    async with bridge.run(nc, BridgeConfig(timeout_s=0.5), port=0) as running:
        port = running.port
        refused = [
            await raw_http(
                running.url,
                f"POST /svc/echo HTTP/1.1\r\nHost: {host}\r\n"
                "Content-Length: 2\r\n\r\n{}".encode(),
            )
            for host in (
                "evil.example",
                f"evil.example:{port}",
                "127.0.0.2",
                "localhost.evil.example",
                "[::2]:80",
            )
        ]
        before = await published(nc, seen)
        served = [
            await raw_http(
                running.url,
                f"POST /svc/echo HTTP/1.1\r\nHost: {host}\r\n"
                "Content-Length: 2\r\n\r\n{}".encode(),
            )
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]", "LOCALHOST")
        ]
        after = await published(nc, seen)
    assert refused == [421] * 5
    assert before == []
    # No service answers, but each request reached NATS: the spy does see what gets through.
    assert served == [503] * 4 or served == [504] * 4
    assert after.count("svc.echo") >= 4


async def test_the_probes_answer_any_host_and_the_metrics_keep_the_bridges_auth(
    quiet_nats: tuple[NATS, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kubelet or Prometheus names the pod by its address, which no allow-list holds.
    nc, seen = quiet_nats
    monkeypatch.setenv("TEST_PROBE_TOKENS", "s3cret")
    auth = Auth(scheme="bearer", tokens_env="TEST_PROBE_TOKENS")
    config = BridgeConfig(timeout_s=0.5, allowed_hosts=("api.example",), auth=auth)

    def get(path: str, *headers: str) -> bytes:
        lines = "".join(f"{h}\r\n" for h in ("Host: 10.1.2.3:8080", *headers))
        return f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode()

    async with bridge.run(nc, config, port=0) as running:
        alive = await raw_http(running.url, get("/_natsreg/healthz"))
        # Ready or not (the client's view may still be warming), but answered.
        ready = await raw_http(running.url, get("/_natsreg/readyz"))
        metrics = (
            await raw_http(running.url, get("/_natsreg/metrics")),
            await raw_http(running.url, get("/_natsreg/metrics", "Authorization: Bearer s3cret")),
        )
        others = [
            await raw_http(running.url, get(path, "Authorization: Bearer s3cret"))
            for path in ("/svc/echo", "/_natsreg/services", "/_natsreg/ui")
        ]
        sent = await published(nc, seen)
    assert alive == 200 and ready in (200, 503)
    assert metrics == (401, 200)
    assert others == [421] * 3
    assert "svc.echo" not in sent


async def test_allowed_hosts_serves_the_names_listed_or_any_with_a_star(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"svc-{unique}"
    async with echo_service(nc, name, prefix):
        config = BridgeConfig(prefix=prefix, allowed_hosts=("api.example",))
        async with bridge.run(nc, config, port=0) as running:
            listed = await raw_http(
                running.url, f"GET /{name}/echo HTTP/1.1\r\nHost: API.example:8443\r\n\r\n".encode()
            )
            loopback = await raw_http(
                running.url, f"GET /{name}/echo HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
            )
        config = BridgeConfig(prefix=prefix, allowed_hosts=("*",))
        async with bridge.run(nc, config, port=0) as running:
            anything = await raw_http(
                running.url, f"GET /{name}/echo HTTP/1.1\r\nHost: evil.example\r\n\r\n".encode()
            )
    assert (listed, loopback, anything) == (200, 421, 200)


def test_allowed_hosts_come_from_the_routes_file_and_the_command_line_wins(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('allowed_hosts = ["api.example", "::1"]\n')
    assert BridgeConfig.from_toml(path).allowed_hosts == ("api.example", "[::1]")
    assert BridgeConfig.from_toml(path, allowed_hosts=("*",)).allowed_hosts == ("*",)
    assert BridgeConfig().allowed_hosts == ("localhost", "127.0.0.1", "[::1]")


@pytest.mark.parametrize(
    "hosts",
    [
        ("localhost:8080",),
        ("evil example",),
        ("[::zz]",),
        ("",),
        "localhost",
        ("a/b",),
    ],
)
def test_an_allowed_host_that_is_not_a_host_name_is_refused(hosts: Any) -> None:
    with pytest.raises(ConfigError):
        BridgeConfig(allowed_hosts=hosts)


# -- cross-site requests ---------------------------------------------------------------------


async def test_a_cross_site_text_plain_post_is_refused_before_nats(
    quiet_nats: tuple[NATS, list[str]],
) -> None:
    nc, seen = quiet_nats
    async with (
        bridge.run(nc, BridgeConfig(timeout_s=0.5), port=0) as running,
        httpx.AsyncClient(base_url=running.url, timeout=5) as http,
    ):
        # What a page on another site (or a rebound name) makes a browser send, no preflight.
        form = {"content-type": "text/plain"}
        cross_origin = await http.post(
            "/svc/echo",
            content=b'{"amount": 100}',
            headers={**form, "origin": "http://evil.example"},
        )
        null_origin = await http.post(
            "/svc/echo", content=b"{}", headers={**form, "origin": "null"}
        )
        other_port = await http.post(
            "/svc/echo",
            content=b"{}",
            headers={**form, "origin": f"http://127.0.0.1:{running.port + 1}"},
        )
        no_cors_get = await http.get("/svc/echo", headers={"sec-fetch-site": "cross-site"})
        before = await published(nc, seen)
        same_origin = await http.post(
            "/svc/echo",
            content=b"{}",
            headers={
                **form,
                "origin": f"http://127.0.0.1:{running.port}",
                "sec-fetch-site": "same-origin",
            },
        )
        after = await published(nc, seen)
    assert [r.status_code for r in (cross_origin, null_origin, other_port, no_cors_get)] == [
        403
    ] * 4
    assert cross_origin.json()["error"] == "cross_site"
    assert before == []
    assert same_origin.status_code in (503, 504)
    assert "svc.echo" in after


async def test_cors_lets_the_origins_it_allows_through(nc: NATS, prefix: str, unique: str) -> None:
    name = f"svc-{unique}"
    cors = Cors(allow_origins=("https://app.example",))
    async with (
        echo_service(nc, name, prefix),
        bridge.run(nc, BridgeConfig(prefix=prefix, cors=cors), port=0) as running,
        httpx.AsyncClient(base_url=running.url, timeout=5) as http,
    ):
        allowed = await http.post(
            f"/{name}/echo",
            content=b"{}",
            headers={"origin": "https://app.example", "sec-fetch-site": "cross-site"},
        )
        other = await http.post(
            f"/{name}/echo", content=b"{}", headers={"origin": "https://evil.example"}
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert other.status_code == 403


# -- who may listen where --------------------------------------------------------------------


def test_a_public_address_without_auth_is_refused_unless_opened_on_purpose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_PUBLIC_TOKENS", "s3cret")
    open_config = BridgeConfig()
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        open_config.check_listen(host)
    for host in ("0.0.0.0", "::", "", "192.0.2.10", "bridge.example"):
        with pytest.raises(ConfigError, match="--insecure-public"):
            open_config.check_listen(host)
    BridgeConfig(insecure_public=True).check_listen("0.0.0.0")
    BridgeConfig(auth=Auth(scheme="bearer", tokens_env="TEST_PUBLIC_TOKENS")).check_listen(
        "0.0.0.0"
    )


async def test_bridge_run_refuses_a_public_address_without_auth(nc: NATS) -> None:
    with pytest.raises(ConfigError):
        async with bridge.run(nc, BridgeConfig(), host="0.0.0.0", port=0):
            pass


def test_the_cli_refuses_a_public_bridge_in_one_line_before_starting_anything(
    cli_env: dict[str, str],
) -> None:
    port = free_port()
    served = natsreg_cli(cli_env, "bridge", "--host", "0.0.0.0", "--port", "0")
    up = natsreg_cli(
        {**cli_env, "NATS_URL": f"nats://127.0.0.1:{port}"},
        "up",
        "--server",
        f"nats://127.0.0.1:{port}",
        "--host",
        "0.0.0.0",
    )
    assert_one_line_error(served, "--insecure-public", "[auth]")
    assert_one_line_error(up, "--insecure-public")
    assert not is_listening("127.0.0.1", port)


def test_the_cli_passes_allowed_hosts_and_limits_to_the_bridge(tmp_path: Path) -> None:
    from natsreg.cli._args import _parser
    from natsreg.cli._serve import _bridge_config

    args = _parser().parse_args(
        [
            "bridge",
            "--host",
            "0.0.0.0",
            "--insecure-public",
            "--allowed-host",
            "api.example",
            "--allowed-host",
            "*",
            "--header-timeout",
            "3",
            "--max-connections",
            "50",
            "--max-connections-per-client",
            "5",
            "--body-timeout",
            "4",
        ]
    )
    config = _bridge_config(args)
    assert config.allowed_hosts == ("api.example", "*")
    assert config.insecure_public
    assert (
        config.header_timeout_s,
        config.max_connections,
        config.max_connections_per_client,
        config.body_timeout_s,
    ) == (3.0, 50, 5, 4.0)


# -- configuration that would open more than it says -----------------------------------------


def test_cors_refuses_credentials_for_any_origin() -> None:
    with pytest.raises(ConfigError, match="allow_credentials"):
        Cors(allow_origins=("*",), allow_credentials=True)
    Cors(allow_origins=("https://app.example",), allow_credentials=True)


def test_auth_refuses_tokens_without_a_scheme_and_unknown_schemes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_SCHEME_TOKENS", "abc")
    with pytest.raises(ConfigError, match="scheme is 'none'"):
        Auth(scheme="none", tokens_env="TEST_SCHEME_TOKENS")
    with pytest.raises(ConfigError, match="basic"):
        Auth(scheme="basic", tokens_env="TEST_SCHEME_TOKENS")  # type: ignore[arg-type]


def test_a_route_under_the_bridges_own_paths_is_refused() -> None:
    with pytest.raises(ConfigError, match="_natsreg"):
        Route(path="/_natsreg/services", subject="svc.echo")


@pytest.mark.parametrize(
    "settings",
    [
        {"header_timeout_s": 0},
        {"max_connections": 0},
        {"max_connections_per_client": 0},
        {"header_timeout_s": float("inf")},
    ],
)
def test_bad_connection_limits_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        BridgeConfig(**settings)
