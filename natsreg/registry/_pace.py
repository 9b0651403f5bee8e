"""A registry node that reads NATS system events lets the fleet heartbeat slower.

While its system-account connection is up, the node hears every crashed instance's disconnect
in milliseconds, so a heartbeat a second is no longer what proves liveness. It says so on
``<prefix>.pace.<node>`` (a :class:`~natsreg.wire.Pace` lease of ``valid_s``), at start and
every third of the lease; when that connection is lost, and when the node stops, it withdraws
the lease, and an instance that hears nothing more goes back to its own interval when the lease
ends anyway. docs/protocol.md, "Paced heartbeats".
"""

from __future__ import annotations

import math

import anyio
from nats.aio.client import Client as NATS

from .. import subjects, wire
from ..errors import ConfigError
from ._log import log

__all__ = ["DEFAULT_PACE_S", "DEFAULT_PACE_VALID_S", "Pacer", "check_pace"]

#: The interval a node reading system events allows by default, and its lease: three renewals
#: per lease, so one lost message costs nothing.
DEFAULT_PACE_S = 10.0
DEFAULT_PACE_VALID_S = 60.0
#: How often the node looks at its system connection between renewals.
_LOOK_S = 0.25


def check_pace(pace_s: float) -> float:
    """``pace_s`` if a node may offer it (0: pace off); ConfigError otherwise."""
    if not (math.isfinite(pace_s) and 0 <= pace_s <= wire.MAX_PACE_S):
        raise ConfigError(
            f"pace must be between 0 (off) and {wire.MAX_PACE_S:g} seconds, got {pace_s:g}"
        )
    return pace_s


class Pacer:
    """Publishes this node's pace lease while ``system_nc`` is connected."""

    def __init__(
        self,
        nc: NATS,
        system_nc: NATS,
        *,
        prefix: str,
        node_id: str,
        pace_s: float,
        valid_s: float = DEFAULT_PACE_VALID_S,
    ) -> None:
        self._nc = nc
        self._system_nc = system_nc
        self._subject = subjects.control_subject(prefix, "pace", node_id)
        self._node_id = node_id
        self.pace_s = check_pace(pace_s)
        self.valid_s = min(valid_s, wire.MAX_PACE_VALID_S)
        #: Whether the fleet was last told it may keep this node's pace.
        self.vouching = False

    async def run(self) -> None:
        """Renew the lease every third of it while system events flow; withdraw it at once
        when they stop, and on the way out."""
        try:
            renew_at = -math.inf
            while True:
                now = anyio.current_time()
                if self._system_nc.is_connected and self._nc.is_connected:
                    if now >= renew_at:
                        await self._say(self.pace_s, self.valid_s)
                        renew_at = now + self.valid_s / 3
                elif self.vouching:
                    log.warning("system events lost: withdrawing the heartbeat pace")
                    await self._say(0.0, 0.0)
                    renew_at = -math.inf
                await anyio.sleep(_LOOK_S)
        finally:
            if self.vouching:
                with anyio.CancelScope(shield=True):
                    await self._say(0.0, 0.0)

    async def _say(self, pace_s: float, valid_s: float) -> None:
        pace = wire.Pace(node=self._node_id, heartbeat_s=pace_s, valid_s=valid_s)
        try:
            # Published, not flushed: a flush that times out (a node busy with its fleet)
            # leaves nats-py a cancelled PONG waiter, and the PONG that comes later stops its
            # read loop (InvalidStateError): the node would lose its connection.
            await self._nc.publish(self._subject, wire.encode(pace))
        except Exception:  # a closed or reconnecting connection: the lease lapses by itself
            log.debug("could not publish the pace on %s", self._subject, exc_info=True)
            return
        self.vouching = valid_s > 0
