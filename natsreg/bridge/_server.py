"""Serving the bridge over HTTP: uvicorn (with httptools) and what the bridge adds to it.

The only module of natsreg that imports uvicorn. It subclasses uvicorn's internal
``HttpToolsProtocol`` for the connection caps and the request-head timeout, and wraps its
transport to join a response's writes; pyproject.toml bounds uvicorn's version for that.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import uvicorn
from nats.aio.client import Client as NATS
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .._tasks import background
from ..errors import ConfigError
from ._app import Bridge, create_app
from ._config import LOOPBACK_HOSTS, BridgeConfig, is_loopback

__all__ = ["RunningBridge", "run", "serve"]

log = logging.getLogger("natsreg.bridge")

# Pending connections the kernel holds for the bridge. asyncio accepts up to this many in
# one go before any is seen (and counted), so they are kept out of the connection cap too.
_LISTEN_BACKLOG = 128
# File descriptors kept out of the connection cap: one accept burst, the NATS connection,
# the listening socket, the event loop's own, standard streams and log files.
_FD_RESERVE = _LISTEN_BACKLOG + 64


@dataclass(frozen=True)
class RunningBridge:
    """A bridge serving HTTP: where it listens, and its ASGI app."""

    host: str
    port: int
    app: Bridge = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@asynccontextmanager
async def run(
    nc: NATS,
    config: BridgeConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    reuse_port: bool = False,
) -> AsyncIterator[RunningBridge]:
    """Serve the bridge over HTTP on ``host:port`` (``port=0``: any free port) for the block.

    The HTTP server is uvicorn with httptools, chosen by measurement (bench/RESULTS.md); run
    the event loop with uvloop for the figures there. Leaving the block stops accepting
    connections and gives in-flight requests ``drain_timeout_s`` to finish. ``reuse_port``
    lets several processes listen on one port (SO_REUSEPORT), the kernel spreading the
    connections over them.
    """
    config = config or BridgeConfig()
    config.check_listen(host)
    if not is_loopback(host) and config.allowed_hosts == LOOPBACK_HOSTS:
        log.warning(
            "bridge: listening on %s, but only Host names %s are served (421 for "
            "others): add the names clients use with --allowed-host (allowed_hosts)",
            host or "*",
            ", ".join(LOOPBACK_HOSTS),
        )
    app = create_app(nc, config)
    gate = _Gate(
        _connection_cap(config.max_connections),
        config.max_connections_per_client,
        config.header_timeout_s,
    )
    sock = _bind(host, port, reuse_port)
    # uvicorn calls what it is given as the protocol class; a partial carries this server's
    # gate to every connection, which a class attribute would share between servers.
    protocol: Any = functools.partial(_Protocol, gate=gate)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            interface="asgi3",
            http=protocol,
            lifespan="off",
            loop="none",
            ws="none",
            backlog=_LISTEN_BACKLOG,
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            # Annotated int, but uvicorn hands it to asyncio.wait_for, which takes float seconds.
            timeout_graceful_shutdown=cast(int, config.drain_timeout_s),
            # A client that keeps a connection idle this long is dropped; generous enough for
            # pooled clients, short enough that idle sockets do not pile up.
            timeout_keep_alive=30,
        )
    )
    server.config.load()
    server.lifespan = server.config.lifespan_class(server.config)
    try:
        await server.startup(sockets=[sock])
    except BaseException:
        sock.close()
        raise
    try:
        async with background(server.main_loop):
            try:
                yield RunningBridge(host, sock.getsockname()[1], app)
            finally:
                app.close_event_streams()
                server.should_exit = True
    finally:
        with anyio.CancelScope(shield=True):
            await server.shutdown(sockets=[sock])
            await app.wait_event_streams_closed()


async def serve(
    nc: NATS,
    config: BridgeConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    ready: Callable[[RunningBridge], None] | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve the bridge until SIGINT or SIGTERM (or cancellation), then drain and return.

    ``ready`` is called once the port is open, with where the bridge listens.
    """
    async with run(nc, config, host=host, port=port, reuse_port=reuse_port) as running:
        if ready is not None:
            ready(running)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("bridge: got %s, stopping", signal.Signals(signum).name)
                return


class _CoalescingTransport:
    """A transport whose writes within one event-loop step leave in one send() call.

    uvicorn writes a response's head and body separately: two system calls where one does.
    Joining them raised the bridge's throughput by a fifth on this machine (bench/RESULTS.md).
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] | None = None
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self._flush)
        else:
            self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(b"".join(pending) if len(pending) > 1 else pending[0])

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _connection_cap(wanted: int) -> int:
    # Beyond the file limit accept() fails, and then no new client gets in at all: staying
    # under it keeps a place for a new connection, which then closes a slow one.
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    cap = max(1, min(wanted, soft - _FD_RESERVE))
    if cap < wanted:
        log.info("bridge: at most %d connections (file limit %d)", cap, soft)
    return cap


class _Gate:
    """Which connections a bridge keeps: the caps in all and per client address."""

    __slots__ = ("header_timeout_s", "max_per_client", "max_total", "per_client")

    def __init__(self, max_total: int, max_per_client: int, header_timeout_s: float) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.header_timeout_s = header_timeout_s
        self.per_client: dict[str, int] = {}

    def admit(self, peer: str, open_: set[Any]) -> bool:
        """Count a new connection from ``peer`` in, closing a slow one at the total cap."""
        count = self.per_client.get(peer, 0)
        if count >= self.max_per_client:
            return False
        if len(open_) >= self.max_total and not _close_slowest(open_):
            return False
        self.per_client[peer] = count + 1
        return True

    def leave(self, peer: str) -> None:
        count = self.per_client[peer] - 1
        if count:
            self.per_client[peer] = count
        else:
            del self.per_client[peer]


def _close_slowest(open_: set[Any]) -> bool:
    # Only at the cap, so a scan of the open connections is cheap enough. The oldest one
    # still waiting for its request head goes first, then an idle keep-alive one; a
    # connection whose request is being served is never closed for a newcomer.
    waiting = idle = None
    for protocol in open_:
        if protocol.transport.is_closing():
            continue
        deadline = protocol.head_deadline
        if deadline is not None:
            if waiting is None or deadline < waiting.head_deadline:
                waiting = protocol
        elif idle is None and (protocol.cycle is None or protocol.cycle.response_complete):
            idle = protocol
    victim = waiting or idle
    if victim is None:
        return False
    victim.transport.abort()
    return True


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the bridge's connection caps and head timeout.

    The head timeout costs no timer per request: ``head_deadline`` is set when a request
    head starts and cleared when it is complete, and one timer per connection, re-armed every
    ``header_timeout_s`` at most, closes the connection once the deadline has passed.
    """

    def __init__(self, *args: Any, gate: _Gate, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = gate
        self.head_deadline: float | None = None
        self._peer: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peername = transport.get_extra_info("peername")
        peer = peername[0] if peername else ""
        if not self.gate.admit(peer, self.connections):
            transport.abort()
            return
        self._peer = peer
        super().connection_made(_CoalescingTransport(transport))  # type: ignore[arg-type]
        # Counted from connecting: a connection that never sends a byte is slow too.
        timeout_s = self.gate.header_timeout_s
        self.head_deadline = self.loop.time() + timeout_s
        self._head_timer = self.loop.call_later(timeout_s, self._check_head)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer is None:
            return  # refused in connection_made: uvicorn never saw it
        self.gate.leave(self._peer)
        self._peer = None
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    # Run once per request: calling the base class by name rather than through super()
    # keeps the added cost near 0.1-0.2 us a request, about half (measured with timeit).
    def on_message_begin(self) -> None:
        _begin(self)
        self.head_deadline = self.loop.time() + self.gate.header_timeout_s

    def on_headers_complete(self) -> None:
        self.head_deadline = None
        _headers_complete(self)

    def _check_head(self) -> None:
        if self.transport.is_closing():
            return
        deadline = self.head_deadline
        now = self.loop.time()
        if deadline is not None and now >= deadline:
            self.transport.close()
            return
        delay = deadline - now if deadline is not None else self.gate.header_timeout_s
        self._head_timer = self.loop.call_later(delay, self._check_head)


_begin = HttpToolsProtocol.on_message_begin
_headers_complete = HttpToolsProtocol.on_headers_complete


def _bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        if not hasattr(socket, "SO_REUSEPORT"):
            sock.close()
            raise ConfigError("several bridge workers need SO_REUSEPORT, which this OS lacks")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.set_inheritable(False)
    return sock
