"""What a registry node believes of a control message before its view sees it
(docs/protocol.md, "Identity, sequence and the registry's rules"): the body within its size
and wire.py's limits, and the subject naming exactly the service and instance the body speaks
for. What fails is dropped and counted by reason; the rest is counted by kind.
"""

from __future__ import annotations

from collections import Counter

from .. import wire
from ._log import log

__all__ = ["Admission"]

# The control verbs an instance publishes, and the message each must carry.
_VERBS: dict[str, type[wire.ControlMessage]] = {
    "announce": wire.Announce,
    "hb": wire.Heartbeat,
    "bye": wire.Goodbye,
}
# The ``kind`` label each verb's messages are counted under.
_KINDS = {"announce": "announce", "hb": "heartbeat", "bye": "goodbye"}


class Admission:
    """The checks of one node on ``prefix``: drops counted in ``dropped`` by reason, the
    messages that pass the subject check in ``messages`` by kind."""

    def __init__(self, prefix: str, dropped: Counter[str], messages: Counter[str]) -> None:
        self._skip = len(prefix) + 1
        self._dropped = dropped
        self._messages = messages

    def check(self, subject: str, payload: bytes) -> wire.ControlMessage | None:
        """The control message ``payload`` on ``subject`` carries, if it passes every check;
        None (and the drop counted) if not."""
        if len(payload) > wire.MAX_CONTROL_BYTES:
            self._dropped["oversized"] += 1
            return None
        try:
            message = wire.decode_control(payload)
        except wire.MALFORMED:
            self._dropped["malformed"] += 1
            log.debug("dropped a malformed control message on %s", subject)
            return None
        # <prefix>.<verb>.<name>.<id>, naming exactly whom the body speaks for: with NATS
        # permissions per service, that is who may publish it.
        tokens = subject[self._skip :].split(".")
        if (
            len(tokens) != 3
            or _VERBS.get(tokens[0]) is not type(message)
            or tokens[1] != message.name
            or tokens[2] != message.id
        ):
            self._dropped["subject_mismatch"] += 1
            return None
        self._messages[_KINDS[tokens[0]]] += 1
        try:
            wire.check(message)
        except wire.Invalid as exc:
            self._dropped[exc.reason] += 1
            log.debug("dropped a control message on %s: %s", subject, exc)
            return None
        return message
