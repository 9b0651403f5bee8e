"""An instance's control traffic: announce, heartbeat, answer discover, goodbye, and the
``$SRV`` PING/INFO/STATS replies that nats micro tooling expects."""

from __future__ import annotations

import inspect
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import anyio
import msgspec
from anyio.abc import TaskGroup
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .. import subjects, wire
from ..errors import ConfigError
from ._config import ServiceConfig
from ._endpoints import Endpoints
from ._log import log, quietly
from ._pace import Leases
from ._typed import fit_schemas

__all__ = ["Control"]


class Control:
    """What an instance tells registries and monitors about itself, and when."""

    def __init__(
        self,
        nc: NATS,
        config: ServiceConfig,
        instance_id: str,
        endpoints: Endpoints,
        events: Callable[[], list[wire.EventInterest]] = list,
    ) -> None:
        self._nc = nc
        self._events = events
        self._config = config
        self._id = instance_id
        self._endpoints = endpoints
        self._seq = 0
        self._started = datetime.now(UTC).isoformat()
        self.health: wire.Health = "passing"
        self._host = socket.gethostname()
        self._announced_conn = ""
        self._tg: TaskGroup | None = None
        self._stopping = False
        # Discover throttle (_on_discover): one re-announce pending at most, and when the last
        # one went out (monotonic; -inf: never).
        self._reannounce_pending = False
        self._reannounced_at = float("-inf")
        # Paced heartbeats (docs/protocol.md): the leases registry nodes gave, and the
        # interval this instance last declared it keeps (readers expect its next beat within).
        self.leases = Leases()
        self.pace_s = config.heartbeat_s

    def start(self, tg: TaskGroup) -> None:
        """Heartbeats and answers to discover run in ``tg`` from now on."""
        self._tg = tg
        tg.start_soon(self._heartbeat_loop)

    def stop(self) -> None:
        """No heartbeat or re-announcement after this (the goodbye must be the last word)."""
        self._stopping = True
        self._tg = None

    # -- announcements -----------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _announcement(self) -> wire.Announce:
        c = self._config
        return wire.Announce(
            id=self._id,
            name=c.name,
            version=c.version,
            seq=self._next_seq(),
            description=c.description,
            metadata=dict(c.metadata),
            endpoints=[e.info() for e in self._endpoints.table.values()],
            host=self._host,
            pid=os.getpid(),
            started=self._started,
            heartbeat_s=c.heartbeat_s,
            health=self.health,
            load=self._endpoints.load(),
            conn=self._announced_conn,
            events=self._events(),
            emits=list(c.emits),
            pace_s=self.pace_s,
        )

    def _connection(self) -> str:
        # "<server id>/<client id>": what the server's disconnect advisories name. nats-py
        # has no public getter for the server id.
        server_info = getattr(self._nc, "_server_info", None) or {}
        return f"{server_info.get('server_id', '')}/{self._nc.client_id or ''}"

    async def _publish(self, verb: str, message: msgspec.Struct) -> None:
        subject = subjects.control_subject(self._config.prefix, verb, self._config.name, self._id)
        await self._nc.publish(subject, wire.encode(message))

    async def publish_announce(self) -> None:
        """Announce this instance in full; refuses (ConfigError) what registries would drop."""
        name = self._config.name
        self._announced_conn = self._connection()
        announcement = self._announcement()
        try:
            # The registries' own check: what they would drop is refused here, loudly.
            wire.check(announcement)
        except wire.Invalid as exc:
            raise ConfigError(f"{name}: {exc}") from None
        payload = wire.encode(announcement)
        excess = len(payload) - wire.MAX_CONTROL_BYTES
        if excess > 0 and fit_schemas(self._endpoints.table.values(), excess, name):
            # Schemas give way first (each left out with a warning, for good: $SRV.INFO and
            # every later announcement say the same); the sequence number stays.
            endpoints = [e.info() for e in self._endpoints.table.values()]
            payload = wire.encode(msgspec.structs.replace(announcement, endpoints=endpoints))
        if len(payload) > wire.MAX_CONTROL_BYTES:
            raise ConfigError(
                f"{name}: the announcement is {len(payload)} bytes, over the "
                f"{wire.MAX_CONTROL_BYTES} limit; shorten metadata or descriptions"
            )
        subject = subjects.control_subject(self._config.prefix, "announce", name, self._id)
        await self._nc.publish(subject, payload)

    async def goodbye(self) -> None:
        goodbye = wire.Goodbye(id=self._id, name=self._config.name, seq=self._next_seq())
        await quietly(self._publish("bye", goodbye), "say goodbye")

    # -- heartbeats --------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        own_s = self._config.heartbeat_s
        last_beat = time.monotonic()
        while True:
            # Health is checked at the instance's own interval whatever the pace, so a
            # change goes out within one interval.
            await anyio.sleep(own_s)
            health = await self._check_health()
            health_changed, self.health = health != self.health, health
            if self._stopping:
                return
            if self._connection() != self._announced_conn:
                # Reconnected (perhaps to another server): registries that watch disconnect
                # events must learn the new connection, so this beat is a full announcement.
                self.pace_s = self.leases.interval_s(own_s)
                await quietly(self.publish_announce(), "re-announce")
                last_beat = time.monotonic()
                continue
            # Due within the interval the last beat declared, whatever the pace is now: a
            # slower pace starts with the next beat, which declares it. Half an interval
            # early rather than a tick late.
            now = time.monotonic()
            pace_s = self.leases.interval_s(own_s)
            if not health_changed and now - last_beat < min(pace_s, self.pace_s) - own_s / 2:
                continue
            self.pace_s, last_beat = pace_s, now
            beat = wire.Heartbeat(
                id=self._id,
                name=self._config.name,
                seq=self._next_seq(),
                health=self.health,
                load=self._endpoints.load(),
                pace_s=pace_s,
            )
            await quietly(self._publish("hb", beat), "heartbeat")

    async def _check_health(self) -> wire.Health:
        check, name = self._config.health, self._config.name
        if check is None:
            return "passing"
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            log.exception("%s: health check failed; reporting critical", name)
            return "critical"
        if result not in ("passing", "warning", "critical"):
            log.error("%s: health check returned %r; reporting critical", name, result)
            return "critical"
        return result

    # -- discover and $SRV -------------------------------------------------------------------

    async def subscribe(self) -> list[Subscription]:
        name, prefix = self._config.name, self._config.prefix
        dropped = self._endpoints.dropped
        subs = []
        for tokens in ((), (name,), (name, self._id)):
            for verb, reply in (("PING", self._ping), ("INFO", self._info), ("STATS", self._stats)):
                subs.append(
                    await self._nc.subscribe(
                        subjects.srv_subject(verb, *tokens), cb=_replier(self._nc, reply, dropped)
                    )
                )
            subs.append(
                await self._nc.subscribe(
                    subjects.control_subject(prefix, "discover", *tokens), cb=self._on_discover
                )
            )
        subs.append(
            await self._nc.subscribe(
                subjects.control_subject(prefix, "pace", "*"), cb=self._on_pace
            )
        )
        return subs

    async def _on_pace(self, msg: Msg) -> None:
        # <prefix>.pace.<node>: the lease applies from the next heartbeat (_heartbeat_loop).
        self.leases.hear(msg.subject.rsplit(".", 1)[-1], msg.data)

    async def _on_discover(self, msg: Msg) -> None:
        # Anyone may publish discover, so however many arrive, at most one re-announce is
        # pending and they go out at most once per wire.MIN_REANNOUNCE_S: a flood costs this
        # instance one timer, and the bus one announcement a second.
        if self._tg is None or self._reannounce_pending:
            return
        try:
            jitter_s = wire.decode_discover(msg.data).jitter_s if msg.data else 0.0
        except wire.MALFORMED:
            jitter_s = 0.0
        # Spread re-announcements so that a registry restart is no burst for the bus.
        delay_s = random.uniform(0, min(max(jitter_s, 0.0), wire.MAX_DISCOVER_JITTER_S))
        earliest = self._reannounced_at + wire.MIN_REANNOUNCE_S - time.monotonic()
        self._reannounce_pending = True
        self._tg.start_soon(self._announce_after, max(delay_s, earliest))

    async def _announce_after(self, delay_s: float) -> None:
        try:
            await anyio.sleep(delay_s)
        finally:
            self._reannounce_pending = False
        if not self._stopping:
            self._reannounced_at = time.monotonic()
            await quietly(self.publish_announce(), "re-announce")

    def _srv_metadata(self) -> dict[str, str]:
        return {**self._config.metadata, wire.PREFIX_METADATA_KEY: self._config.prefix}

    def _ping(self) -> msgspec.Struct:
        c = self._config
        return wire.SrvPing(
            name=c.name, id=self._id, version=c.version, metadata=self._srv_metadata()
        )

    def _info(self) -> msgspec.Struct:
        c = self._config
        return wire.SrvInfo(
            name=c.name,
            id=self._id,
            version=c.version,
            description=c.description,
            metadata=self._srv_metadata(),
            endpoints=[e.srv_info() for e in self._endpoints.table.values()],
        )

    def _stats(self) -> msgspec.Struct:
        c = self._config
        return wire.SrvStats(
            name=c.name,
            id=self._id,
            version=c.version,
            metadata=self._srv_metadata(),
            started=self._started,
            endpoints=[e.stats() for e in self._endpoints.table.values()],
        )


def _replier(
    nc: NATS, build: Callable[[], msgspec.Struct], dropped: dict[str, int]
) -> Callable[[Msg], Awaitable[None]]:
    async def reply(msg: Msg) -> None:
        if not msg.reply:
            return
        if not subjects.is_reply_subject(msg.reply):
            # Anyone may ask, so an INFO reply aimed at a service's subject would be a
            # reflection: refused, like an endpoint request (Instance.dropped).
            dropped["reply_subject"] += 1
            return
        await quietly(nc.publish(msg.reply, wire.encode(build())), "$SRV reply")

    return reply
