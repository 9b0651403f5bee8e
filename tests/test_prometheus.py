"""A real Prometheus scrapes a registry node, a bridge and a service, each a natsreg command in
its own process, and finds the series their known traffic must have made."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from natsreg.testing import free_port
from tests.helpers import eventually, require_tool

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture(autouse=True)
def prometheus_installed() -> None:
    require_tool(
        os.access(PROMETHEUS, os.X_OK),
        "Prometheus is not installed: Debian's 'prometheus' package provides it "
        "(apt-get install prometheus; .ci/run installs it on a fresh machine)",
    )


# A service that fails when asked to: 8 of the 10 requests below succeed, 2 fail with 422.
APP = """
import natsreg

svc = natsreg.Service({name!r}, version="1.0.0")


@svc.endpoint("echo")
async def echo(req):
    body = req.json()
    if body.get("fail"):
        raise natsreg.ServiceError("asked to fail", code=422)
    return body
"""

CONFIG = """
global:
  scrape_interval: 500ms
  scrape_timeout: 400ms
scrape_configs:
  - job_name: registry
    static_configs: [{{targets: ["127.0.0.1:{registry}"]}}]
  - job_name: bridge
    metrics_path: /_natsreg/metrics
    static_configs: [{{targets: ["127.0.0.1:{bridge}"]}}]
  - job_name: service
    static_configs: [{{targets: ["127.0.0.1:{service}"]}}]
"""


class Prometheus:
    """A Prometheus server on a free loopback port, queried through its HTTP API."""

    def __init__(self, folder: Path, config: str) -> None:
        (folder / "prometheus.yml").write_text(config)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = folder / "prometheus.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def ready(self) -> None:
        async def answered() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            try:
                async with httpx.AsyncClient() as http:
                    return (await http.get(f"{self.url}/-/ready")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(answered, 20.0, what="Prometheus ready")

    async def query(self, promql: str) -> dict[str, float]:
        """Each series of an instant query, named by its job, with its value."""
        async with httpx.AsyncClient() as http:
            response = await http.get(f"{self.url}/api/v1/query", params={"query": promql})
        body = response.json()
        assert body["status"] == "success", body
        return {r["metric"].get("job", ""): float(r["value"][1]) for r in body["data"]["result"]}

    async def wait_for(self, promql: str, expected: dict[str, float]) -> None:
        """Until the query gives ``expected`` (scrapes come every half second)."""
        got: dict[str, float] = {}

        async def matches() -> bool:
            nonlocal got
            got = await self.query(promql)
            return got == expected

        try:
            await eventually(matches, 15.0, what=promql)
        except AssertionError:
            assert got == expected, f"{promql}: got {got}, expected {expected}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def natsreg_process(
    stack: ExitStack, folder: Path, env: dict[str, str], *args: str
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "natsreg", *args],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack.callback(proc.wait)
    stack.callback(proc.kill)
    return proc


@pytest.fixture
def roles(tmp_path: Path, cli_env: dict[str, str], prefix: str, unique: str) -> Iterator[dict]:
    """A registry node, a bridge and a service, each a natsreg command with its probes on."""
    name = f"scraped-{unique}"
    (tmp_path / "scraped_app.py").write_text(APP.format(name=name))
    ports = {"registry": free_port(), "bridge": free_port(), "service": free_port()}
    env = {**cli_env, "NATSREG_PREFIX": prefix}
    with ExitStack() as stack:
        natsreg_process(
            stack, tmp_path, env, "registry", "--http", f"127.0.0.1:{ports['registry']}"
        )
        natsreg_process(stack, tmp_path, env, "bridge", "--port", str(ports["bridge"]))
        natsreg_process(
            stack,
            tmp_path,
            env,
            "run",
            "scraped_app:svc",
            "--http",
            f"127.0.0.1:{ports['service']}",
        )
        yield {"service": name, "ports": ports}


async def test_prometheus_finds_each_roles_series_after_known_traffic(
    tmp_path: Path, roles: dict
) -> None:
    ports, service = roles["ports"], roles["service"]
    bridge = f"http://127.0.0.1:{ports['bridge']}"
    async with httpx.AsyncClient() as http:

        async def all_ready() -> bool:
            try:
                for url in (
                    f"http://127.0.0.1:{ports['registry']}/readyz",
                    f"{bridge}/_natsreg/readyz",
                    f"http://127.0.0.1:{ports['service']}/readyz",
                ):
                    if (await http.get(url)).status_code != 200:
                        return False
            except httpx.TransportError:
                return False
            # Listed by the registry too, so the bridge's client addresses it directly.
            listed = await http.get(f"{bridge}/_natsreg/services")
            return service in listed.text

        prometheus = Prometheus(tmp_path, CONFIG.format(**ports))
        try:
            await eventually(all_ready, 20.0, what="the three roles ready")
            await prometheus.ready()
            # The known traffic: 10 requests through the bridge, 2 of them failing.
            for i in range(10):
                reply = await http.post(f"{bridge}/{service}/echo", json={"i": i, "fail": i < 2})
                assert reply.status_code == (422 if i < 2 else 200), reply.text

            # Prometheus reaches every role's /metrics.
            up = {"registry": 1.0, "bridge": 1.0, "service": 1.0}
            await prometheus.wait_for('up{job=~"registry|bridge|service"}', up)

            await prometheus.wait_for(
                f'sum by (job) (natsreg_service_requests_total{{service="{service}"}})',
                {"service": 10.0},
            )
            await prometheus.wait_for(
                f'natsreg_service_requests_total{{service="{service}",outcome="error"}}',
                {"service": 2.0},
            )
            await prometheus.wait_for(
                f'natsreg_service_errors_total{{service="{service}",code="422"}}',
                {"service": 2.0},
            )
            await prometheus.wait_for(
                'sum by (job) (natsreg_bridge_requests_total{route="default"})', {"bridge": 10.0}
            )
            await prometheus.wait_for(
                'natsreg_bridge_requests_total{route="default",status="422"}', {"bridge": 2.0}
            )
            await prometheus.wait_for(
                f'sum by (job) (natsreg_client_requests_total{{service="{service}"}})',
                {"bridge": 10.0},
            )
            await prometheus.wait_for(
                f'sum by (job) (natsreg_registry_instances{{service="{service}"}})',
                {"registry": 1.0},
            )
            await prometheus.wait_for("natsreg_registry_warming", {"registry": 0.0})
        finally:
            prometheus.stop()
