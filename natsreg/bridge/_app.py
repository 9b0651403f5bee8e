"""The bridge as an ASGI application: one HTTP request becomes one NATS request.

A request goes through five steps: read the head (one pass over the headers, ``_head``), then,
each a method of :class:`Bridge`, screen and authorize it (size, injection, Host, cross-site,
route, method, auth, deadline), read the body, forward it to NATS, and respond. A step that
refuses raises :class:`_Refused`, which becomes the JSON error response; failures map to HTTP
statuses in one table, :func:`status_for` (``_responses``). Requests under ``/_natsreg/`` go to
the bridge's own resources (``_own``).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping

import anyio
from nats.aio.client import Client as NATS

from .. import _figures, _trace
from ..client import Client
from ..errors import CircuitOpenError, ServiceError
from ._access import CorsHeaders, Origins, challenge, credential
from ._config import BridgeConfig
from ._events import EventStreams
from ._head import HEADER_BREAK, Head, HeadReader
from ._own import PROBES, OwnResources
from ._responses import Receive, Scope, Send, refuse, respond, status_for, unauthorized
from ._routes import Refusal, Target

__all__ = ["METHOD_HEADER", "PATH_HEADER", "QUERY_HEADER", "Bridge", "create_app", "status_for"]

log = logging.getLogger("natsreg.bridge")

#: NATS headers that carry the HTTP request line to the service.
METHOD_HEADER = "Natsreg-Http-Method"
PATH_HEADER = "Natsreg-Http-Path"
QUERY_HEADER = "Natsreg-Http-Query"

_EMPTY_REFUSALS = {
    408: Refusal("body_timeout", "the request body did not arrive in time"),
    413: Refusal("body_too_large", "the request body is over the bridge's limit"),
    429: Refusal("too_many_requests", "too many requests in flight from this client"),
    431: Refusal("headers_too_large", "the request path, query and headers are too large"),
}
_MISDIRECTED = Refusal(
    "misdirected_request", "this bridge does not serve the host named in the Host header"
)
_CROSS_SITE = Refusal("cross_site", "a cross-site request that the CORS settings do not allow")


class _Disconnected(Exception):
    """The client went away before its request body arrived."""


_Headers = Iterable[tuple[bytes, bytes]]
_HEADER_INJECTION = Refusal("bad_request", "a header holds CR, LF or NUL")
# The ``route`` label of requests that resolved to no route, of the /service/endpoint
# mapping, and of the bridge's own resources.
_NO_ROUTE = "none"
_DEFAULT_ROUTE = "default"
_OWN_ROUTE = "/_natsreg/"


class _Refused(Exception):
    """A step's answer that ends the request: the refusal, and headers to add to it."""

    def __init__(self, refusal: Refusal, extra: _Headers = ()) -> None:
        super().__init__(refusal.error)
        self.refusal = refusal
        self.extra = extra


# -- the ASGI application --------------------------------------------------------------------


class Bridge:
    """The bridge as an ASGI application, on ``nc``; build it with :func:`create_app`.

    It needs no lifespan events and starts no task, so it can be mounted in any ASGI app;
    the NATS connection stays the caller's.
    """

    def __init__(self, nc: NATS, config: BridgeConfig) -> None:
        self.config = config
        self._nc = nc
        self._client = Client(nc, timeout_s=config.timeout_s, prefix=config.prefix)
        self._table = config.route_table()
        self._in_flight: dict[str, int] = {}
        self._heads = HeadReader(config)
        self._forward_names = self._heads.forward_names
        self._own = OwnResources(nc, self._client, config)
        self._content_types: dict[str, bytes] = {}
        self._default_content_type = config.default_content_type.encode("latin-1")
        self._cors = CorsHeaders(config.cors) if config.cors else None
        self._origins = Origins(config.allowed_hosts, self._cors)
        # For Prometheus (natsreg._collector): responses by route, and requests the bridge
        # answered itself, by the error it gave. Routes are the table's patterns, so the
        # labels are bounded by configuration.
        self.recording = _figures.enabled()
        self.routes: dict[str, _figures.Responses] = {}
        self.refused: Counter[str] = Counter()
        if self.recording:
            _figures.LIVE.bridges.add(self)

    @property
    def nc(self) -> NATS:
        """The NATS connection the bridge sends on (the caller's to close)."""
        return self._nc

    @property
    def in_flight(self) -> int:
        """HTTP requests being handled now."""
        return sum(self._in_flight.values())

    @property
    def event_streams(self) -> EventStreams:
        """The ``/_natsreg/events`` streams: how many are open, how many were dropped."""
        return self._own.events

    def close_event_streams(self) -> None:
        """End the open ``/_natsreg/events`` streams and refuse new ones (the bridge is
        stopping): they would otherwise hold the drain until its timeout."""
        self._own.events.close()

    async def wait_event_streams_closed(self) -> None:
        """Until what fed the streams :meth:`close_event_streams` ended is gone."""
        await self._own.events.wait_closed()

    def readiness(self) -> str | None:
        """Why HTTP clients should not be sent here, or None: the bridge's client must be
        ready (connected, its view of the services it calls live)."""
        return self._client.readiness()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            client = scope.get("client")
            key = client[0] if client else ""
            count = self._in_flight.get(key, 0)
            if count >= self.config.max_in_flight_per_client:
                if self.recording:
                    self._count(_NO_ROUTE, 429, 0.0)
                    self.refused["too_many_requests"] += 1
                await refuse(send, _EMPTY_REFUSALS[429], ())
                return
            self._in_flight[key] = count + 1
            try:
                await self._http(scope, receive, send)
            finally:
                count = self._in_flight[key] - 1
                if count:
                    self._in_flight[key] = count
                else:
                    del self._in_flight[key]
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        # What the request is counted under: its route and the status it got (499: the
        # client went away first, as nginx counts it).
        route = _NO_ROUTE
        status = 499
        forwarding = False
        head = self._heads.read(scope)
        origin = head.origin
        cors = self._cors.for_origin(origin) if self._cors is not None and origin else ()
        try:
            self._screen(head, cors)
            if (
                self._cors is not None
                and head.method == "OPTIONS"
                and origin is not None
                and any(name == b"access-control-request-method" for name, _ in scope["headers"])
            ):
                # A refused origin gets no CORS header: the browser then blocks the request.
                status = 204
                await send(
                    {
                        "type": "http.response.start",
                        "status": 204,
                        "headers": self._cors.preflight(origin),
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
            if head.path.startswith("/_natsreg/"):
                route = _OWN_ROUTE
                status = await self._own.serve(
                    self, head, receive, send, cors, scope.get("root_path", "")
                )
                return
            target = self._table.resolve(head.path)
            if type(target) is Refusal:
                raise _Refused(target, cors)
            assert isinstance(target, Target)
            route = _DEFAULT_ROUTE if target.route is None else target.route.path
            timeout_s = self._authorize(head, target, cors)
            body = await self._receive_body(head, receive, cors)
            forwarding = True
            data, content_type = await self._forward(head, target, timeout_s, body, cors)
            status = 200
            await respond(send, 200, content_type, data, cors)
        except _Refused as refused:
            status = refused.refusal.status
            if not forwarding and self.recording:
                self.refused[refused.refusal.error] += 1
            await refuse(send, refused.refusal, refused.extra)
        except _Disconnected:
            pass
        finally:
            if self.recording:
                self._count(route, status, time.perf_counter() - started)

    def _count(self, route: str, status: int, seconds: float) -> None:
        figures = self.routes.get(route)
        if figures is None:
            figures = self.routes[route] = _figures.Responses()
        statuses = figures.statuses
        statuses[status] = statuses.get(status, 0) + 1
        figures.latency.observe(seconds)

    def _screen(self, head: Head, cors: _Headers) -> None:
        """Step 2a: refuse a request too large, smuggling header breaks, for another Host,
        or cross-site, whatever it asks for."""
        if head.size > self.config.max_header_bytes:
            raise _Refused(_EMPTY_REFUSALS[431], cors)
        raw_path = head.raw_path
        if (
            head.broken
            or HEADER_BREAK.search(head.query)
            or (raw_path and HEADER_BREAK.search(raw_path))
        ):
            raise _Refused(_HEADER_INJECTION, cors)
        # A request without Host cannot come from a browser, the client these two checks
        # are for (DNS rebinding, cross-site requests); HTTP/1.0 tools may omit it. The
        # probes answer any Host: a kubelet and Prometheus name the pod by its address, and
        # what they show is open to anyone who can reach the port anyway (the metrics stay
        # behind the bridge's auth).
        host = head.host
        if host is not None and not self._origins.host_allowed(host) and head.path not in PROBES:
            raise _Refused(_MISDIRECTED)
        if (head.origin is not None or head.fetch_site is not None) and self._origins.cross_site(
            head.origin, host, head.fetch_site
        ):
            raise _Refused(_CROSS_SITE)

    def _authorize(self, head: Head, target: Target, cors: _Headers) -> float:
        """Step 2b: whether the caller may go to ``target`` (the route the path resolved
        to), and by when."""
        route = target.route
        method = head.method
        if route is not None and route.methods and method not in route.methods:
            allow = ", ".join(sorted(route.methods)).encode()
            raise _Refused(
                Refusal(
                    "method_not_allowed",
                    f"{method} is not allowed here",
                    target.service,
                    target.endpoint,
                ),
                (*cors, (b"allow", allow)),
            )
        auth = route.auth if route is not None and route.auth is not None else self.config.auth
        if auth.enabled and not auth.accepts(credential(auth, head.credentials)):
            raise _Refused(unauthorized(target), (*cors, challenge(auth)))
        timeout_s = (
            route.timeout_s if route is not None and route.timeout_s else self.config.timeout_s
        )
        if head.timeout is not None:
            asked = _seconds(head.timeout)
            if asked is None:
                raise _Refused(
                    Refusal(
                        "bad_request",
                        f"{self.config.timeout_header} must be a number of seconds > 0",
                        target.service,
                        target.endpoint,
                    ),
                    cors,
                )
            timeout_s = min(asked, timeout_s)
        return timeout_s

    async def _receive_body(self, head: Head, receive: Receive, cors: _Headers) -> bytes:
        """Step 3: the whole body, within the size limit and the body timeout."""
        content_length = head.content_length
        if content_length is None:
            body: bytes = (await receive()).get("body", b"")
            return body
        if content_length != b"chunked" and _too_long(content_length, self.config.max_body_bytes):
            raise _Refused(_EMPTY_REFUSALS[413], cors)
        try:
            read = await self._read_body(receive)
        except TimeoutError:
            raise _Refused(_EMPTY_REFUSALS[408], cors) from None
        if read is None:
            raise _Refused(_EMPTY_REFUSALS[413], cors)
        return read

    async def _forward(
        self, head: Head, target: Target, timeout_s: float, body: bytes, cors: _Headers
    ) -> tuple[bytes, bytes]:
        """Step 4: the request to NATS; the reply's body and content type, or the failure
        mapped to its status."""
        forwarded = head.forwarded
        forwarded[METHOD_HEADER] = head.method
        forwarded[PATH_HEADER] = head.raw_path.decode("latin-1") if head.raw_path else head.path
        if head.query:
            forwarded[QUERY_HEADER] = head.query.decode("latin-1")
        if head.connection is not None:
            # Headers a client names in Connection are hop-by-hop for this request too.
            for listed in head.connection.decode("latin-1").split(","):
                name = self._forward_names.get(listed.strip().lower().encode())
                if name is not None:
                    forwarded.pop(name, None)
                    if name == "Traceparent":
                        head.traceparent = None
        # The HTTP client's trace, if it sent a valid one, goes on through the client's call
        # as it would from inside a handler.
        trace = head.trace()
        token = _trace.current.set(trace) if trace is not None else None
        try:
            # On a versioned route, target.call reads 'service@constraint.endpoint': the
            # client then picks a matching instance from its registry view.
            reply = await self._client.request(
                target.call, body, timeout_s=timeout_s, headers=forwarded
            )
        except Exception as exc:
            raise _failure(exc, target, cors) from None
        finally:
            if token is not None:
                _trace.current.reset(token)
        return reply.data, self._content_type(reply.headers)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, None if it is over the limit; raises TimeoutError if too slow."""
        limit = self.config.max_body_bytes
        chunks: list[bytes] = []
        total = 0
        with anyio.fail_after(self.config.body_timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > limit:
                    return None
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)

    def _content_type(self, headers: Mapping[str, str]) -> bytes:
        value = headers.get("Content-Type") or headers.get("content-type")
        if not value:
            return self._default_content_type
        cached = self._content_types.get(value)
        if cached is None:
            try:
                cached = value.encode("latin-1") if value.isprintable() else None
            except UnicodeEncodeError:
                cached = None
            cached = cached or self._default_content_type
            if len(self._content_types) < 256:
                self._content_types[value] = cached
        return cached


def create_app(nc: NATS, config: BridgeConfig | None = None) -> Bridge:
    """The bridge as an ASGI application on ``nc`` (which stays the caller's to close)."""
    return Bridge(nc, config or BridgeConfig())


async def _lifespan(receive: Receive, send: Send) -> None:
    # Nothing to start or stop: the connection is the caller's. Answering keeps servers
    # that run lifespan events by default from logging a failure.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _failure(exc: Exception, target: Target, cors: _Headers) -> _Refused:
    """A failed NATS request as the refusal that answers it."""
    status, error = status_for(exc)
    if error == "internal_error":  # not a service's own 500: that is the service's to log
        log.exception("bridge: request to %r failed", target.subject, exc_info=exc)
        message = "the bridge failed to handle the request"
    elif isinstance(exc, ServiceError):
        message = exc.description
    else:
        message = str(exc)
    if isinstance(exc, CircuitOpenError):
        cors = (*cors, (b"retry-after", str(math.ceil(exc.retry_in_s)).encode()))
    return _Refused(Refusal(error, message, target.service, target.endpoint, status), cors)


def _seconds(value: bytes) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds > 0 and math.isfinite(seconds) else None


def _too_long(content_length: bytes, limit: int) -> bool:
    # A malformed Content-Length is the HTTP server's to refuse; here only the size matters.
    try:
        return int(content_length) > limit
    except ValueError:
        return False
