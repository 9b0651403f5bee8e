"""A service instance: announces itself, heartbeats, serves endpoints, says goodbye.

    async with natsreg.announce(nc, "user-service", version="1.2.0") as svc:
        @svc.endpoint("users")
        async def users(req):
            return {"id": 1}
        await svc.serve_forever()

or, declared at import time and served by ``natsreg run module:svc`` (or by
``natsreg.announce(nc, svc)``): ``svc = natsreg.Service("user-service", version="1.2.0")``.

The parts: ``_app`` (Service, the declaration), ``_config`` (ServiceConfig), ``_request``
(Request), ``_endpoints`` (the request path), ``_control`` (announce, heartbeat, discover,
goodbye, $SRV), ``_dedupe`` (at most once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import signal
import types
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import AbstractContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Unpack, overload

import anyio
from anyio.abc import TaskGroup
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.nuid import NUID

from .. import _figures, _natspy, _origin, _probes, wire
from .._tasks import background
from ..errors import ConfigError
from ..events._consume import Consumers, Declared
from ..events._emit import Events
from ..events._event import EventHandler
from ..events._settings import EventOptions, EventSettings
from ._app import Context, Hook, Middleware, Service, config_of, wrap
from ._config import HealthCheck, ServiceConfig, ServiceSettings
from ._control import Control
from ._endpoints import Endpoint, Endpoints
from ._log import log, quietly
from ._request import Handler, Request
from ._typed import body_types, schemas_of, validating

__all__ = [
    "Context",
    "Handler",
    "HealthCheck",
    "Hook",
    "Instance",
    "Middleware",
    "Request",
    "Service",
    "ServiceConfig",
    "announce",
]


class Instance(anyio.AsyncContextManagerMixin):
    """One running instance of a service. Build it with :func:`announce`."""

    def __init__(self, nc: NATS, config: ServiceConfig, *, declared: Service | None = None) -> None:
        #: Unique for this process' lifetime: a restart is a new instance.
        self.id: str = NUID().next().decode()
        #: This process' own namespace for resources (``ctx.state`` in hooks, ``req.state``).
        self.state = types.SimpleNamespace()
        self._nc = nc
        _natspy.adopt(nc)  # headers parsed on receipt; a late PONG harmless
        self._context = Context(nc, self, self.state)
        if declared is not None and declared.health_hook is not None:
            config = dataclasses.replace(
                config, health=functools.partial(declared.health_hook, self._context)
            )
        self.config = config
        self._middleware: tuple[Middleware, ...] = ()
        self._hooks: tuple[tuple[Hook, ...], tuple[Hook, ...]] = ((), ())
        self._endpoints = Endpoints(nc, config, self.id, self.state)
        self._consumers = Consumers(nc, config.name, config.prefix)
        self._endpoints.event_counts = self.event_counts
        self._endpoints.event_lags = self.event_lags
        self._endpoints.readiness = self.readiness
        self._control = Control(nc, config, self.id, self._endpoints, self._consumers.interests)
        # Endpoints declared while running are subscribed by a task; ready() waits for them.
        self._pending = 0
        self._ready = asyncio.Event()
        self._ready.set()
        self._tg: TaskGroup | None = None
        # What readiness() reads: announced once NATS holds the announcement, draining
        # from the moment leaving the block begins.
        self._announced = False
        self._draining = False
        #: Where the probes listen, when ``http`` is set and the instance runs.
        self.probes: _probes.Probes | None = None
        if declared is not None:
            self._middleware = declared.middleware_chain
            self._hooks = (declared.start_hooks, declared.stop_hooks)
            for name, handler, options in declared.declared_endpoints():
                self.endpoint(name, **options)(handler)
            for event_type, on_event, event_options in declared.declared_events():
                self._consumers.declare(event_type, on_event, event_options)

    # -- public ------------------------------------------------------------------------------

    def endpoint(
        self,
        name: str,
        *,
        subject: str | None = None,
        queue_group: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotent: bool = False,
        request: Any = None,
        response: Any = None,
    ) -> Callable[[Handler], Handler]:
        """Serve the decorated coroutine function on ``<service>.<name>`` (or ``subject``).

        The handler gets a :class:`Request` and returns a dict, list, msgspec Struct, str,
        bytes or None; raising :class:`~natsreg.ServiceError` replies with its code.
        ``idempotent=True`` declares that running a request twice does no harm: callers may
        then retry it on another instance after a timeout (a crash or freeze mid-request).

        A typed endpoint names its body types by annotation (``req:
        natsreg.Request[UserQuery]``, ``-> User``) or as ``request=``/``response=``: a payload
        that does not decode into the request type gets a 400 naming the field and the
        handler does not run; the reply is the return value as the response type; and both
        JSON Schemas are announced (docs/protocol.md, "Typed endpoints").
        """
        endpoint = self._endpoints.declare(name, subject, queue_group, metadata, idempotent)

        def register(handler: Handler) -> Handler:
            if not inspect.iscoroutinefunction(handler):
                raise ConfigError(f"endpoint {name!r}: the handler must be an async function")
            what = f"{self.config.name}: endpoint {name!r}"
            types = body_types(handler, request, response, what)
            served: Handler = handler
            if types.typed:
                endpoint.schemas = schemas_of(types, what)
                # The innermost wrapper: the service's middleware sees every request, typed
                # or not, and a refused one is counted as any 400 is.
                served = validating(handler, types)
            endpoint.handler = wrap(served, self._middleware)
            self._endpoints.table[name] = endpoint
            if self._tg is not None:
                self._pending += 1
                self._ready.clear()
                self._tg.start_soon(self._serve_endpoint, endpoint, True)
            return handler

        return register

    def on_event(
        self, event_type: str, **options: Unpack[EventSettings]
    ) -> Callable[[EventHandler], EventHandler]:
        """Handle the events of ``event_type`` with the decorated coroutine function.

        Each event goes to one instance of this service (instances share a durable
        consumer); every service that handles the type gets its own copy. Returning
        acknowledges the event; raising retries it later, with backoff, on any instance, up
        to ``max_deliveries`` times, after which it goes to the dead letters
        (``natsreg events dead``). ``ordered=True`` handles events with the same key one at a
        time, in order; ``broadcast=True`` gives every instance every event over core NATS,
        with no durability. The handler gets a :class:`natsreg.Event`; annotated
        ``Event[T]``, its ``body`` is decoded as ``T``. The options are
        :class:`natsreg.events.EventOptions`' (docs/events.md).
        """
        checked = EventOptions(**options)

        def register(handler: EventHandler) -> EventHandler:
            if not inspect.iscoroutinefunction(handler):
                raise ConfigError(f"event handler of {event_type!r} must be an async function")
            declared = self._consumers.declare(event_type, handler, checked)
            if self._tg is not None:
                self._pending += 1
                self._ready.clear()
                self._tg.start_soon(self._consume, declared, True)
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
                with self._speaking():
                    log.info("%s: got %s, stopping", self.config.name, signal.Signals(signum).name)
                return

    def readiness(self) -> str | None:
        """Why callers should not be sent here, or None: the instance must be connected to
        NATS, announced (every endpoint declared so far included), and not draining."""
        if self._draining:
            return "draining: finishing the requests in flight before saying goodbye"
        if not self._announced or not self._ready.is_set():
            return "not announced yet"
        return _probes.nats_problem(self._nc)

    @functools.cached_property
    def events(self) -> Events:
        """An emitter on this instance's connection and prefix that warns, once per type,
        when it emits an event type the service does not declare in ``emits=``."""
        return Events(self._nc, prefix=self.config.prefix, declared=self.config.emits)

    @property
    def health(self) -> wire.Health:
        return self._control.health

    @property
    def pace_s(self) -> float:
        """The heartbeat interval this instance declared last: its own ``heartbeat_s``, or the
        slower pace a registry node that reads system events allows (docs/protocol.md,
        "Paced heartbeats")."""
        return self._control.pace_s

    @property
    def dropped(self) -> dict[str, int]:
        """Requests this instance would not take as sent, by reason: ``reply_subject`` (a
        reply subject that is no inbox: not served, not answered) and ``request_id`` (an id
        that is no short printable token: served as if it had none)."""
        return dict(self._endpoints.dropped)

    def at_most_once(self) -> dict[str, int]:
        """What this instance remembers of recent calls by request id, and how often a
        repeat was answered from it (docs/protocol.md, "At most once")."""
        return self._endpoints.calls.stats()

    def event_counts(self) -> dict[str, dict[str, int]]:
        """Per event type this instance consumes: events ``handled`` (acknowledged),
        attempts that ``failed``, and events ``dead`` (stored in the dead letters)."""
        return {
            t: {"handled": d.handled, "failed": d.failed, "dead": d.dead}
            for t, d in self._consumers.table.items()
        }

    def event_lags(self) -> dict[str, int]:
        """Per durable event type this instance consumes: events stored for this service
        that no instance has taken yet, as of this instance's last fetch (docs/events.md)."""
        lags = {t: d.lag for t, d in self._consumers.table.items()}
        return {t: lag for t, lag in lags.items() if lag is not None}

    # -- lifetime ----------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Instance]:
        context = self._context
        async with AsyncExitStack() as stack:
            if self.config.http is not None:
                # Up before the hooks, so that /healthz answers while they open resources
                # (and /readyz says why not yet); down after the goodbye.
                host, port, shared = _probes.worker_listen(self.config.http)
                self.probes = await stack.enter_async_context(
                    _probes.serve((host, port), self, reuse_port=shared)
                )
                stack.callback(setattr, self, "probes", None)
            # Before anything is announced: no request reaches a handler whose resources
            # are not open yet.
            with self._speaking():
                for hook in self._hooks[0]:
                    await hook(context)
            try:
                async with self._serving():
                    yield self
            finally:
                with anyio.CancelScope(shield=True), self._speaking():
                    for hook in reversed(self._hooks[1]):
                        await hook(context)

    def _speaking(self) -> AbstractContextManager[None]:
        # Bound around each step rather than across the yield: the body of the caller's
        # `async with` is the caller's own code, not this instance's (natsreg/_origin.py).
        return _origin.bound(self.config.name, self.id)

    @asynccontextmanager
    async def _serving(self) -> AsyncGenerator[None]:
        control: list[Subscription] = []
        try:
            with self._speaking():
                control = await self._control.subscribe()
                for endpoint in self._endpoints.table.values():
                    await self._serve_endpoint(endpoint, announce=False)
                for declared in self._consumers.table.values():
                    await self._consume(declared, announce=False)
                await self._announce()
            if self._endpoints.recording:
                # In the exposition from its announcement until it has drained.
                _figures.LIVE.services.add(self._endpoints)
            async with background() as self._tg:
                with self._speaking():
                    self._control.start(self._tg)
                yield
        finally:
            with anyio.CancelScope(shield=True), self._speaking():
                try:
                    await self._stop(control)
                finally:
                    _figures.LIVE.services.discard(self._endpoints)

    async def _stop(self, control: list[Subscription]) -> None:
        # Order matters: heartbeats have stopped (with the task group) so none follows the
        # goodbye; endpoints drain (NATS stops routing to us, and what it already routed is
        # still handled) before the goodbye, so nothing is sent to an instance that registries
        # have forgotten.
        self._draining = True
        self._control.stop()
        self._tg = None
        await self._endpoints.unsubscribe()
        await self._control.goodbye()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._endpoints.drain, self.config.drain_timeout_s)
            tg.start_soon(self._consumers.stop, self.config.drain_timeout_s)
        for sub in control:
            await quietly(sub.unsubscribe(), "unsubscribe")
        await quietly(self._nc.flush(timeout=2), "flush")

    async def _announce(self) -> None:
        # Flushed: once ready() returns, NATS holds the announcement, so a goodbye sent
        # after it by anyone (the worker this one replaces, say) reaches registries after it.
        await self._control.publish_announce()
        await self._nc.flush()
        self._announced = True

    async def _serve_endpoint(self, endpoint: Endpoint, announce: bool) -> None:
        # Its handlers run in the subscription's task, which inherits this context.
        with self._speaking():
            await self._endpoints.subscribe(endpoint)
        if announce:
            await self._announce_added()

    async def _consume(self, declared: Declared, announce: bool) -> None:
        with self._speaking():
            await self._consumers.start(declared)
        if announce:
            await self._announce_added()

    async def _announce_added(self) -> None:
        # Announce only once NATS has the subscription, so no caller that learns of the
        # endpoint from a registry can reach it before it is served.
        await self._nc.flush()
        await self._announce()
        self._pending -= 1
        if self._pending == 0:
            self._ready.set()


@overload
def announce(
    nc: NATS, name: str, *, version: str, **settings: Unpack[ServiceSettings]
) -> Instance: ...


@overload
def announce(nc: NATS, name: Service, **settings: Unpack[ServiceSettings]) -> Instance: ...


def announce(
    nc: NATS,
    name: str | Service,
    *,
    version: str | None = None,
    **settings: Unpack[ServiceSettings],
) -> Instance:
    """A service instance on ``nc``, to be entered with ``async with``.

    ``name`` is the service's name (then ``version`` is required), or a :class:`Service` declared
    at import time, whose endpoints, middleware and hooks the instance takes; ``settings``
    then override its own. Entering announces it (after the ``on_start`` hooks); leaving
    stops heartbeats, drains in-flight requests, says goodbye and runs the ``on_stop``
    hooks. The connection stays open: it is the caller's. The keyword arguments are
    :class:`ServiceConfig`'s fields, with its defaults and checks.
    """
    if isinstance(name, Service):
        if version is not None:
            raise ConfigError(f"announce({name.name!r}): the version is the Service's own")
        return name.instance(nc, **settings)
    if version is None:
        raise ConfigError(f"announce({name!r}): pass version='1.0.0' (SemVer)")
    return Instance(nc, config_of(name, version, settings))
