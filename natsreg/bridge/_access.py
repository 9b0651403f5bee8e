"""Who may call the bridge: auth by bearer token or API key, and cross-origin access (CORS).

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

__all__ = ["HTTP_TOKEN", "NO_AUTH", "Auth", "Cors", "challenge", "credential"]

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
            tokens += re.split(r"[,\n]", value)
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
            raise ConfigError(f"auth scheme {self.scheme!r} has no token: set tokens_env or "
                              "tokens_file (there is no default secret)")
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
