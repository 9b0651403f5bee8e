"""A service declared at import time: :class:`Service`, what ``natsreg run module:attr`` serves.

A declaration holds no connection and runs nothing; :func:`natsreg.announce` turns it into a
running :class:`~natsreg.service.Instance`, once per process (each worker is one instance).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from .. import subjects
from ..errors import ConfigError
from ..events._event import EventHandler
from ..events._settings import EventOptions, EventSettings
from ._config import ServiceConfig, ServiceSettings
from ._endpoints import checked_endpoint
from ._request import Handler, Request
from ._typed import body_types

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from .. import wire
    from . import Instance

__all__ = ["Context", "HealthHook", "Hook", "Middleware", "Service", "config_of", "wrap"]

#: ``async def mw(req, call_next)``: runs around every handler of a service; returns the
#: reply (usually ``await call_next(req)``) or raises, as a handler does.
Middleware = Callable[[Request[Any], Handler], Awaitable[Any]]
#: ``async def hook(ctx)``: an ``on_start`` or ``on_stop`` callback.
Hook = Callable[["Context"], Awaitable[None]]
#: ``async def check(ctx)``: the health a heartbeat reports, ``"passing"``, ``"warning"`` or
#: ``"critical"``; an exception reports ``"critical"``.
HealthHook = Callable[["Context"], Awaitable["wire.Health"]]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Context:
    """What a start or stop hook gets: the connection, the running instance, and ``state``,
    this process' own namespace (handlers read it as ``req.state``)."""

    nc: NATS
    instance: Instance
    state: types.SimpleNamespace


@dataclass(frozen=True)
class _Declared:
    name: str
    handler: Handler
    options: dict[str, Any]


def config_of(name: str, version: str, settings: Mapping[str, Any]) -> ServiceConfig:
    """The checked :class:`ServiceConfig` for announce's (or Service's) arguments."""
    return ServiceConfig(name=name, version=version, **_fields(settings))


def _fields(settings: Mapping[str, Any]) -> dict[str, Any]:
    # Checked at the call by type checkers (ServiceSettings) and by ServiceConfig at run time.
    fields = dict(settings)
    if "metadata" in fields and fields["metadata"] is None:
        del fields["metadata"]  # None has always meant "no metadata" here
    return fields


def wrap(handler: Handler, middleware: tuple[Middleware, ...]) -> Handler:
    """``handler`` inside ``middleware``, the first declared outermost."""
    for outer in reversed(middleware):
        handler = _around(outer, handler)
    return handler


def _around(outer: Middleware, inner: Handler) -> Handler:
    async def call(request: Request[Any]) -> Any:
        return await outer(request, inner)

    return call


def _check_async(function: Callable[..., Any], what: str) -> None:
    if not inspect.iscoroutinefunction(function):
        raise ConfigError(f"{what} {getattr(function, '__name__', function)!r} must be async")


class Service:
    """A service declared at import time, served by ``natsreg run module:attr``::

        svc = natsreg.Service("user-service", version="1.2.0", description="Users")

        @svc.on_start
        async def open_db(ctx):
            ctx.state.db = await connect_db()  # per process: each worker has its own

        @svc.endpoint("users", idempotent=True)
        async def users(req: natsreg.Request[UserQuery]) -> User:
            return await req.state.db.get_user(req.body.id)

    The keyword arguments are :func:`natsreg.announce`'s, checked here, at declaration.
    ``natsreg.announce(nc, svc)`` runs it in a program that manages its own event loop.
    """

    def __init__(self, name: str, *, version: str, **settings: Unpack[ServiceSettings]) -> None:
        self.config = config_of(name, version, settings)
        self._endpoints: dict[str, _Declared] = {}
        self._events: dict[str, tuple[EventHandler, EventOptions]] = {}
        self.middleware_chain: tuple[Middleware, ...] = ()
        self.start_hooks: tuple[Hook, ...] = ()
        self.stop_hooks: tuple[Hook, ...] = ()
        self.health_hook: HealthHook | None = None

    @property
    def name(self) -> str:
        return self.config.name

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
        """Declare an endpoint, as :meth:`Instance.endpoint` serves one."""
        if name in self._endpoints:
            raise ConfigError(f"endpoint {name!r} is already declared")
        checked_endpoint(self.config, name, subject, queue_group, metadata, idempotent)
        options = {
            "subject": subject,
            "queue_group": queue_group,
            "metadata": metadata,
            "idempotent": idempotent,
            "request": request,
            "response": response,
        }

        def register(handler: Handler) -> Handler:
            _check_async(handler, f"endpoint {name!r}: the handler")
            # At declaration: a type that disagrees or cannot be read fails at import.
            body_types(handler, request, response, f"endpoint {name!r}")
            self._endpoints[name] = _Declared(name, handler, options)
            return handler

        return register

    def on_event(
        self, event_type: str, **options: Unpack[EventSettings]
    ) -> Callable[[EventHandler], EventHandler]:
        """Handle events of ``event_type``, as :meth:`Instance.on_event` does (docs/events.md)."""
        subjects.check_event_type(event_type)
        if event_type in self._events:
            raise ConfigError(f"{self.name} already handles {event_type!r}")
        checked = EventOptions(**options)

        def register(handler: EventHandler) -> EventHandler:
            _check_async(handler, f"event handler of {event_type!r}")
            self._events[event_type] = (handler, checked)
            return handler

        return register

    def declared_events(self) -> list[tuple[str, EventHandler, EventOptions]]:
        return [(t, handler, options) for t, (handler, options) in self._events.items()]

    def middleware(self, function: Middleware) -> Middleware:
        """Run ``function(req, call_next)`` around every handler of this service, in the
        order declared (the first is outermost); for auth checks, logging, timing."""
        _check_async(function, "middleware")
        self.middleware_chain += (function,)
        return function

    def on_start(self, hook: Hook) -> Hook:
        """Run ``hook(ctx)`` in each process before it announces (open connections, pools)."""
        _check_async(hook, "on_start hook")
        self.start_hooks += (hook,)
        return hook

    def on_stop(self, hook: Hook) -> Hook:
        """Run ``hook(ctx)`` after the instance drained and said goodbye (reverse order)."""
        _check_async(hook, "on_stop hook")
        self.stop_hooks += (hook,)
        return hook

    def health(self, check: HealthHook) -> HealthHook:
        """Report ``await check(ctx)`` in each heartbeat: ``"passing"``, ``"warning"`` or
        ``"critical"`` (callers avoid critical instances). It sees ``ctx.state``, so it can
        ask this process' own database pool."""
        _check_async(check, "health check")
        if self.health_hook is not None or self.config.health is not None:
            raise ConfigError(f"{self.name}: the health check is already declared")
        self.health_hook = check
        return check

    def instance(self, nc: NATS, **overrides: Unpack[ServiceSettings]) -> Instance:
        """A running instance of this declaration on ``nc`` (what announce returns)."""
        from . import Instance

        # replace() checks the result as the constructor does.
        return Instance(nc, dataclasses.replace(self.config, **_fields(overrides)), declared=self)

    def declared_endpoints(self) -> list[tuple[str, Handler, dict[str, Any]]]:
        return [(d.name, d.handler, d.options) for d in self._endpoints.values()]
