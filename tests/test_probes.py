"""/metrics, /healthz and /readyz: what each role answers, over real HTTP, against real NATS."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.abc
import httpx
import nats
import pytest
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import natsreg
from natsreg import _figures, _probes, bridge, metrics
from natsreg._collector import NatsregCollector
from natsreg.testing import NatsServer, free_port
from tests.helpers import eventually
from tests.run_helpers import Lines, natsreg_run, write_app
from tests.test_cli import running


async def probe(url: str) -> tuple[int, dict[str, str]]:
    async with httpx.AsyncClient() as http:
        response = await http.get(url, timeout=2.0)
    return response.status_code, response.json()


# -- the rules, without a server ---------------------------------------------------------------


@pytest.mark.pure
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        (":9100", ("0.0.0.0", 9100)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_a_listen_address_is_host_and_port_or_every_interface(
    text: str, expected: tuple[str, int]
) -> None:
    assert _probes.parse_listen(text) == expected


@pytest.mark.pure
@pytest.mark.parametrize("text", ["9100", "127.0.0.1", "host:", "host:http", "host:65536", ""])
def test_a_bad_listen_address_is_refused_with_an_example(text: str) -> None:
    with pytest.raises(natsreg.ConfigError, match=r"not HOST:PORT: write e\.g\. 127\.0\.0\.1:9100"):
        _probes.parse_listen(text)


@pytest.mark.pure
def test_a_service_with_a_bad_http_address_is_refused_at_declaration() -> None:
    with pytest.raises(natsreg.ConfigError, match="http 'nine' is not HOST:PORT"):
        natsreg.Service("probed", version="1.0.0", http="nine")


class _Role:
    def __init__(self, reason: str | None) -> None:
        self.reason = reason

    def readiness(self) -> str | None:
        return self.reason


@pytest.mark.pure
def test_readyz_is_ready_only_when_every_role_is_and_names_the_first_reason() -> None:
    ready, warming = _Role(None), _Role("warming up")
    assert _probes.answer("/readyz", "GET", (ready, ready))[:2] == (200, b"application/json")
    status, _, body = _probes.answer("/readyz", "GET", (ready, warming, _Role("other")))
    assert (status, body) == (503, b'{"status":"not ready","reason":"warming up"}')
    # Alive however unready: a restart would not make a warming node warm sooner.
    assert _probes.answer("/healthz", "GET", (warming,))[0] == 200
    assert _probes.answer("/metrics", "GET", (warming,))[:2] == (200, metrics.CONTENT_TYPE.encode())
    assert _probes.answer("/readyz", "POST", (ready,))[0] == 405
    assert _probes.answer("/other", "GET", (ready,))[0] == 404


@pytest.mark.pure
async def test_idle_connections_at_the_cap_give_way_to_a_probe() -> None:
    async with metrics.serve("127.0.0.1:0") as probes:
        idle = [
            await anyio.connect_tcp("127.0.0.1", probes.port)
            for _ in range(_probes._MAX_CONNECTIONS + 8)
        ]
        try:
            assert await probe(f"{probes.url}/healthz") == (200, {"status": "alive"})
        finally:
            for stream in idle:
                await stream.aclose()


@pytest.mark.pure
async def test_a_request_that_is_no_probe_gets_no_more_than_a_short_refusal() -> None:
    async with metrics.serve("127.0.0.1:0") as probes:
        # Garbage: 400, and the connection closed.
        async with await anyio.connect_tcp("127.0.0.1", probes.port) as stream:
            await stream.send(b"\x16\x03\x01 not http\r\n\r\n")
            assert (await _read_all(stream)).startswith(b"HTTP/1.1 400 Bad Request\r\n")
        # A head over 8 KiB: closed unanswered, nothing buffered beyond the limit.
        async with await anyio.connect_tcp("127.0.0.1", probes.port) as stream:
            await stream.send(b"GET /readyz HTTP/1.1\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n")
            assert await _read_all(stream) == b""
        # Still answering.
        assert await probe(f"{probes.url}/healthz") == (200, {"status": "alive"})


async def _read_all(stream: anyio.abc.ByteStream) -> bytes:
    data = b""
    with anyio.fail_after(5):
        try:
            while True:
                data += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            return data


# -- a registry node: natsreg registry --http ---------------------------------------------------


@contextmanager
def registry_process(url: str, http_port: int, *extra: str) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "NATS_URL": url, "PYTHONUNBUFFERED": "1"}
    with running(env, "registry", "--http", f"127.0.0.1:{http_port}", *extra) as proc:
        yield proc


async def readyz_becomes(url: str, status: int, reason: str = "", timeout_s: float = 10.0) -> None:
    async def answered() -> bool:
        try:
            got, body = await probe(url)
        except httpx.TransportError:
            return False
        return got == status and reason in body.get("reason", "")

    await eventually(answered, timeout_s, what=f"{url} answering {status} {reason!r}")


async def test_a_registry_node_is_unready_while_warming_and_while_cut_off_from_nats() -> None:
    port, http_port = free_port(), free_port()
    readyz = f"http://127.0.0.1:{http_port}/readyz"
    server = NatsServer(port=port)
    try:
        # --micro-poll is irrelevant here; warm-up is the discover jitter (0.5 s) plus 0.5 s.
        with registry_process(server.url, http_port):
            await readyz_becomes(readyz, 503, "warming up")
            await readyz_becomes(readyz, 200)
            assert (await probe(f"http://127.0.0.1:{http_port}/healthz"))[0] == 200

            server.process.kill()
            server.stop()
            await readyz_becomes(readyz, 503, "NATS")
            # Alive all along: the liveness probe must not restart a node that waits for NATS.
            assert (await probe(f"http://127.0.0.1:{http_port}/healthz"))[0] == 200

            server = NatsServer(port=port)
            await readyz_becomes(readyz, 200, timeout_s=15.0)
    finally:
        server.stop()


async def test_a_registry_node_back_from_an_outage_warms_up_again_before_it_is_ready(
    nats_url: str, prefix: str
) -> None:
    # In process, to see the one moment a subprocess would hide: reconnected, not yet warm.
    server = NatsServer()
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        async with natsreg.Registry(nc, prefix=prefix, discover_jitter_s=0.5) as node:
            await eventually(lambda: node.readiness() is None, what="a warm node")
            port = int(server.url.rsplit(":", 1)[1])
            server.process.kill()
            server.stop()
            await eventually(lambda: not nc.is_connected, what="the node's connection lost")
            assert "NATS" in (node.readiness() or "")
            server = NatsServer(port=port)
            await eventually(lambda: nc.is_connected, 10.0, what="reconnected")
            assert "warming up" in (node.readiness() or "")
            await eventually(lambda: node.readiness() is None, what="warm again")
        assert node.readiness() == "the registry node is not running"
    finally:
        await nc.close()
        server.stop()


# -- a service: announce(..., http=...) --------------------------------------------------------


async def test_a_service_is_ready_once_announced_and_unready_while_it_drains(
    nc: NATS, prefix: str, unique: str
) -> None:
    svc = natsreg.Service(f"probed-{unique}", version="1.0.0", prefix=prefix, http="127.0.0.1:0")
    opened = anyio.Event()
    release = anyio.Event()

    @svc.on_start
    async def open_resources(ctx: natsreg.service.Context) -> None:
        await opened.wait()

    @svc.endpoint("hold")
    async def hold(req: natsreg.Request) -> str:
        await release.wait()
        return "done"

    instance = natsreg.announce(nc, svc)
    async with anyio.create_task_group() as tg:
        stop = anyio.Event()

        async def run() -> None:
            async with instance:
                await stop.wait()

        tg.start_soon(run)
        await eventually(lambda: instance.probes is not None, what="the probe server")
        assert instance.probes is not None
        base = instance.probes.url
        # The start hook still opens resources: alive, not ready.
        assert await probe(f"{base}/healthz") == (200, {"status": "alive"})
        assert await probe(f"{base}/readyz") == (
            503,
            {"status": "not ready", "reason": "not announced yet"},
        )
        opened.set()
        await readyz_becomes(f"{base}/readyz", 200)

        async with natsreg.Client(nc, prefix=prefix) as client:
            tg.start_soon(client.request, f"probed-{unique}.hold", b"")
            await eventually(lambda: instance.readiness() is None and _in_flight(instance))
            stop.set()
            await readyz_becomes(f"{base}/readyz", 503, "draining")
            release.set()
    with pytest.raises(httpx.ConnectError):
        await probe(f"{base}/healthz")


def _in_flight(instance: natsreg.Instance) -> bool:
    return bool(instance._endpoints.in_flight)


# -- a process that only calls: natsreg.metrics.serve ------------------------------------------


async def test_a_caller_serves_its_probes_and_is_unready_once_its_client_is_closed(
    nc: NATS, prefix: str
) -> None:
    client = natsreg.Client(nc, prefix=prefix)
    async with metrics.serve("127.0.0.1:0", client) as probes:
        assert await probe(f"{probes.url}/readyz") == (200, {"status": "ready"})
        async with httpx.AsyncClient() as http:
            scraped = await http.get(f"{probes.url}/metrics")
        assert scraped.status_code == 200
        assert scraped.headers["content-type"] == metrics.CONTENT_TYPE
        await client.aclose()
        assert await probe(f"{probes.url}/readyz") == (
            503,
            {"status": "not ready", "reason": "the client is closed"},
        )


async def test_a_probe_port_in_use_is_one_clear_error() -> None:
    async with metrics.serve("127.0.0.1:0") as probes:
        with pytest.raises(natsreg.ConfigError, match="choose another port"):
            async with metrics.serve(("127.0.0.1", probes.port)):
                pass


# -- the bridge: /_natsreg/metrics, /_natsreg/healthz, /_natsreg/readyz --------------------------


async def test_the_bridge_serves_its_probes_and_is_unready_without_nats() -> None:
    server = NatsServer()
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        async with bridge.run(nc, port=0) as running:
            base = f"{running.url}/_natsreg"
            assert await probe(f"{base}/readyz") == (200, {"status": "ready"})
            assert await probe(f"{base}/healthz") == (200, {"status": "alive"})
            async with httpx.AsyncClient() as http:
                scraped = await http.get(f"{base}/metrics")
                refused = await http.post(f"{base}/readyz")
            assert scraped.headers["content-type"] == metrics.CONTENT_TYPE
            assert refused.status_code == 405

            server.process.kill()
            server.stop()
            await readyz_becomes(f"{base}/readyz", 503, "NATS")
            assert (await probe(f"{base}/healthz"))[0] == 200
    finally:
        await nc.close()
        server.stop()


async def test_the_bridge_keeps_its_metrics_behind_its_auth_and_its_probes_open(
    nc: NATS, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBE_TEST_TOKENS", "s3cret")
    config = bridge.BridgeConfig(
        prefix=prefix, auth=bridge.Auth(scheme="bearer", tokens_env="PROBE_TEST_TOKENS")
    )
    async with bridge.run(nc, config, port=0) as running, httpx.AsyncClient() as http:
        base = f"{running.url}/_natsreg"
        assert (await http.get(f"{base}/metrics")).status_code == 401
        allowed = await http.get(f"{base}/metrics", headers={"Authorization": "Bearer s3cret"})
        assert allowed.status_code == 200
        assert allowed.headers["content-type"] == metrics.CONTENT_TYPE
        # A kubelet sends no credentials.
        assert (await http.get(f"{base}/readyz")).status_code == 200
        assert (await http.get(f"{base}/healthz")).status_code == 200


async def test_a_client_whose_view_comes_from_a_warming_node_is_unready_until_it_is_warm(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"viewed-{unique}"
    async with natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc:

        @svc.endpoint("ping")
        async def ping(req: natsreg.Request) -> str:
            return "pong"

        await svc.ready()
        # The only node warms up for 2 s: the view it gives may lack instances.
        async with (
            natsreg.Registry(nc, prefix=prefix, discover_jitter_s=1.5),
            natsreg.Client(nc, prefix=prefix) as client,
        ):
            assert client.readiness() is None  # no view yet: nothing to distrust
            await client.request(f"{name}.ping")
            assert client.readiness() == (
                f"the view of {name!r} comes from a registry node still warming up"
            )
            await eventually(lambda: client.readiness() is None, 10.0, what="a warm view")


# -- natsreg_ready and natsreg_nats_connected: readiness as Prometheus scrapes it -------------

_STATES = ("natsreg_ready", "natsreg_nats_connected", "natsreg_registry_warming")


def states(text: str) -> dict[tuple[str, str], float]:
    """The readiness gauges of an exposition text (and the registry's warming flag), by
    ``(name, role)``."""
    return {
        (sample.name, sample.labels.get("role", "")): sample.value
        for family in text_string_to_metric_families(text)
        if family.name in _STATES
        for sample in family.samples
    }


async def scraped_states(url: str) -> dict[tuple[str, str], float]:
    try:
        async with httpx.AsyncClient() as http:
            response = await http.get(url, timeout=2.0)
    except httpx.TransportError:
        return {}
    return states(response.text)


async def states_become(
    url: str, expected: dict[tuple[str, str], float], timeout_s: float = 10.0
) -> None:
    """Until a scrape of ``url`` shows ``expected`` (other series may be there too)."""
    got: dict[tuple[str, str], float] = {}

    async def matches() -> bool:
        nonlocal got
        got = await scraped_states(url)
        return all(got.get(key) == value for key, value in expected.items())

    try:
        await eventually(matches, timeout_s, what=f"{url} showing {expected}")
    except AssertionError:
        raise AssertionError(f"{url}: got {got}, expected {expected}") from None


def each_role(flag: float) -> dict[str, dict[tuple[str, str], float]]:
    """What each role's scrape shows when all are (1) or none is (0) ready and connected."""
    return {
        kind: {(name, role): flag for name in _STATES[:2] for role in roles}
        for kind, roles in (
            ("registry", ("registry",)),
            ("service", ("service",)),
            ("bridge", ("bridge", "client")),
        )
    }


async def test_each_role_scrapes_unready_and_disconnected_while_its_nats_is_down(
    tmp_path: Path, unique: str
) -> None:
    port = free_port()
    ports = {"registry": free_port(), "service": free_port(), "bridge": free_port()}
    scrape = {
        "registry": f"http://127.0.0.1:{ports['registry']}/metrics",
        "service": f"http://127.0.0.1:{ports['service']}/metrics",
        "bridge": f"http://127.0.0.1:{ports['bridge']}/_natsreg/metrics",
    }
    write_app(tmp_path, "app", f"gauged-{unique}")
    server = NatsServer(port=port)
    env = {**os.environ, "NATS_URL": server.url, "PYTHONUNBUFFERED": "1"}
    try:
        with (
            registry_process(server.url, ports["registry"]),
            natsreg_run(tmp_path, env, "app:svc", "--http", f"127.0.0.1:{ports['service']}"),
            running(env, "bridge", "--port", str(ports["bridge"])),
        ):
            for kind, expected in each_role(1.0).items():
                await states_become(scrape[kind], expected, timeout_s=20.0)

            server.process.kill()
            server.stop()
            for kind, expected in each_role(0.0).items():
                await states_become(scrape[kind], expected)
            # Cut off, the node is not warming up: only natsreg_ready tells it is unready.
            warming = ("natsreg_registry_warming", "")
            assert (await scraped_states(scrape["registry"]))[warming] == 0

            server = NatsServer(port=port)
            for kind, expected in each_role(1.0).items():
                await states_become(scrape[kind], expected, timeout_s=20.0)
    finally:
        server.stop()


async def test_a_warming_registry_node_scrapes_unready_though_connected(
    nc: NATS, prefix: str
) -> None:
    async with (
        natsreg.Registry(nc, prefix=prefix, discover_jitter_s=1.5) as node,
        metrics.serve("127.0.0.1:0", node) as probes,
    ):
        warming = {
            ("natsreg_registry_warming", ""): 1.0,
            ("natsreg_ready", "registry"): 0.0,
            ("natsreg_nats_connected", "registry"): 1.0,
        }
        got = await scraped_states(f"{probes.url}/metrics")
        assert {key: got.get(key) for key in warming} == warming
        await states_become(
            f"{probes.url}/metrics",
            {("natsreg_registry_warming", ""): 0.0, ("natsreg_ready", "registry"): 1.0},
        )


@pytest.mark.pure
async def test_a_closed_client_leaves_the_readiness_gauges_and_an_unconnected_one_shows_0() -> None:
    live = _figures.Live()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NatsregCollector(live))
    client = natsreg.Client(NATS())  # never connected
    live.clients.add(client._router)
    found = states(generate_latest(registry).decode())
    assert found == {("natsreg_ready", "client"): 0.0, ("natsreg_nats_connected", "client"): 0.0}
    await client.aclose()
    assert states(generate_latest(registry).decode()) == {}


# -- natsreg up: every role it runs, and where --------------------------------------------------


async def test_up_serves_and_prints_the_probes_of_every_role_it_runs() -> None:
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{free_port()}", "PYTHONUNBUFFERED": "1"}
    root = Path(__file__).parents[1]
    argv = [sys.executable, "-m", "natsreg", "up", "--port", str(free_port())]
    with subprocess.Popen(
        [*argv, "--with", "examples.user_service:svc"],
        cwd=root,
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as up:
        lines = Lines(up)
        try:
            # The registry node, the bridge, and the service that natsreg up started.
            await eventually(lambda: len(_readyz_urls(lines)) == 3, 20.0, what="three roles")
            for url in _readyz_urls(lines):
                await readyz_becomes(url, 200)
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(20)


def _readyz_urls(lines: Lines) -> list[str]:
    return [word.rstrip(",") for line in lines.lines for word in line.split() if "/readyz" in word]


# -- natsreg run --workers N --http: one port per worker ----------------------------------------


def two_free_ports() -> int:
    """A port P with P + 1 free too."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two free ports in a row")


async def test_each_worker_serves_its_probes_on_its_own_port_through_a_rolling_restart(
    tmp_path: Path, cli_env: dict[str, str], prefix: str, unique: str
) -> None:
    write_app(tmp_path, "app", f"workers-{unique}")
    port = two_free_ports()
    urls = [f"http://127.0.0.1:{port + i}/readyz" for i in (0, 1)]
    args = ("app:svc", "--workers", "2", "--prefix", prefix, "--http", f"127.0.0.1:{port}")
    with natsreg_run(tmp_path, cli_env, *args) as proc:
        out = Lines(proc)
        for url in urls:
            await readyz_becomes(url, 200, timeout_s=30.0)
        proc.send_signal(signal.SIGHUP)
        await eventually(lambda: out.said("every worker replaced"), 40, "the roll")
        # Each replacement bound its predecessor's port while that one still drained.
        assert not out.said("before it was ready"), out.text()
        for url in urls:
            await readyz_becomes(url, 200)
