"""Small tools the tests share: waiting for a condition, running a service in a subprocess,
skipping (or under CI failing) a test whose tool is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from natsreg import subjects

SERVICE_PROC = Path(__file__).with_name("service_proc.py")


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        await anyio.sleep(0.02)


def require_tool(found: bool, problem: str) -> None:
    """Skip the calling test when a tool it runs is missing (``problem`` says which, and how
    to install it); under CI, which installs every one (.ci/run), fail it instead."""
    if found:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{problem} (CI installs it, so it must not be skipped there)")
    pytest.skip(problem)


@contextmanager
def start_service(url: str, name: str, prefix: str, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """A natsreg service in its own process (see service_proc.py), killed on exit."""
    with subprocess.Popen(
        [sys.executable, str(SERVICE_PROC), url, name, prefix, *extra],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            yield proc
        finally:
            proc.kill()


def read_id(proc: subprocess.Popen[str]) -> str:
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.startswith("id "), f"service process did not start: {line!r}"
    return line.split()[1]


async def until_warm(nc: NATS, prefix: str, timeout_s: float = 5.0) -> None:
    """Wait until a warm registry node answers queries on ``prefix`` (a warming one takes
    none on ``<prefix>.registry.>``)."""
    subject = subjects.control_subject(prefix, "registry", "stats")

    async def answered() -> bool:
        try:
            await nc.request(subject, b"", timeout=0.5)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return False
        return True

    await eventually(answered, timeout_s, what=f"a warm registry node on {prefix!r}")


class Clock:
    """A clock that moves only when the test moves it (``clock.now += 1.0``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class HeldClock:
    """``time.monotonic`` that stands still from its start until :meth:`release`: whatever it
    times (a node's warm-up) lasts as long as the test needs, however slow the machine."""

    def __init__(self) -> None:
        self._held_at: float | None = time.monotonic()
        self._lost = 0.0

    def __call__(self) -> float:
        now = self._held_at if self._held_at is not None else time.monotonic()
        return now - self._lost

    def release(self) -> None:
        """Run on from where it stood."""
        if self._held_at is not None:
            self._lost += time.monotonic() - self._held_at
            self._held_at = None
