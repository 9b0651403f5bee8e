"""The pace an instance heartbeats at: pure state, injected clock, no I/O.

A registry node that reads NATS system events hears of a crashed instance in milliseconds, so
it tells the fleet that a slower heartbeat will do, on ``<prefix>.pace.<node>``, as a lease
(docs/protocol.md, "Paced heartbeats"). An instance keeps the *fastest* pace among the leases
still valid, never faster than its own interval and never slower than ``wire.MAX_PACE_S``; with
no valid lease it is back to its own interval. So a forged lease slows an instance by a bounded
amount for a bounded time, and cannot outvote a genuine node that asks for a faster pace.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .. import subjects, wire

__all__ = ["MAX_LEASES", "Leases"]

#: Leases held at once, one per registry node: a deployment runs a handful of nodes. Beyond
#: this, the slowest lease gives way (a flood of made-up nodes cannot push a genuine one out
#: to make the instance slower).
MAX_LEASES = 16


class Leases:
    """The pace leases registry nodes gave this instance, by node."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # node -> (pace in seconds, valid until on our clock)
        self._leases: dict[str, tuple[float, float]] = {}
        #: Pace messages refused, by reason (``oversized``, ``malformed`` (JSON has no
        #: infinity or NaN: msgspec refuses them), ``subject_mismatch``).
        self.dropped: dict[str, int] = {}

    def hear(self, node: str, data: bytes) -> bool:
        """Take the pace message ``data`` heard on ``<prefix>.pace.<node>``; False (and
        counted) when it cannot be read or speaks for another node than its subject names."""
        if len(data) > wire.MAX_PACE_BYTES:
            return self._drop("oversized")
        try:
            pace = wire.decode_pace(data)
        except wire.MALFORMED:
            return self._drop("malformed")
        if pace.node != node or not subjects.is_valid_token(node):
            return self._drop("subject_mismatch")
        now = self._clock()
        if pace.valid_s <= 0 or pace.heartbeat_s <= 0:
            self._leases.pop(node, None)  # withdrawn
            return True
        until = now + min(pace.valid_s, wire.MAX_PACE_VALID_S)
        self._leases[node] = (min(pace.heartbeat_s, wire.MAX_PACE_S), until)
        self._forget_ended(now)
        if len(self._leases) > MAX_LEASES:
            del self._leases[max(self._leases, key=lambda n: self._leases[n][0])]
        return True

    def interval_s(self, own_s: float) -> float:
        """The interval to keep now, for an instance whose own interval is ``own_s``."""
        self._forget_ended(self._clock())
        if not self._leases:
            return own_s
        return max(own_s, min(pace for pace, _ in self._leases.values()))

    def _forget_ended(self, now: float) -> None:
        for node in [n for n, (_, until) in self._leases.items() if until <= now]:
            del self._leases[node]

    def _drop(self, reason: str) -> bool:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        return False
