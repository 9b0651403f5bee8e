"""A registry node: keeps a view of every instance from their own announcements.

Any number of nodes run side by side; each hears every announcement, heartbeat and goodbye,
answers queries in one queue group (so NATS spreads them across nodes) and publishes each
change it sees as an :class:`~natsreg.wire.Event`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import asynccontextmanager

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID

from . import subjects, wire
from ._tasks import background
from ._view import Change, View
from .errors import CODE_HEADER, ERROR_HEADER, ConfigError

__all__ = ["Registry"]

log = logging.getLogger("natsreg.registry")


class Registry(anyio.AsyncContextManagerMixin):
    """A registry node on ``nc``; enter it with ``async with`` to run it.

    ``missed_heartbeats``: an instance expires after this many heartbeat intervals of
    silence (plus half an interval of grace). ``discover_jitter_s``: on start, instances are
    asked to re-announce within this window, so a restart is no burst. ``micro_poll_s``: how
    often plain ADR-32 services (which do not heartbeat) are looked for through ``$SRV.INFO``.
    """

    def __init__(
        self,
        nc: NATS,
        *,
        prefix: str = subjects.DEFAULT_PREFIX,
        missed_heartbeats: float = 2.0,
        discover_jitter_s: float = 0.5,
        micro_poll_s: float = 5.0,
        sweep_s: float = 0.1,
        system_nc: NATS | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not subjects.is_valid_subject(prefix):
            raise ConfigError(f"prefix {prefix!r} is not a valid subject")
        if missed_heartbeats < 1:
            raise ConfigError(f"missed_heartbeats must be at least 1, got {missed_heartbeats}")
        if micro_poll_s <= 0 or sweep_s <= 0 or discover_jitter_s < 0:
            raise ConfigError("micro_poll_s and sweep_s must be > 0, discover_jitter_s >= 0")
        self.node_id: str = NUID().next().decode()
        self.prefix = prefix
        self.discover_jitter_s = discover_jitter_s
        self.micro_poll_s = micro_poll_s
        self.sweep_s = sweep_s
        self._nc = nc
        self._system_nc = system_nc
        self._clock = clock
        # Micro services are polled: three missed polls and they are gone.
        self._view = View(missed_heartbeats=missed_heartbeats, micro_ttl_s=3 * micro_poll_s,
                          clock=clock)
        # Seeded from wall time so that a restarted node never reuses a revision.
        self._revision = time.time_ns() // 1000
        self._warm_until = 0.0
        self._started = clock()
        # Service name -> revision of the last event published for it (Event.prev_revision).
        # One entry per service ever seen: bounded by the node's cap on instances.
        self._last_event: dict[str, int] = {}
        #: Control messages dropped, by reason (malformed, oversized, stale).
        self.dropped: Counter[str] = Counter()

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def warming_up(self) -> bool:
        """True until the first re-announce round can have been heard in full."""
        return self._clock() < self._warm_until

    def stats(self) -> wire.NodeStats:
        """The node's own figures: sizes, drops, warm-up."""
        return wire.NodeStats(
            node=self.node_id, revision=self._revision, warming_up=self.warming_up,
            uptime_s=round(self._clock() - self._started, 3), instances=len(self._view),
            services=self._view.service_count(), dropped=dict(self.dropped),
            mass_expiry=self._mass_expiry())

    def _mass_expiry(self) -> wire.MassExpiry | None:
        alert = self._view.mass_alert
        if alert is None:
            return None
        return wire.MassExpiry(lost=alert.lost, before=alert.before,
                               since_s=round(self._clock() - alert.since, 3))

    def snapshot(self, *, name: str | None = None, instance_id: str | None = None
                 ) -> wire.Snapshot:
        """The node's current view (optionally one service or one instance)."""
        return wire.Snapshot(
            node=self.node_id, revision=self._revision, warming_up=self.warming_up,
            instances=self._view.instances(name=name, instance_id=instance_id),
            mass_expiry=self._mass_expiry(),
        )

    # -- lifetime ----------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Registry]:
        subs: list[Subscription] = []
        try:
            for verb in ("announce", "hb", "bye"):
                subs.append(await self._nc.subscribe(
                    subjects.control_subject(self.prefix, verb, ">"), cb=self._on_control))
            subs.append(await self._nc.subscribe(
                subjects.control_subject(self.prefix, "registry", ">"),
                queue=subjects.REGISTRY_QUEUE, cb=self._on_query))
            if self._system_nc is not None:
                subs.append(await self._system_nc.subscribe(
                    subjects.SYS_DISCONNECT, cb=self._on_disconnect))
                await self._system_nc.flush()
            await self._nc.flush()
            # Subscribed first, then ask: no answer to our own question can be missed.
            await self._ask_everyone()
            async with background(self._sweep_loop, self._micro_loop):
                yield self
        finally:
            with anyio.CancelScope(shield=True):
                for sub in subs:
                    try:
                        await sub.unsubscribe()
                    except Exception as exc:
                        log.debug("unsubscribe failed: %s", exc)

    # -- input -------------------------------------------------------------------------------

    async def _on_control(self, msg: Msg) -> None:
        if len(msg.data) > wire.MAX_CONTROL_BYTES:
            self.dropped["oversized"] += 1
            return
        try:
            message = wire.decode_control(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.dropped["malformed"] += 1
            log.debug("dropped a malformed control message on %s", msg.subject)
            return
        outcome = self._view.apply(message)
        if outcome.stale:
            self.dropped["stale"] += 1
        if outcome.ask_info:
            await self._nc.publish(
                subjects.control_subject(self.prefix, "discover", message.name, message.id),
                wire.encode(wire.Discover()))
        await self._publish(outcome.changes)

    async def _ask_everyone(self) -> None:
        # Until every instance can have answered, silence proves nothing: no expiry, and
        # answers say warming_up. The extra half second covers the round trip.
        self._warm_until = self._clock() + self.discover_jitter_s + 0.5
        await self._nc.publish(
            subjects.control_subject(self.prefix, "discover"),
            wire.encode(wire.Discover(jitter_s=self.discover_jitter_s)))

    async def _on_disconnect(self, msg: Msg) -> None:
        # A crashed process' socket closes at once, so the server's advisory beats the
        # heartbeat expiry by seconds. (A frozen process keeps its socket: heartbeats decide.)
        try:
            advisory = wire.decode_disconnect(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.dropped["malformed"] += 1
            return
        await self._publish(self._view.disconnected(advisory.conn))

    async def _sweep_loop(self) -> None:
        reconnects = self._nc.stats["reconnects"]
        while True:
            await anyio.sleep(self.sweep_s)
            if not self._nc.is_connected:
                # Heartbeats we cannot hear are no sign of death.
                continue
            if self._nc.stats["reconnects"] != reconnects:
                # Back from an outage (ours, or our NATS node's): every deadline that passed
                # meanwhile is suspect, so hear everyone again before expiring anyone.
                reconnects = self._nc.stats["reconnects"]
                log.info("reconnected to NATS; asking every instance to re-announce")
                await self._ask_everyone()
            if not self.warming_up:
                await self._publish(self._view.expire())

    async def _micro_loop(self) -> None:
        while True:
            await self._poll_micro()
            await anyio.sleep(self.micro_poll_s)

    async def _poll_micro(self) -> None:
        # One broadcast request, many replies: every ADR-32 service answers $SRV.INFO.
        inbox = self._nc.new_inbox()
        replies: list[bytes] = []

        async def collect(msg: Msg) -> None:
            if msg.data:  # not the server's "no responders" status
                replies.append(msg.data)

        sub = await self._nc.subscribe(inbox, cb=collect)
        try:
            await self._nc.publish(subjects.srv_subject("INFO"), b"", reply=inbox)
            await anyio.sleep(min(0.5, self.micro_poll_s / 2))
        finally:
            await sub.unsubscribe()
        changes: list[Change] = []
        for data in replies:
            try:
                info = wire.decode_srv_info(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.dropped["malformed"] += 1
                continue
            if info.metadata and wire.PREFIX_METADATA_KEY in info.metadata:
                continue  # a natsreg instance: it heartbeats, or belongs to another prefix
            changes.extend(self._view.apply_micro(info))
        await self._publish(changes)

    # -- output ------------------------------------------------------------------------------

    async def _publish(self, changes: list[Change]) -> None:
        for change in changes:
            self._revision += 1
            name = change.instance.name
            event = wire.Event(
                node=self.node_id, revision=self._revision, kind=change.kind,
                reason=change.reason, instance=change.instance,
                prev_revision=self._last_event.get(name, 0),
            )
            self._last_event[name] = self._revision
            subject = subjects.control_subject(self.prefix, "events", change.instance.name)
            await self._nc.publish(subject, wire.encode(event))

    async def _on_query(self, msg: Msg) -> None:
        if not msg.reply:
            return
        # <prefix>.registry.<verb>[.<argument>]
        tokens = msg.subject[len(self.prefix) + 1:].split(".")
        match tokens:
            case ["registry", "list"]:
                snapshot = self.snapshot()
            case ["registry", "service", name]:
                snapshot = self.snapshot(name=name)
            case ["registry", "instance", instance_id]:
                snapshot = self.snapshot(instance_id=instance_id)
            case ["registry", "services"]:
                await self._nc.publish(msg.reply, wire.encode(wire.ServiceList(
                    node=self.node_id, revision=self._revision, warming_up=self.warming_up,
                    services=self._view.summaries(), mass_expiry=self._mass_expiry())))
                return
            case ["registry", "stats"]:
                await self._nc.publish(msg.reply, wire.encode(self.stats()))
                return
            case _:
                await self._nc.publish(msg.reply, b"", headers={
                    ERROR_HEADER: f"unknown registry query {msg.subject!r}", CODE_HEADER: "400"})
                return
        for chunk in _chunks(snapshot, self._nc.max_payload):
            await self._nc.publish(msg.reply, chunk)


def _chunks(snapshot: wire.Snapshot, max_bytes: int) -> Iterator[bytes]:
    """``snapshot`` encoded as one or more messages of at most ``max_bytes`` each."""
    instances = snapshot.instances
    size, start = 512, 0
    while True:
        part = instances[start:start + size]
        more = start + size < len(instances)
        payload = wire.encode(msgspec.structs.replace(snapshot, instances=part, more=more))
        if len(payload) > max_bytes and size > 1:
            size //= 2
            continue
        yield payload
        if not more:
            return
        start += size
