"""Worker processes under a supervisor: ``natsreg run --workers N`` and ``bridge --workers N``.

A worker runs the supervisor's own command line, with two variables that make it a worker:
``NATSREG_WORKER`` (its number, which a service puts in its metadata) and
``NATSREG_READY_FD`` (its end of a socket pair, on which it writes one line once it
serves, and whose closing tells it the supervisor is gone). The supervisor restarts a worker
that dies, and replaces workers one at a time on SIGHUP (or on a code change, with
``--reload``): the new one must say it is ready before the old one is asked to drain, so no
request finds nobody serving. The socket pair is local: nothing of this travels on the bus.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import Process, TaskGroup

__all__ = [
    "READY_FD_ENV",
    "WORKER_ENV",
    "Supervisor",
    "open_watched",
    "tell_ready",
    "terminate",
    "until_orphaned",
    "why_exited",
    "worker_number",
]

WORKER_ENV = "NATSREG_WORKER"
READY_FD_ENV = "NATSREG_READY_FD"
_READY = b"ready\n"
#: A worker that lived this long was healthy: its death starts the backoff afresh.
_STABLE_S = 10.0
_FIRST_BACKOFF_S = 0.25
_MAX_BACKOFF_S = 10.0
#: Failed starts in a row after which the user is told the worker is crash-looping.
_CRASH_LOOP = 3


def worker_number() -> str | None:
    """This process' worker number, when a supervisor started it."""
    return os.environ.get(WORKER_ENV)


def _supervisor_socket() -> socket.socket | None:
    fd = os.environ.get(READY_FD_ENV)
    return socket.socket(fileno=int(fd)) if fd and fd.isdigit() else None


def tell_ready() -> None:
    """Tell the supervisor, if any, that this worker serves."""
    sock = _supervisor_socket()
    if sock is None:
        return
    with suppress(OSError):  # no supervisor listens any more: the orphan watch stops us
        sock.send(_READY)
    sock.detach()


async def until_orphaned() -> None:
    """Return when the supervisor is gone (killed with -9, say); never without one.

    The supervisor holds its end of the socket pair for the worker's life: the end of the
    file is its death, and a worker left alone drains and exits rather than serve unwatched.
    """
    sock = _supervisor_socket()
    if sock is None:
        await anyio.sleep_forever()
        return
    try:
        while True:
            await anyio.wait_readable(sock)
            with suppress(BlockingIOError):
                if sock.recv(64, socket.MSG_DONTWAIT) == b"":
                    return
    finally:
        sock.detach()


def why_exited(returncode: int) -> str:
    """How a child process ended, said in a line: ``exited with status 1``, ``was killed by
    SIGKILL``."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


async def open_watched(
    argv: Sequence[str], env: Mapping[str, str], *, stdin: int | None = subprocess.DEVNULL
) -> tuple[Process, socket.socket]:
    """``argv`` (a natsreg service) started in a session of its own, so that a terminal's
    Ctrl-C reaches only this process, which then stops it in order; with a socket pair it
    is told of (``READY_FD_ENV``): it says on it when it serves (:func:`tell_ready`), and
    the closing of our end, returned and to be kept open while it lives, tells it we are
    gone, even after a kill -9 (:func:`until_orphaned`)."""
    ours, theirs = socket.socketpair()
    with theirs:
        try:
            process = await anyio.open_process(
                list(argv),
                env={**env, READY_FD_ENV: str(theirs.fileno())},
                pass_fds=(theirs.fileno(),),
                stdin=stdin,
                stdout=None,
                stderr=None,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
    return process, ours


async def terminate(
    process: Process, within_s: float, overdue: Callable[[], None] = lambda: None
) -> bool:
    """SIGTERM (a natsreg service drains and says goodbye on it), then, if it still runs
    ``within_s`` later, ``overdue()`` and SIGKILL; once it has exited, whether it was
    killed so."""
    killed = False
    if process.returncode is None:
        with suppress(ProcessLookupError):
            process.terminate()
        with anyio.move_on_after(within_s):
            await process.wait()
        if process.returncode is None:
            overdue()
            killed = True
            with suppress(ProcessLookupError):
                process.kill()
    await process.wait()
    return killed


@dataclass(eq=False)
class _Worker:
    number: int
    process: Process
    started_at: float
    #: The supervisor's end of the socket pair the worker says it is ready on.
    channel: socket.socket
    ready: bool = False
    #: The supervisor asked it to stop: its exit is no death.
    stopping: bool = False

    @property
    def name(self) -> str:
        return f"worker {self.number} (pid {self.process.pid})"


class Supervisor:
    """Runs ``command`` as ``workers`` processes until SIGINT or SIGTERM.

    ``say`` prints one line for the user; ``watch`` is a folder whose Python files, when
    they change, replace the workers as SIGHUP does.
    """

    def __init__(
        self,
        command: Sequence[str],
        workers: int,
        *,
        drain_timeout_s: float,
        say: Callable[[str], None],
        watch: Path | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        self._command = list(command)
        self._count = workers
        self._drain_timeout_s = drain_timeout_s
        self._say = say
        self._watch = watch
        self._start_timeout_s = start_timeout_s
        #: The worker serving under each number.
        self._slots: dict[int, _Worker] = {}
        #: Every process started and not yet reaped, serving or not.
        self._live: set[_Worker] = set()
        self._stopping = False
        self._rolling = False
        self._roll_again = False
        self._tg: TaskGroup | None = None

    async def run(self) -> int:
        """0 after a clean stop; 1 when the workers could not be started."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            # Signals are taken from the start, so that Ctrl-C during startup stops cleanly.
            tg.start_soon(self._on_signals)
            async with anyio.create_task_group() as starting:
                for number in range(1, self._count + 1):
                    starting.start_soon(self._start_slot, number)
            if len(self._slots) < self._count and not self._stopping:
                self._say("not every worker started; stopping the others")
                await self._stop_all()
                tg.cancel_scope.cancel()
                return 1
            if not self._stopping:
                pids = ", ".join(str(w.process.pid) for w in self._slots.values())
                self._say(
                    f"{self._count} worker{'s' if self._count > 1 else ''} serving "
                    f"(pids {pids}); kill -HUP {os.getpid()} "
                    "replaces them one by one, Ctrl-C stops them"
                )
            if self._watch is not None:
                tg.start_soon(self._on_changes, self._watch)
        return 0

    # -- starting and stopping one worker ----------------------------------------------------

    async def _start_slot(self, number: int) -> None:
        worker = await self._spawn(number)
        if worker is not None:
            self._slots[number] = worker

    async def _spawn(self, number: int) -> _Worker | None:
        """A new worker under ``number``, once it says it serves; None if it did not."""
        assert self._tg is not None
        # A session of its own: a terminal's Ctrl-C reaches only the supervisor, which then
        # stops the workers in order rather than all of them dying at once.
        process, ours = await open_watched(self._command, {**os.environ, WORKER_ENV: str(number)})
        worker = _Worker(number, process, time.monotonic(), ours)
        self._live.add(worker)
        self._tg.start_soon(self._reap, worker)
        ready = b""
        with anyio.move_on_after(self._start_timeout_s):
            await anyio.wait_readable(ours)
            # A worker that exits before it is ready closes its end: b"".
            ready = ours.recv(len(_READY))
        if ready == _READY:
            worker.ready = True
            return worker
        await self._stop(worker)
        if not self._stopping:
            returncode = process.returncode
            why = why_exited(returncode) if returncode is not None else "did not start in time"
            self._say(f"{worker.name} {why} before it was ready")
        return None

    async def _stop(self, worker: _Worker) -> None:
        # SIGTERM: the worker drains and says goodbye; after the drain timeout, and a margin
        # for its goodbye, it is killed.
        worker.stopping = True
        await terminate(
            worker.process,
            self._drain_timeout_s + 5.0,
            lambda: self._say(f"{worker.name} did not stop within the drain timeout; killing it"),
        )

    async def _reap(self, worker: _Worker) -> None:
        await worker.process.wait()
        worker.channel.close()
        self._live.discard(worker)
        if worker.stopping or not worker.ready or self._stopping:
            return
        if self._slots.get(worker.number) is worker:
            del self._slots[worker.number]
        self._say(f"{worker.name} {why_exited(worker.process.returncode or 0)}; restarting it")
        await self._restart(worker.number, time.monotonic() - worker.started_at)

    async def _restart(self, number: int, lived_s: float) -> None:
        # Backoff: a worker that dies soon after starting is started again later and later,
        # and the user is told it is crash-looping; one that ran a while is restarted at once.
        failures = 0 if lived_s > _STABLE_S else 1
        while not self._stopping:
            if failures:
                delay = min(_FIRST_BACKOFF_S * 2 ** (failures - 1), _MAX_BACKOFF_S)
                if failures >= _CRASH_LOOP:
                    self._say(
                        f"worker {number} is crash-looping: {failures} starts failed or died "
                        f"within {_STABLE_S:.0f} s; next try in {delay:.1f} s"
                    )
                await anyio.sleep(delay)
            started = time.monotonic()
            worker = await self._spawn(number)
            if worker is not None:
                self._slots[number] = worker
                self._say(f"{worker.name} is serving again")
                return
            failures = failures + 1 if time.monotonic() - started < _STABLE_S else 1

    # -- the whole set -------------------------------------------------------------------------

    async def _roll(self, why: str) -> None:
        """Replace each worker in turn: the new one serves before the old one drains."""
        if self._rolling:
            self._roll_again = True
            return
        self._rolling = True
        try:
            self._say(f"{why}: replacing the workers one by one")
            for number in sorted(self._slots):
                if self._stopping:
                    return
                old = self._slots.get(number)
                new = await self._spawn(number)
                if new is None:
                    self._say(
                        f"the new worker {number} did not start: the old workers keep serving"
                    )
                    return
                self._slots[number] = new
                if old is not None:
                    await self._stop(old)
            self._say("every worker replaced")
        finally:
            self._rolling = False
            if self._roll_again and not self._stopping:
                self._roll_again = False
                assert self._tg is not None
                self._tg.start_soon(self._roll, "changed again")

    async def _stop_all(self) -> None:
        self._stopping = True
        async with anyio.create_task_group() as tg:
            for worker in list(self._live):
                tg.start_soon(self._stop, worker)

    async def _on_signals(self) -> None:
        assert self._tg is not None
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._tg.start_soon(self._roll, "SIGHUP")
                    continue
                self._say(f"stopping {len(self._live)} workers (they drain and say goodbye)")
                await self._stop_all()
                self._say("every worker stopped")
                self._tg.cancel_scope.cancel()
                return

    async def _on_changes(self, folder: Path) -> None:
        from watchfiles import PythonFilter, awatch

        assert self._tg is not None
        # The watch is in place only once the generator has run: it says so at its first
        # yield (a 1 s tick with no change), so a file saved after the line is never missed.
        watching = False
        async for changes in awatch(
            folder, watch_filter=PythonFilter(), rust_timeout=1000, yield_on_timeout=True
        ):
            if not watching:
                watching = True
                self._say(f"watching {folder} for changes to .py files")
            if changes:
                names = sorted({Path(path).name for _, path in changes})
                self._tg.start_soon(self._roll, f"{', '.join(names)} changed")
