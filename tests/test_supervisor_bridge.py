"""``natsreg bridge --workers N``: N bridge processes on one port, under the supervisor."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
from nats.aio.client import Client as NATS

import natsreg
from natsreg._server import free_port, is_listening
from tests.helpers import eventually
from tests.run_helpers import Lines


async def test_bridge_workers_share_one_port_and_one_killed_leaves_the_port_served(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    name = f"web-{unique}"
    async with natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc:

        @svc.endpoint("hello")
        async def hello(req: natsreg.Request) -> dict[str, int]:
            return {"hello": 1}

        await svc.ready()
        command = [sys.executable, "-m", "natsreg", "bridge", "--workers", "2"]
        with subprocess.Popen(
            [*command, "--port", str(port), "--prefix", prefix],
            env=cli_env,
            cwd=tmp_path,
            text=True,
            stderr=subprocess.PIPE,
            start_new_session=True,
        ) as p:
            out = Lines(p)
            try:
                await eventually(lambda: out.said("2 workers serving"), 30, "the workers")
                pids = [int(pid) for pid in re.findall(r"\d+", out.text().split("pids")[1])[:2]]
                url = f"http://127.0.0.1:{port}/{name}/hello"

                async def calls_succeed(count: int) -> None:
                    for _ in range(count):
                        # A connection of its own each time: the kernel picks a worker for each.
                        async with httpx.AsyncClient() as http:
                            reply = await http.post(url, content=b"{}")
                            assert (reply.status_code, reply.json()) == (200, {"hello": 1})

                await calls_succeed(20)
                os.kill(pids[0], signal.SIGKILL)
                await eventually(lambda: out.said("was killed by SIGKILL"), 10, "the death")
                # The other worker listens on the same port all along.
                await calls_succeed(20)
                await eventually(lambda: out.said("is serving again"), 30, "the restart")
                await calls_succeed(20)

                p.send_signal(signal.SIGTERM)
                assert await anyio.to_thread.run_sync(p.wait, 30) == 0, out.text()
            finally:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
    assert not is_listening("127.0.0.1", port)
    assert out.said("every worker stopped") and "Traceback" not in out.text()
