"""Emitting events: :class:`Events`, whose ``emit`` returns once JetStream has stored the event."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from .. import subjects
from .._codec import to_bytes
from ..client._mux import ReplyMux
from ..errors import ConfigError
from ._settings import HEADER_KEY, MSG_ID, StreamSettings, partition_of, stream_name
from ._streams import EventsUnavailableError, ensure_streams

__all__ = ["Emitted", "Events"]

log = logging.getLogger("natsreg.events")

# A key is a header value: printable, bounded (JetStream keeps every id of the window).
_MAX_KEY_CHARS = 256


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    """JetStream's answer to a publish: where it stored the message, or why not."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_decode_ack = msgspec.json.Decoder(_PubAck).decode


@dataclass(frozen=True)
class Emitted:
    """What JetStream said once it stored an event: its stream sequence (the event's id, as
    handlers see it in ``ev.id``), and whether it was a duplicate of an earlier emit with the
    same key (then ``seq`` is that earlier event's)."""

    seq: int
    duplicate: bool


class Events:
    """Emits durable events on ``nc``::

        events = natsreg.Events(nc)
        await events.emit("user.created", UserCreated(id=7, email="a@b"), key="user-7")

    The event streams are created on first use with ``settings`` where they do not exist
    (docs/events.md, "Defaults"); ``prefix`` must be the consumers' (their services').
    ``declared`` is the event types the emitting service announces (``emits=``): emitting
    another logs a warning, once per type. A service instance's ``svc.events`` passes its own.
    """

    def __init__(
        self,
        nc: NATS,
        *,
        prefix: str = subjects.DEFAULT_PREFIX,
        settings: StreamSettings | None = None,
        timeout_s: float = 5.0,
        declared: Collection[str] | None = None,
    ) -> None:
        self._js = nc.jetstream(timeout=timeout_s)
        self._declared = None if declared is None else frozenset(declared)
        self._undeclared: set[str] = set()
        self._prefix = subjects.check_prefix(prefix)
        self._stream = stream_name(prefix)
        self.settings = settings or StreamSettings()
        self._timeout_s = timeout_s
        # JetStream's acknowledgements come back on an inbox of this emitter's own, each
        # handed to its emit from the read loop (nats-py's js.publish waits through
        # nc.request: a NUID, a queue and a task switch, and a timer per emit).
        self._mux = ReplyMux(nc)
        self._ensured = False
        # Many emits may start at once: one of them creates the streams, the rest wait.
        self._ensuring = asyncio.Lock()

    async def ensure(self) -> None:
        """Create the event streams with this emitter's settings where they do not exist
        (``emit`` does it on first use; call this to do it ahead, at deploy time)."""
        await ensure_streams(self._js, self._prefix, self.settings)
        self._ensured = True

    async def emit(
        self,
        event_type: str,
        body: Any,
        key: str | None = None,
        *,
        order_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Emitted:
        """Store one event; return once JetStream has it (a crash after this loses nothing).

        ``body`` is a msgspec Struct, a dict or list (JSON), str or bytes. ``key`` names the
        event: an emit retried with the same key (and type) within the stream's duplicate
        window is stored once. It is also the ordering key, unless ``order_key`` is given:
        events that share an ordering key are handled in order by ``ordered=True`` handlers
        (give distinct events of one thing, such as the updates of one user, the same
        ``order_key`` and each its own ``key``).
        """
        subjects.check_event_type(event_type)
        self._check_declared(event_type)
        data = to_bytes(body)
        limit = self.settings.max_body_bytes
        if len(data) > limit:
            raise ConfigError(
                f"event {event_type!r}: the body is {len(data)} bytes, over the {limit} allowed "
                "(StreamSettings.max_body_bytes): store large data elsewhere and emit its key"
            )
        sent = dict(headers or {})
        for name, value in (("key", key), ("order_key", order_key)):
            if value is not None and not _is_header_value(value):
                raise ConfigError(
                    f"emit {event_type!r}: {name} must be 1-{_MAX_KEY_CHARS} printable characters"
                )
        ordering = order_key if order_key is not None else key
        if key is not None:
            sent[MSG_ID] = f"{event_type}:{key}"
        if ordering is not None:
            sent[HEADER_KEY] = ordering
        subject = subjects.event_subject(self._prefix, event_type, str(partition_of(ordering)))
        return await self._publish(subject, data, sent or None)

    def _check_declared(self, event_type: str) -> None:
        if self._declared is None or event_type in self._declared:
            return
        if event_type not in self._undeclared and len(self._undeclared) < 64:
            self._undeclared.add(event_type)
            log.warning(
                "emitting %r, which the service does not declare: add it to emits=[...] so "
                'that the registry shows who emits it (docs/events.md, "Visible")',
                event_type,
            )

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str] | None) -> Emitted:
        if not self._ensured:
            # Once per emitter, not left to "no responders": a broadcast handler's plain
            # subscription on the subject would take the request and leave it unanswered.
            async with self._ensuring:
                if not self._ensured:
                    await self.ensure()
        for first in (True, False):
            try:
                # No Nats-Expected-Stream header: a subject belongs to one stream at most
                # (JetStream refuses overlaps), and the header costs both ends a parse.
                reply = await self._mux.request(subject, data, self._timeout_s, headers)
            except nats.errors.NoRespondersError:
                # Nobody stores this subject yet: create the streams once, then try again.
                if not first:
                    break
                await self.ensure()
                continue
            except nats.errors.TimeoutError as exc:
                raise EventsUnavailableError(
                    f"JetStream did not confirm the event within {self._timeout_s} s: it may or "
                    "may not be stored; emit it again with the same key to be sure"
                ) from exc
            try:
                ack = _decode_ack(reply.data)
            except msgspec.DecodeError as exc:
                raise EventsUnavailableError(f"JetStream's answer does not parse: {exc}") from exc
            if ack.error is not None or not ack.stream:
                error = ack.error or _ApiError(description="no stream named")
                raise EventsUnavailableError(
                    f"JetStream refused the event: {error.description} "
                    f"(code {error.code}, error code {error.err_code})"
                )
            return Emitted(seq=ack.seq, duplicate=ack.duplicate)
        raise EventsUnavailableError(
            f"no stream stores {subject}: is JetStream enabled on the server (nats-server -js)?"
        )


def _is_header_value(value: str) -> bool:
    return 0 < len(value) <= _MAX_KEY_CHARS and value.isprintable()
