"""The bridge's own resources, under ``/_natsreg/``: health, the probes (metrics, liveness,
readiness), the registry's view of the services, the OpenAPI document of the routes and
the dashboard (``/_natsreg/ui``, fed by ``/_natsreg/events``). Off the request path: nothing
here runs for a request to a service.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any, Protocol

import anyio
from nats.aio.client import Client as NATS

from .. import _probes, wire
from ..client import Client
from ..errors import NatsregError
from ._access import challenge, credential
from ._config import BridgeConfig
from ._dashboard import asset
from ._events import EventStreams
from ._head import Head
from ._responses import JSON, Receive, Send, encode, refuse, respond, status_for, unauthorized
from ._routes import Refusal

__all__ = ["PROBES", "OwnResources"]

#: The probes of natsreg._probes, under the bridge's own path.
PROBES = frozenset({"/_natsreg/metrics", "/_natsreg/healthz", "/_natsreg/readyz"})
# What the registry's view shows: the services, and the OpenAPI document of their routes.
_VIEWS = frozenset({"/_natsreg/services", "/_natsreg/openapi.json"})
# A Host header that may stand in the document's server URL: a name or address, and a port.
_HOST = re.compile(rb"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")
# Encoded documents kept per view revision, one per Host name asked for.
_MAX_HOSTS = 16


class _Served(Protocol):
    """What the resources report of the bridge they serve."""

    @property
    def in_flight(self) -> int: ...

    def readiness(self) -> str | None: ...


class OwnResources:
    """Answers a bridge's requests under ``/_natsreg/``."""

    def __init__(self, nc: NATS, client: Client, config: BridgeConfig) -> None:
        self._nc = nc
        self._client = client
        self.config = config
        self._registry_view: tuple[float, wire.Snapshot, bytes] | None = None
        # The OpenAPI document of the view of one registry node at one revision, and its
        # encodings by server URL: a scrape storm costs an encoding per Host at most.
        self._openapi_of: tuple[str, int] | None = None
        self._openapi: dict[str, Any] = {}
        self._openapi_bodies: dict[str, bytes] = {}
        self._openapi_lock = anyio.Lock()
        #: The event streams of ``/_natsreg/events``.
        self.events = EventStreams(nc, config)

    async def serve(
        self,
        bridge: _Served,
        head: Head,
        receive: Receive,
        send: Send,
        cors: Iterable[tuple[bytes, bytes]],
        root: str = "",
    ) -> int:
        """Answers ``head``'s request to ``bridge``; the status it was given. ``root`` is
        the path the bridge is mounted under (ASGI's ``root_path``), if any."""
        # The bridge comes with each request rather than kept here: the bridge keeps this
        # object, and a cycle would keep a dropped bridge (and its figures) alive until the
        # garbage collector's next pass.
        sent = _Sent(send)
        await self._answer(bridge, head, receive, sent, cors, root)
        return sent.status

    async def _answer(
        self,
        bridge: _Served,
        head: Head,
        receive: Receive,
        send: Send,
        cors: Iterable[tuple[bytes, bytes]],
        root: str,
    ) -> None:
        path, method, credentials = head.path, head.method, head.credentials
        if method not in ("GET", "HEAD"):
            await refuse(
                send,
                Refusal("method_not_allowed", "use GET"),
                (*cors, (b"allow", b"GET, HEAD")),
            )
            return
        if path == "/_natsreg/health":
            connected = self._nc.is_connected
            body = encode(
                {
                    "status": "ok" if connected else "unavailable",
                    "nats": "connected" if connected else "disconnected",
                    "in_flight": bridge.in_flight,
                }
            )
            await respond(send, 200 if connected else 503, JSON, body, cors)
        elif path in PROBES:
            # The figures name services and endpoints, as /_natsreg/services does: behind
            # the bridge's auth. The probes say no more than "ready" and why not: open to a
            # kubelet, which sends no credentials.
            if path == "/_natsreg/metrics" and not await self._allowed(credentials, send, cors):
                return
            status, content_type, body = _probes.answer(path[len("/_natsreg") :], method, (bridge,))
            await respond(send, status, content_type, body, cors)
        elif path in _VIEWS and self.config.expose_registry:
            # Both name every service and endpoint: behind the bridge's auth.
            if not await self._allowed(credentials, send, cors):
                return
            try:
                snapshot, body = await self._snapshot()
            except NatsregError as exc:
                status, error = status_for(exc)
                await refuse(send, Refusal(error, str(exc), code=status), cors)
                return
            if path == "/_natsreg/openapi.json":
                body = await self._openapi_json(snapshot, head.host)
            await respond(send, 200, JSON, body, cors)
        elif path == "/_natsreg/events" and self.config.expose_registry:
            if await self._allowed(credentials, send, cors):
                await self.events.stream(send, receive, method, cors)
        elif (
            path.startswith("/_natsreg/ui")
            and self.config.expose_registry
            and (found := asset(path, root))
        ):
            body, content_type, headers = found
            await respond(send, 200, content_type, b"" if method == "HEAD" else body, headers)
        else:
            await refuse(send, Refusal("not_found", "no such bridge resource"), cors)

    async def _allowed(
        self, credentials: dict[bytes, bytes], send: Send, cors: Iterable[tuple[bytes, bytes]]
    ) -> bool:
        """Whether the bridge's own auth (if any) lets the caller in; refused if not."""
        auth = self.config.auth
        if auth.enabled and not auth.accepts(credential(auth, credentials)):
            await refuse(send, unauthorized(None), (*cors, challenge(auth)))
            return False
        return True

    async def _snapshot(self) -> tuple[wire.Snapshot, bytes]:
        """The registry's view (of the allowed services), and its JSON."""
        cached = self._registry_view
        if cached is not None and time.monotonic() - cached[0] < self.config.registry_refresh_s:
            return cached[1], cached[2]
        snapshot = await self._client.instances(timeout_s=min(2.0, self.config.timeout_s))
        if self.config.allow is not None:
            snapshot.instances = [i for i in snapshot.instances if i.name in self.config.allow]
        body = wire.encode(snapshot)
        # A warming node's answer (no warm node answered) is served but not kept: the next
        # request asks again, and gets a warm node's as soon as one can answer.
        self._registry_view = None if snapshot.warming_up else (time.monotonic(), snapshot, body)
        return snapshot, body

    async def _openapi_json(self, snapshot: wire.Snapshot, host: bytes | None) -> bytes:
        """The OpenAPI document of ``snapshot``, its server the bridge as ``host`` names it
        (relative when no usable Host came)."""
        server = f"http://{host.decode()}" if host and _HOST.match(host) else "/"
        # A warming node's view may miss instances: its document is built, not kept.
        version = None if snapshot.warming_up else (snapshot.node, snapshot.revision)
        async with self._openapi_lock:
            # One build at a time, in a thread: checking a large fleet's schemas takes a
            # while, and requests to services go on meanwhile.
            if version is None or version != self._openapi_of:
                # Imported on first use: jsonschema takes a while to import, and a bridge
                # that is never asked for its document need not pay.
                from ._openapi import openapi

                self._openapi = await anyio.to_thread.run_sync(
                    openapi, snapshot.instances, self.config
                )
                self._openapi_bodies = {}
                self._openapi_of = version
        body = self._openapi_bodies.get(server)
        if body is None:
            body = encode({**self._openapi, "servers": [{"url": server}]})
            if len(self._openapi_bodies) < _MAX_HOSTS:
                self._openapi_bodies[server] = body
        return body


class _Sent:
    """``send``, noting the status it sent."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 500

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)
