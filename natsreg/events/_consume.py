"""Consuming events in one instance: the pull loops, the handlers' tasks, acks, retries with
backoff, dead letters, and broadcast subscriptions.

Balanced handlers share one durable pull consumer per (service, event type): JetStream gives
each event to one instance, and gives it again to any instance when the one holding it stops
reporting progress for ``ack_wait_s`` (a crash, a freeze). An ordered handler holds one
consumer per partition, each with at most one event unacknowledged, so the events of one key
are handled one at a time, in order, whichever instance takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from .. import subjects, wire
from .._codec import _decoder
from ..errors import ConfigError
from ._event import Event, EventHandler, body_type
from ._pool import Pool
from ._pull import EXPIRES_S, Puller, pending_of
from ._settings import (
    HEADER_DEAD_DELIVERIES,
    HEADER_DEAD_ERROR,
    HEADER_DEAD_SUBJECT,
    HEADER_EVENT_ID,
    HEADER_KEY,
    MAX_ERROR_CHARS,
    MSG_ID,
    PARTITIONS,
    EventOptions,
    StreamSettings,
    dead_stream_name,
    retry_delay_s,
    stream_name,
)
from ._streams import ensure_consumer, ensure_streams

__all__ = ["Consumers", "Declared"]

log = logging.getLogger("natsreg.events")

# Tokens of a JetStream reply subject without a domain (_position).
_V1_ACK_TOKENS = 9
# After a failed fetch (the server restarting, a leader moving), wait this long, doubled up
# to the second figure, before asking again.
_FETCH_BACKOFF_S = (0.05, 2.0)


@dataclass(eq=False)
class Declared:
    """One ``on_event`` handler of an instance, with its counters."""

    event_type: str
    handler: EventHandler
    options: EventOptions
    body_type: Any = None
    in_flight: int = 0
    #: Events handled (acknowledged), failed (an attempt raised), and dead-lettered.
    handled: int = 0
    failed: int = 0
    dead: int = 0
    room: asyncio.Event = field(default_factory=asyncio.Event)
    #: The events being handled now, for the progress reports (_report_progress), by id()
    #: (nats-py's Msg is an unhashable dataclass).
    holding: dict[int, Msg] = field(default_factory=dict)
    #: Per consumer it pulls from: events not yet delivered to any instance, as of this
    #: instance's last fetch (the last event's ``num_pending``; 0 after an empty long-poll).
    pending: dict[str, int] = field(default_factory=dict)
    #: The open pull requests of a balanced handler (none for an ordered or broadcast one).
    pullers: list[Puller] = field(default_factory=list)

    @property
    def refill(self) -> int:
        """Free slots worth a fetch: half of ``max_in_flight``, at least one."""
        return max(1, self.options.max_in_flight // 2)

    def room_for_more(self) -> int:
        """Events this handler may still ask for: its room less what it asked for already."""
        asked = sum(p.outstanding for p in self.pullers)
        return self.options.max_in_flight - self.in_flight - asked

    @property
    def lag(self) -> int | None:
        """Events not yet delivered to any instance of the service, as this instance last
        saw them (None before its first fetch, and for a broadcast handler)."""
        return sum(self.pending.values()) if self.pending else None

    def fetched(self, consumer: str, msgs: list[Msg]) -> None:
        # Free: the figure comes with the events (their JetStream reply subject); an empty
        # long-poll with room to spare means nothing waited for this instance.
        self.pending[consumer] = (pending_of(msgs[-1].reply) or 0) if msgs else 0

    def interest(self) -> wire.EventInterest:
        o = self.options
        return wire.EventInterest(type=self.event_type, ordered=o.ordered, broadcast=o.broadcast)


class Consumers:
    """The event handlers of one instance of ``service``."""

    def __init__(self, nc: NATS, service: str, prefix: str) -> None:
        self._nc = nc
        self._service = service
        self._prefix = prefix
        self._stream = stream_name(prefix)
        self._replays = subjects.control_subject(prefix, "evr") + "."
        self.table: dict[str, Declared] = {}
        self._loops: list[asyncio.Task[None]] = []
        # Stopped last: a handler still running while the instance drains keeps its event.
        self._progress: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._pools: list[tuple[Declared, Pool[Msg]]] = []
        self._subs: list[Subscription] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0

    def declare(self, event_type: str, handler: EventHandler, options: EventOptions) -> Declared:
        subjects.check_event_type(event_type)
        if event_type in self.table:
            raise ConfigError(f"{self._service} already handles {event_type!r}")
        if len(self.table) >= wire.MAX_EVENT_INTERESTS:
            raise ConfigError(f"at most {wire.MAX_EVENT_INTERESTS} event types per service")
        declared = Declared(event_type, handler, options, body_type(handler))
        declared.room.set()
        self.table[event_type] = declared
        return declared

    @property
    def _js(self) -> JetStreamContext:
        # Asked for when used: an instance is built before its connection is used at all.
        return self._nc.jetstream()

    def interests(self) -> list[wire.EventInterest]:
        return [d.interest() for d in self.table.values()]

    # -- lifetime ----------------------------------------------------------------------------

    async def start(self, declared: Declared) -> None:
        """Create what ``declared`` consumes from and start its loops (or subscription)."""
        if declared.options.broadcast:
            subject = subjects.event_subject(self._prefix, declared.event_type, "*")

            async def on_broadcast(msg: Msg) -> None:
                self._taken(declared, 1)
                self._spawn(self._handle_broadcast(declared, msg))

            self._subs.append(await self._nc.subscribe(subject, cb=on_broadcast))
            return
        await ensure_streams(self._js, self._prefix, StreamSettings())
        if declared.options.ordered:
            for partition in range(PARTITIONS):
                name = await self._consumer(declared, partition)
                self._loops.append(asyncio.create_task(self._pull_ordered(declared, name)))
        else:
            name = await self._consumer(declared, None)
            self._loops.append(asyncio.create_task(self._pull(declared, name)))
        self._progress.append(asyncio.create_task(_report_progress(declared)))

    async def _consumer(self, declared: Declared, partition: int | None) -> str:
        return await ensure_consumer(
            self._js,
            self._prefix,
            self._service,
            declared.event_type,
            declared.options,
            partition,
        )

    async def stop(self, timeout_s: float) -> None:
        """Take no more events; wait up to ``timeout_s`` for those being handled, then hand
        the rest back to JetStream (another instance gets them at once)."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await _cancel(self._loops)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning(
                "%s: %d event handlers still running; cancelling", self._service, self._in_flight
            )
            await _cancel(list(self._handlers))
        for declared, pool in self._pools:
            # Any event taken but not started goes back to JetStream at once.
            for msg in await pool.close():
                await _quietly(msg.nak())
                self._done(declared)
        self._pools.clear()
        await _cancel(self._progress)

    # -- pulling -----------------------------------------------------------------------------

    async def _pull(self, declared: Declared, consumer: str) -> None:
        # Ask for as many as there is room for (max_in_flight), with requests kept open on
        # the server (_pull.Puller): an idle consumer costs one request per EXPIRES_S, a busy
        # one a request each time half its room is free, not one per event (a fetch per
        # event cost a third of the throughput, bench/events.py).
        pool: Pool[Msg] = Pool(
            lambda msg: self._handle(declared, msg), declared.options.max_in_flight
        )
        # Outlives this loop: stop() ends the loop first, then waits for the events taken.
        self._pools.append((declared, pool))

        def deliver(msg: Msg) -> None:
            self._taken(declared, 1)
            if puller.pending is not None:
                declared.pending[consumer] = puller.pending
            pool.put((msg,))

        puller = Puller(self._nc, self._stream, consumer, deliver, declared.room.set)
        declared.pullers.append(puller)
        await puller.start()
        try:
            for delay in _backoffs():
                puller.write_off_lost()
                if puller.pending is not None:
                    declared.pending[consumer] = puller.pending  # an expiry says 0
                room = declared.room_for_more()
                if room >= declared.refill:
                    try:
                        await puller.ask(room)
                    except Exception as exc:
                        # Disconnected: ask again, less and less often.
                        log.debug("%s: pull request failed (%s)", self._service, exc)
                        await asyncio.sleep(delay.next_s)
                        delay.grow()
                        continue
                    delay.reset()
                declared.room.clear()
                with contextlib.suppress(TimeoutError):
                    # Woken by room, by an expiry, or each second to write off lost requests.
                    await asyncio.wait_for(declared.room.wait(), 1.0)
        finally:
            declared.pullers.remove(puller)
            await _quietly(puller.stop())

    async def _pull_ordered(self, declared: Declared, consumer: str) -> None:
        # One event at a time per partition, handled before the next fetch: the consumer's
        # max_ack_pending of 1 keeps every other instance waiting meanwhile.
        sub = await self._js.pull_subscribe_bind(durable=consumer, stream=self._stream)
        try:
            for delay in _backoffs():
                msgs = await self._fetch(sub, 1, delay)
                if msgs is None:
                    continue
                delay.reset()
                declared.fetched(consumer, msgs)
                for msg in msgs:
                    self._taken(declared, 1)
                    # Shielded: stopping ends the loop, not the event being handled (stop()
                    # waits for it, as for any other).
                    await asyncio.shield(self._spawn(self._handle(declared, msg)))
        finally:
            await _quietly(sub.unsubscribe())

    async def _fetch(self, sub: Any, batch: int, delay: _Backoff) -> list[Msg] | None:
        try:
            msgs: list[Msg] = await sub.fetch(batch, timeout=EXPIRES_S)
            return msgs
        except nats.errors.TimeoutError:
            return []  # a long-poll that found nothing
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The server restarting or a stream leader moving: ask again, less and less often.
            log.debug("%s: fetch failed (%s); again in %.2f s", self._service, exc, delay.next_s)
            await asyncio.sleep(delay.next_s)
            delay.grow()
            return None

    # -- one event ---------------------------------------------------------------------------

    def _taken(self, declared: Declared, count: int) -> None:
        # Counted from the fetch, not from a handler's start: stop() must not see the
        # instance idle while events it holds wait for a worker.
        declared.in_flight += count
        self._in_flight += count
        self._idle.clear()

    def _done(self, declared: Declared) -> None:
        declared.in_flight -= 1
        if declared.room_for_more() >= declared.refill:
            declared.room.set()
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        return task

    async def _handle(self, declared: Declared, msg: Msg) -> None:
        try:
            await self._handle_one(declared, msg)
        finally:
            self._done(declared)

    async def _handle_one(self, declared: Declared, msg: Msg) -> None:
        delivery, event_id = _position(msg)
        headers = msg.headers or {}
        if msg.subject.startswith(self._replays):
            # A replayed dead letter keeps the id its handlers saw the first time.
            with contextlib.suppress(ValueError):
                event_id = int(headers.get(HEADER_EVENT_ID, event_id))
        try:
            event = self._event(declared, msg, event_id, delivery)
        except wire.MALFORMED as exc:
            # No retry can make these bytes decode: dead at once.
            await self._bury(declared, msg, event_id, delivery, f"does not decode: {exc}")
            return
        options = declared.options
        declared.holding[id(msg)] = msg
        try:
            await declared.handler(event)
        except asyncio.CancelledError:
            # Stopping with the handler still running: another instance takes it now.
            await _quietly(msg.nak())
            raise
        except Exception as exc:
            declared.failed += 1
            error = f"{type(exc).__name__}: {exc}"
            last = delivery >= options.max_deliveries
            log.log(
                logging.ERROR if last else logging.WARNING,
                "%s: %r failed on delivery %d%s: %s",
                self._service,
                event,
                delivery,
                " (the last)" if last else "",
                error,
            )
            if last:
                await self._bury(declared, msg, event_id, delivery, error)
            else:
                await _quietly(msg.nak(delay=retry_delay_s(options, delivery)))
            return
        finally:
            del declared.holding[id(msg)]
        await _quietly(msg.ack())
        declared.handled += 1

    def _event(self, declared: Declared, msg: Msg, event_id: int, delivery: int) -> Event[Any]:
        data = msg.data
        if declared.body_type is None:
            body: Any = msgspec.json.decode(data) if data else None
        elif declared.body_type is bytes:
            body = data
        else:
            body = _decoder(declared.body_type).decode(data)
        headers = msg.headers or {}
        return Event(
            event_type=declared.event_type,
            subject=msg.subject,
            data=data,
            headers=headers,
            body=body,
            event_id=event_id,
            delivery=delivery,
            key=headers.get(HEADER_KEY),
        )

    async def _bury(
        self, declared: Declared, msg: Msg, event_id: int, delivery: int, error: str
    ) -> None:
        headers = {k: v for k, v in (msg.headers or {}).items() if k != MSG_ID}
        headers |= {
            # Dead-lettered twice (a crash between the two steps below): stored once.
            MSG_ID: f"dead:{self._service}:{_position(msg)[1]}",
            HEADER_DEAD_ERROR: _header_text(error),
            HEADER_DEAD_SUBJECT: msg.subject,
            HEADER_DEAD_DELIVERIES: str(delivery),
            HEADER_EVENT_ID: str(event_id),
        }
        subject = subjects.dead_subject(self._prefix, self._service, declared.event_type)
        try:
            await self._js.publish(
                subject, msg.data, headers=headers, stream=dead_stream_name(self._prefix)
            )
        except Exception as exc:
            # Not stored (the dead letters are full, or JetStream is away): the event stays
            # in its stream and comes back later, rather than being dropped.
            log.error("%s: could not dead-letter %s (%s); retrying later", self._service, msg, exc)
            await _quietly(msg.nak(delay=declared.options.max_retry_delay_s))
            return
        await _quietly(msg.term())
        declared.dead += 1

    async def _handle_broadcast(self, declared: Declared, msg: Msg) -> None:
        try:
            event = self._event(declared, msg, 0, 1)
            await declared.handler(event)
            declared.handled += 1
        except Exception as exc:
            declared.failed += 1
            log.warning("%s: broadcast %s failed: %s", self._service, msg.subject, exc)
        finally:
            self._done(declared)


class _Backoff:
    def __init__(self) -> None:
        self.next_s = _FETCH_BACKOFF_S[0]

    def grow(self) -> None:
        self.next_s = min(self.next_s * 2, _FETCH_BACKOFF_S[1])

    def reset(self) -> None:
        self.next_s = _FETCH_BACKOFF_S[0]


def _backoffs() -> Iterator[_Backoff]:
    delay = _Backoff()
    while True:
        yield delay


def _position(msg: Msg) -> tuple[int, int]:
    """The delivery count and stream sequence of a JetStream message, from its reply subject
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``
    read directly: nats-py's ``msg.metadata`` also builds two frozen dataclasses and a
    datetime per event (this and one coroutine less per event: 353k to 312k instructions an
    event, bench/events.py --instructions). Any other shape (the longer one with a domain)
    goes to nats-py's parser."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == _V1_ACK_TOKENS and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[4]), int(tokens[5])
    meta = msg.metadata
    return meta.num_delivered, meta.sequence.stream


async def _report_progress(declared: Declared) -> None:
    # While a handler runs, JetStream hears that it does, every third of ack_wait_s, so a slow
    # handler keeps its event; a crashed one stops reporting, and the event goes elsewhere
    # after ack_wait_s. One task per handler, not one per event: most events take far less.
    every_s = declared.options.ack_wait_s / 3
    while True:
        await asyncio.sleep(every_s)
        for msg in list(declared.holding.values()):
            await _quietly(msg.in_progress())


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    tasks.clear()


async def _quietly(step: Any) -> None:
    try:
        await step
    except Exception as exc:
        log.debug("events: %s", exc)


def _header_text(text: str) -> str:
    # A header value is one line of printable text: an exception's message may hold anything.
    cleaned = "".join(c if c.isprintable() else " " for c in text)
    return cleaned[:MAX_ERROR_CHARS] or "error"
