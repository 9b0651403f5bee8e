"""``/_natsreg/events``: the registry's change events and the dashboard's figures as
server-sent events (``text/event-stream``), what the dashboard follows and ``curl -N`` reads.

One :class:`EventStreams` per bridge; it runs while at least one stream is open, and then
holds one subscription to the registry's events and refreshes the fleet's figures every
``FLEET_REFRESH_S`` (one registry query and one ``$SRV.STATS`` round for all streams). Each
message is encoded once and handed to every stream's :class:`Outbox`; a stream whose client
reads too slowly to keep its outbox under ``event_buffer_bytes`` is dropped, so a stalled
client costs bounded memory and never slows the others. The format is in
docs/operations.md ("The dashboard").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable

import anyio
import anyio.lowlevel
import nats.errors
from nats.aio.client import Client as NATS

from .. import wire
from .._gather import gather_stats
from ..client._registry_api import RegistryApi
from ..errors import NatsregError
from ._config import BridgeConfig
from ._fleet import FleetUpdate, Rates, replay
from ._responses import Receive, Send, refuse
from ._routes import Refusal

__all__ = ["FLEET_REFRESH_S", "EventStreams", "Outbox", "sse"]

log = logging.getLogger("natsreg.bridge")

#: How often the fleet's figures (view, rates, warming nodes) are sent while streams are open.
FLEET_REFRESH_S = 2.0
# How long the $SRV.STATS and node rounds listen for replies.
_GATHER_S = 0.25
# Events kept to replay over a snapshot that may predate them (_fleet.replay): a refresh's
# registry query takes well under this.
_REPLAY_S = 5.0
# How long the feed runs on once the last stream is gone.
_LINGER_S = 10.0
# The reconnection delay a browser's EventSource is told to use.
_RETRY = b"retry: 2000\n\n"
_KEEPALIVE = b": keep-alive\n\n"
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx buffers responses by default, which would hold events back.
    (b"x-accel-buffering", b"no"),
]
_STOPPING = Refusal("stopping", "the bridge is stopping")
_NATS_FAILURES = (nats.errors.Error, OSError)


def sse(event: str, data: bytes) -> bytes:
    """One server-sent event; ``data`` is compact JSON, so one line."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class Outbox:
    """What one stream has still to send, up to ``limit`` bytes (or one chunk); past that
    it is dropped."""

    __slots__ = ("_chunks", "_ready", "closed", "dropped", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.dropped = False
        #: The bridge is stopping: send what is left and end.
        self.closed = False
        self._chunks: list[bytes] = []
        self._ready = asyncio.Event()

    def put(self, chunk: bytes) -> bool:
        """Queue ``chunk``; False (and dropped from now on) if that would pass the limit.
        An empty outbox takes any chunk: a fleet larger than the limit still goes out."""
        if self.dropped:
            return False
        if self.size and self.size + len(chunk) > self.limit:
            self.dropped = True
            self._chunks.clear()
            self.size = 0
        else:
            self._chunks.append(chunk)
            self.size += len(chunk)
        self._ready.set()
        return not self.dropped

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def wait(self, timeout_s: float) -> None:
        """Until there is something to send (or the outbox is dropped or closed), at most
        ``timeout_s``."""
        with anyio.move_on_after(timeout_s):
            await self._ready.wait()

    def take(self) -> bytes:
        chunks, self._chunks = self._chunks, []
        self.size = 0
        self._ready.clear()
        return b"".join(chunks)


class EventStreams:
    """The event streams of one bridge, and the one task that feeds them."""

    def __init__(self, nc: NATS, config: BridgeConfig) -> None:
        self._nc = nc
        self.config = config
        self._registry = RegistryApi(nc, prefix=config.prefix)
        self._outboxes: set[Outbox] = set()
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._closed = False
        # The last fleet message: a new stream starts with it.
        self._fleet: bytes | None = None
        self._recent: deque[tuple[float, wire.Event]] = deque(maxlen=4096)
        self._rates = Rates()
        #: Streams dropped so far because their client read too slowly.
        self.dropped = 0

    @property
    def open(self) -> int:
        """Streams being served now."""
        return len(self._outboxes)

    def close(self) -> None:
        """End every stream (each sends what it holds, then ends) and refuse new ones: the
        bridge is stopping. :meth:`wait_closed` waits for the feed to be gone."""
        self._closed = True
        for outbox in self._outboxes:
            outbox.close()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._task is not None:
            self._task.cancel()

    async def wait_closed(self) -> None:
        """Until the feed :meth:`close` stopped has let go of its subscriptions."""
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait((task,))

    async def stream(
        self, send: Send, receive: Receive, method: str, extra: Iterable[tuple[bytes, bytes]]
    ) -> None:
        """Serve one ``/_natsreg/events`` request until the client leaves, is too slow, or
        the bridge stops."""
        limit = self.config.max_event_streams
        if self._closed:
            await refuse(send, _STOPPING, extra)
            return
        if len(self._outboxes) >= limit:
            await refuse(
                send,
                Refusal(
                    "too_many_streams",
                    f"{limit} event streams are open, the most this bridge serves "
                    "(max_event_streams): close one, or raise the limit",
                ),
                (*extra, (b"retry-after", b"10")),
            )
            return
        await send({"type": "http.response.start", "status": 200, "headers": [*_HEADERS, *extra]})
        if method == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        outbox = Outbox(self.config.event_buffer_bytes)
        self._outboxes.add(outbox)
        self._start()
        try:
            first = _RETRY + (self._fleet or b"")
            await send({"type": "http.response.body", "body": first, "more_body": True})
            async with anyio.create_task_group() as tg:
                tg.start_soon(_until_disconnect, receive, tg.cancel_scope)
                await self._write(outbox, send)
                tg.cancel_scope.cancel()
        finally:
            self._leave(outbox)
        if not outbox.dropped:
            await send({"type": "http.response.body", "body": b""})

    async def _write(self, outbox: Outbox, send: Send) -> None:
        keepalive_s = self.config.event_keepalive_s
        while True:
            await outbox.wait(keepalive_s)
            if outbox.dropped:
                return
            chunk = outbox.take() or _KEEPALIVE
            # Blocks while the client's socket is full: meanwhile the outbox fills up, and is
            # dropped at its limit (and from the hub, which then buffers nothing for it).
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if outbox.closed:
                return

    def _start(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._feed())

    def _leave(self, outbox: Outbox) -> None:
        self._outboxes.discard(outbox)
        idle = not self._outboxes and self._idle is None and not self._closed
        if idle and self._task is not None:
            # Going from one page to another closes a stream and opens one: the feed (and
            # the rates' last round) outlives it a little, then stops asking the registry.
            self._idle = asyncio.get_running_loop().call_later(_LINGER_S, self._stop)

    def _stop(self) -> None:
        self._idle = None
        if self._outboxes or self._task is None:
            return
        self._task.cancel()
        self._task = None
        self._fleet = None
        self._recent.clear()
        self._rates = Rates()

    def _publish(self, chunk: bytes) -> None:
        for outbox in list(self._outboxes):
            if not outbox.put(chunk):
                log.warning(
                    "bridge: an event stream's client reads too slowly (over %d bytes "
                    "unsent): dropped it",
                    outbox.limit,
                )
                self.dropped += 1
                self._leave(outbox)

    async def _feed(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow_events)
            while True:
                await self._refresh()
                await anyio.sleep(FLEET_REFRESH_S)

    async def _follow_events(self) -> None:
        allow = self.config.allow
        try:
            async for event in self._registry.watch():
                if allow is not None and event.instance.name not in allow:
                    continue
                self._recent.append((time.monotonic(), event))
                self._publish(sse(event.kind, wire.encode(event)))
                # Queued events come without a pause: letting the streams write each one
                # keeps a burst (a fleet restarting) from filling the outboxes of clients
                # that keep up.
                await anyio.lowlevel.checkpoint()
        except _NATS_FAILURES as exc:
            # The connection closed for good: the refreshes go on saying why.
            log.warning("bridge: the dashboard no longer hears the registry's events: %s", exc)

    async def _refresh(self) -> None:
        update = FleetUpdate()
        stats: list[wire.SrvStats] = []
        nodes: list[wire.NodeStats] = []

        # The three questions go out at once; one that fails leaves its part empty.
        async def ask_stats() -> None:
            nonlocal stats
            with contextlib.suppress(*_NATS_FAILURES):
                stats = await gather_stats(self._nc, None, _GATHER_S)

        async def ask_nodes() -> None:
            nonlocal nodes
            with contextlib.suppress(*_NATS_FAILURES):
                nodes = await self._registry.nodes(wait_s=_GATHER_S)

        snapshot: wire.Snapshot | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask_stats)
            tg.start_soon(ask_nodes)
            try:
                snapshot = await self._registry.instances(timeout_s=min(2.0, self.config.timeout_s))
            except (NatsregError, *_NATS_FAILURES) as exc:
                update.error = str(exc) or type(exc).__name__
        if snapshot is not None:
            allow = self.config.allow
            instances = [i for i in snapshot.instances if allow is None or i.name in allow]
            update.instances = replay(instances, self._recent_events())
            update.warming_up = snapshot.warming_up
            update.mass_expiry = snapshot.mass_expiry
        update.warming_nodes = [n.node for n in nodes if n.warming_up]
        update.rates = self._rates.update(stats, {i.id: i.name for i in update.instances})
        self._fleet = sse("fleet", wire.encode(update))
        self._publish(self._fleet)

    def _recent_events(self) -> list[wire.Event]:
        since = time.monotonic() - _REPLAY_S
        recent = self._recent
        while recent and recent[0][0] < since:
            recent.popleft()
        return [event for _, event in recent]


async def _until_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
