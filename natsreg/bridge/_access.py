"""Who may call the bridge and from where: auth by bearer token or API key, the Host names
served, and cross-origin access (CORS).

Validated once, at construction; only digests of the tokens are kept in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import ConfigError

__all__ = [
    "HTTP_TOKEN",
    "NO_AUTH",
    "Auth",
    "Cors",
    "CorsHeaders",
    "Origins",
    "challenge",
    "credential",
]

# Distinct Host values whose verdict is remembered; any more are checked each time.
_HOST_CACHE_SIZE = 256

#: An HTTP header name (RFC 9110 "token").
HTTP_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


@dataclass(frozen=True, kw_only=True)
class Auth:
    """Who may call a route: ``none``, a bearer token, or an API key in a header.

    Tokens come from ``tokens_env`` (an environment variable holding comma- or
    newline-separated tokens) and/or ``tokens_file`` (one token a line, ``#`` comments); there
    is no default secret, so a scheme other than ``none`` with no token is refused at once.
    Only SHA-256 digests of the tokens are kept in memory.
    """

    scheme: Literal["none", "bearer", "api-key"] = "none"
    tokens_env: str | None = None
    tokens_file: str | None = None
    #: The header that carries the key, for ``api-key``.
    header: str = "x-api-key"
    digests: frozenset[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scheme not in ("none", "bearer", "api-key"):
            raise ConfigError(f"auth scheme {self.scheme!r}: use 'none', 'bearer' or 'api-key'")
        if not HTTP_TOKEN.match(self.header):
            raise ConfigError(f"auth header {self.header!r} is not a header name")
        object.__setattr__(self, "header", self.header.lower())
        tokens: list[str] = []
        if self.tokens_env is not None:
            value = os.environ.get(self.tokens_env)
            if value is None:
                raise ConfigError(f"auth: environment variable {self.tokens_env!r} is not set")
            tokens = re.split(r"[,\n]", value)
        if self.tokens_file is not None:
            try:
                text = Path(self.tokens_file).read_text()
            except OSError as exc:
                raise ConfigError(f"auth: cannot read tokens_file: {exc}") from exc
            tokens += [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        tokens = [t.strip() for t in tokens if t.strip()]
        if self.scheme == "none" and (self.tokens_env or self.tokens_file):
            raise ConfigError("auth: tokens given but scheme is 'none'")
        if self.scheme != "none" and not tokens:
            raise ConfigError(
                f"auth scheme {self.scheme!r} has no token: set tokens_env or "
                "tokens_file (there is no default secret)"
            )
        if any(not t.isprintable() or " " in t for t in tokens):
            raise ConfigError("auth: a token may hold no whitespace or control character")
        object.__setattr__(self, "digests", frozenset(_digest(t.encode()) for t in tokens))

    @property
    def enabled(self) -> bool:
        return self.scheme != "none"

    def accepts(self, credential: bytes | None) -> bool:
        """Whether ``credential`` (the bearer token or API key as sent) is one of the tokens."""
        # Comparing digests, not tokens: a set lookup on SHA-256 output leaks nothing an
        # attacker can steer, where comparing the tokens themselves would leak by timing.
        return credential is not None and _digest(credential) in self.digests


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


NO_AUTH = Auth()


@dataclass(frozen=True, kw_only=True)
class Cors:
    """Cross-origin access for browsers. ``allow_origins=("*",)`` allows any origin."""

    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ("GET", "POST")
    allow_headers: tuple[str, ...] = ("content-type", "authorization")
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("allow_origins", "allow_methods", "allow_headers", "expose_headers"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"cors.{name} must be a list of strings")
            if any(not v.isprintable() for v in value):
                raise ConfigError(f"cors.{name}: no control characters")
            object.__setattr__(self, name, tuple(value))
        if "*" in self.allow_origins and self.allow_credentials:
            raise ConfigError("cors: allow_credentials cannot be used with allow_origins '*'")
        if self.max_age_s < 0:
            raise ConfigError("cors.max_age_s must be >= 0")


def credential(auth: Auth, headers: dict[bytes, bytes]) -> bytes | None:
    """The token or key that ``headers`` (credential headers only) present to ``auth``."""
    value = headers.get(b"authorization" if auth.scheme == "bearer" else auth.header.encode())
    if value is None:
        return None
    if auth.scheme == "bearer":
        scheme, _, token = value.partition(b" ")
        return token.strip() if scheme.lower() == b"bearer" else None
    return value.strip()


def challenge(auth: Auth) -> tuple[bytes, bytes]:
    """The ``WWW-Authenticate`` header that tells a refused client how to authenticate."""
    if auth.scheme == "bearer":
        return (b"www-authenticate", b'Bearer realm="natsreg"')
    return (b"www-authenticate", f'ApiKey header="{auth.header}"'.encode())


class CorsHeaders:
    """CORS response headers, built once from the config."""

    def __init__(self, cors: Cors) -> None:
        self.any_origin = "*" in cors.allow_origins
        self.origins = frozenset(o.encode() for o in cors.allow_origins)
        common = [(b"vary", b"origin")]
        if cors.allow_credentials:
            common.append((b"access-control-allow-credentials", b"true"))
        self.simple = common + (
            [(b"access-control-expose-headers", ", ".join(cors.expose_headers).encode())]
            if cors.expose_headers
            else []
        )
        self.preflight_headers = [
            *common,
            (b"access-control-allow-methods", ", ".join(cors.allow_methods).encode()),
            (b"access-control-allow-headers", ", ".join(cors.allow_headers).encode()),
            (b"access-control-max-age", str(int(cors.max_age_s)).encode()),
        ]

    def allowed(self, origin: bytes) -> bool:
        return self.any_origin or origin in self.origins

    def for_origin(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        """The headers of a response to a request from ``origin`` (none if not allowed)."""
        if not self.allowed(origin):
            return []
        return [(b"access-control-allow-origin", origin), *self.simple]

    def preflight(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        """The headers of the answer to a preflight from ``origin`` (none if not allowed)."""
        if not self.allowed(origin):
            return []
        return [(b"access-control-allow-origin", origin), *self.preflight_headers]


class Origins:
    """Which ``Host`` names and browser origins a bridge serves: its checks against DNS
    rebinding and cross-site requests."""

    __slots__ = ("_any_host", "_cors", "_hosts", "_verdicts")

    def __init__(self, allowed_hosts: tuple[str, ...], cors: CorsHeaders | None) -> None:
        self._any_host = "*" in allowed_hosts
        self._hosts = frozenset(h.encode() for h in allowed_hosts)
        self._cors = cors
        self._verdicts: dict[bytes, bool] = {}

    def host_allowed(self, host: bytes) -> bool:
        """Whether the ``Host`` header names a host served (any port)."""
        if self._any_host:
            return True
        # The remembered verdicts only save time: a verdict is the same computed or remembered.
        verdict = self._verdicts.get(host)  # pragma: no mutate (equivalent: a cache lookup)
        if verdict is None:
            if host.startswith(b"["):
                name = host[: host.find(b"]") + 1]
            else:
                name = host.partition(b":")[0].rstrip(b".")
            verdict = name.lower() in self._hosts
            if len(self._verdicts) < _HOST_CACHE_SIZE:  # pragma: no mutate (equivalent: cache)
                self._verdicts[host] = verdict  # pragma: no mutate (equivalent: cache)
        return verdict

    def cross_site(
        self, origin: bytes | None, host: bytes | None, fetch_site: bytes | None
    ) -> bool:
        """Whether a browser sent this from another site that CORS does not allow.

        A browser that names an ``Origin`` is refused unless CORS allows it or it is this
        bridge's own (scheme aside: a proxy in front may end TLS). Without ``Origin`` (a
        navigation, an ``<img>``, a no-cors fetch) ``Sec-Fetch-Site: cross-site`` is refused
        unless CORS allows any origin.
        """
        cors = self._cors
        if origin is None:
            return fetch_site == b"cross-site" and not (cors is not None and cors.any_origin)
        if cors is not None and cors.allowed(origin):
            return False
        if fetch_site == b"cross-site":
            return True
        return host is None or origin.partition(b"://")[2].lower() != host.lower()
