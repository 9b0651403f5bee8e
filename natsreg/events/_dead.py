"""What ``natsreg events`` reads and does: the figures of every event type (stored, consumers'
lag, dead letters), the dead letters of one type, and replaying them to the service that
failed on them.

Every read and every replay is bounded (``limit``): a dead-letter store of a hundred thousand
events is paged, never loaded at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from .. import subjects
from ._settings import (
    HEADER_DEAD_DELIVERIES,
    HEADER_DEAD_ERROR,
    HEADER_DEAD_SUBJECT,
    HEADER_EVENT_ID,
    MSG_ID,
    PARTITIONS,
    dead_stream_name,
    stream_name,
)

__all__ = [
    "MAX_LIMIT",
    "Consumption",
    "DeadLetter",
    "TypeFigures",
    "dead_letters",
    "overview",
    "replay",
]

#: The most dead letters one command reads or replays.
MAX_LIMIT = 10_000
# What consumer listings page by (JetStream's own page size).
_PAGE = 256


@dataclass
class DeadLetter:
    """An event one service failed on at every delivery, with its last error."""

    seq: int
    service: str
    event_type: str
    event_id: int
    deliveries: int
    error: str
    subject: str
    data: bytes
    headers: dict[str, str]


@dataclass
class Consumption:
    """One service's consumption of one event type, summed over its consumers."""

    service: str
    mode: str
    pending: int = 0
    ack_pending: int = 0
    dead: int = 0


@dataclass
class TypeFigures:
    """One event type: events stored, and each consuming service's figures."""

    event_type: str
    stored: int = 0
    services: dict[str, Consumption] = field(default_factory=dict)


async def overview(js: JetStreamContext, prefix: str) -> list[TypeFigures]:
    """Every event type of ``prefix`` that is stored, consumed or dead-lettered."""
    figures: dict[str, TypeFigures] = {}

    def of(event_type: str) -> TypeFigures:
        return figures.setdefault(event_type, TypeFigures(event_type))

    ev = subjects.control_subject(prefix, "ev") + "."
    info = await js.stream_info(stream_name(prefix), subjects_filter=ev + ">")
    for subject, count in (info.state.subjects or {}).items():
        if subject.startswith(ev):
            of(subject[len(ev) :].rpartition(".")[0]).stored += count
    offset = 0
    while True:
        page = await js.consumers_info(stream_name(prefix), offset=offset)
        for consumer in page:
            meta = (consumer.config.metadata if consumer.config else None) or {}
            service, event_type = meta.get("natsreg.service"), meta.get("natsreg.event")
            if not service or not event_type:
                continue  # not natsreg's
            row = of(event_type).services.setdefault(
                service, Consumption(service, meta.get("natsreg.mode", "balanced"))
            )
            row.pending += consumer.num_pending or 0
            row.ack_pending += consumer.num_ack_pending or 0
        if len(page) < _PAGE:
            break
        offset += len(page)
    dead = subjects.control_subject(prefix, "evdead") + "."
    info = await js.stream_info(dead_stream_name(prefix), subjects_filter=dead + ">")
    for subject, count in (info.state.subjects or {}).items():
        service, _, event_type = subject[len(dead) :].partition(".")
        row = of(event_type).services.setdefault(service, Consumption(service, "-"))
        row.dead += count
    return sorted(figures.values(), key=lambda f: f.event_type)


async def dead_letters(
    js: JetStreamContext,
    prefix: str,
    event_type: str,
    *,
    service: str | None = None,
    limit: int = 100,
) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters of ``event_type`` (of ``service``'s, if given)."""
    subjects.check_event_type(event_type)
    wanted = subjects.dead_subject(prefix, service or "*", event_type)
    stream = dead_stream_name(prefix)
    letters: list[DeadLetter] = []
    seq = 1
    while len(letters) < min(limit, MAX_LIMIT):
        try:
            raw = await js.get_msg(stream, seq=seq, subject=wanted, next=True)
        except NotFoundError:
            break
        assert raw.seq is not None and raw.subject is not None
        letters.append(_letter(prefix, raw.seq, raw.subject, raw.data or b"", raw.headers or {}))
        seq = raw.seq + 1
    return letters


def _letter(
    prefix: str, seq: int, subject: str, data: bytes, headers: dict[str, str]
) -> DeadLetter:
    dead = subjects.control_subject(prefix, "evdead") + "."
    service, _, event_type = subject[len(dead) :].partition(".")
    return DeadLetter(
        seq=seq,
        service=service,
        event_type=event_type,
        event_id=_number(headers.get(HEADER_EVENT_ID)),
        deliveries=_number(headers.get(HEADER_DEAD_DELIVERIES)),
        error=headers.get(HEADER_DEAD_ERROR, ""),
        subject=headers.get(HEADER_DEAD_SUBJECT, ""),
        data=data,
        headers=headers,
    )


async def replay(js: JetStreamContext, prefix: str, letters: list[DeadLetter]) -> int:
    """Send each of ``letters`` through again, to the service that failed on it alone, then
    remove it from the dead letters (only once JetStream has stored the replay, and the replay
    of one letter is stored once, whoever replays it twice). The number replayed."""
    replayed = 0
    kept = {HEADER_DEAD_ERROR, HEADER_DEAD_SUBJECT, HEADER_DEAD_DELIVERIES, MSG_ID}
    for letter in letters:
        headers = {k: v for k, v in letter.headers.items() if k not in kept}
        headers[HEADER_EVENT_ID] = str(letter.event_id)
        headers[MSG_ID] = f"replay:{letter.service}:{letter.event_id}:{letter.seq}"
        # The event's own partition, so that an ordered handler keeps its key's order.
        partition = letter.subject.rpartition(".")[2]
        if not partition.isdigit() or int(partition) >= PARTITIONS:
            partition = "0"
        subject = subjects.replay_subject(prefix, letter.service, letter.event_type, partition)
        await js.publish(subject, letter.data, headers=headers, stream=stream_name(prefix))
        await js.delete_msg(dead_stream_name(prefix), letter.seq)
        replayed += 1
    return replayed


def _number(text: str | None) -> int:
    return int(text) if text is not None and text.isdigit() else 0
