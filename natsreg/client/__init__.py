"""The caller's side: requests to endpoints, and questions to the registry.

    client = natsreg.Client(nc)
    reply = await client.request("user-service.users", {"id": 1}, timeout_s=2.0)
    user = reply.json()

Resilient calls (docs/operations.md, "Resilient calls"): every request carries its remaining
budget; failures that are safe to repeat are retried on another instance; when a registry
node answers, the client keeps a live local view of each service it calls and addresses a
chosen instance directly, avoiding instances that are critical, silent or behind an open
circuit breaker. Without a registry, requests ride the queue group as plain NATS requests.

The view is started lazily, on the first call to a service, and lives in NATS subscriptions
(no task of ours runs between calls), so ``natsreg.Client(nc)`` works without ``async with``;
``async with natsreg.Client(nc) as client`` (or :meth:`Client.aclose`) ends those
subscriptions when the client is done, rather than when the connection closes.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from nats.aio.client import Client as NATS

from .. import _deadline, _otel, _trace, subjects, wire
from .._codec import to_bytes
from ..errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigError,
    RequestTimeoutError,
    no_reply,
)
from ._balance import STRATEGIES, check_strategy
from ._breaker import BreakerConfig
from ._registry_api import RegistryApi
from ._retry import RetryPolicy
from ._routing import Router
from ._target import parse_target
from ._transport import Reply, Transport
from ._views import Views

__all__ = ["STRATEGIES", "BreakerConfig", "Client", "Reply", "RetryPolicy"]

#: Set on a reply that a ``fallback=`` callable produced instead of the service.
FALLBACK_HEADER = "Natsreg-Fallback"


class Client(anyio.AsyncContextManagerMixin):
    """Sends requests on ``nc``. The connection stays the caller's to close.

    ``timeout_s`` is the default for :meth:`request`; ``prefix`` must match the registry
    nodes' when asking them questions. ``strategy``, ``retry`` and ``breaker`` are the
    defaults of every call (see :meth:`request`); ``max_in_flight`` caps the calls in flight
    from this client to one service (the client-side bulkhead; None: no cap).
    ``missed_heartbeats`` must match the registry's: an instance this client has not heard
    from for that many heartbeat intervals (plus half of one) gets no more calls.
    ``view_wait_s`` is how long the first call to a service waits for the registry's
    snapshot of it before going to the queue group instead (never more than a quarter of
    that call's remaining budget).
    """

    def __init__(
        self,
        nc: NATS,
        *,
        timeout_s: float = 5.0,
        prefix: str = subjects.DEFAULT_PREFIX,
        strategy: str = "auto",
        retry: RetryPolicy | None = None,
        breaker: BreakerConfig | None = None,
        max_in_flight: int | None = None,
        missed_heartbeats: float = 2.0,
        view_wait_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        subjects.check_prefix(prefix)
        if max_in_flight is not None and max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.timeout_s = timeout_s
        self.prefix = prefix
        self.strategy = check_strategy(strategy)
        self.retry = retry or RetryPolicy()
        self._clock = clock
        self._transport = Transport(nc)
        self._registry = RegistryApi(nc, prefix=prefix, transport=self._transport)
        self._views = Views(
            nc,
            prefix,
            fetch=functools.partial(self.instances, timeout_s=2.0),
            transport=self._transport,
            missed_heartbeats=missed_heartbeats,
            view_wait_s=view_wait_s,
            clock=clock,
        )
        self._router = Router(
            self._views,
            self._transport,
            breaker=breaker or BreakerConfig(),
            max_in_flight=max_in_flight,
            clock=clock,
        )

    @property
    def nc(self) -> NATS:
        """The NATS connection this client sends on (the caller's to close)."""
        return self._transport.nc

    @property
    def breaker(self) -> BreakerConfig:
        """The breaker configuration of every instance and endpoint this client calls."""
        return self._router.breaker

    @property
    def max_in_flight(self) -> int | None:
        """The cap on calls in flight from this client to one service (None: no cap)."""
        return self._router.max_in_flight

    @property
    def view_wait_s(self) -> float:
        """How long a first call to a service waits for the registry's snapshot of it."""
        return self._views.view_wait_s

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Client]:
        try:
            yield self
        finally:
            with anyio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        """End the registry-view subscriptions and the reply inbox (after the calls in flight
        on it end, each within its own timeout); safe to call twice. Calls still work after,
        on the queue group and nats-py's own request inbox."""
        await self._views.aclose(drain=self._transport.aclose)

    async def request(
        self,
        subject: str,
        payload: Any = None,
        *,
        timeout_s: float | None = None,
        headers: Mapping[str, str] | None = None,
        strategy: str | None = None,
        key: str | None = None,
        select: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        idempotent: bool | None = None,
        fallback: Callable[[Exception], Any] | None = None,
    ) -> Reply:
        """Send ``payload`` to ``subject`` and return the reply.

        ``payload`` may be bytes (sent untouched), str, None, or anything msgspec encodes
        to JSON (dict, list, Struct, dataclass). Raises :class:`~natsreg.NoInstanceError`,
        :class:`~natsreg.RequestTimeoutError`, :class:`~natsreg.ServiceError`,
        :class:`~natsreg.CircuitOpenError`, :class:`~natsreg.BulkheadFullError` or
        :class:`~natsreg.OutcomeUnknownError` (the instance went down before it answered).

        ``subject`` is ``service.endpoint``, or ``service@constraint.endpoint`` to reach only
        instances whose version satisfies the constraint (``user-service@^1.2.users``);
        ``select`` keeps only instances whose metadata holds every given pair. ``strategy``
        is one of :data:`STRATEGIES` (``key`` is the sticky key); ``retry`` replaces the
        client's policy for this call; ``idempotent`` overrides what the instance that runs
        the call declares for the endpoint. Every attempt carries the same
        ``Natsreg-Request-Id`` header (``headers`` may set it; else a fresh one per call), by
        which a service answers a repeat with its first result.
        ``timeout_s`` bounds the whole call, retries included, and never exceeds the deadline
        of the request being handled when called from inside a handler. ``fallback(error)``
        runs instead of failing fast (open breaker, full bulkhead); its return value becomes
        the reply's payload. Made inside a handler, the call continues the request's W3C
        trace (``traceparent``, ``tracestate``) under a span id of its own; with
        OpenTelemetry configured it is a CLIENT span (docs/operations.md, "Tracing").
        """
        target = parse_target(subject)
        if strategy is not None:
            check_strategy(strategy)
        now = self._clock()
        given_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = now + given_s
        # What cut the call's time short of the time given, if anything: a timeout says it
        # (formatted only then: this runs on every call).
        cut_by = None
        inherited = _deadline.current.get()
        if inherited is not None and inherited < deadline:
            deadline = inherited
            cut_by = "before the deadline of the request being handled"
            if deadline <= now:
                raise RequestTimeoutError(
                    f"the deadline of the request being handled has passed; {subject!r} "
                    "was not sent",
                    subject=target.subject,
                )
        policy = retry or self.retry
        if policy.budget_s is not None and now + policy.budget_s < deadline:
            deadline = now + policy.budget_s
            cut_by = f"within its retry budget of {policy.budget_s:g} s"
        # The trace goes on in the next hop: in a span of its own where OpenTelemetry is
        # configured; else, inside a traced request, under a fresh span id. A call outside
        # any trace sends no trace header (the service it reaches starts one).
        span = None
        traceparent = None
        tracer = _otel.tracer()
        if tracer is not None:
            span, sent = _otel.client_span(tracer, target.subject)
            if sent is not None:
                traceparent, headers = _traced(headers, sent)
        else:
            current = _trace.current.get()
            if current is not None:
                trace = _trace.next_hop(current)
                if headers or trace[1]:
                    traceparent, headers = _traced(headers, trace)
                else:  # the common case, without a call: no headers to merge with
                    traceparent = trace[0]
        try:
            reply = await self._router.call(
                target,
                to_bytes(payload),
                headers,
                traceparent,
                deadline,
                policy,
                strategy or self.strategy,
                key,
                tuple(sorted(select.items())) if select else (),
                idempotent,
            )
        except (CircuitOpenError, BulkheadFullError) as exc:
            if span is not None:
                _otel.end(span, exc)
            if fallback is None:
                raise
            value = fallback(exc)
            if inspect.isawaitable(value):
                value = await value
            return Reply(target.subject, to_bytes(value), {FALLBACK_HEADER: "true"})
        except RequestTimeoutError as exc:
            within = cut_by or f"within {given_s:g} s"
            error = no_reply(subject, target.service, within, subject=target.subject)
            if span is not None:
                _otel.end(span, error)
            # The attempt's own error said where the last attempt went and what it had left.
            raise error from exc.__cause__ or exc
        except BaseException as exc:
            if span is not None:
                _otel.end(span, exc)
            raise
        if span is not None:
            _otel.end(span, None)
        return reply

    def readiness(self) -> str | None:
        """Why this client should not be relied on now, or None: its connection must be up
        and its live view of the services it calls trustworthy (not closed, none taken from
        a registry node still warming up). With no registry at all it is ready: calls then
        ride the queue group."""
        return self._router.readiness()

    def stats(self) -> dict[str, Any]:
        """This client's figures, JSON-ready: calls in flight per service, per instance
        figures (in flight, latency EWMA, calls, failures) and every breaker's state."""
        return self._router.stats()

    async def view(self, service: str) -> list[wire.InstanceView]:
        """The instances of ``service`` this client's own view holds (what its calls choose
        from), after starting the view if need be and waiting for the registry's snapshot as
        a first call would. For tests and diagnostics; the list is a copy."""
        await self._views.wait(service, self._clock() + 4 * self._views.view_wait_s)
        return list(self._views.catalog.instances(service))

    # -- registry: see RegistryApi -----------------------------------------------------------

    async def instances(
        self, service: str | None = None, *, timeout_s: float = 2.0
    ) -> wire.Snapshot:
        """Every instance a registry node knows (or those of ``service``)."""
        return await self._registry.instances(service, timeout_s=timeout_s)

    async def instance(self, instance_id: str, *, timeout_s: float = 2.0) -> wire.InstanceView:
        """One instance by id; raises :class:`~natsreg.ServiceError` (404) if unknown."""
        return await self._registry.instance(instance_id, timeout_s=timeout_s)

    async def services(self, *, timeout_s: float = 2.0) -> wire.ServiceList:
        """Every service at every version, summed over its instances (what ``natsreg ls``
        shows): one small answer, whatever the size of the fleet."""
        return await self._registry.services(timeout_s=timeout_s)

    def watch(self, service: str | None = None) -> AsyncIterator[wire.Event]:
        """Registry changes as they happen, one event per change (see
        :meth:`RegistryApi.watch`)."""
        return self._registry.watch(service)


def _traced(
    headers: Mapping[str, str] | None, trace: tuple[str, str]
) -> tuple[str | None, Mapping[str, str] | None]:
    # The traceparent natsreg sends for a call (it goes with the lines the router writes),
    # and the headers with the tracestate, which came from outside: an ordinary header, which
    # nats-py cleans. A traceparent the caller set itself is theirs to send.
    if headers and _trace.TRACEPARENT in headers:
        return None, headers
    traceparent, state = trace
    if state:
        headers = {**headers, _trace.TRACESTATE: state} if headers else {_trace.TRACESTATE: state}
    return traceparent, headers
