"""Fixtures: a real nats-server per test session, a connection and unique names per test.

The server and connection fixtures are natsreg.testing's, the ones users import too.
"""

from __future__ import annotations

import gc
import itertools
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from natsreg import testing
from natsreg.testing import NatsServer

_counter = itertools.count()

# natsreg.testing's fixtures, the same ones users take: pytest finds fixtures by their name in
# a conftest.
nats_server = testing.nats_server
nats_url = testing.nats_url
nats_client = testing.nats_client


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The fast tier (``-m "pure and not slow"``) skips importing modules with no pure test.

    Importing the server tests (httpx, uvicorn, subprocess helpers) would cost more than
    running every pure test, and the tier's point is to answer in under 2 s. A module with
    pure tests names the marker in its source (``pytestmark = pytest.mark.pure`` at its top),
    so reading the text is enough to decide.
    """
    expression: str = config.option.markexpr
    if "pure" not in expression or "not pure" in expression:
        return None
    if (
        collection_path.suffix == ".py"
        and collection_path.name.startswith("test_")
        and "mark.pure" not in collection_path.read_text()
    ):
        return True
    return None  # the default rules (--ignore, ...) decide


def pytest_collection_finish(session: pytest.Session) -> None:
    """Everything collection made lives to the end of the run: the garbage collector skips it.

    The test modules, natsreg and its libraries are never garbage, but every full collection
    walks them again, writing to each object's header. The mutation check
    (tools/mutation.py) pays for that most: mutmut collects once and forks a process per
    mutant, where each of those walks copies the forked heap page by page. Frozen, they are
    shared and not walked: half of each mutant's CPU time. Objects the tests make are
    collected as before.
    """
    gc.freeze()


@pytest.fixture
def nc(nats_client: NATS) -> NATS:
    """natsreg.testing's ``nats_client``, under the short name natsreg's tests use."""
    return nats_client


@pytest.fixture
async def quiet_nats() -> AsyncIterator[tuple[NATS, list[str]]]:
    """A nats-server of its own, so that every message on it is the bridge's, and a spy on `>`."""
    with NatsServer() as server:
        nc = await nats.connect(server.url)
        spy = await nats.connect(server.url)
        seen: list[str] = []

        async def record(msg: Msg) -> None:
            seen.append(msg.subject)

        await spy.subscribe(">", cb=record)
        await spy.flush()
        try:
            yield nc, seen
        finally:
            await spy.close()
            await nc.close()


@pytest.fixture
def prefix() -> str:
    """A control-subject prefix no other test uses, so tests cannot see each other."""
    return f"t{os.getpid()}x{next(_counter)}"


@pytest.fixture
def unique() -> str:
    """A token to make service names unique per test (endpoint subjects are not prefixed)."""
    return f"{os.getpid()}-{next(_counter)}"


@pytest.fixture
def cli_env(nats_url: str) -> dict[str, str]:
    """Environment for running ``python -m natsreg`` against the test server."""
    return {**os.environ, "NATS_URL": nats_url, "PYTHONUNBUFFERED": "1"}


PYTHON = sys.executable


@pytest.fixture(scope="session", autouse=True)
def _store_of_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``natsreg up`` keeps JetStream's files in a per-user folder (docs/operations.md,
    Events): the tests' ``up`` processes keep theirs in a temporary one instead."""
    os.environ["NATSREG_STORE_DIR"] = str(tmp_path_factory.mktemp("up-store"))
    yield
    os.environ.pop("NATSREG_STORE_DIR", None)


@pytest.fixture(scope="module")
def js_server() -> Iterator[NatsServer]:
    """A nats-server with JetStream (its store a temporary folder) for one test module."""
    with NatsServer(jetstream=True) as server:
        yield server


@pytest.fixture
async def js(js_server: NatsServer) -> AsyncIterator[NATS]:
    """A connection to ``js_server``, closed after the test."""
    nc = await nats.connect(js_server.url)
    yield nc
    await nc.close()
