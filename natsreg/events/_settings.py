"""The rules emitters, consumers and the CLI must agree on, with no I/O: stream and consumer
names, partitions, the defaults of streams and handlers, and the retry delays.

Kept apart from the code that talks to JetStream so that each rule is tested without a server
(tests/test_events_rules.py) and has one home.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import TypedDict

from .. import subjects
from ..errors import ConfigError

__all__ = [
    "HEADER_DEAD_DELIVERIES",
    "HEADER_DEAD_ERROR",
    "HEADER_DEAD_SUBJECT",
    "HEADER_EVENT_ID",
    "HEADER_KEY",
    "MSG_ID",
    "PARTITIONS",
    "EventOptions",
    "EventSettings",
    "StreamSettings",
    "consumer_name",
    "dead_stream_name",
    "partition_of",
    "retry_delay_s",
    "stream_name",
]

#: Every event subject ends in a partition number below this. Emitters and consumers of one
#: prefix must agree on it, so it is part of the protocol, not a setting: an ordered handler
#: holds one consumer per partition, which bounds how many keys progress at once.
PARTITIONS = 16

#: JetStream's own de-duplication header: the same id within the duplicate window is stored once.
MSG_ID = "Nats-Msg-Id"
#: The ordering key an emitter gave, handed to handlers as ``ev.key``.
HEADER_KEY = "Natsreg-Key"
#: A replayed dead event's original id (only read on replay subjects, which only the dead
#: letter tools publish to).
HEADER_EVENT_ID = "Natsreg-Event-Id"
#: On a dead letter: the handler's last error, the event's subject, and its deliveries.
HEADER_DEAD_ERROR = "Natsreg-Dead-Error"
HEADER_DEAD_SUBJECT = "Natsreg-Dead-Subject"
HEADER_DEAD_DELIVERIES = "Natsreg-Dead-Deliveries"

# A dead letter's error is the handler's exception text, cut: a hostile event must not make
# a dead letter larger than the event itself by much.
MAX_ERROR_CHARS = 1024


def stream_name(prefix: str) -> str:
    """The stream holding every event of ``prefix`` (``natsreg`` → ``natsreg_events``)."""
    return f"{subjects.check_prefix(prefix).replace('.', '_')}_events"


def dead_stream_name(prefix: str) -> str:
    """The stream holding the dead letters of ``prefix``."""
    return f"{subjects.check_prefix(prefix).replace('.', '_')}_dead"


def consumer_name(service: str, event_type: str, partition: int | None = None) -> str:
    """The durable consumer shared by ``service``'s instances for ``event_type``
    (``mail-service~user~created``; ``@<p>`` for an ordered handler's partition ``p``).

    A consumer name may hold no dot; names and types hold no ``~`` or ``@``, so the name is
    unambiguous (and the consumer's metadata says the same in plain words).
    """
    name = f"{service}~{event_type.replace('.', '~')}"
    return name if partition is None else f"{name}@{partition}"


def partition_of(key: str | None) -> int:
    """The partition of an event with ordering key ``key``: CRC-32 of its UTF-8 bytes modulo
    :data:`PARTITIONS` (any language computes the same), or any partition when there is none."""
    if key is None:
        return random.randrange(PARTITIONS)
    return zlib.crc32(key.encode()) % PARTITIONS


@dataclass(frozen=True, kw_only=True)
class StreamSettings:
    """How natsreg creates the event streams when they do not exist yet (docs/events.md).

    An existing stream is never changed: an operator's edits (``nats stream edit``) stay.
    """

    #: Events older than this are dropped from the stream, handled or not.
    max_age_s: float = 7 * 24 * 3600.0
    #: The stream's size bound; the oldest events go first.
    max_bytes: int = 1024**3
    #: Retried emits with the same key within this window are stored once.
    duplicate_window_s: float = 120.0
    #: Copies of each event in a cluster; None: min(3, the cluster's size).
    replicas: int | None = None
    #: The largest event body :meth:`Events.emit` sends, and the stream stores.
    max_body_bytes: int = 256 * 1024
    #: Dead letters kept; beyond this a failing event is retried rather than dead-lettered,
    #: so nothing is dropped.
    max_dead: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_age_s", "max_bytes", "duplicate_window_s", "max_body_bytes", "max_dead"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"StreamSettings.{name} must be positive")
        if self.replicas is not None and not 1 <= self.replicas <= 5:
            raise ConfigError("StreamSettings.replicas must be between 1 and 5 (or None)")
        if self.duplicate_window_s > self.max_age_s:
            raise ConfigError("StreamSettings.duplicate_window_s may not exceed max_age_s")


@dataclass(frozen=True, kw_only=True)
class EventOptions:
    """How one handler consumes one event type (``@svc.on_event(type, **options)``)."""

    #: Events with the same key are handled in order, one at a time, by one instance.
    ordered: bool = False
    #: Every instance gets every event, over core NATS: no durability, no retry.
    broadcast: bool = False
    #: Deliveries before an event that keeps failing goes to the dead letters.
    max_deliveries: int = 5
    #: How long an instance may hold an event without a sign of life before JetStream gives
    #: it to another instance (the handler's progress is reported every third of it).
    ack_wait_s: float = 30.0
    #: Delay before the first retry of a failed event; doubled on each delivery.
    retry_delay_s: float = 1.0
    max_retry_delay_s: float = 60.0
    #: Events one instance handles at once (unordered handlers).
    max_in_flight: int = 64
    #: Events given out and not yet acknowledged, across the service's instances.
    max_ack_pending: int = 1000

    def __post_init__(self) -> None:
        if self.ordered and self.broadcast:
            raise ConfigError("an event handler is ordered or broadcast, not both")
        if self.max_deliveries < 1:
            raise ConfigError("max_deliveries must be at least 1")
        for name in ("ack_wait_s", "retry_delay_s", "max_retry_delay_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        if self.max_in_flight < 1 or self.max_ack_pending < 1:
            raise ConfigError("max_in_flight and max_ack_pending must be at least 1")


def retry_delay_s(options: EventOptions, delivery: int) -> float:
    """How long JetStream waits before delivering again an event whose ``delivery``-th
    attempt failed: ``retry_delay_s`` doubled per delivery, at most ``max_retry_delay_s``."""
    doubled: float = options.retry_delay_s * 2.0 ** min(max(delivery - 1, 0), 32)
    return min(doubled, options.max_retry_delay_s)


class EventSettings(TypedDict, total=False):
    """The keyword arguments of ``on_event``: :class:`EventOptions`' fields, for type checkers
    and editors only (the defaults and checks live in EventOptions)."""

    ordered: bool
    broadcast: bool
    max_deliveries: int
    ack_wait_s: float
    retry_delay_s: float
    max_retry_delay_s: float
    max_in_flight: int
    max_ack_pending: int
