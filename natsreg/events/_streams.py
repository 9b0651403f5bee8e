"""Creating the event streams and the consumers of a service, where they do not exist yet.

Both are created by whoever needs them first (an emitter, a consuming instance), with the same
configuration, so the order in which things start does not matter. An existing stream or
consumer is used as it is: an operator's edits stay (docs/events.md, "Defaults").
"""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from .. import subjects
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

# JetStream's error codes for "not that many replicas here": a single server, or a cluster
# with fewer nodes than asked.
_NO_CLUSTER = 10074
_NO_RESOURCES = 10005
_REPLICAS_UNAVAILABLE = (_NO_CLUSTER, _NO_RESOURCES, 10023)


# How long a start-up waits for a cluster's JetStream to elect its leader.
_STARTING_S = 30.0


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
    # min(3, the cluster's size): asked as 3, then fewer where the cluster says it cannot.
    for count in (replicas,) if replicas is not None else (3, 2, 1):
        try:
            await js.add_stream(config.evolve(num_replicas=count))
            log.info("created stream %s with %d replica(s)", config.name, count)
            return
        except APIError as exc:
            if replicas is None and exc.err_code in _REPLICAS_UNAVAILABLE and count > 1:
                continue
            if exc.err_code == 10058:  # created meanwhile by another process
                return
            raise unavailable(exc) from exc


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
    # A cluster that has just started answers "unavailable", or not at all, until it has
    # elected its JetStream leader: wait for that, saying so, rather than fail a start-up.
    deadline = time.monotonic() + _STARTING_S
    said = False
    while True:
        try:
            await js.stream_info(stream)
            return True
        except NotFoundError:
            return False
        except (ServiceUnavailableError, nats.errors.TimeoutError) as exc:
            if isinstance(exc, ServiceUnavailableError) and exc.code is None:
                # "No responders": no server here runs JetStream; waiting will not help.
                raise unavailable(exc) from exc
            if time.monotonic() > deadline:
                raise unavailable(exc) from exc
            if not said:
                log.warning(
                    "JetStream is not ready yet (%s); waiting up to %.0f s", exc, _STARTING_S
                )
                said = True
            await asyncio.sleep(0.25)
        except Exception as exc:  # no JetStream at all: nobody answers $JS.API
            raise unavailable(exc) from exc


def unavailable(exc: Exception) -> EventsUnavailableError:
    """``exc``, a failure of JetStream's API, as the one error natsreg raises for it."""
    return EventsUnavailableError(
        f"JetStream cannot store events ({_reason(exc)}): run nats-server with JetStream "
        "(natsreg up does; nats-server -js), and a quorum of a cluster's nodes"
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, ServiceUnavailableError) and exc.code is None:
        return "no server answers the JetStream API"
    return str(exc).removeprefix("nats: ")
