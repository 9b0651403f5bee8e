"""A registry node's revision and the events it publishes (docs/protocol.md, "Messages").

Every change to the view is one :class:`~natsreg.wire.Event` on
``<prefix>.events.<service>``, numbered by the node's revision, which also numbers the view
itself: any change to it (an event, a view taken from a peer, services handed over) makes a
new revision, so that no answer cached before is taken for one of the new view.
"""

from __future__ import annotations

import time
from collections import Counter

from nats.aio.client import Client as NATS

from .. import subjects, wire
from ._view import Change

__all__ = ["Changes"]


class Changes:
    """The node's revision, the last event of each service, and expiries by reason."""

    def __init__(self, nc: NATS, *, prefix: str, node_id: str) -> None:
        self._nc = nc
        self._prefix = prefix
        self._node_id = node_id
        # Seeded from wall time so that a restarted node never reuses a revision.
        self.revision = time.time_ns() // 1000
        # Service name -> revision of the last event published for it (Event.prev_revision).
        # One entry per service ever seen: bounded by the node's cap on instances.
        self._last_event: dict[str, int] = {}
        #: Instances gone, by reason (``expired``, ``goodbye``, ``disconnected``).
        self.expiries: Counter[str] = Counter()

    def renew(self) -> None:
        """The view changed without events (taken from a peer, or services handed over)."""
        self.revision += 1

    def forget(self, names: set[str]) -> None:
        """Services handed over to the nodes that hold them now: their holders speak."""
        for name in names:
            self._last_event.pop(name, None)
        self.renew()

    async def publish(self, changes: list[Change]) -> None:
        for change in changes:
            self.revision += 1
            if change.kind == "down":
                self.expiries[change.reason] += 1
            name = change.instance.name
            event = wire.Event(
                node=self._node_id,
                revision=self.revision,
                kind=change.kind,
                reason=change.reason,
                instance=change.instance,
                prev_revision=self._last_event.get(name, 0),
            )
            self._last_event[name] = self.revision
            subject = subjects.control_subject(self._prefix, "events", name)
            await self._nc.publish(subject, wire.encode(event))
