"""What a sharded registry node does beyond an unsharded one (docs/protocol.md, "Sharding").

It holds its share of the services (:class:`Shard`: the members, the assignment, one
subscription per service held), takes a service it gains from the nodes that hold it
(:class:`Takeover`), and reads announcements, which name every service, on a queue of their
own: an instance whose heartbeat is taken before its announcement was read is asked to
announce only once that queue has been read that far (:class:`LateAsks`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .. import wire
from ._backpressure import Backpressure
from ._inbox import Handler
from ._shard import LateAsks, Shard
from ._takeover import Takeover
from ._view import View

if TYPE_CHECKING:
    from . import Registry

__all__ = ["SETTLE_S", "ShardedNode"]

#: How long a starting sharded node listens for its peers' presence before taking services.
SETTLE_S = 0.3

_OnMsg = Callable[[Msg], Awaitable[None]]


class ShardedNode:
    """A registry node's sharded part, from :meth:`start` to :meth:`close`; ``on_control``
    and ``on_query`` are the node's own handlers, ``take`` applies a message to its view,
    ``forget`` drops services handed over, ``ask`` asks an instance to announce and
    ``changed`` marks the view as new (no answer cached before is of it)."""

    def __init__(
        self,
        registry: Registry,
        nc: NATS,
        pressure: Backpressure,
        view: View,
        dropped: Counter[str],
        *,
        announcements: str,
        on_control: Handler,
        on_query: _OnMsg,
        take: Callable[[wire.ControlMessage], Awaitable[None]],
        forget: Callable[[set[str]], None],
        ask: Callable[[str, str], Awaitable[None]],
        changed: Callable[[], None],
        warm_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._pressure = pressure
        self._view = view
        self._dropped = dropped
        self._announcements = announcements
        self._on_control = on_control
        self._ask = ask
        self._changed = changed
        self.shard = Shard(
            nc,
            pressure.subscribe,
            pressure.take,
            pressure.unsubscribe,
            dropped,
            prefix=registry.prefix,
            node_id=registry.node_id,
            on_control=on_control,
            on_query=on_query,
            forget=forget,
            on_gain=self._gain,
            warm_s=warm_s,
            max_names=view.max_instances,
            clock=clock,
        )
        self.takeover = Takeover(nc, registry, self.shard, take, self.restore)
        self._late_asks = LateAsks(view.max_instances)

    async def start(self) -> None:
        await self.shard.start()

    async def close(self) -> None:
        await self.shard.close()

    async def on_announce(self, subject: str, payload: bytes) -> None:
        """Every announcement, for a new service's name; one of a known service the node
        does not hold it leaves unread (:meth:`Shard.skips`). Each one read counts for the
        asks held back until then."""
        self._late_asks.read += 1
        if not self.shard.skips(subject):
            await self._on_control(subject, payload)

    async def admits(self, message: wire.ControlMessage) -> bool:
        """Whether the node takes ``message`` now: one of a service it holds (an
        announcement of any: its name is learnt), and not one held while its service is
        being taken from its holders."""
        if isinstance(message, wire.Announce):
            held = await self.shard.saw(message.name)
        else:
            # The rest may still be in flight after the node let the service go.
            held = self.shard.holds(message.name)
        return held and not self.takeover.hold(message)

    def asks_later(self, message: wire.ControlMessage) -> bool:
        """Whether asking ``message``'s instance to announce waits for the announcements
        queued now to be read (its own may be among them)."""
        queued = self._pressure.queued(self._announcements)
        return self._late_asks.defer(message.name, message.id, queued)

    def restore(self, instances: list[wire.InstanceView], name: str) -> int:
        """Take ``instances`` of the service ``name`` from a peer's part (_takeover.py),
        each checked as a peer's view is (_sync.py); how many were taken."""
        checked = []
        for instance in instances:
            try:
                if instance.name != name:
                    raise wire.Invalid("subject_mismatch", "an instance of another service")
                wire.check(instance)
            except wire.Invalid as exc:
                self._dropped[exc.reason] += 1
                continue
            checked.append(instance)
        dropped = self._view.restore_all(checked)
        self._dropped.update(dropped)
        self._changed()
        return len(checked) - dropped.total()

    async def warm_up(self) -> bool:
        """A starting node learns its peers and every service's name; whether a warm peer
        answered, so that each service it holds it takes from its holders (else it must ask
        every instance to re-announce)."""
        # Peers answer this node's presence at once: a moment, and it knows them all.
        await anyio.sleep(SETTLE_S)
        from_peers = await self.takeover.learn_names()
        await self.shard.settle()
        return from_peers

    async def tick(self, warm: bool) -> None:
        """The sweep's turn: presence and hand-overs (:meth:`Shard.tick`), and the asks held
        back whose announcements could have been read by now, of instances still unknown."""
        await self.shard.tick(warm)
        for name, instance_id in self._late_asks.due():
            if instance_id not in self._view:
                await self._ask(name, instance_id)

    def _gain(self, name: str) -> None:
        self.takeover.request(name)
