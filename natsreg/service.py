"""A service instance: announces itself, heartbeats, serves endpoints, says goodbye.

    async with natsreg.announce(nc, "user-service", version="1.2.0") as svc:
        @svc.endpoint("users")
        async def users(req):
            return {"id": 1}
        await svc.serve_forever()
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import random
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import msgspec
from anyio.abc import TaskGroup
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID

from . import _deadline, _dedupe, subjects, wire
from ._codec import Message, to_bytes
from ._tasks import background
from .errors import (BUDGET_HEADER, REQUEST_ID_HEADER, ConfigError, OverloadedError,
                     ServiceError, error_headers)

__all__ = ["Handler", "HealthCheck", "Request", "Service", "ServiceConfig", "announce"]

log = logging.getLogger("natsreg.service")

T = TypeVar("T")

Handler = Callable[["Request"], Awaitable[Any]]
HealthCheck = Callable[[], "wire.Health | Awaitable[wire.Health]"]

# The limits live with the protocol (wire.py), where readers enforce them too.
MAX_METADATA_KEYS = wire.MAX_METADATA_KEYS
MAX_METADATA_KEY_CHARS = wire.MAX_METADATA_KEY_CHARS
MAX_METADATA_VALUE_CHARS = wire.MAX_METADATA_VALUE_CHARS
MAX_DESCRIPTION_CHARS = wire.MAX_DESCRIPTION_CHARS


class Request(Message):
    """A request as a handler sees it: ``data``, ``headers``, ``subject``, ``json()``,
    ``decode(Type)``, and ``deadline``.

    ``deadline`` is when the caller stops waiting, on this process' monotonic clock (compare
    with ``time.monotonic()``), or None if the caller sent no budget. Requests made through a
    :class:`natsreg.Client` inside the handler inherit it.
    """

    __slots__ = ("deadline", "reply")

    def __init__(self, msg: Msg, received: float | None = None) -> None:
        # Message.__init__ inlined: one Request is built per request served.
        self.subject = msg.subject
        self.data = msg.data
        self.headers = headers = msg.headers or {}
        self.reply = msg.reply
        self.deadline: float | None = None
        budget = headers.get(BUDGET_HEADER) if headers else None
        if budget is not None:
            # The budget is relative to when the request reached us (a queued request has
            # already spent some of it), so clocks of different machines never meet.
            try:
                budget_s = int(budget) / 1000
            except ValueError:
                budget_s = None
            if budget_s is not None:
                self.deadline = (received or time.monotonic()) + budget_s

    # A payload that does not decode is the caller's mistake: it becomes a 400 reply, not a
    # 500 with a logged traceback.
    def json(self) -> Any:
        try:
            return super().json()
        except msgspec.DecodeError as exc:
            raise ServiceError(f"the request is not valid JSON: {exc}", code=400) from exc

    def decode(self, type_: type[T]) -> T:
        try:
            return super().decode(type_)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ServiceError(f"bad request: {exc}", code=400) from exc


def _check_metadata(metadata: Mapping[str, str], what: str) -> dict[str, str]:
    try:
        wire.check_metadata(metadata, what)
    except wire.Invalid as exc:
        raise ConfigError(str(exc)) from None
    return dict(metadata)


def _check_name(name: str, what: str) -> str:
    try:
        wire.check_name(name, what)
    except wire.Invalid as exc:
        raise ConfigError(str(exc)) from None
    return name


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """Everything that describes one service instance, validated once, at construction."""

    name: str
    version: str
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: Queue group of the endpoints; the service name unless set.
    queue_group: str | None = None
    #: Subject prefix of natsreg's control traffic; must match the registry's.
    prefix: str = subjects.DEFAULT_PREFIX
    heartbeat_s: float = 1.0
    #: Handlers running at once (the service-side bulkhead).
    max_in_flight: int = 256
    #: Requests waiting for a handler slot; beyond this a request is refused at once with a
    #: retryable :class:`~natsreg.errors.OverloadedError` (503), which a natsreg client
    #: retries on another instance, rather than queueing without bound.
    max_queued: int = 1024
    #: How long leaving the block waits for in-flight handlers before cancelling them.
    drain_timeout_s: float = 10.0
    #: Called every heartbeat; returns "passing", "warning" or "critical".
    health: HealthCheck | None = None

    def __post_init__(self) -> None:
        _check_name(self.name, "service name")
        if not isinstance(self.version, str) or not wire.SEMVER_PATTERN.match(self.version):
            raise ConfigError(f"version {self.version!r} is not SemVer (e.g. '1.2.0')")
        if not isinstance(self.description, str) or len(self.description) > MAX_DESCRIPTION_CHARS:
            raise ConfigError(f"description must be a string of at most {MAX_DESCRIPTION_CHARS}")
        object.__setattr__(self, "metadata", _check_metadata(self.metadata, "service"))
        if self.queue_group is not None and not subjects.is_valid_token(self.queue_group):
            raise ConfigError(f"queue group {self.queue_group!r} is not a valid NATS token")
        subjects.check_prefix(self.prefix)
        if not wire.MIN_HEARTBEAT_S <= self.heartbeat_s <= wire.MAX_HEARTBEAT_S:
            raise ConfigError(f"heartbeat_s must be between {wire.MIN_HEARTBEAT_S} and "
                              f"{wire.MAX_HEARTBEAT_S}, got {self.heartbeat_s}")
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1, got {self.max_in_flight}")
        if self.max_queued < 0:
            raise ConfigError(f"max_queued must be >= 0, got {self.max_queued}")
        if self.drain_timeout_s < 0:
            raise ConfigError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")


@dataclass(eq=False)
class _Endpoint:
    name: str
    subject: str
    queue_group: str
    handler: Handler
    metadata: dict[str, str]
    idempotent: bool = False
    subs: list[Subscription] = field(default_factory=list)
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_ns: int = 0

    def info(self) -> wire.Endpoint:
        return wire.Endpoint(
            name=self.name, subject=self.subject, queue_group=self.queue_group,
            metadata=self.metadata, idempotent=self.idempotent,
        )

    def stats(self) -> wire.SrvEndpointStats:
        served = self.num_requests
        return wire.SrvEndpointStats(
            name=self.name, subject=self.subject, queue_group=self.queue_group,
            num_requests=served, num_errors=self.num_errors, last_error=self.last_error,
            processing_time=self.processing_ns,
            average_processing_time=self.processing_ns // served if served else 0,
        )


class Service(anyio.AsyncContextManagerMixin):
    """One running instance of a service. Build it with :func:`announce`."""

    def __init__(self, nc: NATS, config: ServiceConfig) -> None:
        self.config = config
        #: Unique for this process' lifetime: a restart is a new instance.
        self.id: str = NUID().next().decode()
        self._nc = nc
        self._queue_group = config.queue_group or config.name
        self._endpoints: dict[str, _Endpoint] = {}
        self._seq = 0
        self._started = datetime.now(UTC).isoformat()
        self._health: wire.Health = "passing"
        self._in_flight = 0
        self._served = 0
        self._errors = 0
        # Requests waiting for one of the max_in_flight slots:
        # (endpoint, msg, received at, at-most-once key or None).
        self._queue: deque[tuple[_Endpoint, Msg, float, tuple[str, str] | None]] = deque()
        # Recent calls by request id, so that a repeat is never run twice (_dedupe.py).
        self._calls = _dedupe.Memory()
        # Requests and $SRV queries refused or read without their id, by reason.
        self._dropped = {"reply_subject": 0, "request_id": 0}
        self._idle = asyncio.Event()
        self._idle.set()
        # Endpoints declared while running are subscribed by a task; ready() waits for them.
        self._pending = 0
        self._ready = asyncio.Event()
        self._ready.set()
        # Strong references to running handlers: the event loop only keeps weak ones.
        self._handlers: set[asyncio.Task[None]] = set()
        self._tg: TaskGroup | None = None
        self._stopping = False
        # Discover throttle (_on_discover): one re-announce pending at most, and when the last
        # one went out (monotonic; -inf: never).
        self._reannounce_pending = False
        self._reannounced_at = float("-inf")
        self._host = socket.gethostname()
        self._announced_conn = ""

    # -- public ------------------------------------------------------------------------------

    def endpoint(
        self,
        name: str,
        *,
        subject: str | None = None,
        queue_group: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Serve the decorated coroutine function on ``<service>.<name>`` (or ``subject``).

        The handler gets a :class:`Request` and returns a dict, list, msgspec Struct, str,
        bytes or None; raising :class:`~natsreg.ServiceError` replies with its code.
        ``idempotent=True`` declares that running a request twice does no harm: callers may
        then retry it on another instance after a timeout (a crash or freeze mid-request).
        """
        endpoint = self._new_endpoint(name, subject, queue_group, metadata)
        endpoint.idempotent = idempotent

        def register(handler: Handler) -> Handler:
            if not inspect.iscoroutinefunction(handler):
                raise ConfigError(f"endpoint {name!r}: the handler must be an async function")
            endpoint.handler = handler
            self._endpoints[name] = endpoint
            if self._tg is not None:
                self._pending += 1
                self._ready.clear()
                self._tg.start_soon(self._serve_endpoint, endpoint, True)
            return handler

        return register

    async def ready(self) -> None:
        """Wait until every endpoint declared so far is subscribed and announced.

        An endpoint declared inside the ``async with`` block is subscribed in the
        background; await this before telling anyone the service is up.
        """
        await self._ready.wait()

    async def serve_forever(self) -> None:
        """Wait until SIGINT or SIGTERM (or cancellation); leaving the block then drains."""
        await self.ready()
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s: got %s, stopping", self.config.name, signal.Signals(signum).name)
                return

    @property
    def health(self) -> wire.Health:
        return self._health

    @property
    def dropped(self) -> dict[str, int]:
        """Requests this instance would not take as sent, by reason: ``reply_subject`` (a
        reply subject that is no inbox: not served, not answered) and ``request_id`` (an id
        that is no short printable token: served as if it had none)."""
        return dict(self._dropped)

    def at_most_once(self) -> dict[str, int]:
        """What this instance remembers of recent calls by request id, and how often a
        repeat was answered from it (docs/protocol.md, "At most once")."""
        return self._calls.stats()

    # -- lifetime ----------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Service]:
        control: list[Subscription] = []
        try:
            control = await self._subscribe_control()
            for endpoint in self._endpoints.values():
                await self._serve_endpoint(endpoint, announce=False)
            await self._publish_announce()
            async with background(self._heartbeat_loop) as self._tg:
                yield self
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop(control)

    async def _stop(self, control: list[Subscription]) -> None:
        # Order matters: heartbeats have stopped (with the task group) so none follows the
        # goodbye; endpoints drain
        # (NATS stops routing to us, and what it already routed is still handled) before the
        # goodbye, so nothing is sent to an instance that registries have forgotten.
        self._stopping = True
        self._tg = None
        for endpoint in self._endpoints.values():
            for sub in endpoint.subs:
                await _quietly(sub.drain(), "drain endpoint subscription")
        seq = self._next_seq()
        goodbye = wire.Goodbye(id=self.id, name=self.config.name, seq=seq)
        await _quietly(self._publish("bye", goodbye), "say goodbye")
        with anyio.move_on_after(self.config.drain_timeout_s) as scope:
            await self._idle.wait()
        if scope.cancelled_caught:
            log.warning("%s: %d handlers still running after %.1f s; cancelling them",
                        self.config.name, self._in_flight, self.config.drain_timeout_s)
            self._queue.clear()
            for task in self._handlers:
                task.cancel()
        for sub in control:
            await _quietly(sub.unsubscribe(), "unsubscribe")
        await _quietly(self._nc.flush(timeout=2), "flush")

    # -- endpoints ---------------------------------------------------------------------------

    def _new_endpoint(
        self, name: str, subject: str | None, queue_group: str | None,
        metadata: Mapping[str, str] | None,
    ) -> _Endpoint:
        _check_name(name, "endpoint name")
        if name in self._endpoints:
            raise ConfigError(f"endpoint {name!r} is already served")
        subject = subject or subjects.endpoint_subject(self.config.name, name)
        if not subjects.is_valid_subject(subject):
            raise ConfigError(f"endpoint {name!r}: {subject!r} is not a valid literal subject")
        queue_group = queue_group or self._queue_group
        if not subjects.is_valid_token(queue_group):
            raise ConfigError(f"endpoint {name!r}: queue group {queue_group!r} is not valid")
        return _Endpoint(
            name=name, subject=subject, queue_group=queue_group, handler=_unset_handler,
            metadata=_check_metadata(metadata or {}, f"endpoint {name!r}"),
        )

    async def _serve_endpoint(self, endpoint: _Endpoint, announce: bool) -> None:
        # A partial, not a closure: one coroutine less per request (nats-py accepts both).
        on_request = functools.partial(self._on_request, endpoint)
        direct = subjects.direct_subject(self.config.prefix, self.config.name, self.id,
                                         endpoint.name)
        endpoint.subs = [
            await self._nc.subscribe(endpoint.subject, queue=endpoint.queue_group, cb=on_request),
            await self._nc.subscribe(direct, cb=on_request),
        ]
        if announce:
            # Announce only once NATS has the subscription, so no caller that learns of the
            # endpoint from a registry can reach it before it is served.
            await self._nc.flush()
            await self._publish_announce()
            self._pending -= 1
            if self._pending == 0:
                self._ready.set()

    async def _on_request(self, endpoint: _Endpoint, msg: Msg) -> None:
        # nats-py calls this serially per subscription; the handler runs in its own task so
        # that requests are served concurrently, up to max_in_flight. This runs per request:
        # an asyncio.Semaphore here cost a coroutine and a scan of its waiters every time, so
        # the bound is kept with the in-flight count. A full service queues up to max_queued
        # requests in its own bounded deque (waiting here instead would leave the rest in
        # nats-py's buffer, unbounded and unseen) and refuses the others at once: a caller
        # then retries on another instance rather than waiting in line.
        reply = msg.reply
        if reply and not subjects.is_reply_subject(reply):
            # Not run either: the reply would go to a subject the requester names on our
            # behalf (reflection), and no natsreg or nats-py caller waits anywhere but an inbox.
            self._dropped["reply_subject"] += 1
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
                    known = self._calls.begin(key, reply, time.monotonic())
                    if known is not None:
                        if known is not _dedupe.JOINED and reply:
                            await _quietly(self._nc.publish(
                                reply, known[0], headers=known[1]), "reply")
                        return
                else:
                    self._dropped["request_id"] += 1
        if self._in_flight >= self.config.max_in_flight:
            if len(self._queue) < self.config.max_queued:
                self._queue.append((endpoint, msg, time.monotonic(), key))
            else:
                if key is not None:
                    self._calls.abandon(key)
                self._count_error(endpoint, "503: overloaded")
                if reply:
                    await _quietly(self._nc.publish(
                        reply, b"", headers=error_headers(OverloadedError())), "reply")
            return
        self._start(endpoint, msg, None, key)

    def _start(self, endpoint: _Endpoint, msg: Msg, received: float | None,
               key: tuple[str, str] | None) -> None:
        self._in_flight += 1
        if self._in_flight == 1:
            self._idle.clear()
        task = _new_task(self._handle(endpoint, msg, received, key))
        # The task removes itself when it ends: a done callback would cost one more
        # callback scheduled through the event loop per request. Started eagerly, it may
        # have ended already, and must not be added then.
        if not task.done():
            self._handlers.add(task)

    async def _handle(self, endpoint: _Endpoint, msg: Msg, received: float | None,
                      key: tuple[str, str] | None) -> None:
        try:
            await self._serve_one(endpoint, msg, received, key)
        finally:
            self._handlers.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def _serve_one(self, endpoint: _Endpoint, msg: Msg, received: float | None,
                         key: tuple[str, str] | None) -> None:
        started = time.perf_counter_ns()
        headers: dict[str, str] | None = None
        deadline = None
        # Whether a repeat must get this reply rather than a new run: not when nothing ran, or
        # when the handler itself said that trying again is safe.
        remember = True
        try:
            request = Request(msg, received)
            deadline = request.deadline
            if deadline is not None:
                if deadline <= time.monotonic():
                    # The caller has given up: its work is not started.
                    remember = False
                    raise ServiceError("deadline exceeded before the handler started",
                                       code=504)
                _deadline.current.set(deadline)
            data = to_bytes(await endpoint.handler(request))
        except ServiceError as exc:
            data, headers = b"", error_headers(exc)
            self._count_error(endpoint, f"{exc.code}: {exc.description}")
            if exc.retryable:
                remember = False
        except Exception as exc:
            log.exception("%s.%s: handler failed", self.config.name, endpoint.name)
            error = ServiceError(f"{type(exc).__name__}: {exc}", code=500)
            data, headers = b"", error_headers(error)
            self._count_error(endpoint, error.description)
        finally:
            endpoint.num_requests += 1
            endpoint.processing_ns += time.perf_counter_ns() - started
            self._served += 1
            self._in_flight -= 1
            if self._queue:
                self._start(*self._queue.popleft())
            elif self._in_flight == 0:
                self._idle.set()
        if key is not None:
            now = time.monotonic()
            for waiter in self._calls.finish(
                    key, data, headers, remember=remember,
                    expires_at=_dedupe.remember_until(deadline, now), now=now):
                await _quietly(self._nc.publish(waiter, data, headers=headers), "reply")
        if msg.reply:
            await _quietly(self._nc.publish(msg.reply, data, headers=headers), "reply")

    def _count_error(self, endpoint: _Endpoint, description: str) -> None:
        endpoint.num_errors += 1
        endpoint.last_error = description
        self._errors += 1

    # -- control traffic ---------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _load(self) -> wire.Load:
        return wire.Load(in_flight=self._in_flight, served=self._served, errors=self._errors)

    def _announcement(self) -> wire.Announce:
        c = self.config
        return wire.Announce(
            id=self.id, name=c.name, version=c.version, seq=self._next_seq(),
            description=c.description, metadata=dict(c.metadata),
            endpoints=[e.info() for e in self._endpoints.values()],
            host=self._host, pid=os.getpid(), started=self._started,
            heartbeat_s=c.heartbeat_s, health=self._health, load=self._load(),
            conn=self._announced_conn,
        )

    def _connection(self) -> str:
        # "<server id>/<client id>": what the server's disconnect advisories name. nats-py
        # has no public getter for the server id.
        server_info = getattr(self._nc, "_server_info", None) or {}
        return f"{server_info.get('server_id', '')}/{self._nc.client_id or ''}"

    async def _publish(self, verb: str, message: msgspec.Struct) -> None:
        subject = subjects.control_subject(self.config.prefix, verb, self.config.name, self.id)
        await self._nc.publish(subject, wire.encode(message))

    async def _publish_announce(self) -> None:
        self._announced_conn = self._connection()
        announcement = self._announcement()
        try:
            # The registries' own check: what they would drop is refused here, loudly.
            wire.check(announcement)
        except wire.Invalid as exc:
            raise ConfigError(f"{self.config.name}: {exc}") from None
        payload = wire.encode(announcement)
        if len(payload) > wire.MAX_CONTROL_BYTES:
            raise ConfigError(
                f"{self.config.name}: the announcement is {len(payload)} bytes, over the "
                f"{wire.MAX_CONTROL_BYTES} limit; shorten metadata or descriptions"
            )
        subject = subjects.control_subject(
            self.config.prefix, "announce", self.config.name, self.id)
        await self._nc.publish(subject, payload)

    async def _heartbeat_loop(self) -> None:
        while True:
            await anyio.sleep(self.config.heartbeat_s)
            self._health = await self._check_health()
            if self._stopping:
                return
            if self._connection() != self._announced_conn:
                # Reconnected (perhaps to another server): registries that watch disconnect
                # events must learn the new connection, so this beat is a full announcement.
                await _quietly(self._publish_announce(), "re-announce")
                continue
            beat = wire.Heartbeat(
                id=self.id, name=self.config.name, seq=self._next_seq(),
                health=self._health, load=self._load(),
            )
            await _quietly(self._publish("hb", beat), "heartbeat")

    async def _check_health(self) -> wire.Health:
        if self.config.health is None:
            return "passing"
        try:
            result = self.config.health()
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            log.exception("%s: health check failed; reporting critical", self.config.name)
            return "critical"
        if result not in ("passing", "warning", "critical"):
            log.error("%s: health check returned %r; reporting critical", self.config.name, result)
            return "critical"
        return result

    async def _subscribe_control(self) -> list[Subscription]:
        name, prefix = self.config.name, self.config.prefix
        subs = []
        for tokens in ((), (name,), (name, self.id)):
            for verb, reply in (("PING", self._ping), ("INFO", self._info),
                                ("STATS", self._stats)):
                subs.append(await self._nc.subscribe(
                    subjects.srv_subject(verb, *tokens),
                    cb=_replier(self._nc, reply, self._dropped)))
            subs.append(await self._nc.subscribe(
                subjects.control_subject(prefix, "discover", *tokens), cb=self._on_discover))
        return subs

    async def _on_discover(self, msg: Msg) -> None:
        # Anyone may publish discover, so however many arrive, at most one re-announce is
        # pending and they go out at most once per wire.MIN_REANNOUNCE_S: a flood costs this
        # instance one timer, and the bus one announcement a second.
        if self._tg is None or self._reannounce_pending:
            return
        try:
            jitter_s = wire.decode_discover(msg.data).jitter_s if msg.data else 0.0
        except wire.MALFORMED:
            jitter_s = 0.0
        # Spread re-announcements so that a registry restart is no burst for the bus.
        delay_s = random.uniform(0, min(max(jitter_s, 0.0), 30.0))
        earliest = self._reannounced_at + wire.MIN_REANNOUNCE_S - time.monotonic()
        self._reannounce_pending = True
        self._tg.start_soon(self._announce_after, max(delay_s, earliest))

    async def _announce_after(self, delay_s: float) -> None:
        try:
            await anyio.sleep(delay_s)
        finally:
            self._reannounce_pending = False
        if not self._stopping:
            self._reannounced_at = time.monotonic()
            await _quietly(self._publish_announce(), "re-announce")

    def _srv_metadata(self) -> dict[str, str]:
        return {**self.config.metadata, wire.PREFIX_METADATA_KEY: self.config.prefix}

    def _ping(self) -> msgspec.Struct:
        c = self.config
        return wire.SrvPing(name=c.name, id=self.id, version=c.version,
                            metadata=self._srv_metadata())

    def _info(self) -> msgspec.Struct:
        c = self.config
        return wire.SrvInfo(
            name=c.name, id=self.id, version=c.version, description=c.description,
            metadata=self._srv_metadata(),
            endpoints=[
                wire.SrvEndpointInfo(name=e.name, subject=e.subject, queue_group=e.queue_group,
                                     metadata=e.metadata)
                for e in self._endpoints.values()
            ],
        )

    def _stats(self) -> msgspec.Struct:
        c = self.config
        return wire.SrvStats(
            name=c.name, id=self.id, version=c.version, metadata=self._srv_metadata(),
            started=self._started, endpoints=[e.stats() for e in self._endpoints.values()],
        )


if sys.version_info >= (3, 12):
    def _new_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # Eager: the handler runs at once, in its own task, until it first waits; a handler
        # that never waits costs no trip through the event loop (Python 3.12+).
        return asyncio.Task(coro, loop=asyncio.get_running_loop(), eager_start=True)
else:
    def _new_task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)


def announce(
    nc: NATS,
    name: str,
    *,
    version: str,
    description: str = "",
    metadata: Mapping[str, str] | None = None,
    queue_group: str | None = None,
    prefix: str = subjects.DEFAULT_PREFIX,
    heartbeat_s: float = 1.0,
    max_in_flight: int = 256,
    max_queued: int = 1024,
    drain_timeout_s: float = 10.0,
    health: HealthCheck | None = None,
) -> Service:
    """A service instance on ``nc``, to be entered with ``async with``.

    Entering announces it; leaving stops heartbeats, drains in-flight requests and says
    goodbye. The connection stays open: it is the caller's. See :class:`ServiceConfig`.
    """
    config = ServiceConfig(
        name=name, version=version, description=description, metadata=metadata or {},
        queue_group=queue_group, prefix=prefix, heartbeat_s=heartbeat_s,
        max_in_flight=max_in_flight, max_queued=max_queued, drain_timeout_s=drain_timeout_s,
        health=health,
    )
    return Service(nc, config)


async def _unset_handler(request: Request) -> Any:
    raise ServiceError("endpoint has no handler", code=501)


def _replier(nc: NATS, build: Callable[[], msgspec.Struct], dropped: dict[str, int]
             ) -> Callable[[Msg], Awaitable[None]]:
    async def reply(msg: Msg) -> None:
        if not msg.reply:
            return
        if not subjects.is_reply_subject(msg.reply):
            # Anyone may ask, so an INFO reply aimed at a service's subject would be a
            # reflection: refused, like an endpoint request (Service.dropped).
            dropped["reply_subject"] += 1
            return
        await _quietly(nc.publish(msg.reply, wire.encode(build())), "$SRV reply")

    return reply


async def _quietly(step: Awaitable[Any], what: str) -> None:
    # Used where the connection may already be closed (shutdown, a reply to a caller that is
    # gone): the failure is logged, and the steps after it still run.
    try:
        await step
    except Exception as exc:
        log.warning("could not %s: %s", what, exc)
