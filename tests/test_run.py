"""``natsreg run MODULE:ATTR``: a declared service served by one command, as a real process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client as NATS

import natsreg
from tests.helpers import eventually
from tests.run_helpers import instances, natsreg_run, write_app


async def test_run_serves_until_sigterm_then_finishes_in_flight_work_and_leaves_at_once(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    name = f"run-{unique}"
    write_app(tmp_path, "app", name)
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        with natsreg_run(tmp_path, cli_env, "app:svc", "--prefix", prefix) as proc:
            await eventually(lambda: len(instances(registry, name)) == 1, 15, "the instance")
            client = natsreg.Client(nc, prefix=prefix)
            reply = await client.request(f"{name}.whoami", {})
            # The start hook ran in the serving process, and the handler sees its state.
            assert reply.json() == {"pid": proc.pid, "opened": "db", "code": "1.0.0"}

            async with anyio.create_task_group() as tg:
                replies: list[bytes] = []

                async def in_flight() -> None:
                    replies.append((await client.request(f"{name}.slow", 0.5)).data)

                tg.start_soon(in_flight)
                await anyio.sleep(0.2)
                proc.send_signal(signal.SIGTERM)
            assert replies == [b"done"], "the request in flight at SIGTERM was lost"
            await anyio.to_thread.run_sync(proc.wait, 15)
            stopped_at = time.monotonic()
            await eventually(lambda: not instances(registry, name), 5, "the instance gone")
            # The goodbye removes it at once, not two missed heartbeats later.
            assert time.monotonic() - stopped_at < 1.0
            await client.aclose()
            stderr = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, stderr
    first = stderr.splitlines()[0]
    assert name in first and "uvloop" in first, stderr
    assert "said goodbye" in stderr and "Traceback" not in stderr


def run_once(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "natsreg", "run", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("source", "target", "words"),
    [
        ("svc = 1\n", "nomodule:svc", ["no module 'nomodule'", "folder"]),
        ("svc = 1\n", "bad.py", ["not MODULE:ATTR", "bad:svc"]),
        ("svc = 1\n", "bad:missing", ["has no 'missing'"]),
        ("svc = 1\n", "bad:svc", ["is a int, not a natsreg.Service"]),
        ("def broken(:\n", "bad:svc", ["importing bad failed", "bad.py, line 1"]),
        ("import natsreg\nsvc = natsreg.Service('a b', version='1.0.0')\n", "bad:svc", ["a b"]),
        ("x = 1\nraise RuntimeError('no db')\n", "bad:svc", ["RuntimeError: no db", "line 2"]),
    ],
)
def test_a_target_that_cannot_be_served_is_one_line_that_says_why(
    tmp_path: Path, cli_env: dict[str, str], source: str, target: str, words: list[str]
) -> None:
    (tmp_path / "bad.py").write_text(source)
    result = run_once(tmp_path, cli_env, target)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("natsreg: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
