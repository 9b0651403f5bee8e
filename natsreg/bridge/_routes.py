"""The bridge's route table: which HTTP paths reach which subjects, and which never do.

Pure data and pure functions, no I/O, so that every refusal is testable without a server.
A path resolves to a :class:`Target` (where to send the request) or a :class:`Refusal` (the
HTTP status and why). Resolution is cached per path: clients repeat the same few paths, and a
path's answer depends only on the table, which is frozen.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

from .. import subjects, wire
from .._semver import Constraint, parse_constraint
from ..errors import ConfigError
from ._access import Auth
from ._errors import ERRORS

__all__ = ["MAX_SUBJECT_CHARS", "Refusal", "Route", "RouteTable", "Target"]

# NATS' max_control_line is 4 KiB for subject and reply together; 512 leaves room for the
# reply inbox and keeps the per-path cache small.
MAX_SUBJECT_CHARS = 512
_CACHE_SIZE = 4096
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True, kw_only=True)
class Route:
    """One row of the route table: requests under ``path`` go to ``subject``.

    Path tokens after ``path`` are appended to the subject (``/api/users/42`` →
    ``user-service.users.42``), except on a versioned route, which serves exactly ``path``.
    ``methods`` limits the HTTP methods (all when empty). ``version`` is a constraint such as
    ``^1.2``: the client then picks an instance whose version matches and addresses it
    directly, so ``subject`` must be ``<service>.<endpoint>``. ``auth`` overrides the bridge's
    default auth; ``timeout_s`` its request timeout.
    """

    path: str
    subject: str
    methods: frozenset[str] = frozenset()
    version: str | None = None
    auth: Auth | None = None
    timeout_s: float | None = None
    tokens: tuple[str, ...] = field(init=False, repr=False, compare=False)
    constraint: Constraint | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ConfigError(f"route path {self.path!r} must start with '/'")
        # One trailing slash is allowed ("/api/users/"); "/" gives one empty segment.
        tokens = tuple(self.path[1:].removesuffix("/").split("/"))
        # A request path with such a segment is refused before routing, so the route could
        # never be reached.
        if not all(map(_valid_path_token, tokens)):
            raise ConfigError(
                f"route path {self.path!r} needs non-empty, printable segments "
                "without '.', '*', '>' or spaces"
            )
        if tokens[0] == "_natsreg":
            raise ConfigError("route paths under /_natsreg/ are the bridge's own")
        object.__setattr__(self, "tokens", tokens)
        if not subjects.is_valid_subject(self.subject) or subjects.is_reserved(self.subject):
            raise ConfigError(
                f"route {self.path!r}: {self.subject!r} is not a subject a route "
                "may reach (literal tokens, no '$' or '_INBOX' subjects)"
            )
        if len(self.subject) > MAX_SUBJECT_CHARS:
            raise ConfigError(
                f"route {self.path!r}: the subject is longer than {MAX_SUBJECT_CHARS} characters"
            )
        methods = frozenset(m.upper() for m in self.methods)
        if unknown := methods - _HTTP_METHODS:
            raise ConfigError(f"route {self.path!r}: unknown methods {sorted(unknown)}")
        object.__setattr__(self, "methods", methods)
        constraint = None
        if self.version is not None:
            constraint = parse_constraint(self.version)
            parts = self.subject.split(".")
            if len(parts) != 2 or not all(wire.NAME_PATTERN.match(p) for p in parts):
                raise ConfigError(
                    f"route {self.path!r}: a versioned route's subject must be "
                    "'<service>.<endpoint>'"
                )
        object.__setattr__(self, "constraint", constraint)
        if self.timeout_s is not None and not 0 < self.timeout_s <= 3600:
            raise ConfigError(f"route {self.path!r}: timeout_s must be in (0, 3600]")

    @property
    def service(self) -> str:
        return self.subject.split(".", 1)[0]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a path goes: the subject, and the route it came from (None: the default mapping).

    ``call`` is what the client is asked for: the subject, or ``service@constraint.endpoint``
    on a versioned route.
    """

    subject: str
    service: str
    endpoint: str
    route: Route | None
    call: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request goes nowhere: the error body's fields, and its HTTP status."""

    error: str
    message: str
    service: str = ""
    endpoint: str = ""
    #: The HTTP status; 0 takes the one the error table gives ``error`` (``_errors``).
    code: int = 0

    def __post_init__(self) -> None:
        if not self.code and self.error not in ERRORS:
            raise ValueError(f"{self.error!r} is not in the bridge's error table")

    @property
    def status(self) -> int:
        return self.code or ERRORS[self.error].status


def _valid_path_token(token: str) -> bool:
    # isprintable() also refuses what is_valid_token lets through but no subject should hold:
    # C1 controls, line and paragraph separators, format characters.
    return subjects.is_valid_token(token) and token.isprintable()


_BAD_PATH = Refusal(
    "bad_request",
    "the path holds a segment that cannot be a subject token (empty, '.', '*', "
    "'>', whitespace or control characters)",
)
_LONG_PATH = Refusal("bad_request", f"the path is longer than {MAX_SUBJECT_CHARS} characters")
_LONG_SUBJECT = Refusal(
    "bad_request", f"the path maps to a subject longer than {MAX_SUBJECT_CHARS} characters"
)
_FORBIDDEN_SUBJECT = Refusal("bad_request", "the path names a reserved subject")
_NO_ROUTE = Refusal("not_found", "no route matches the path")


class RouteTable:
    """Routes by path prefix (longest first), then ``/<service>/<endpoint>[/...]`` if enabled.

    ``allow``: the services reachable at all (every one when None). ``control_prefix``: the
    subject prefix of natsreg's control traffic, which no path may reach.
    """

    def __init__(
        self,
        routes: Iterable[Route] = (),
        *,
        default_routes: bool = True,
        allow: frozenset[str] | None = None,
        control_prefix: str = subjects.DEFAULT_PREFIX,
    ) -> None:
        self.routes = tuple(routes)
        seen: set[tuple[str, ...]] = set()
        for route in self.routes:
            if route.tokens in seen:
                raise ConfigError(f"two routes share the path {route.path!r}")
            seen.add(route.tokens)
            if allow is not None and route.service not in allow:
                raise ConfigError(
                    f"route {route.path!r} reaches {route.service!r}, "
                    "which the allow-list leaves out"
                )
            if _under(route.subject, control_prefix):
                raise ConfigError(f"route {route.path!r} reaches natsreg's control subjects")
        self.default_routes = default_routes
        self.allow = allow
        self.control_prefix = control_prefix
        self._by_tokens = {r.tokens: r for r in self.routes}
        self._depths = sorted({len(r.tokens) for r in self.routes}, reverse=True)
        # Equivalent mutants only: the cache's size bounds its memory, not its answers.
        cache = functools.lru_cache(maxsize=_CACHE_SIZE)  # pragma: no mutate (equivalent)
        self._resolve_cached = cache(self._resolve)

    def resolve(self, path: str) -> Target | Refusal:
        """Where ``path`` (URL-decoded, as ASGI gives it) goes, or why it goes nowhere."""
        if len(path) > MAX_SUBJECT_CHARS:
            return _LONG_PATH
        return self._resolve_cached(path)

    def _resolve(self, path: str) -> Target | Refusal:
        if not path.startswith("/"):
            return _BAD_PATH
        if path == "/":
            return _NO_ROUTE
        tokens = path[1:].split("/")
        # Every segment is checked before any routing decision: a hostile path is a bad
        # request whatever it would have matched.
        if not all(_valid_path_token(t) for t in tokens):
            return _BAD_PATH
        for depth in self._depths:
            route = self._by_tokens.get(tuple(tokens[:depth]))
            if route is not None:
                return self._via_route(route, tokens[depth:])
        if not self.default_routes or len(tokens) < 2:
            return _NO_ROUTE
        service, endpoint = tokens[0], tokens[1]
        subject = ".".join(tokens)
        if subjects.is_reserved(subject) or _under(subject, self.control_prefix):
            return _FORBIDDEN_SUBJECT
        if not wire.NAME_PATTERN.match(service) or not wire.NAME_PATTERN.match(endpoint):
            return Refusal(
                "bad_request",
                "service and endpoint names hold letters, digits, '-' and '_' only",
                service,
                endpoint,
            )
        if self.allow is not None and service not in self.allow:
            return _NO_ROUTE
        return Target(subject, service, endpoint, None, subject)

    def _via_route(self, route: Route, rest: list[str]) -> Target | Refusal:
        service, _, endpoint = route.subject.partition(".")
        if rest and route.constraint is not None:
            return Refusal("not_found", "a versioned route has no sub-paths", service, endpoint)
        subject = ".".join((route.subject, *rest))
        if len(subject) > MAX_SUBJECT_CHARS:
            return _LONG_SUBJECT
        call = subject if route.version is None else f"{service}@{route.version}.{endpoint}"
        return Target(subject, service, endpoint, route, call)


def _under(subject: str, prefix: str) -> bool:
    return subject == prefix or subject.startswith(prefix + ".")
