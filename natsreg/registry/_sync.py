"""A starting registry node warms from a warm peer: the peer's whole view, then what the node
heard meanwhile (docs/protocol.md, "Warming from a peer").

The node subscribes to the control subjects first and holds what it hears, then asks
``<prefix>.sync.<its node id>`` (queue group ``natsreg-registry``, subscribed by warm nodes
only). One warm peer answers with its view as numbered chunks (``wire.SyncChunk``, encoded by
:func:`sync_chunks`): what many instances share (``wire.SyncShape``: service, version,
endpoints, metadata...) once, and each instance as a row of its own fields, with its sequence
and ``age_s``. The node checks every chunk, every shape once and every row, restores the
instances into its view (:meth:`View.restore_all`), then applies what it held, where the view's
sequence rule drops whatever the snapshot already holds. Its view is then the peer's, plus
what changed since, and it is warm.

Anything short of a whole, well-formed answer (no warm peer, a peer that stops mid-transfer, a
lost or malformed chunk, more instances than this node holds, more held messages than it may
keep) discards the answer: the node applies what it held and falls back to asking every
instance to re-announce. It is never warm on part of a view.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence

import anyio
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from .. import subjects, wire
from ..errors import BUDGET_HEADER, NO_RESPONDERS_STATUS, STATUS_HEADER
from ._log import log
from ._view import View

#: How long a starting node waits for a peer's first chunk (the peer may have queries queued
#: before it: this is their budget), and then for each next one: a peer silent that long is
#: gone, and the node falls back to re-announce.
FIRST_CHUNK_S = 2.0
NEXT_CHUNK_S = 1.0
#: Chunks one answer may hold: as many as a registry node may send in answer to one request
#: (``permissions.REGISTRY_MAX_RESPONSES``).
MAX_CHUNKS = 1024
#: Control messages held while the view streams in: as many as the node holds instances, and
#: at least this many. A full hold ends the sync (the node falls back to re-announce).
MIN_HELD = 10_000
#: Instances in one chunk at most (fewer where they would not fit the server's max_payload):
#: a row is about 100 bytes, so a chunk of a plain fleet is under the default 1 MB.
CHUNK_ROWS = 8192


class SyncFailed(Exception):
    """The peer's answer cannot be used; the message says why, for the log."""


class PeerSync:
    """The starting side: :meth:`hold` while :meth:`run` fetches and restores the peer's view."""

    def __init__(
        self,
        nc: NATS,
        view: View,
        dropped: Counter[str],
        *,
        prefix: str,
        node_id: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nc = nc
        self._view = view
        self._dropped = dropped
        self._subject = subjects.control_subject(prefix, "sync", node_id)
        self._clock = clock
        # Control messages heard while the view streams in and until they are applied, in
        # the order heard; None when not syncing.
        self._held: deque[wire.ControlMessage] | None = None
        self._max_held = max(view.max_instances, MIN_HELD)
        self._scope: anyio.CancelScope | None = None
        #: True from start until the node took the peer's view or gave up on it.
        self.running = False
        #: The peer the view came from and how long it took, once synced (for logs, benches).
        self.peer = ""
        self.took_s = 0.0

    def hold(self, message: wire.ControlMessage) -> bool:
        """While syncing, keep ``message`` to apply after the peer's view; False otherwise
        (apply it now)."""
        held = self._held
        if held is None:
            return False
        if len(held) >= self._max_held:
            # The node stops waiting for the peer, and takes messages as they come.
            if self._scope is not None:
                self._scope.cancel()
            return False
        held.append(message)
        return True

    async def run(self, take: Callable[[wire.ControlMessage], Awaitable[None]]) -> bool:
        """Fetch a warm peer's view and restore it; then ``take`` every held message. True
        when the view is the peer's; False when the node must warm by re-announce."""
        self.running = True
        held: deque[wire.ControlMessage] = deque()
        self._held = held
        start = self._clock()
        restored = False
        try:
            with anyio.CancelScope() as self._scope:
                self.peer, instances = await self._fetch()
                self._dropped.update(self._view.restore_all(instances))
                restored = True
            if not restored:
                log.warning(
                    "warming from a peer: held %d messages, as many as it may; asking every "
                    "instance to re-announce instead",
                    self._max_held,
                )
        except SyncFailed as exc:
            log.info("not warming from a peer (%s): asking every instance to re-announce", exc)
        finally:
            self._scope = None
            # Still holding while it applies: what comes meanwhile is applied after, in order.
            applied = 0
            while held:
                await take(held.popleft())
                applied += 1
            self._held = None
            self.running = False
        if restored:
            self.took_s = self._clock() - start
            log.info(
                "warm from peer %s in %.3f s: %d instances, then %d messages heard meanwhile",
                self.peer,
                self.took_s,
                len(self._view),
                applied,
            )
        return restored

    async def _fetch(self) -> tuple[str, list[wire.InstanceView]]:
        """The peer's name and whole view, every chunk, shape and row checked; SyncFailed
        otherwise."""
        nc = self._nc
        inbox = nc.new_inbox()
        try:
            sub = await nc.subscribe(inbox, pending_msgs_limit=MAX_CHUNKS)
            await nc.publish(
                self._subject,
                b"",
                reply=inbox,
                headers={BUDGET_HEADER: str(int(FIRST_CHUNK_S * 1000))},
            )
        except nats.errors.Error as exc:
            raise SyncFailed(f"cannot ask: {exc}") from exc
        try:
            return await self._gather(sub)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _gather(self, sub: Subscription) -> tuple[str, list[wire.InstanceView]]:
        answer = SyncAnswer(self._view.max_instances, self._dropped)
        for part in range(MAX_CHUNKS):
            try:
                msg = await sub.next_msg(timeout=NEXT_CHUNK_S if part else FIRST_CHUNK_S)
            except nats.errors.TimeoutError:
                raise SyncFailed(f"no chunk {part} from the peer in time") from None
            except nats.errors.Error as exc:
                raise SyncFailed(f"connection: {exc}") from exc
            if msg.headers and msg.headers.get(STATUS_HEADER) == NO_RESPONDERS_STATUS:
                raise SyncFailed("no warm peer")
            if answer.take(msg.data):
                return answer.node, answer.instances
        raise SyncFailed(f"more than {MAX_CHUNKS} chunks")


class SyncAnswer:
    """A peer's answer as its chunks come: each checked, its instances made at once."""

    def __init__(self, cap: int, dropped: Counter[str]) -> None:
        self._cap = cap
        self._dropped = dropped
        self._first: wire.SyncChunk | None = None
        self._shapes: list[wire.SyncShape] = []
        self._part = 0
        #: The instances of the chunks taken so far, and the peer that sent them.
        self.instances: list[wire.InstanceView] = []
        self.node = ""

    def take(self, data: bytes) -> bool:
        """Take the next chunk: True when it was the last. SyncFailed (what it refused
        counted in ``dropped``) unless it follows the chunks before and keeps every limit."""
        part = self._part
        try:
            chunk = wire.decode_sync_chunk(data)
        except wire.MALFORMED:
            self._dropped["malformed"] += 1
            raise SyncFailed(f"chunk {part} is malformed") from None
        first = self._first = self._first or chunk
        shapes, instances = self._shapes, self.instances
        if chunk.warming_up or chunk.node != first.node or chunk.part != part:
            raise SyncFailed(f"chunk {part} does not follow (part {chunk.part})")
        if chunk.total != first.total or first.total > self._cap:
            raise SyncFailed(f"the peer holds {first.total} instances, this node {self._cap}")
        if len(instances) + len(chunk.rows) > first.total:
            raise SyncFailed(f"chunk {part} holds more than the {first.total} announced")
        if len(shapes) + len(chunk.shapes) > first.total:
            raise SyncFailed(f"chunk {part} holds more shapes than instances")
        rows = chunk.rows
        try:
            for shape in chunk.shapes:
                wire.check(shape)
                shapes.append(shape)
            wire.check_sync_rows(rows)
        except wire.Invalid as exc:
            self._dropped[exc.reason] += 1
            raise SyncFailed(f"an instance in chunk {part}: {exc}") from None
        used = [row.shape for row in rows]
        if used and (min(used) < 0 or max(used) >= len(shapes)):
            raise SyncFailed(f"chunk {part}: an instance of a shape unsent")
        instances.extend(wire.sync_views(shapes, rows))
        self._part += 1
        if chunk.more:
            return False
        if len(instances) != first.total:
            raise SyncFailed(f"{len(instances)} instances of {first.total} arrived")
        self.node = first.node
        return True


def sync_chunks(
    node: str, revision: int, held: Sequence[tuple[wire.InstanceView, float]], max_bytes: int
) -> Iterator[bytes]:
    """The answer to a starting peer: the instances ``held`` (each with its ``age_s``) as
    :class:`wire.SyncChunk` messages of at most ``max_bytes`` each, every shape sent once,
    in the first chunk that uses it. Each chunk is made as it is taken, so the peer reads
    one while this node makes the next."""
    rows = _Rows(held)
    total, part, size = len(held), 0, CHUNK_ROWS
    while True:
        chunk_rows, new_shapes = rows.take(size)
        more = rows.taken + len(chunk_rows) < total
        payload = wire.encode(
            wire.SyncChunk(
                node=node,
                revision=revision,
                part=part,
                more=more,
                total=total,
                shapes=new_shapes,
                rows=chunk_rows,
            )
        )
        if len(payload) > max_bytes and size > 1:
            size //= 2
            continue
        yield payload
        if not more:
            return
        rows.sent(len(chunk_rows))
        part += 1


class _Rows:
    """The rows and shapes of a sync answer, made as chunks take them: shapes are numbered
    in the order rows first use them, so a chunk's new shapes are those up to the highest
    one it uses."""

    def __init__(self, held: Sequence[tuple[wire.InstanceView, float]]) -> None:
        self._held = held
        self._key = msgspec.msgpack.Encoder().encode
        self._index: dict[bytes, int] = {}
        self._shapes: list[wire.SyncShape] = []
        self._rows: list[wire.SyncRow] = []  # made, not yet sent
        self._shapes_sent = 0
        #: Rows sent in chunks so far.
        self.taken = 0

    def take(self, size: int) -> tuple[list[wire.SyncRow], list[wire.SyncShape]]:
        """The next (at most) ``size`` rows, and the shapes they are the first to use."""
        rows = self._rows
        start = self.taken + len(rows)
        for view, age_s in self._held[start : self.taken + size]:
            rows.append(self._row(view, age_s))
        chunk = rows[:size]
        upto = max((row.shape + 1 for row in chunk), default=0)
        return chunk, self._shapes[self._shapes_sent : upto]

    def sent(self, count: int) -> None:
        """The first ``count`` rows taken were sent, with their new shapes."""
        upto = max((row.shape + 1 for row in self._rows[:count]), default=0)
        self._shapes_sent = max(self._shapes_sent, upto)
        del self._rows[:count]
        self.taken += count

    def _row(self, view: wire.InstanceView, age_s: float) -> wire.SyncRow:
        described = (
            view.name,
            view.version,
            view.kind,
            view.description,
            view.metadata,
            view.endpoints,
            view.heartbeat_s,
            view.events,
            view.emits,
        )
        shape = self._index.setdefault(self._key(described), len(self._index))
        if shape == len(self._shapes):
            self._shapes.append(wire.SyncShape(*described))
        load = view.load
        return wire.SyncRow(
            view.id,
            shape,
            view.seq,
            view.host,
            view.pid,
            view.started,
            view.health,
            load.in_flight,
            load.served,
            load.errors,
            round(age_s, 3),
            view.conn,
            view.pace_s,
        )
