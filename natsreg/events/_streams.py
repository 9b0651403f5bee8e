"""Creating the event streams and the consumers of a service, where they do not exist yet.

Both are created by whoever needs them first (an emitter, a consuming instance), with the same
configuration, so the order in which things start does not matter. An existing stream or
consumer is used as it is: an operator's edits stay (docs/events.md, "Defaults").
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, NotFoundError

from .. import subjects
from .._jetstream import create_replicated, no_jetstream, when_ready
from ..errors import NatsregError
from ._settings import (
    EventOptions,
    StreamSettings,
    consumer_name,
    dead_stream_name,
    stream_name,
)

__all__ = ["EventsUnavailableError", "ensure_consumer", "ensure_streams", "unavailable"]

log = logging.getLogger("natsreg.events")


class EventsUnavailableError(NatsregError):
    """JetStream is not there to store events (not enabled on the server, or no quorum)."""

    retryable = True


async def ensure_streams(js: JetStreamContext, prefix: str, settings: StreamSettings) -> None:
    """The events stream and the dead-letter stream of ``prefix``, created if missing."""
    events = js_api.StreamConfig(
        name=stream_name(prefix),
        description=f"natsreg events of prefix {prefix}",
        subjects=[
            subjects.control_subject(prefix, "ev", ">"),
            subjects.control_subject(prefix, "evr", ">"),
        ],
        retention=js_api.RetentionPolicy.LIMITS,
        storage=js_api.StorageType.FILE,
        max_age=settings.max_age_s,
        max_bytes=settings.max_bytes,
        max_msg_size=settings.max_body_bytes + 4096,  # the headers, within reason
        duplicate_window=settings.duplicate_window_s,
        discard=js_api.DiscardPolicy.OLD,
    )
    dead = js_api.StreamConfig(
        name=dead_stream_name(prefix),
        description=f"natsreg dead letters of prefix {prefix}",
        subjects=[subjects.control_subject(prefix, "evdead", ">")],
        retention=js_api.RetentionPolicy.LIMITS,
        storage=js_api.StorageType.FILE,
        max_msgs=settings.max_dead,
        max_msg_size=settings.max_body_bytes + 8192,  # the event and its last error
        duplicate_window=settings.duplicate_window_s,
        # Full: a new dead letter is refused, and its event is retried rather than dropped.
        discard=js_api.DiscardPolicy.NEW,
    )
    for config in (events, dead):
        await _ensure_stream(js, config, settings.replicas)


async def _ensure_stream(
    js: JetStreamContext, config: js_api.StreamConfig, replicas: int | None
) -> None:
    assert config.name is not None
    if await _exists(js, config.name):
        return

    async def create(count: int) -> None:
        await js.add_stream(config.evolve(num_replicas=count))

    try:
        count = await create_replicated(create, replicas)
    except APIError as exc:
        raise unavailable(exc) from exc
    if count is not None:
        log.info("created stream %s with %d replica(s)", config.name, count)


async def ensure_consumer(
    js: JetStreamContext,
    prefix: str,
    service: str,
    event_type: str,
    options: EventOptions,
    partition: int | None,
) -> str:
    """The durable consumer of ``service`` for ``event_type`` (one partition of it for an
    ordered handler), created if missing; its name."""
    stream = stream_name(prefix)
    name = consumer_name(service, event_type, partition)
    token = "*" if partition is None else str(partition)
    config = js_api.ConsumerConfig(
        name=name,
        durable_name=name,
        description=f"natsreg: {service} handles {event_type}",
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=options.ack_wait_s,
        # natsreg counts deliveries itself and dead-letters: JetStream never drops an event.
        max_deliver=-1,
        max_ack_pending=1 if options.ordered else options.max_ack_pending,
        filter_subjects=[
            subjects.event_subject(prefix, event_type, token),
            subjects.replay_subject(prefix, service, event_type, token),
        ],
        metadata={
            "natsreg.service": service,
            "natsreg.event": event_type,
            "natsreg.mode": "ordered" if options.ordered else "balanced",
        },
    )
    try:
        await js.consumer_info(stream, name)
        return name
    except NotFoundError:
        pass
    except APIError as exc:
        raise unavailable(exc) from exc
    try:
        await js.add_consumer(stream, config)
    except APIError as exc:
        raise unavailable(exc) from exc
    return name


async def _exists(js: JetStreamContext, stream: str) -> bool:
    try:
        await when_ready(lambda: js.stream_info(stream))
        return True
    except NotFoundError:
        return False
    except Exception as exc:  # no JetStream at all: nobody answers $JS.API
        raise unavailable(exc) from exc


def unavailable(exc: Exception) -> EventsUnavailableError:
    """``exc``, a failure of JetStream's API, as the one error natsreg raises for it."""
    return EventsUnavailableError(
        f"JetStream cannot store events ({_reason(exc)}): run nats-server with JetStream "
        "(natsreg up does; nats-server -js), and a quorum of a cluster's nodes"
    )


def _reason(exc: Exception) -> str:
    if no_jetstream(exc):
        return "no server answers the JetStream API"
    return str(exc).removeprefix("nats: ")
