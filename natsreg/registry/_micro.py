"""Finding plain ADR-32 services (nats.go ``micro``, ``@nats-io/services``, nats-py
``nats.micro``), which announce nothing and do not heartbeat: they are polled.

Every poll interval a ``$SRV.PING`` (small replies) keeps those listed and finds new ones,
whose ``$SRV.INFO`` is asked at once by name and id; every :data:`MICRO_INFO_EVERY` polls a
broadcast ``$SRV.INFO`` instead, for what a listed one changed without changing version (an
endpoint added after start). Replies are taken as they come. Anyone can answer a ping, so
every reply is checked as an announcement is (``wire.check``), and the asks one poll makes
are bounded (:data:`MAX_INFO_ASKS`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

import anyio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .. import subjects, wire
from ._log import unsubscribe_all
from ._view import Outcome, View

#: Plain ADR-32 services are pinged every poll, and asked for their full ``$SRV.INFO``
#: every this many polls (and at once when a ping shows a new one).
MICRO_INFO_EVERY = 5
#: Directed ``$SRV.INFO`` asks after one ping, at most: a flood of made-up ids costs no
#: more, and the broadcast INFO poll finds the real ones anyway.
MAX_INFO_ASKS = 256


class MicroPoll:
    """Polls plain ADR-32 services into ``view``; drops counted in ``dropped``; each INFO
    reply's outcome handed to ``take(outcome, name)``. ``holds(name)``, where given, says
    which services the node keeps (a sharded node's own; the rest are left out)."""

    def __init__(
        self,
        nc: NATS,
        view: View,
        dropped: Counter[str],
        take: Callable[[Outcome, str], Awaitable[None]],
        holds: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self._nc = nc
        self._view = view
        self._dropped = dropped
        self._take = take
        self._holds = holds
        self._asks = 0

    async def run(self, poll_s: float) -> None:
        """Poll every ``poll_s``, forever."""
        polls = 0
        while True:
            verb = "PING" if polls % MICRO_INFO_EVERY else "INFO"
            polls += 1
            self._asks = 0
            inbox = self._nc.new_inbox()
            sub = await self._nc.subscribe(inbox, cb=self._on_reply)
            try:
                await self._nc.publish(subjects.srv_subject(verb), b"", reply=inbox)
                # Replies are taken as they come, until the next poll.
                await anyio.sleep(poll_s)
            finally:
                with anyio.CancelScope(shield=True):
                    await unsubscribe_all([sub])

    async def _on_reply(self, msg: Msg) -> None:
        if not msg.data:
            return  # the server's "no responders", or an empty reply
        if len(msg.data) > wire.MAX_CONTROL_BYTES:
            self._dropped["oversized"] += 1
            return
        try:
            # A PING reply reads as an INFO reply without endpoints; its type tells them apart.
            info = wire.decode_srv_info(msg.data)
        except wire.MALFORMED:
            self._dropped["malformed"] += 1
            return
        if info.metadata and wire.PREFIX_METADATA_KEY in info.metadata:
            return  # a natsreg instance: it heartbeats, or belongs to another prefix
        try:
            # Also what makes its name and id safe to build a subject from.
            wire.check(info)
        except wire.Invalid as exc:
            self._dropped[exc.reason] += 1
            return
        if self._holds is not None and not await self._holds(info.name):
            return
        if info.type == wire.SRV_PING_TYPE:
            if (
                self._view.pinged_micro(info.id, info.name, info.version)
                and self._asks < MAX_INFO_ASKS
            ):
                self._asks += 1
                await self._nc.publish(
                    subjects.srv_subject("INFO", info.name, info.id), b"", reply=msg.subject
                )
            return
        await self._take(self._view.apply_micro(info), info.name)
