"""Test your own services against a real nats-server, the way natsreg tests itself.

``NatsServer`` is one nats-server on a free loopback port, ``NatsCluster`` a local cluster of
them (``ServerError`` when the binary is missing or does not start); both are context
managers, sync and async::

    async with NatsServer() as server:
        nc = await nats.connect(server.url)

The pytest fixtures need pytest and pytest-asyncio (``pip install 'natsreg[test]'``). Make
them available to your tests by naming this module as a plugin in your top-level
``conftest.py``::

    pytest_plugins = ["natsreg.testing"]

or, in a conftest.py below the top level (where pytest refuses ``pytest_plugins``), by
importing the fixtures you want into it (pytest finds fixtures by name in a conftest)::

    from natsreg.testing import nats_client, nats_server, nats_url  # noqa: F401

- ``nats_server``: one nats-server for the whole test session;
- ``nats_url``: its URL;
- ``nats_client``: a nats-py connection to it, one per test, closed afterwards.

A fixture of the same name in your conftest overrides any of them (for example a
``nats_server`` started with your own ``args``). Since tests share the session's server,
give each test its own service names or control prefix (``natsreg.Client(nc, prefix=...)``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
import pytest_asyncio
from anyio import to_thread
from nats.aio.client import Client as NATS

from ._server import NatsServer, ServerError, free_port

__all__ = [
    "NatsCluster",
    "NatsServer",
    "ServerError",
    "free_port",
    "nats_client",
    "nats_server",
    "nats_url",
]


class NatsCluster:
    """``size`` nats-servers routed to each other on loopback: a local cluster for tests and
    benchmarks. ``restart(i)`` brings node ``i`` back on the same ports.

    ``advertise=False`` keeps nodes from telling clients about each other, so a client
    reconnects only to the servers it was given (to make a real outage in a test).
    ``jetstream=True`` gives each node JetStream and a store of its own, kept across
    ``restart(i)`` and removed by ``stop()``.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        name: str = "natsreg",
        advertise: bool = True,
        jetstream: bool = False,
    ) -> None:
        self._name = name
        self._advertise = advertise
        self._stores = (
            [tempfile.mkdtemp(prefix="nats-js-") for _ in range(size)] if jetstream else []
        )
        self._client_ports = [free_port() for _ in range(size)]
        self._route_ports = [free_port() for _ in range(size)]
        self.nodes: list[NatsServer | None] = [None] * size
        try:
            for index in range(size):
                self.nodes[index] = self._start(index)
        except BaseException:
            self.stop()
            raise

    @property
    def urls(self) -> list[str]:
        """One client URL per node, in node order (a stopped node keeps its URL)."""
        return [f"nats://127.0.0.1:{port}" for port in self._client_ports]

    def _start(self, index: int) -> NatsServer:
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self._route_ports)
        return NatsServer(
            port=self._client_ports[index],
            args=(
                "--cluster_name",
                self._name,
                "--cluster",
                f"nats://127.0.0.1:{self._route_ports[index]}",
                "--routes",
                routes,
                "-n",
                f"{self._name}-{index}",
                *(() if self._advertise else ("--no_advertise",)),
            ),
            jetstream=bool(self._stores),
            store_dir=self._stores[index] if self._stores else None,
        )

    def kill(self, index: int) -> None:
        """kill -9 node ``index``: its clients lose their connection with no goodbye."""
        node = self.nodes[index]
        if node is not None:
            node.process.kill()
            node.stop()
            self.nodes[index] = None

    def restart(self, index: int) -> None:
        """Node ``index`` killed (if running) and started again on the same ports."""
        self.kill(index)
        self.nodes[index] = self._start(index)

    def stop(self) -> None:
        """Stop every node; safe to call twice."""
        for node in self.nodes:
            if node is not None:
                node.stop()
        for store in self._stores:
            shutil.rmtree(store, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> NatsCluster:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await to_thread.run_sync(self.stop)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One nats-server on a free loopback port for the whole test session."""
    with NatsServer() as server:
        yield server


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """The session server's ``nats://`` URL."""
    return nats_server.url


# pytest_asyncio.fixture, not pytest.fixture: it works in pytest-asyncio's strict mode too.
@pytest_asyncio.fixture
async def nats_client(nats_url: str) -> AsyncIterator[NATS]:
    """A nats-py connection to the session server, closed after the test."""
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()
