"""A registry node that may know less than a peer does not answer: warm nodes answer queries,
a warming one only when none is warm, and then says so."""

from __future__ import annotations

import subprocess
from contextlib import AsyncExitStack

import anyio
import pytest
from nats.aio.client import Client as NATS

import natsreg
from natsreg import wire
from natsreg.client import RegistryApi
from natsreg.registry import REANNOUNCE_PER_S, reannounce_window_s
from tests.helpers import HeldClock, eventually, until_warm
from tests.test_bridge import serving
from tests.test_cli import run_cli


async def test_a_warming_node_leaves_every_query_to_a_warm_one(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with AsyncExitStack() as stack:
        warm = await stack.enter_async_context(natsreg.Registry(nc, prefix=prefix))
        for n in range(3):
            await stack.enter_async_context(
                natsreg.announce(nc, f"w{n}-{unique}", version="1.0.0", prefix=prefix)
            )
        await until_warm(nc, prefix)
        await eventually(lambda: len(warm.snapshot().instances) == 3)
        # Hears the instances re-announce over 3 s: until then it knows fewer than 3. (Not
        # from the warm peer's view, which would make it warm at once: test_sync.py.)
        late = await stack.enter_async_context(
            natsreg.Registry(nc, prefix=prefix, discover_jitter_s=3.0, sync=False)
        )
        api = RegistryApi(nc, prefix=prefix)
        nodes = await api.nodes()
        assert {(n.node, n.warming_up) for n in nodes} == {
            (warm.node_id, False),
            (late.node_id, True),
        }
        answers = []
        while late.warming_up:
            answers.append(await api.instances(timeout_s=1.0))
            answers.append(await api.instances(f"w1-{unique}", timeout_s=1.0))
            await anyio.sleep(0.05)
        assert len(answers) > 20
        assert {a.node for a in answers} == {warm.node_id}
        assert not any(a.warming_up for a in answers)
        assert {len(a.instances) for a in answers[::2]} == {3}
        # Warm, it takes its share of the queries.
        await eventually(
            lambda: _answered_by(api, late.node_id), what="the late node answers once warm"
        )


async def _answered_by(api: RegistryApi, node: str) -> bool:
    answer = await api.instances(timeout_s=1.0)
    return answer.node == node and len(answer.instances) == 3


async def test_with_no_warm_node_the_answer_ls_and_the_bridge_say_so(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    # The node's clock stands still until the three commands have answered: its warm-up
    # outlasts their start, however slow the machine.
    clock = HeldClock()
    async with (
        natsreg.announce(nc, f"lone-{unique}", version="1.0.0", prefix=prefix),
        natsreg.Registry(nc, prefix=prefix, discover_jitter_s=2.0, clock=clock) as node,
        serving(nc, prefix=prefix, registry_refresh_s=60.0) as http,
    ):
        api = RegistryApi(nc, prefix=prefix)
        listing = await api.services()
        assert (listing.node, listing.warming_up) == (node.node_id, True)
        assert (await api.instances()).warming_up

        # The three commands at once: each starts a Python process, and all three must answer
        # while the node still warms up.
        asked = {
            "ls": ("ls", "--prefix", prefix),
            "info": ("info", f"lone-{unique}", "--prefix", prefix),
            "nodes": ("registry", "nodes", "--prefix", prefix),
        }
        answers: dict[str, subprocess.CompletedProcess[str]] = {}

        async def ask(key: str) -> None:
            answers[key] = await run_cli(cli_env, *asked[key])

        async with anyio.create_task_group() as tg:
            for key in asked:
                tg.start_soon(ask, key)
        assert node.warming_up, "the node warmed up before the commands answered"
        ls, info, nodes = answers["ls"], answers["info"], answers["nodes"]
        assert ls.returncode == 0, ls.stderr
        assert "no registry node is warm yet" in " ".join(ls.stdout.split())
        assert "no services are registered" not in ls.stdout
        # Whether or not the warming node has heard the instance yet, info says it is warming.
        assert "no registry node is warm yet" in " ".join((info.stdout + info.stderr).split())
        assert nodes.returncode == 0, nodes.stderr
        assert node.node_id in nodes.stdout and "warming up" in nodes.stdout
        # The bridge serves the warming answer, but keeps it no longer than warm-up lasts.
        assert (await http.get("/_natsreg/services")).json()["warming_up"] is True

        clock.release()
        await until_warm(nc, prefix, timeout_s=10)
        assert not (await api.services()).warming_up
        assert (await http.get("/_natsreg/services")).json()["warming_up"] is False
        nodes = await run_cli(cli_env, "registry", "nodes", "--prefix", prefix)
        assert "warm" in nodes.stdout and "warming up" not in nodes.stdout


async def test_a_client_that_bootstrapped_from_a_warming_answer_takes_a_warm_one(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"boot-{unique}"
    async with natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc:

        @svc.endpoint("echo")
        async def echo(req: natsreg.Request) -> bytes:
            return req.data

        await svc.ready()
        # Warm-up outlasts the client's own retries of a reconcile (5, a second apart), so
        # only the warm-up's end can make it ask again.
        async with natsreg.Registry(nc, prefix=prefix, discover_jitter_s=6.0) as node:
            client = natsreg.Client(nc, prefix=prefix)
            assert (await client.request(f"{name}.echo", b"x", timeout_s=2)).data == b"x"
            assert node.warming_up
            await until_warm(nc, prefix, timeout_s=10)
            await eventually(
                lambda: client.stats()["reconciled"].get(name, 0) >= 1,
                what="the view taken again from a warm answer",
            )
            assert [i.id for i in await client.view(name)] == [svc.id]
            await client.aclose()


async def test_registry_nodes_with_none_running_is_one_clear_line(
    prefix: str, cli_env: dict[str, str]
) -> None:
    result = await run_cli(cli_env, "registry", "nodes", "--prefix", prefix)
    assert result.returncode == 1
    assert "no registry node answers" in result.stderr and "natsreg registry" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


@pytest.mark.pure
@pytest.mark.parametrize(
    ("jitter_s", "instances", "window_s"),
    [
        (0.5, 0, 0.5),  # a node that holds nothing: the configured jitter
        (0.5, 5_000, 0.5),  # a small fleet comes within it anyway
        (0.5, 50_000, 5.0),  # 10,000 a second at most
        (0.5, 250_000, 25.0),
        (0.5, 1_000_000, wire.MAX_DISCOVER_JITTER_S),  # no instance waits longer
        (8.0, 50_000, 8.0),  # a longer configured jitter is kept
        (60.0, 0, wire.MAX_DISCOVER_JITTER_S),
    ],
)
def test_a_reannounce_round_is_spread_by_the_size_of_the_fleet_asked(
    jitter_s: float, instances: int, window_s: float
) -> None:
    # After a reconnect a node asks everyone it holds: 250,000 announcements asked within
    # 0.5 s overran nats-server's buffer for the node, which cut it off, and it asked again.
    assert reannounce_window_s(jitter_s, instances) == pytest.approx(window_s)
    assert instances / REANNOUNCE_PER_S <= window_s or window_s == wire.MAX_DISCOVER_JITTER_S
