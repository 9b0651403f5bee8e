"""The bridge's OpenAPI 3.1 document (``GET /_natsreg/openapi.json``): every route it would serve
now, built from the registry's view and the route table.

Pure: :func:`openapi` takes the instances and the bridge's config. Each listed endpoint appears
at every path that reaches it — its default mapping ``/<service>/<endpoint>`` and sub-paths of
routes — and each route of the table appears whether or not an instance is behind it now.
Which path reaches which subject is :meth:`RouteTable.resolve`'s answer, never worked out
again here. Errors are the bridge's status table, with its JSON error body.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

import msgspec

from .. import __version__, wire
from .._apidocs import Offered, SchemaBook, offered
from ._access import Auth
from ._config import BridgeConfig
from ._errors import ERRORS, SERVICE_ERROR
from ._responses import ErrorBody
from ._routes import Route, RouteTable, Target

__all__ = ["openapi"]

_REF = "#/components/"
# A path segment's characters that need no escape (RFC 3986 pchar), but for the braces an
# OpenAPI path reads as a template.
_PCHAR = "!$&'()*+,;=:@"
_OPERATION_ID = re.compile(r"[^A-Za-z0-9_]+")
_NO_BODY = frozenset({"GET", "HEAD"})


def _error_responses() -> dict[str, tuple[str, str]]:
    """The error responses, by component name: one per status of the bridge's error table,
    and ``other`` (the default) for the service's own error."""
    groups: dict[int, list[str]] = {}
    for name, kind in ERRORS.items():
        groups.setdefault(kind.status, []).append(f"`{name}`: {kind.meaning}")
    responses = {
        f"status_{status}": (str(status), "; ".join(lines))
        for status, lines in sorted(groups.items())
    }
    responses["other"] = (
        "default",
        f"`{SERVICE_ERROR}`: the service's own error, with the code it gave (400-599; any "
        "other code is a 502)",
    )
    return responses


_ERRORS = _error_responses()
_UNAUTHORIZED = f"status_{ERRORS['unauthorized'].status}"


def openapi(
    instances: Sequence[wire.InstanceView], config: BridgeConfig, server_url: str | None = None
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of what a bridge on ``config`` serves while the registry
    lists ``instances``; ``server_url`` is the bridge's own (relative ``/`` when None)."""
    return _Builder(config).build(instances, server_url)


class _Builder:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.table: RouteTable = config.route_table()
        self.book = SchemaBook(_REF + "schemas/", "openapi")
        self.paths: dict[str, Any] = {}
        self.security: dict[str, Any] = {}
        self._ids: set[str] = set()

    def build(
        self, instances: Sequence[wire.InstanceView], server_url: str | None
    ) -> dict[str, Any]:
        allow = self.config.allow
        listed = [i for i in instances if allow is None or i.name in allow]
        endpoints, left_out = offered(listed)
        by_subject = {item.subject: item for item in endpoints}
        # The table's routes first, so that an endpoint's default mapping never shadows them.
        for route in self.table.routes:
            self._route(route, by_subject.get(route.subject))
        for item in endpoints:
            for path, via in self._reaching(item.subject):
                if path not in self.paths:
                    self._add(path, item.subject, via, item, item.endpoint)
        self._own()
        document: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {
                "title": "natsreg HTTP bridge",
                "version": __version__,
                "description": "Every route this bridge serves now: the default mapping "
                "/<service>/<endpoint> of each endpoint the registry lists, and the route "
                "table. Each request becomes a NATS request to the endpoint's subject; "
                "typed endpoints carry their request and reply schemas.",
            },
            "servers": [{"url": server_url or "/"}],
            "paths": self.paths,
            "components": self._components(),
        }
        if left_out or self.book.dropped:
            document["x-natsreg-omitted"] = {
                "subjects": left_out,
                "schemas_dropped": self.book.dropped,
            }
        return document

    def _reaching(self, subject: str) -> list[tuple[str, Route | None]]:
        """The paths (besides route paths themselves) that reach ``subject``: its default
        mapping, and a route's sub-path where the subject lies under the route's."""
        found: list[tuple[str, Route | None]] = []
        tokens = subject.split(".")
        candidates: list[tuple[tuple[str, ...], Route | None]] = [(tuple(tokens), None)]
        for route in self.table.routes:
            if route.constraint is None and subject.startswith(route.subject + "."):
                rest = subject[len(route.subject) + 1 :].split(".")
                candidates.append(((*route.tokens, *rest), route))
        for path_tokens, via in candidates:
            target = self.table.resolve("/" + "/".join(path_tokens))
            if isinstance(target, Target) and target.route is via and target.subject == subject:
                found.append((_path(path_tokens), via))
        return found

    def _route(self, route: Route, item: Offered | None) -> None:
        endpoint = item.matching(route.constraint) if item is not None else None
        self._add(_path(route.tokens), route.subject, route, item, endpoint)
        if route.constraint is None:
            # Further segments become further subject tokens; one stands for them all.
            self._add(
                _path(route.tokens) + "/{token}",
                route.subject + ".{token}",
                route,
                None,
                None,
                parameter={
                    "name": "token",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": f"appended to {route.subject} as one more subject token "
                    "(deeper paths append one token per segment)",
                },
            )

    def _add(
        self,
        path: str,
        subject: str,
        route: Route | None,
        item: Offered | None,
        endpoint: wire.Endpoint | None,
        parameter: dict[str, Any] | None = None,
    ) -> None:
        """Documents ``path``, which reaches ``subject`` (through ``route`` if not None),
        where ``item`` is served now with ``endpoint`` as the version reached announces it."""
        if item is not None:
            service, name = item.service, item.endpoint.name
        else:
            service, _, name = subject.partition(".")
            name = name.partition(".")[0]
        schemas = endpoint.schemas if endpoint is not None else None
        request = self.book.take(schemas.request if schemas else None, service)
        response = self.book.take(schemas.response if schemas else None, service)
        methods = sorted(route.methods) if route is not None and route.methods else ["POST"]
        auth = route.auth if route is not None and route.auth is not None else self.config.auth
        item_path: dict[str, Any] = {
            "summary": f"{service}.{name}",
            "description": _description(subject, route, item),
        }
        if parameter is not None:
            item_path["parameters"] = [parameter]
        for method in methods:
            item_path[method.lower()] = self._operation(
                method,
                path,
                service,
                name,
                request,
                response,
                auth,
                any_method=route is None or not route.methods,
                endpoint=endpoint,
            )
        self.paths[path] = item_path

    def _operation(
        self,
        method: str,
        path: str,
        service: str,
        name: str,
        request: dict[str, Any] | None,
        response: dict[str, Any] | None,
        auth: Auth,
        *,
        any_method: bool,
        endpoint: wire.Endpoint | None,
    ) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "operationId": self._operation_id(method, path),
            "tags": [service],
            "parameters": [{"$ref": _REF + "parameters/timeout"}],
        }
        if any_method:
            operation["description"] = (
                "Any HTTP method reaches the endpoint (it travels in the Natsreg-Http-Method "
                "header); POST is the one shown."
            )
        if endpoint is not None and endpoint.idempotent:
            operation["x-natsreg-idempotent"] = True
        if method not in _NO_BODY:
            operation["requestBody"] = {
                "required": request is not None,
                "content": _content(request),
            }
        responses: dict[str, Any] = {
            "200": {
                "description": f"the reply of {service}.{name}",
                "content": _content(response),
            }
        }
        for key, (status, _) in _ERRORS.items():
            if key != _UNAUTHORIZED or auth.enabled:
                responses[status] = {"$ref": f"{_REF}responses/{key}"}
        operation["responses"] = responses
        if auth.enabled:
            operation["security"] = [{self._scheme(auth): []}]
        return operation

    def _scheme(self, auth: Auth) -> str:
        if auth.scheme == "bearer":
            self.security["bearer"] = {"type": "http", "scheme": "bearer"}
            return "bearer"
        name = "api-key." + re.sub(r"[^A-Za-z0-9._-]", "_", auth.header)
        self.security[name] = {"type": "apiKey", "in": "header", "name": auth.header}
        return name

    def _operation_id(self, method: str, path: str) -> str:
        base = _OPERATION_ID.sub("_", f"{method.lower()}{path}").strip("_")
        chosen, n = base, 2
        while chosen in self._ids:
            chosen, n = f"{base}_{n}", n + 1
        self._ids.add(chosen)
        return chosen

    def _own(self) -> None:
        """The bridge's own resources a client may read (under ``/_natsreg/``)."""
        own = {
            "/_natsreg/health": ("the bridge's NATS connection: 200 connected, 503 not", False),
            "/_natsreg/openapi.json": ("this document", True),
            "/_natsreg/services": ("the registry's view of the services (JSON)", True),
        }
        for path, (summary, guarded) in own.items():
            operation: dict[str, Any] = {
                "operationId": self._operation_id("GET", path),
                "tags": ["natsreg"],
                "summary": summary,
                "responses": {
                    "200": {"description": summary, "content": {"application/json": {}}},
                    "default": {"$ref": f"{_REF}responses/other"},
                },
            }
            if guarded and self.config.auth.enabled:
                operation["security"] = [{self._scheme(self.config.auth): []}]
                operation["responses"]["401"] = {"$ref": f"{_REF}responses/{_UNAUTHORIZED}"}
            self.paths[path] = {"get": operation}

    def _components(self) -> dict[str, Any]:
        _, defs = msgspec.json.schema_components([ErrorBody])
        body = dict(
            defs["ErrorBody"],
            title="natsreg bridge error",
            description="What went wrong (`error`, a name from the status table; `message`, "
            "in words), and the service and endpoint the path named, if any.",
        )
        components: dict[str, Any] = {
            "schemas": {"natsreg.Error": body, **self.book.schemas},
            "responses": {
                key: {
                    "description": text,
                    "content": {
                        "application/json": {"schema": {"$ref": _REF + "schemas/natsreg.Error"}}
                    },
                }
                for key, (_, text) in _ERRORS.items()
            },
            "parameters": {
                "timeout": {
                    "name": self.config.timeout_header,
                    "in": "header",
                    "required": False,
                    "schema": {"type": "number", "exclusiveMinimum": 0},
                    "description": "the caller's deadline in seconds, capped by the route's "
                    "or the bridge's timeout",
                }
            },
        }
        if self.security:
            components["securitySchemes"] = self.security
        return components


def _path(tokens: Sequence[str]) -> str:
    return "/" + "/".join(urllib.parse.quote(t, safe=_PCHAR) for t in tokens)


def _content(schema: dict[str, Any] | None) -> dict[str, Any]:
    if schema is None:
        # Untyped: any body, passed through as it is.
        return {"*/*": {}}
    return {"application/json": {"schema": schema}}


def _description(subject: str, route: Route | None, item: Offered | None) -> str:
    how = f"Route {route.path!r} of the route table" if route is not None else "Default mapping"
    text = f"{how}: a NATS request to `{subject}`"
    if route is not None and route.version is not None:
        text += f", to an instance whose version matches {route.version}"
    if item is not None:
        text += f". Served now by {item.served_by()}"
    else:
        text += ". No instance the registry lists serves it now"
    return text + "."
