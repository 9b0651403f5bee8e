"""The probes: ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, for every role.

:func:`answer` is the one place that says what each probe answers; :func:`serve` serves it on
a port of its own (a registry node, a service instance, a process that only calls), and the
HTTP bridge serves the same answers under ``/_natsreg/``. Each role states its own readiness
rule as a ``readiness()`` method returning why it is not ready, or None; a probe server asks
every role it was given.

The server is asyncio with httptools' parser: both probes and scrapes are small GET requests
answered at once, from memory, so it needs no framework and starts no task per request.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol, cast

import anyio
import httptools
import msgspec
from nats.aio.client import Client as NATS

from .errors import ConfigError

__all__ = ["Probed", "Probes", "answer", "nats_problem", "parse_listen", "serve", "worker_listen"]


class Probed(Protocol):
    """What a probe server asks: a registry node, a service instance, a client, the bridge."""

    def readiness(self) -> str | None:
        """Why this role is not ready to take traffic, or None when it is."""


_JSON = b"application/json"
_encode = msgspec.json.Encoder().encode
# A probe or scrape request is one short line and a few headers; anything larger is not one.
_MAX_REQUEST_BYTES = 8 * 1024
# Open connections at once: Prometheus and a kubelet keep one or two each. A newcomer at the
# cap closes the connection that has been quiet longest, so idle or slow clients cannot keep
# the probes from answering.
_MAX_CONNECTIONS = 64
# A connection idle this long is closed (Prometheus scrapes every 15-60 s on one connection).
_IDLE_TIMEOUT_S = 120.0


def parse_listen(text: str, what: str = "http") -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (every interface) as ``(host, port)``;
    port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"{what} {text!r} is not HOST:PORT: write e.g. 127.0.0.1:9100, or :9100 for "
            "every interface"
        )
    return host or "0.0.0.0", int(port)


def nats_problem(nc: NATS) -> str | None:
    """The readiness rule every role shares: its NATS connection is up."""
    if nc.is_connected:
        return None
    if nc.is_reconnecting:
        return "NATS connection lost; reconnecting"
    return "not connected to NATS"


def worker_listen(listen: str) -> tuple[str, int, bool]:
    """Where this process serves its probes, and whether the port is shared: worker N of
    ``natsreg run --workers`` (numbered from 1) takes port + N - 1, so that each worker is
    scraped on its own, and shares it with the worker that replaces it on SIGHUP."""
    from ._supervisor import worker_number

    host, port = parse_listen(listen)
    worker = worker_number()
    if worker is None or not worker.isdigit() or port == 0:
        return host, port, worker is not None
    return host, port + int(worker) - 1, True


def answer(path: str, method: str, roles: Sequence[Probed]) -> tuple[int, bytes, bytes]:
    """``(status, content type, body)`` for a probe path (``/metrics``, ``/healthz`` or
    ``/readyz``): the one home of what each probe says."""
    if method not in ("GET", "HEAD"):
        return 405, _JSON, _encode({"status": "error", "reason": "use GET"})
    if path == "/metrics":
        # Here, not at the top: natsreg.metrics offers serve() from this module.
        from . import metrics

        return 200, metrics.CONTENT_TYPE.encode(), metrics.exposition()
    if path == "/healthz":
        # The process answers, so it is alive: nothing it waits on makes it dead.
        return 200, _JSON, _encode({"status": "alive"})
    if path == "/readyz":
        for role in roles:
            reason = role.readiness()
            if reason is not None:
                return 503, _JSON, _encode({"status": "not ready", "reason": reason})
        return 200, _JSON, _encode({"status": "ready"})
    return 404, _JSON, _encode({"status": "error", "reason": "try /metrics, /healthz or /readyz"})


@dataclass(frozen=True)
class Probes:
    """A probe server listening on ``host:port``."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"  # where this machine reaches it; every interface listens
        return f"http://{host}:{self.port}"


@asynccontextmanager
async def serve(
    listen: str | tuple[str, int],
    *roles: Probed,
    reuse_port: bool = False,
) -> AsyncIterator[Probes]:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``listen`` for the block.

    ``listen`` is ``"HOST:PORT"``, ``":PORT"`` (every interface) or ``(host, port)``; port 0
    picks a free one (``.port`` and ``.url`` of what the block gets say which). ``/readyz``
    is ready when every role given is (anything with a ``readiness()`` method: a
    :class:`~natsreg.Client`, a service instance, a registry node); with none, whenever the
    process answers. For a process that only calls::

        async with natsreg.metrics.serve("127.0.0.1:9100", client) as probes:
            ...

    ``reuse_port`` lets the worker that replaces this one bind while this one drains.
    """
    host, port = parse_listen(listen) if isinstance(listen, str) else listen
    sock = _bind(host, port, reuse_port)
    connections: set[_Connection] = set()
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            lambda: _Connection(roles, connections), sock=sock, backlog=64
        )
    except BaseException:
        sock.close()
        raise
    try:
        yield Probes(host, sock.getsockname()[1])
    finally:
        server.close()
        for connection in list(connections):
            connection.close()
        with anyio.CancelScope(shield=True):
            await server.wait_closed()


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot serve the probes on {host}:{port} ({exc.strerror or exc}): "
            "choose another port (0 picks a free one)"
        ) from exc
    sock.set_inheritable(False)
    return sock


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: each complete request is answered at once, in order."""

    def __init__(self, roles: Sequence[Probed], connections: set[_Connection]) -> None:
        self._roles = roles
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._size = 0
        self._idle: asyncio.TimerHandle | None = None
        #: When this connection last connected or was answered (the event loop's clock).
        self.active_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are asyncio.Transport in all but their class.
        self._transport = cast(asyncio.Transport, transport)
        if len(self._connections) >= _MAX_CONNECTIONS:
            quietest = min(self._connections, key=lambda c: c.active_at)
            self._connections.discard(quietest)
            quietest.abort()
        self._connections.add(self)
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()

    def data_received(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > _MAX_REQUEST_BYTES:
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.close()
        except httptools.HttpParserError:
            self._respond(400, _JSON, _encode({"status": "error", "reason": "bad request"}))
            self.close()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # httptools' callbacks
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode("latin-1")
        try:
            path = httptools.parse_url(self._url).path.decode("latin-1")
        except httptools.HttpParserInvalidURLError:
            path = ""  # answered 404, as any other path that is not a probe's
        self._url = b""
        self._size = 0
        status, content_type, body = answer(path, method, self._roles)
        keep_alive = self._parser.should_keep_alive()
        self._respond(status, content_type, body, keep_alive, head_only=method == "HEAD")
        if keep_alive:
            self._touch()
        else:
            self.close()

    def _respond(
        self,
        status: int,
        content_type: bytes,
        body: bytes,
        keep_alive: bool = False,
        head_only: bool = False,
    ) -> None:
        assert self._transport is not None
        if self._transport.is_closing():
            return
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {content_type.decode()}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        self._transport.write(head.encode() + (b"" if head_only else body))

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self.active_at = loop.time()
        self._idle = loop.call_later(_IDLE_TIMEOUT_S, self.close)
