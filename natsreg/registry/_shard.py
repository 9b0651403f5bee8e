"""Sharded registry nodes split the fleet by service (docs/protocol.md, "Sharding").

Which nodes hold a service is rendezvous (highest random weight) hashing: every node ranks
the live sharded nodes by ``blake2b(node + service)`` and the first :data:`REPLICAS` hold it.
Every node computes the same owners from the same members, with no coordinator; a node that
joins takes from each service at most one place, and a node that leaves gives up only its own
(the least movement any assignment can have).

Members are known from presence: each sharded node publishes
``<prefix>.shard.<node>`` (:class:`wire.ShardPresence`) every :data:`PRESENCE_EVERY_S`, and
counts as a member for the ``valid_s`` it claims (at most :data:`MAX_LEASE_S`); a node that
stops renewing drops out when its lease ends, one that stops cleanly says ``valid_s`` 0.

A node holds the heartbeats, goodbyes and queries of its services only: it subscribes
``<prefix>.hb.<svc>.*``, ``<prefix>.bye.<svc>.*`` and, once warm for the service,
``<prefix>.registry.service.<svc>`` (queue group ``natsreg-registry``), so NATS routes the
question to a holder and never sends the node what it does not hold. It hears every
announcement, to learn each new service's name, but reads no further than the subject of one
whose service it knows and does not hold. A service it gains it takes
from the nodes that hold it (``_takeover.py``; its instances are asked to re-announce,
``<prefix>.discover.<svc>``, only when they cannot give it), and answers for once it has it; a
service it loses it keeps for as long as a re-announce round takes (the gaining node warms
meanwhile), then forgets without events.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .. import subjects, wire
from ._inbox import Handler, Inbox
from ._log import log

#: Nodes that hold each service: one can die and the service is still answered for.
REPLICAS = 2
#: How often a sharded node says it is up, and how long each saying holds.
PRESENCE_EVERY_S = 1.0
LEASE_S = 3.0
#: The longest lease a presence may claim (a forged one holds no longer), and the most
#: members counted (a new one beyond is refused and counted as ``capacity``).
MAX_LEASE_S = 30.0
MAX_MEMBERS = 64
#: Presence is a few dozen bytes; anything longer is no presence.
MAX_PRESENCE_BYTES = 512

_Callback = Callable[[Msg], Awaitable[None]]
_Subscribe = Callable[..., Awaitable[Subscription]]
_Take = Callable[[str, Handler], Awaitable[Inbox]]


def _weight(node: str, service: str) -> bytes:
    return hashlib.blake2b(f"{node}\x00{service}".encode(), digest_size=8).digest()


def owners(service: str, nodes: Iterable[str], replicas: int = REPLICAS) -> list[str]:
    """The nodes that hold ``service`` among ``nodes``, highest weight first."""
    return sorted(nodes, key=lambda node: (_weight(node, service), node), reverse=True)[:replicas]


class Members:
    """The live sharded nodes, by lease; this node is always one."""

    def __init__(self, me: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.me = me
        self._clock = clock
        self._until: dict[str, float] = {}
        self.live: tuple[str, ...] = (me,)
        # When this node last heard its own presence back, through the same queue as its
        # peers' (expire).
        self._echo_at = float("-inf")

    def heard(self, presence: wire.ShardPresence) -> str:
        """Take a presence: ``joined``, ``left``, ``renewed``, or ``capacity`` (refused)."""
        node = presence.node
        if node == self.me:
            self._echo_at = self._clock()
            return "renewed"
        if presence.valid_s <= 0:
            return (
                "left" if self._until.pop(node, None) is not None and self._settle() else "renewed"
            )
        if node not in self._until and len(self._until) + 1 >= MAX_MEMBERS:
            return "capacity"
        self._until[node] = self._clock() + min(presence.valid_s, MAX_LEASE_S)
        return "joined" if self._settle() else "renewed"

    def expire(self) -> bool:
        """Drop the members whose lease ended before this node last heard its own presence
        back; whether any did. (A node too busy to read its queue hears no renewal, nor its
        own presence: the silence of its peers proves nothing until it has read past it.)"""
        now = min(self._clock(), self._echo_at)
        gone = [node for node, until in self._until.items() if until <= now]
        for node in gone:
            del self._until[node]
        return bool(gone) and self._settle()

    def _settle(self) -> bool:
        live = tuple(sorted((self.me, *self._until)))
        changed = live != self.live
        self.live = live
        return changed


def check_presence(subject: str, prefix: str, data: bytes) -> wire.ShardPresence | str:
    """The presence on ``subject``, or why it is dropped (a ``dropped`` reason)."""
    if len(data) > MAX_PRESENCE_BYTES:
        return "oversized"
    try:
        presence = wire.decode_shard_presence(data)
    except wire.MALFORMED:
        return "malformed"
    if subject != subjects.control_subject(prefix, "shard", presence.node) or not (
        subjects.is_valid_token(presence.node) and len(presence.node) <= wire.MAX_TOKEN_CHARS
    ):
        return "subject_mismatch"
    if not presence.valid_s >= 0:  # NaN too
        return "invalid_valid_s"
    return presence


class Shard:
    """A sharded node's part: presence, the services it holds, and their subscriptions.

    ``subscribe(subject, cb, queue)``, ``take(subject, handler)`` and ``unsubscribe(subs)``
    are the node's own (``Backpressure``); ``on_control`` takes heartbeats and goodbyes,
    ``on_query`` service queries; ``forget(names)`` drops lost
    services from the view. ``warm_s`` is how long a re-announce round takes.
    """

    def __init__(
        self,
        nc: NATS,
        subscribe: _Subscribe,
        take: _Take,
        unsubscribe: Callable[[list[Subscription | Inbox]], Awaitable[None]],
        dropped: Counter[str],
        *,
        prefix: str,
        node_id: str,
        on_control: Handler,
        on_query: _Callback,
        forget: Callable[[set[str]], None],
        on_gain: Callable[[str], None],
        warm_s: float,
        max_names: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nc = nc
        self._subscribe = subscribe
        self._take = take
        self._unsubscribe = unsubscribe
        self._dropped = dropped
        self.prefix = prefix
        self._on_control = on_control
        self._on_query = on_query
        self._forget = forget
        self._on_gain = on_gain
        self._warm_s = warm_s
        self._max_names = max_names
        self._clock = clock
        self.members = Members(node_id, clock=clock)
        # Every service name heard announced, and those held: name -> its subscriptions.
        self._names: set[str] = set()
        self._held: dict[str, list[Inbox]] = {}
        # Held services not yet answered for: name -> when the re-announce round is over.
        self._warming: dict[str, float] = {}
        self._answering: dict[str, Subscription] = {}
        # Lost services kept until the gaining node is warm: name -> when to forget.
        self._leaving: dict[str, float] = {}
        self._presence_sub: Subscription | None = None
        self._next_presence = 0.0
        self.settled = False

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.members.live

    def holds(self, name: str) -> bool:
        """Whether this node takes heartbeats and goodbyes of ``name`` now."""
        return name in self._held

    def answers_for(self, name: str) -> bool:
        """Whether this node answers queries for ``name`` (it holds it and is warm for it)."""
        return name in self._answering

    def owners(self, name: str) -> list[str]:
        return owners(name, self.members.live)

    def known(self) -> set[str]:
        return self._names

    async def start(self) -> None:
        """Listen for presence and say this node's; services are assigned at :meth:`settle`."""
        self._presence_sub = await self._subscribe(
            subjects.control_subject(self.prefix, "shard", "*"), self._on_presence
        )
        await self._say(LEASE_S)

    async def settle(self) -> None:
        """Once peers had a moment to answer this node's presence: take its services."""
        self.settled = True
        await self._rebalance()

    async def close(self) -> None:
        """Say this node leaves (its services move at once), and unsubscribe."""
        subs: list[Subscription | Inbox] = [s for held in self._held.values() for s in held]
        subs += list(self._answering.values())
        if self._presence_sub is not None:
            subs.append(self._presence_sub)
        self._held, self._answering = {}, {}
        await self._unsubscribe(subs)
        try:
            await self._say(0.0)
        except nats.errors.Error as exc:
            log.debug("could not say this node leaves: %s", exc)

    def learn(self, names: Iterable[str]) -> None:
        """Know of the services ``names`` (a peer's list, before this node settles)."""
        for name in names:
            self._know(name)

    def _know(self, name: str) -> bool:
        # Whether ``name`` was new to this node (and is known now).
        if name in self._names:
            return False
        if not subjects.is_valid_token(name):
            self._dropped["malformed"] += 1
            return False
        if len(self._names) >= self._max_names:
            self._dropped["capacity"] += 1
            return False
        self._names.add(name)
        return True

    async def saw(self, name: str) -> bool:
        """An announcement of ``name`` was heard: whether this node holds it now."""
        if name in self._held:
            return True
        if self._know(name) and self.settled and self.members.me in self.owners(name):
            # A new service: its first announcement is this one, nothing to ask again.
            await self._hold(name, ask=False)
            return True
        return False

    async def tick(self, warm: bool) -> None:
        """Called by the node's sweep: renew presence, expire members, move services,
        answer for those warm (while the node is), forget those handed over."""
        now = self._clock()
        if now >= self._next_presence:
            await self._say(LEASE_S)
        if self.members.expire():
            await self._rebalance()
        for name, ready_at in list(self._warming.items()):
            if ready_at <= now:
                del self._warming[name]
        await self._follow(warm)
        lost = {name for name, at in self._leaving.items() if at <= now}
        if lost:
            # Forgotten at once, unsubscribed after: what is still in flight is not held.
            subs: list[Subscription | Inbox] = [
                sub for name in lost for sub in self._held.pop(name, [])
            ]
            for name in lost:
                del self._leaving[name]
                self._warming.pop(name, None)
            self._forget(lost)
            await self._unsubscribe(subs)

    async def _follow(self, warm: bool) -> None:
        # Answer for exactly the held services that are warm, and none while the node is not.
        wanted = (
            {n for n in self._held if n not in self._warming and n not in self._leaving}
            if warm
            else set()
        )
        for name in [n for n in self._answering if n not in wanted]:
            await self._unsubscribe([self._answering.pop(name)])
        for name in wanted - self._answering.keys():
            self._answering[name] = await self._subscribe(
                subjects.control_subject(self.prefix, "registry", "service", name),
                self._on_query,
                subjects.REGISTRY_QUEUE,
            )

    async def _say(self, valid_s: float) -> None:
        self._next_presence = self._clock() + PRESENCE_EVERY_S
        presence = wire.ShardPresence(node=self.members.me, valid_s=valid_s)
        await self._nc.publish(
            subjects.control_subject(self.prefix, "shard", self.members.me), wire.encode(presence)
        )

    def skips(self, subject: str) -> bool:
        """Whether an announcement on ``<prefix>.announce.<name>.<id>`` (the node hears them
        all) can be left unread: its service is known, and not this node's."""
        tokens = subject[len(self.prefix) + 1 :].split(".")
        return len(tokens) == 3 and tokens[1] in self._names and tokens[1] not in self._held

    async def _on_presence(self, msg: Msg) -> None:
        presence = check_presence(msg.subject, self.prefix, msg.data)
        if isinstance(presence, str):
            self._dropped[presence] += 1
            return
        change = self.members.heard(presence)
        if change == "capacity":
            self._dropped["capacity"] += 1
            return
        if change == "joined":
            # Say this node is here at the next sweep: the newcomer counts it before it
            # settles, rather than a presence interval later.
            self._next_presence = 0.0
        if change in ("joined", "left"):
            await self._rebalance()

    async def _rebalance(self) -> None:
        if not self.settled:
            return
        mine = {name for name in self._names if self.members.me in self.owners(name)}
        now = self._clock()
        for name in mine:
            self._leaving.pop(name, None)
            if name not in self._held:
                await self._hold(name, ask=True)
        for name in self._held.keys() - mine - self._leaving.keys():
            self._leaving[name] = now + self._warm_s
        log.info(
            "%d sharded registry nodes: this one holds %d of %d services",
            len(self.members.live),
            len(mine),
            len(self._names),
        )

    async def _hold(self, name: str, *, ask: bool) -> None:
        # Held before the first await: an announcement or a presence handled meanwhile must
        # not subscribe a second time (each heartbeat would come twice).
        subs = self._held[name] = []
        for verb in ("hb", "bye"):
            subject = subjects.control_subject(self.prefix, verb, name, "*")
            subs.append(await self._take(subject, self._on_control))
        if ask:
            # Taken from its holders (_takeover.py), which call gained(); until then the
            # node does not answer for it (the nodes that held it still do).
            self._warming[name] = math.inf
            self._on_gain(name)

    async def gained(self, name: str, *, taken: bool) -> None:
        """``name``, gained, was taken from its holders (``taken``), or was not: then its
        instances are asked to announce again, and it is answered for once the round is
        over."""
        if name not in self._warming or name not in self._held:
            return  # let go meanwhile
        if taken:
            self._warming[name] = self._clock()
            return
        self._warming[name] = self._clock() + self._warm_s
        await self._nc.publish(
            subjects.control_subject(self.prefix, "discover", name),
            wire.encode(wire.Discover(jitter_s=max(self._warm_s - 0.5, 0.0))),
        )


class LateAsks:
    """Asks a sharded node holds back: an instance heard before its announcement was read.

    The node reads a service's heartbeats on that service's subscription and announcements on
    ``<prefix>.announce.>``, each queue drained by its own task, so a heartbeat can be taken
    while its instance's announcement still waits in the other queue. Its instance is asked
    to announce only once the node has read every announcement queued when the heartbeat
    came (:meth:`due`), and only if it is still unknown then; at most ``cap`` wait (beyond,
    an ask goes at once).
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        # instance id -> (service, announcements read by when it may be asked)
        self._waiting: dict[str, tuple[str, int]] = {}
        #: Announcements the node has taken off its queue.
        self.read = 0

    def defer(self, name: str, instance_id: str, queued: int) -> bool:
        """Hold back the ask of ``instance_id`` until ``queued`` more announcements are read;
        False if it must go now (none queued, or too many waiting)."""
        if queued <= 0 or len(self._waiting) >= self._cap:
            return False
        self._waiting[instance_id] = (name, self.read + queued)
        return True

    def due(self) -> list[tuple[str, str]]:
        """The asks, ``(service, instance id)``, whose announcements could have been read."""
        ready = [(n, i) for i, (n, at) in self._waiting.items() if at <= self.read]
        for _, instance_id in ready:
            del self._waiting[instance_id]
        return ready


def merge_instances(parts: Iterable[Iterable[wire.InstanceView]]) -> list[wire.InstanceView]:
    """The instances of several nodes' answers, each once: the newest (highest ``seq``)."""
    merged: dict[str, wire.InstanceView] = {}
    for part in parts:
        for instance in part:
            held = merged.get(instance.id)
            if held is None or instance.seq > held.seq:
                merged[instance.id] = instance
    return list(merged.values())
