"""A registry node: keeps a view of every instance from their own announcements.

Any number of nodes run side by side; each hears every announcement, heartbeat and goodbye,
answers queries in one queue group (so NATS spreads them across nodes) and publishes each
change it sees as an :class:`~natsreg.wire.Event`.

Every message is believed only as far as it can be checked (docs/protocol.md, "Identity,
sequence and the registry's rules"): its subject must name the service and instance its body
speaks for, its body must keep within wire.py's limits, its sequence may not jump further
than the sender could have counted, and the node holds at most so many instances. What fails
is dropped and counted by reason in :attr:`Registry.dropped` (and ``NodeStats.dropped``).

A starting node warms from a warm peer's view (``_sync.py``), or else by asking every instance
to re-announce; its subscriptions' queues are bounded and what overflows them is counted
(``_backpressure.py``). Sharded nodes split the fleet by service (``_sharded.py``).
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import asynccontextmanager

import anyio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID

from .. import _figures, _natspy, subjects, wire
from .._probes import nats_problem
from .._tasks import background
from ..errors import ConfigError
from ._admit import Admission
from ._backpressure import PENDING_BYTES, SHED_ANNOUNCEMENTS_BYTES, Backpressure
from ._changes import Changes
from ._log import log, unsubscribe_all
from ._micro import MAX_INFO_ASKS, MICRO_INFO_EVERY, MicroPoll
from ._pace import DEFAULT_PACE_S, Pacer, check_pace
from ._queries import Queries
from ._shard import Shard
from ._sharded import ShardedNode
from ._sync import FIRST_CHUNK_S, PeerSync, sync_chunks
from ._view import MAX_INSTANCES, MAX_PER_SERVICE, NOTHING, Outcome, View

__all__ = [
    "DEFAULT_PACE_S",
    "MAX_INFO_ASKS",
    "MICRO_INFO_EVERY",
    "REANNOUNCE_PER_S",
    "Registry",
    "reannounce_window_s",
]


#: A refused announcement is logged at most once per this interval (the count is in stats).
CAPACITY_LOG_S = 60.0
#: A node that asks every instance it holds to re-announce (after a reconnect) spreads the
#: round so that at most this many announcements a second come: about what one node takes
#: in on a core. Asked within half a second, 250,000 announcements (100 MB) overran
#: nats-server's buffer for the node (64 MB), which cut it off, and it asked again.
REANNOUNCE_PER_S = 10_000


def reannounce_window_s(jitter_s: float, instances: int) -> float:
    """Over how long a node asks ``instances`` to re-announce: ``jitter_s`` at least, longer
    for a fleet that would come faster than :data:`REANNOUNCE_PER_S`, and at most what an
    instance waits (``wire.MAX_DISCOVER_JITTER_S``)."""
    return min(max(jitter_s, instances / REANNOUNCE_PER_S), wire.MAX_DISCOVER_JITTER_S)


class Registry(anyio.AsyncContextManagerMixin):
    """A registry node on ``nc``; enter it with ``async with`` to run it.

    ``missed_heartbeats``: an instance expires after this many heartbeat intervals of
    silence (plus half an interval of grace). ``discover_jitter_s``: on start, instances are
    asked to re-announce within this window, so a restart is no burst. ``micro_poll_s``: how
    often plain ADR-32 services (which do not heartbeat) are pinged (``$SRV.PING``; every
    fifth poll ``$SRV.INFO``); one not heard from for three polls is gone. ``sync``: on
    start, take the view of a warm peer first (re-announce stays the fallback).
    ``max_per_service`` and ``max_instances`` cap the instances held for one service and in
    all; a new instance beyond either is refused and counted as ``capacity``.
    ``system_nc``: a system-account connection, whose disconnect advisories remove a crashed
    instance at once; while it is up, the node lets the fleet heartbeat every ``pace_s``
    (0: not at all; docs/protocol.md, "Paced heartbeats").
    ``shard``: hold only this node's share of the services, with the other sharded nodes on
    the prefix (docs/protocol.md, "Sharding"; it warms by re-announce, not from a peer).
    """

    def __init__(
        self,
        nc: NATS,
        *,
        prefix: str = subjects.DEFAULT_PREFIX,
        missed_heartbeats: float = 2.0,
        discover_jitter_s: float = 0.5,
        micro_poll_s: float = 1.0,
        sweep_s: float = 0.1,
        system_nc: NATS | None = None,
        pace_s: float = DEFAULT_PACE_S,
        max_per_service: int = MAX_PER_SERVICE,
        max_instances: int = MAX_INSTANCES,
        sync: bool = True,
        shard: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        subjects.check_prefix(prefix)
        if missed_heartbeats < 1:
            raise ConfigError(f"missed_heartbeats must be at least 1, got {missed_heartbeats}")
        if micro_poll_s <= 0 or sweep_s <= 0 or discover_jitter_s < 0:
            raise ConfigError("micro_poll_s and sweep_s must be > 0, discover_jitter_s >= 0")
        check_pace(pace_s)
        if max_per_service < 1 or max_instances < 1:
            raise ConfigError("max_per_service and max_instances must be at least 1")
        self.node_id: str = NUID().next().decode()
        self.prefix = prefix
        self.discover_jitter_s = discover_jitter_s
        self.micro_poll_s = micro_poll_s
        self.sweep_s = sweep_s
        self._nc = nc
        self._system_nc = system_nc
        for conn in (nc, system_nc):
            if conn is not None:
                _natspy.adopt(conn)  # a late PONG must not stop its read loop
        self._clock = clock
        # Micro services are polled: three missed polls and they are gone.
        self._view = View(
            missed_heartbeats=missed_heartbeats,
            micro_ttl_s=3 * micro_poll_s,
            max_per_service=max_per_service,
            max_instances=max_instances,
            clock=clock,
        )
        self._changes = Changes(nc, prefix=prefix, node_id=self.node_id)
        self._warm_until = 0.0
        self._started = clock()
        #: Messages dropped, by reason (see wire.NodeStats.dropped).
        self.dropped: Counter[str] = Counter()
        self._capacity_logged_at = float("-inf")
        #: Control messages taken in (past the subject check), by kind.
        self.messages: Counter[str] = Counter()
        self._admission = Admission(prefix, self.dropped, self.messages)
        self._pressure = Backpressure(nc, self.dropped, clock=clock)
        self._sync = PeerSync(
            nc, self._view, self.dropped, prefix=prefix, node_id=self.node_id, clock=clock
        )
        self._sync_first = sync and not shard
        self._sharded = shard
        # This node's sharded part, while it runs sharded (_sharded.py).
        self._part: ShardedNode | None = None
        self._announcements = subjects.control_subject(prefix, "announce", ">")
        self._pacer = (
            Pacer(nc, system_nc, prefix=prefix, node_id=self.node_id, pace_s=pace_s)
            if system_nc is not None and pace_s > 0
            else None
        )
        self._queries: Queries | None = None
        # Reconnects the sweep has seen; one more means the node must hear everyone again.
        self._reconnects = nc.stats["reconnects"]
        self._running = False

    @property
    def revision(self) -> int:
        return self._changes.revision

    @property
    def expiries(self) -> Counter[str]:
        """Instances gone, by reason (``expired``, ``goodbye``, ``disconnected``)."""
        return self._changes.expiries

    @property
    def shard(self) -> Shard | None:
        """This node's share of the services, while it runs sharded; None otherwise."""
        return self._part.shard if self._part is not None else None

    @property
    def answers_encoded(self) -> int:
        """Query answers encoded since start (the rest came from the cache)."""
        return self._queries.encoded if self._queries is not None else 0

    def query_latency(self) -> dict[str, _figures.Latency]:
        """How long answering queries took, by kind of query (for Prometheus)."""
        return self._queries.latency if self._queries is not None else {}

    @property
    def warming_up(self) -> bool:
        """True until the node holds a warm peer's view, or else until its re-announce round
        can have been heard in full."""
        return self._sync.running or self._clock() < self._warm_until

    @property
    def nc(self) -> NATS:
        """The NATS connection the node listens on (the caller's to close)."""
        return self._nc

    def readiness(self) -> str | None:
        """Why this node should not be asked yet, or None: it must be running, connected to
        NATS, and warm (its view may lack instances until every one has re-announced)."""
        if not self._running:
            return "the registry node is not running"
        problem = nats_problem(self._nc)
        if problem is not None:
            return problem
        if self.warming_up or self._nc.stats["reconnects"] != self._reconnects:
            return "warming up: hearing every instance re-announce"
        return None

    def stats(self) -> wire.NodeStats:
        """The node's own figures: sizes, drops, warm-up."""
        return wire.NodeStats(
            node=self.node_id,
            revision=self._changes.revision,
            warming_up=self.warming_up,
            uptime_s=round(self._clock() - self._started, 3),
            instances=len(self._view),
            services=self._view.service_count(),
            dropped=dict(self.dropped),
            mass_expiry=self._mass_expiry(),
            max_per_service=self._view.max_per_service,
            max_instances=self._view.max_instances,
            pace_s=self._pacer.pace_s if self._pacer is not None and self._pacer.vouching else 0.0,
            shard_nodes=len(self.shard.nodes) if self.shard is not None else 0,
        )

    def service_list(self) -> wire.ServiceList:
        """Every service at every version, summed over its instances."""
        return wire.ServiceList(
            node=self.node_id,
            revision=self._changes.revision,
            warming_up=self.warming_up,
            services=self._view.summaries(),
            mass_expiry=self._mass_expiry(),
        )

    def answer_version(self) -> tuple[object, ...]:
        """What an answer depends on besides the question: equal tuples, equal answers
        (but for ``age_s``)."""
        alert = self._view.mass_alert
        return (
            self._changes.revision,
            self.warming_up,
            None if alert is None else (alert.since, alert.lost, alert.before),
        )

    def _mass_expiry(self) -> wire.MassExpiry | None:
        alert = self._view.mass_alert
        if alert is None:
            return None
        return wire.MassExpiry(
            lost=alert.lost, before=alert.before, since_s=round(self._clock() - alert.since, 3)
        )

    def snapshot(self, *, name: str | None = None, instance_id: str | None = None) -> wire.Snapshot:
        """The node's current view (optionally one service or one instance)."""
        return wire.Snapshot(
            node=self.node_id,
            revision=self._changes.revision,
            warming_up=self.warming_up,
            instances=self._view.instances(name=name, instance_id=instance_id),
            mass_expiry=self._mass_expiry(),
            warm_in_s=round(max(self._warm_until - self._clock(), 0.0), 3),
        )

    def sync_answer(self, max_bytes: int) -> Iterator[bytes]:
        """The whole view as a starting peer takes it, in messages of at most ``max_bytes``
        (docs/protocol.md, "Warming from a peer")."""
        return sync_chunks(self.node_id, self._changes.revision, self._view.heard(), max_bytes)

    # -- lifetime ----------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Registry]:
        subs: list[Subscription] = []
        part = self._part = self._new_part() if self._sharded else None
        queries = self._queries = Queries(
            self._nc, self, self.dropped, self._pressure.subscribe, clock=self._clock
        )
        if queries.recording:
            _figures.LIVE.registries.add(self)
        try:
            # A sharded node hears goodbyes and heartbeats of its own services only (Shard).
            # Heartbeats, the bulk, and announcements, a fleet's storm when it starts, are
            # shed while the node catches up (_backpressure.py); goodbyes never are.
            on_announce = self._on_control if part is None else part.on_announce
            await self._pressure.take(
                self._announcements, on_announce, shed_above=SHED_ANNOUNCEMENTS_BYTES
            )
            if part is None:
                heartbeats = subjects.control_subject(self.prefix, "hb", ">")
                await self._pressure.take(heartbeats, self._on_control, shed_above=PENDING_BYTES)
                goodbyes = subjects.control_subject(self.prefix, "bye", ">")
                await self._pressure.take(goodbyes, self._on_control)
            else:
                await part.start()
            await queries.start()
            if self._system_nc is not None:
                subs.append(
                    await self._system_nc.subscribe(subjects.SYS_DISCONNECT, cb=self._on_disconnect)
                )
                await self._system_nc.flush()
            await self._nc.flush()
            self._running = True
            # A sharded node keeps the plain ADR-32 services it holds, learning every name
            # from the polls as from announcements (Shard.saw).
            holds = part.shard.saw if part is not None else None
            micro = MicroPoll(self._nc, self._view, self.dropped, self._take_micro, holds)
            # Warming from the start: _warm_up sets how long once it knows.
            self._warm_until = self._clock() + FIRST_CHUNK_S
            with self._pressure.installed():
                # Subscribed first, then ask: no answer to our own question can be missed.
                async with background(
                    self._warm_up,
                    self._sweep_loop,
                    functools.partial(micro.run, self.micro_poll_s),
                    queries.serve,
                    *([self._pacer.run] if self._pacer is not None else []),
                    *([part.takeover.run] if part is not None else []),
                ):
                    yield self
        finally:
            self._running = False
            with anyio.CancelScope(shield=True):
                if part is not None:
                    await part.close()
                await queries.close()
                await self._pressure.close()
                await unsubscribe_all(subs)
            _figures.LIVE.registries.discard(self)

    # -- input -------------------------------------------------------------------------------

    async def _on_control(self, subject: str, payload: bytes) -> None:
        # The bulk of a node's work: a heartbeat that changes nothing but its instance's
        # deadline, sequence and load stays synchronous from here to the view and back (no
        # coroutine awaited, no Outcome made, nothing published).
        message = self._admission.check(subject, payload)
        if message is None:
            return
        if self._part is not None and not await self._part.admits(message):
            return
        if self._sync.hold(message):
            return
        outcome = self._view.apply(message)
        if outcome is not NOTHING:
            await self._settle(outcome, message)

    async def _take(self, message: wire.ControlMessage) -> None:
        await self._settle(self._view.apply(message), message)

    async def _settle(self, outcome: Outcome, message: wire.ControlMessage) -> None:
        """Count, ask and publish what ``message`` did to the view."""
        self._count(outcome, message.name)
        if outcome.ask_info and not (self._part is not None and self._part.asks_later(message)):
            await self._ask(message.name, message.id)
        await self._changes.publish(outcome.changes)

    async def _ask(self, name: str, instance_id: str) -> None:
        await self._nc.publish(
            subjects.control_subject(self.prefix, "discover", name, instance_id),
            wire.encode(wire.Discover()),
        )

    def _new_part(self) -> ShardedNode:
        return ShardedNode(
            self,
            self._nc,
            self._pressure,
            self._view,
            self.dropped,
            announcements=self._announcements,
            on_control=self._on_control,
            on_query=self._on_query,
            take=self._take,
            forget=self._forget,
            ask=self._ask,
            changed=self._changes.renew,
            warm_s=self.discover_jitter_s + 0.5,
            clock=self._clock,
        )

    async def _on_query(self, msg: Msg) -> None:
        assert self._queries is not None
        await self._queries.on_query(msg)

    def _forget(self, names: set[str]) -> None:
        # Services handed over to the nodes that hold them now: no events, they speak.
        dropped = self._view.forget(names)
        self._changes.forget(names)
        log.info("handed over %d services (%d instances)", len(names), dropped)

    async def _warm_up(self) -> None:
        # Warming until the peer's view is in, or the fallback's round is over; the sweep
        # loop then takes queries (Queries.follow).
        if self._part is not None:
            if await self._part.warm_up():
                # Each service it holds it takes from its holders (_takeover.py).
                self._warm_until = self._clock()
                return
        elif self._sync_first and await self._sync.run(self._take):
            self._changes.renew()
            self._warm_until = self._clock()
            return
        await self._ask_everyone()

    async def _ask_everyone(self) -> None:
        # Until every instance can have answered, silence proves nothing: no expiry, and
        # answers say warming_up. The extra half second covers the round trip.
        jitter_s = reannounce_window_s(self.discover_jitter_s, len(self._view))
        self._warm_until = self._clock() + jitter_s + 0.5
        await self._nc.publish(
            subjects.control_subject(self.prefix, "discover"),
            wire.encode(wire.Discover(jitter_s=jitter_s)),
        )

    async def _on_disconnect(self, msg: Msg) -> None:
        # A crashed process' socket closes at once, so the server's advisory beats the
        # heartbeat expiry by seconds. (A frozen process keeps its socket: heartbeats decide.)
        try:
            advisory = wire.decode_disconnect(msg.data)
        except wire.MALFORMED:
            self.dropped["malformed"] += 1
            return
        await self._changes.publish(self._view.disconnected(advisory.conn))

    async def _sweep_loop(self) -> None:
        while True:
            await anyio.sleep(self.sweep_s)
            if not self._nc.is_connected:
                # Heartbeats we cannot hear are no sign of death.
                continue
            if self._nc.stats["reconnects"] != self._reconnects:
                # Back from an outage (ours, or our NATS node's): every deadline that passed
                # meanwhile is suspect, so hear everyone again before expiring anyone.
                self._reconnects = self._nc.stats["reconnects"]
                log.info("reconnected to NATS; asking every instance to re-announce")
                await self._ask_everyone()
            await self._pressure.relieve()
            if self._part is not None:
                await self._part.tick(not self.warming_up)
            assert self._queries is not None
            await self._queries.follow(not self.warming_up)
            if not (self.warming_up or self._pressure.silence_proves_nothing()):
                await self._changes.publish(self._view.expire())

    async def _take_micro(self, outcome: Outcome, name: str) -> None:
        self._count(outcome, name)
        await self._changes.publish(outcome.changes)

    def _count(self, outcome: Outcome, name: str) -> None:
        if not outcome.dropped:
            return
        self.dropped[outcome.dropped] += 1
        now = self._clock()
        if outcome.dropped == "capacity" and now - self._capacity_logged_at >= CAPACITY_LOG_S:
            self._capacity_logged_at = now
            log.warning(
                "instance cap reached: refused a new instance of %r (%d held in all, at most "
                "%d per service and %d in all; %d refused since start). Raise "
                "--max-instances, or find who announces so many",
                name[:64],
                len(self._view),
                self._view.max_per_service,
                self._view.max_instances,
                self.dropped["capacity"],
            )
