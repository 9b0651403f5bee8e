"""The request path: the endpoint table, the concurrency bound and its queue, handler tasks,
the memory of recent calls (at most once), replies and per-endpoint stats."""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import anyio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .. import _deadline, _figures, _otel, _schemas, _trace, subjects, wire
from .._codec import to_bytes
from ..errors import REQUEST_ID_HEADER, ConfigError, OverloadedError, ServiceError, error_headers
from . import _dedupe
from ._config import ServiceConfig, check_metadata, check_name
from ._log import log, quietly
from ._request import Handler, Request

__all__ = ["Endpoint", "Endpoints", "checked_endpoint"]

#: An at-most-once key: (endpoint name, request id).
Key = tuple[str, str]


@dataclass(eq=False)
class Endpoint:
    name: str
    subject: str
    queue_group: str
    handler: Handler
    metadata: dict[str, str]
    idempotent: bool = False
    #: A typed endpoint's JSON Schemas (service/_typed.py); None for an untyped one.
    schemas: wire.Schemas | None = None
    subs: list[Subscription] = field(default_factory=list)
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_ns: int = 0
    # For Prometheus (natsreg._collector): requests by outcome, errors by code, and the
    # handlers' durations.
    outcomes: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("ok", "error", "overloaded", "expired"), 0)
    )
    codes: dict[str, int] = field(default_factory=dict)
    latency: _figures.Latency = field(default_factory=_figures.Latency)

    def info(self) -> wire.Endpoint:
        return wire.Endpoint(
            name=self.name,
            subject=self.subject,
            queue_group=self.queue_group,
            metadata=self.metadata,
            idempotent=self.idempotent,
            schemas=self.schemas,
        )

    def srv_info(self) -> wire.SrvEndpointInfo:
        metadata = self.metadata
        if self.schemas is not None:
            metadata = {**metadata, **self.schemas.metadata()}
        return wire.SrvEndpointInfo(
            name=self.name,
            subject=self.subject,
            queue_group=self.queue_group,
            metadata=metadata,
        )

    def stats(self) -> wire.SrvEndpointStats:
        served = self.num_requests
        return wire.SrvEndpointStats(
            name=self.name,
            subject=self.subject,
            queue_group=self.queue_group,
            num_requests=served,
            num_errors=self.num_errors,
            last_error=self.last_error,
            processing_time=self.processing_ns,
            average_processing_time=self.processing_ns // served if served else 0,
        )


def checked_endpoint(
    config: ServiceConfig,
    name: str,
    subject: str | None,
    queue_group: str | None,
    metadata: Mapping[str, str] | None,
    idempotent: bool,
) -> Endpoint:
    """An endpoint of ``config``'s service, its name, subject and queue group checked (at
    declaration, so a wrong one fails at import rather than when a worker starts)."""
    check_name(name, "endpoint name")
    subject = subject or subjects.endpoint_subject(config.name, name)
    if not subjects.is_valid_subject(subject):
        raise ConfigError(f"endpoint {name!r}: {subject!r} is not a valid literal subject")
    queue_group = queue_group or config.queue_group or config.name
    if not subjects.is_valid_token(queue_group):
        raise ConfigError(f"endpoint {name!r}: queue group {queue_group!r} is not valid")
    reserved = sorted(set(metadata or ()) & set(_schemas.METADATA_KEYS))
    if reserved:
        raise ConfigError(
            f"endpoint {name!r}: metadata key {reserved[0]!r} is natsreg's own (the schema of "
            "a typed endpoint); declare the type with request=... / response=... instead"
        )
    return Endpoint(
        name=name,
        subject=subject,
        queue_group=queue_group,
        handler=_unset_handler,
        metadata=check_metadata(metadata or {}, f"endpoint {name!r}"),
        idempotent=idempotent,
    )


class Endpoints:
    """The endpoints of one instance and everything a request goes through."""

    def __init__(
        self, nc: NATS, config: ServiceConfig, instance_id: str, state: SimpleNamespace
    ) -> None:
        self._nc = nc
        self._state = state
        self._config = config
        self._id = instance_id
        self.table: dict[str, Endpoint] = {}
        self.in_flight = 0
        self.served = 0
        self.errors = 0
        # Requests waiting for one of the max_in_flight slots:
        # (endpoint, msg, received at, at-most-once key or None).
        self._queue: deque[tuple[Endpoint, Msg, float, Key | None]] = deque()
        # Recent calls by request id, so that a repeat is never run twice (_dedupe.py).
        self.calls = _dedupe.Memory()
        # Requests and $SRV queries refused or read without their id, by reason.
        self.dropped = {"reply_subject": 0, "request_id": 0}
        #: Whether requests are counted for Prometheus (``NATSREG_METRICS``).
        self.recording = _figures.enabled()
        #: Drains begun (the instance is stopping), for Prometheus.
        self.drains = 0
        #: Per event type this instance consumes: events handled, failed attempts and dead
        #: letters, for Prometheus (set by the instance: natsreg/events/_consume.py counts).
        self.event_counts: Callable[[], dict[str, dict[str, int]]] = dict
        #: Per durable event type: events not yet taken by any instance (Instance.event_lags).
        self.event_lags: Callable[[], dict[str, int]] = dict
        #: Why the instance should not be sent requests, or None (Instance.readiness).
        self.readiness: Callable[[], str | None] = lambda: None
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        # Strong references to running handlers: the event loop only keeps weak ones.
        self._handlers: set[asyncio.Task[None]] = set()

    def declare(
        self,
        name: str,
        subject: str | None,
        queue_group: str | None,
        metadata: Mapping[str, str] | None,
        idempotent: bool,
    ) -> Endpoint:
        """A checked endpoint, not in the table yet (its handler comes with the decorator)."""
        if name in self.table:
            raise ConfigError(f"endpoint {name!r} is already served")
        return checked_endpoint(self._config, name, subject, queue_group, metadata, idempotent)

    @property
    def service(self) -> str:
        return self._config.name

    @property
    def nc(self) -> NATS:
        return self._nc

    @property
    def queued(self) -> int:
        """Requests waiting for one of the ``max_in_flight`` slots."""
        return len(self._queue)

    def load(self) -> wire.Load:
        return wire.Load(in_flight=self.in_flight, served=self.served, errors=self.errors)

    # -- lifetime ----------------------------------------------------------------------------

    async def subscribe(self, endpoint: Endpoint) -> None:
        # A partial, not a closure: one coroutine less per request (nats-py accepts both).
        on_request = functools.partial(self._on_request, endpoint)
        c = self._config
        direct = subjects.direct_subject(c.prefix, c.name, self._id, endpoint.name)
        endpoint.subs = [
            await self._nc.subscribe(endpoint.subject, queue=endpoint.queue_group, cb=on_request),
            await self._nc.subscribe(direct, cb=on_request),
        ]

    async def unsubscribe(self) -> None:
        # NATS stops routing to us; what it already routed is still handled.
        for endpoint in self.table.values():
            for sub in endpoint.subs:
                # nats-py leaves Subscription.drain unannotated.
                draining = sub.drain()  # type: ignore[no-untyped-call]
                await quietly(draining, "drain endpoint subscription")

    async def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for running and queued handlers, then cancel the rest."""
        self.drains += 1
        self.draining = True
        with anyio.move_on_after(timeout_s) as scope:
            await self._idle.wait()
        if scope.cancelled_caught:
            log.warning(
                "%s: %d handlers still running after %.1f s; cancelling them",
                self._config.name,
                self.in_flight,
                timeout_s,
            )
            self._queue.clear()
            for task in self._handlers:
                task.cancel()

    # -- one request -------------------------------------------------------------------------

    async def _on_request(self, endpoint: Endpoint, msg: Msg) -> None:
        # nats-py calls this serially per subscription; the handler runs in its own task so
        # that requests are served concurrently, up to max_in_flight. This runs per request:
        # an asyncio.Semaphore here cost a coroutine and a scan of its waiters every time, so
        # the bound is kept with the in-flight count. A full service queues up to max_queued
        # requests in its own bounded deque (waiting here instead would leave the rest in
        # nats-py's buffer, unbounded and unseen) and refuses the others at once: a caller
        # then retries on another instance rather than waiting in line. The common path stays
        # in this one function: each call split off it cost about a thousand instructions a
        # request (bench/instructions.py).
        reply = msg.reply
        if reply and not subjects.is_reply_subject(reply):
            # Not run either: the reply would go to a subject the requester names on our
            # behalf (reflection), and no natsreg or nats-py caller waits anywhere but an inbox.
            self.dropped["reply_subject"] += 1
            return
        key = None
        headers = msg.headers
        # An endpoint declared idempotent may run a call twice by definition: remembering
        # its calls would cost every request (about a tenth of a service's CPU per call,
        # bench/RESULTS.md) to prevent nothing.
        if headers and not endpoint.idempotent:
            request_id = headers.get(REQUEST_ID_HEADER)
            if request_id is not None:
                if _dedupe.is_valid_id(request_id):
                    key = (endpoint.name, request_id)
                    # Before the overload check: a repeat of a call this instance has must
                    # be answered here, not refused and retried on an instance that lacks it.
                    known = self.calls.begin(key, reply, time.monotonic())
                    if known is not None:
                        if known is not _dedupe.JOINED and reply:
                            await quietly(
                                self._nc.publish(reply, known[0], headers=known[1]), "reply"
                            )
                        return
                else:
                    self.dropped["request_id"] += 1
        if self.in_flight >= self._config.max_in_flight:
            await self._overflow(endpoint, msg, key)
            return
        self._start(endpoint, msg, None, key)

    async def _overflow(self, endpoint: Endpoint, msg: Msg, key: Key | None) -> None:
        if len(self._queue) < self._config.max_queued:
            self._queue.append((endpoint, msg, time.monotonic(), key))
            return
        if key is not None:
            self.calls.abandon(key)
        self._count_error(endpoint, 503, "503: overloaded")
        if self.recording:
            endpoint.outcomes["overloaded"] += 1
        if msg.reply:
            await quietly(
                self._nc.publish(msg.reply, b"", headers=error_headers(OverloadedError())), "reply"
            )

    def _start(self, endpoint: Endpoint, msg: Msg, received: float | None, key: Key | None) -> None:
        self.in_flight += 1
        if self.in_flight == 1:
            self._idle.clear()
        task = _new_task(self._handle(endpoint, msg, received, key))
        # The task removes itself when it ends: a done callback would cost one more
        # callback scheduled through the event loop per request. Started eagerly, it may
        # have ended already, and must not be added then.
        if not task.done():
            self._handlers.add(task)

    async def _handle(
        self, endpoint: Endpoint, msg: Msg, received: float | None, key: Key | None
    ) -> None:
        try:
            await self._serve_one(endpoint, msg, received, key)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._handlers.discard(task)

    async def _serve_one(
        self, endpoint: Endpoint, msg: Msg, received: float | None, key: Key | None
    ) -> None:
        started = time.perf_counter_ns()
        headers: dict[str, str] | None = None
        deadline = None
        # Whether a repeat must get this reply rather than a new run: not when nothing ran, or
        # when the handler itself said that trying again is safe.
        remember = True
        # The trace this request belongs to, for nested calls and log lines (_trace.py).
        span: Any = None
        token: object = None
        tracer = _otel.tracer()
        if tracer is not None:
            parent = _trace.from_headers(msg.headers)
            span, token = _otel.server_span(tracer, endpoint.subject, endpoint.queue_group, parent)
        else:
            _trace.receive(msg.headers)
        failure: ServiceError | None = None
        # "error" until the handler returns: a cancelled handler (drain timeout) is no success.
        outcome = "error"
        try:
            request: Request[Any] = Request(msg, received, self._state)
            deadline = request.deadline
            if deadline is not None and deadline <= time.monotonic():
                # The caller has given up: its work is not started.
                remember = False
                outcome = "expired"
                raise ServiceError("deadline exceeded before the handler started", code=504)
            # Set even to None: a queued request's task starts in a copy of the context of the
            # handler that made room for it, which holds that request's deadline.
            _deadline.current.set(deadline)
            data = to_bytes(await endpoint.handler(request))
            outcome = "ok"
        except ServiceError as exc:
            failure = self._refused(endpoint, exc)
            data, headers = b"", error_headers(failure)
            remember = remember and not exc.retryable
        except Exception as exc:
            failure = self._failed(endpoint, exc)
            data, headers = b"", error_headers(failure)
        finally:
            elapsed_ns = time.perf_counter_ns() - started
            if span is not None:
                _otel.end(span, failure, token)
            endpoint.num_requests += 1
            endpoint.processing_ns += elapsed_ns
            if self.recording:
                endpoint.outcomes[outcome] += 1
                endpoint.latency.observe(elapsed_ns / 1e9)
            self.served += 1
            self.in_flight -= 1
            if self._queue:
                self._start(*self._queue.popleft())
            elif self.in_flight == 0:
                self._idle.set()
        if key is not None:
            now = time.monotonic()
            for waiter in self.calls.finish(
                key,
                data,
                headers,
                remember=remember,
                expires_at=_dedupe.remember_until(deadline, now),
                now=now,
            ):
                await quietly(self._nc.publish(waiter, data, headers=headers), "reply")
        if msg.reply:
            await quietly(self._nc.publish(msg.reply, data, headers=headers), "reply")

    def _refused(self, endpoint: Endpoint, exc: ServiceError) -> ServiceError:
        self._count_error(endpoint, exc.code, f"{exc.code}: {exc.description}")
        return exc

    def _failed(self, endpoint: Endpoint, exc: Exception) -> ServiceError:
        log.exception("%s.%s: handler failed", self._config.name, endpoint.name)
        error = ServiceError(f"{type(exc).__name__}: {exc}", code=500)
        self._count_error(endpoint, 500, error.description)
        return error

    def _count_error(self, endpoint: Endpoint, code: int, description: str) -> None:
        endpoint.num_errors += 1
        endpoint.last_error = description
        self.errors += 1
        if self.recording:
            # One series per code, within HTTP's range: a handler may pass on a code another
            # service sent it, and any other number would be a new series each time.
            label = str(code) if 100 <= code <= 599 else "other"
            endpoint.codes[label] = endpoint.codes.get(label, 0) + 1


if sys.version_info >= (3, 12):

    def _new_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # Eager: the handler runs at once, in its own task, until it first waits; a handler
        # that never waits costs no trip through the event loop (Python 3.12+).
        return asyncio.Task(coro, loop=asyncio.get_running_loop(), eager_start=True)
else:

    def _new_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)


async def _unset_handler(request: Request[Any]) -> Any:
    raise ServiceError("endpoint has no handler", code=501)
