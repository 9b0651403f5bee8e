"""Shared by the tests of ``natsreg run``: an app module on disk and a running command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

import natsreg
from natsreg import wire

# A service as a user writes one: ``slow`` sleeps for the seconds it is sent, ``whoami`` says
# which process answered and what its start hook opened, ``charge`` is not idempotent.
APP = """
import asyncio, os
import natsreg
from natsreg import wire

svc = natsreg.Service({name!r}, version={version!r})

@svc.on_start
async def start(ctx):
    ctx.state.opened = "db"

@svc.endpoint("whoami", idempotent=True)
async def whoami(req):
    return {{"pid": os.getpid(), "opened": req.state.opened, "code": {version!r}}}

@svc.endpoint("slow", idempotent=True)
async def slow(req):
    await asyncio.sleep(req.json())
    return "done"

@svc.endpoint("charge")
async def charge(req):
    await asyncio.sleep(0.005)
    return req.json()
"""


def write_app(folder: Path, module: str, name: str, version: str = "1.0.0") -> Path:
    path = folder / f"{module}.py"
    path.write_text(APP.format(name=name, version=version))
    return path


@contextmanager
def natsreg_run(folder: Path, env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[str]]:
    """``natsreg run ARGS`` in ``folder``, killed (with its group) if still running at exit."""
    with subprocess.Popen(
        [sys.executable, "-m", "natsreg", "run", *args],
        cwd=folder,
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as proc:
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def exited(pid: int) -> bool:
    """Whether process ``pid`` has exited. An orphan is reaped by whoever adopts it, maybe
    later: a zombie has exited too."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def instances(registry: natsreg.Registry, name: str) -> list[wire.InstanceView]:
    return list(registry.snapshot(name=name).instances)


class Lines:
    """A process' stderr (or ``stream``), read by a thread as it comes, for tests that wait on
    what it says."""

    def __init__(self, proc: subprocess.Popen[str], stream: IO[str] | None = None) -> None:
        self.lines: list[str] = []
        stream = stream or proc.stderr
        assert stream is not None
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        # The stream is closed under us when the test leaves natsreg_run: that is its end.
        with suppress(ValueError, OSError):
            for line in stream:
                self.lines.append(line.rstrip("\n"))

    def said(self, words: str) -> bool:
        return any(words in line for line in self.lines)

    def text(self) -> str:
        return "\n".join(self.lines)

    def join(self, timeout_s: float) -> None:
        """Wait until the stream ends (the process has exited and its output is all read)."""
        self._thread.join(timeout_s)
