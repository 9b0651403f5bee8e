"""A sharded node takes a service it gains from the nodes that hold it, not from its instances
(docs/protocol.md, "Sharding").

When a node gains a service (it starts, or the members changed), it asks every member for its
part of that service (``<prefix>.part.<node>.service.<name>``, the question a gathered answer
asks, _gathered.py) and restores the instances of those parts into its view
(:meth:`View.restore`: as old as the peer last heard them, a newer sequence wins), holding the
service's messages heard meanwhile and applying them after, as a node warming from a peer does
(_sync.py). The instances do not announce again. Only if, twice a second apart, not every
member answered (or none of those that did is warm) and no warm part holds the service, does
the node ask the service's instances to re-announce (``<prefix>.discover.<name>``).

A starting node first learns the services' names from its peers' service lists (it has heard
no announcement yet): with no warm peer, it asks every instance to re-announce instead.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import nats.errors
from nats.aio.client import Client as NATS

from .. import wire
from . import _gathered
from ._log import log
from ._shard import Shard

if TYPE_CHECKING:
    from . import Registry

#: Services taken over at once (each waits on its peers' parts, not on this node).
AT_ONCE = 8
#: Tries to take a service from its holders, this long apart, before its instances are asked.
ATTEMPTS = 2
RETRY_S = 1.0
#: Messages of one service held while its parts arrive; beyond, they are applied as they come
#: (the sequence rule still keeps the newest of each instance).
MAX_HELD = 10_000

_Take = Callable[[wire.ControlMessage], Awaitable[None]]
# Restores a peer's instances of a service into the view; how many it took.
_Restore = Callable[[list[wire.InstanceView], str], int]


class Takeover:
    """Takes gained services from peers: :meth:`request` one, :meth:`run` does the work,
    :meth:`hold` keeps a service's messages while it is being taken."""

    def __init__(
        self, nc: NATS, registry: Registry, shard: Shard, take: _Take, restore: _Restore
    ) -> None:
        self._nc = nc
        self._registry = registry
        self._shard = shard
        self._take = take
        self._restore = restore
        self._queue: deque[str] = deque()
        self._wake = anyio.Event()
        self._limiter = anyio.CapacityLimiter(AT_ONCE)
        # Services being taken: their messages heard meanwhile, in order.
        self._held: dict[str, deque[wire.ControlMessage]] = {}
        #: Services taken from peers and those asked to re-announce, since start.
        self.counts: Counter[str] = Counter()

    def request(self, name: str) -> None:
        """Take ``name`` (held from now on) from its holders, soon."""
        self._held.setdefault(name, deque())
        self._queue.append(name)
        self._wake.set()

    def hold(self, message: wire.ControlMessage) -> bool:
        """While ``message``'s service is being taken, keep it to apply after; False
        otherwise (apply it now)."""
        held = self._held.get(message.name)
        if held is None or len(held) >= MAX_HELD:
            return False
        held.append(message)
        return True

    async def learn_names(self) -> bool:
        """A starting node: learn every service's name from the peers' service lists; whether
        a warm peer answered (if not, the node must ask every instance instead)."""
        registry = self._registry
        lists = await _gathered.service_parts(self._nc, self._shard, registry.service_list())
        peers = [answer for node, answer in lists.items() if node != self._shard.members.me]
        for answer in peers:
            self._shard.learn(summary.name for summary in answer.services)
        return any(not answer.warming_up for answer in peers)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                while self._queue:
                    tg.start_soon(self._one, self._queue.popleft())

    async def _one(self, name: str) -> None:
        taken = False
        for attempt in range(ATTEMPTS):
            if attempt:
                # A peer too busy to answer in time is likelier than a gone one (its lease
                # still holds): ask again before the service's instances are asked.
                await anyio.sleep(RETRY_S)
            async with self._limiter:
                try:
                    taken = await self._from_peers(name)
                except nats.errors.Error as exc:
                    log.debug("could not take %s from peers: %s", name, exc)
            if taken or not self._shard.holds(name):
                break
        held = self._held.pop(name, deque())
        while held:
            await self._take(held.popleft())
        self.counts["taken" if taken else "asked"] += 1
        await self._shard.gained(name, taken=taken)

    async def _from_peers(self, name: str) -> bool:
        # Every member's part of the service: usable if every member gave it whole and one
        # of them is warm (a fresh node's part proves nothing).
        registry, shard = self._registry, self._shard
        if not shard.holds(name):
            return False
        own = registry.snapshot(name=name)
        parts = await _gathered.snapshot_parts(self._nc, shard, ("service", name), own)
        peers = {node: chunks for node, chunks in parts.items() if node != shard.members.me}
        warm = [chunks for chunks in peers.values() if not chunks[0].warming_up]
        # Every member's part, one warm; or, from a member slow to answer, a warm part that
        # holds the service (its holders' parts are alike).
        if not (len(peers) + 1 >= len(shard.nodes) and warm) and not any(
            chunk.instances for chunks in warm for chunk in chunks
        ):
            log.info("could not take %s from its holders", name)
            return False
        restored = 0
        for chunks in peers.values():
            for chunk in chunks:
                restored += self._restore(chunk.instances, name)
        log.debug("took %s from %d peers: %d instances", name, len(peers), restored)
        return True
