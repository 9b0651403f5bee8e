"""The bridge's configuration: :class:`BridgeConfig`, read from a routes file (TOML) and
settings, validated once; and the rule for which addresses it may listen on without auth.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import subjects, wire
from ..errors import ConfigError
from ._access import HTTP_TOKEN, NO_AUTH, Auth, Cors
from ._routes import Route, RouteTable

__all__ = ["LOOPBACK_HOSTS", "BridgeConfig", "is_loopback"]

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded by a proxy.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_DEFAULT_FORWARD = (
    "content-type",
    "accept",
    "accept-language",
    "user-agent",
    "x-request-id",
    "traceparent",
    "tracestate",
    "idempotency-key",
)
#: The ``Host`` names served by default: this machine's own, so that a page whose name
#: resolves to 127.0.0.1 (DNS rebinding) cannot reach the services through a browser.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# A host name or IP literal as allowed_hosts holds it (lower case, IPv6 in brackets, no port).
_HOST_NAME = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?)$")


@dataclass(frozen=True, kw_only=True)
class BridgeConfig:
    """Everything the bridge does, validated once, at construction.

    The route table, allow-list, default auth and CORS usually come from a TOML file through
    :meth:`from_toml`; limits and timeouts from the command line.
    """

    #: Path prefixes mapped to subjects, matched longest first.
    routes: tuple[Route, ...] = ()
    #: Serve ``/<service>/<endpoint>[/...]`` for paths no route matches.
    default_routes: bool = True
    #: The only services the bridge reaches, through routes or the default mapping (all if None).
    allow: frozenset[str] | None = None
    #: Auth of every route that sets none, of the default mapping and of ``/_natsreg/services``.
    auth: Auth = NO_AUTH
    #: Cross-origin access; None answers no preflight and adds no CORS header.
    cors: Cors | None = None
    #: Subject prefix of natsreg's control traffic (registry queries, direct subjects).
    prefix: str = subjects.DEFAULT_PREFIX
    #: NATS request timeout, and the cap of a client's own deadline header.
    timeout_s: float = 5.0
    #: Request bodies above this get 413; NATS' own max_payload (1 MiB by default) still applies.
    max_body_bytes: int = 1024 * 1024 - 16 * 1024
    #: Request path, query string and headers above this, all together, get 431.
    max_header_bytes: int = 16 * 1024
    #: Time allowed to receive a request body; a slower client gets 408.
    body_timeout_s: float = 10.0
    #: Requests one client address may have in flight; more get 429.
    max_in_flight_per_client: int = 256
    #: Request headers forwarded to the service as NATS headers (hop-by-hop ones never are).
    forward_headers: tuple[str, ...] = _DEFAULT_FORWARD
    #: The header in which a client states its own deadline, in seconds.
    timeout_header: str = "x-request-timeout"
    #: Content type of a reply that names none (natsreg handlers reply JSON by default).
    default_content_type: str = "application/json"
    #: How long the registry view served on ``/_natsreg/services`` is reused.
    registry_refresh_s: float = 1.0
    #: Serve ``/_natsreg/services`` (the registry view, behind the default auth), and the
    #: dashboard built on it: ``/_natsreg/ui`` and its event stream ``/_natsreg/events``.
    expose_registry: bool = True
    #: Event streams (``/_natsreg/events``, one per open dashboard) served at once; more get 503.
    max_event_streams: int = 16
    #: What one event stream may hold unsent; a client reading slower than that is dropped.
    event_buffer_bytes: int = 1024 * 1024
    #: An idle event stream sends a comment this often, so proxies keep it open.
    event_keepalive_s: float = 15.0
    #: On shutdown, how long in-flight requests may take to finish.
    drain_timeout_s: float = 10.0
    #: ``Host`` names served (any port); others get 421. ``"*"`` serves any: only behind a
    #: proxy that checks Host itself.
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    #: Serve a non-loopback address without auth (see :meth:`check_listen`).
    insecure_public: bool = False
    #: Time a connection has to send a whole request head, from its first byte (or from
    #: connecting); a slower one is closed (slowloris).
    header_timeout_s: float = 10.0
    #: Open connections in all; capped further by the file limit (RLIMIT_NOFILE less 192). At
    #: the cap a new connection closes the oldest one still waiting for its request head.
    max_connections: int = 1000
    #: Open connections from one client address; more are closed at once.
    max_connections_per_client: int = 256
    _table: RouteTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not all(isinstance(r, Route) for r in self.routes):
            raise ConfigError("routes must be Route objects")
        object.__setattr__(self, "routes", tuple(self.routes))
        if self.allow is not None:
            if isinstance(self.allow, str) or not all(
                isinstance(s, str) and wire.NAME_PATTERN.match(s) for s in self.allow
            ):
                raise ConfigError("allow must be a list of service names")
            object.__setattr__(self, "allow", frozenset(self.allow))
        if not isinstance(self.auth, Auth):
            raise ConfigError("auth must be an Auth")
        subjects.check_prefix(self.prefix)
        for name in (
            "timeout_s",
            "body_timeout_s",
            "registry_refresh_s",
            "header_timeout_s",
            "event_keepalive_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value <= 3600):
                raise ConfigError(f"{name} must be in (0, 3600] seconds, got {value!r}")
        if not 0 <= self.drain_timeout_s <= 3600:
            raise ConfigError(f"drain_timeout_s must be in [0, 3600], got {self.drain_timeout_s}")
        for name, low in (
            ("max_body_bytes", 0),
            ("max_header_bytes", 256),
            ("max_in_flight_per_client", 1),
            ("max_connections", 1),
            ("max_connections_per_client", 1),
            ("max_event_streams", 0),
            ("event_buffer_bytes", 64 * 1024),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        forward = tuple(h.lower() for h in self.forward_headers)
        if bad := [h for h in forward if not HTTP_TOKEN.match(h) or h in _HOP_BY_HOP]:
            raise ConfigError(f"forward_headers: {bad} are not forwardable header names")
        object.__setattr__(self, "forward_headers", forward)
        if not HTTP_TOKEN.match(self.timeout_header):
            raise ConfigError(f"timeout_header {self.timeout_header!r} is not a header name")
        object.__setattr__(self, "timeout_header", self.timeout_header.lower())
        if not self.default_content_type.isprintable():
            raise ConfigError("default_content_type holds control characters")
        object.__setattr__(self, "allowed_hosts", _host_names(self.allowed_hosts))
        # Built once, here: building it checks routes against each other and the allow-list,
        # and every bridge on this config shares it (and its per-path cache).
        object.__setattr__(
            self,
            "_table",
            RouteTable(
                self.routes,
                default_routes=self.default_routes,
                allow=self.allow,
                control_prefix=self.prefix,
            ),
        )

    def check_listen(self, host: str) -> None:
        """Refuse to listen on ``host`` if it reaches beyond this machine with no auth.

        A loopback address is always fine; any other needs a default ``auth`` (the routes
        file's ``[auth]``) or ``insecure_public``, for a bridge behind something that checks
        who calls.
        """
        if is_loopback(host) or self.auth.enabled or self.insecure_public:
            return
        raise ConfigError(
            f"refusing to serve the HTTP bridge on {host or '*'!r} without auth, where anyone "
            "who reaches it could call every service: set [auth] in the routes file, listen "
            "on 127.0.0.1, or pass --insecure-public (insecure_public=True) if what stands in "
            "front checks callers"
        )

    def route_table(self) -> RouteTable:
        """The resolver built from ``routes``, ``default_routes``, ``allow`` and ``prefix``."""
        return self._table

    @classmethod
    def from_toml(cls, path: str | Path, **settings: Any) -> BridgeConfig:
        """Read routes, allow-list, auth and CORS from a TOML file; ``settings`` set the rest.

        The file's format is in docs/operations.md ("HTTP bridge"); unknown keys are refused,
        so a misspelt setting is an error rather than a silently open route.
        """
        try:
            document = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read routes file {str(path)!r}: {exc}") from exc
        return cls(**{**_from_document(document), **settings})


def _from_document(doc: dict[str, Any]) -> dict[str, Any]:
    _only(
        doc, {"default_routes", "allow", "allowed_hosts", "auth", "cors", "routes"}, "routes file"
    )
    out: dict[str, Any] = {}
    if "allowed_hosts" in doc:
        out["allowed_hosts"] = tuple(_typed(doc["allowed_hosts"], list, "allowed_hosts"))
    if "default_routes" in doc:
        out["default_routes"] = _typed(doc["default_routes"], bool, "default_routes")
    if "allow" in doc:
        out["allow"] = frozenset(_typed(doc["allow"], list, "allow"))
    if "auth" in doc:
        out["auth"] = _auth(doc["auth"], "auth")
    if "cors" in doc:
        cors = _typed(doc["cors"], dict, "cors")
        _only(cors, {f.name for f in fields(Cors)}, "cors")
        settings: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in cors.items()
        }
        out["cors"] = Cors(**settings)
    routes = []
    for i, row in enumerate(_typed(doc.get("routes", []), list, "routes")):
        what = f"routes[{i}]"
        _only(
            _typed(row, dict, what),
            {"path", "subject", "methods", "version", "auth", "timeout_s"},
            what,
        )
        if "path" not in row or "subject" not in row:
            raise ConfigError(f"{what} needs 'path' and 'subject'")
        routes.append(
            Route(
                path=row["path"],
                subject=row["subject"],
                methods=frozenset(_typed(row.get("methods", []), list, f"{what}.methods")),
                version=row.get("version"),
                auth=_auth(row["auth"], f"{what}.auth") if "auth" in row else None,
                timeout_s=row.get("timeout_s"),
            )
        )
    out["routes"] = tuple(routes)
    return out


def _host_names(hosts: Iterable[str]) -> tuple[str, ...]:
    if isinstance(hosts, str) or not all(isinstance(h, str) for h in hosts):
        raise ConfigError("allowed_hosts must be a list of host names")
    names = []
    for host in hosts:
        name = host.strip().lower().rstrip(".")
        if ":" in name and not name.startswith("["):
            name = f"[{name}]"  # a bare IPv6 literal, as Host writes it
        if name != "*" and not (_HOST_NAME.match(name) and _ip6_ok(name)):
            raise ConfigError(
                f"allowed_hosts: {host!r} is not a host name (give no port; '*' allows any)"
            )
        names.append(name)
    return tuple(names)


def _ip6_ok(name: str) -> bool:
    if not name.startswith("["):
        return True
    try:
        ipaddress.IPv6Address(name[1:-1])
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or IP literal) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _auth(value: Any, what: str) -> Auth:
    table = _typed(value, dict, what)
    _only(table, {"scheme", "tokens_env", "tokens_file", "header"}, what)
    return Auth(**table)


def _only(table: Mapping[str, Any], allowed: set[str], what: str) -> None:
    if unknown := set(table) - allowed:
        raise ConfigError(f"{what}: unknown keys {sorted(unknown)} (known: {sorted(allowed)})")


def _typed(value: Any, type_: type, what: str) -> Any:
    if not isinstance(value, type_):
        raise ConfigError(f"{what} must be a {type_.__name__}, got {value!r}")
    return value
