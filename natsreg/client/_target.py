"""What a caller's subject names: ``service.endpoint``, ``service@constraint.endpoint``, or any
other plain subject (sent to whoever subscribes)."""

from __future__ import annotations

import functools
from typing import NamedTuple

from .. import subjects
from .._semver import Constraint, parse_constraint
from ..errors import ConfigError

#: A call's selector: ``select=`` as sorted (key, value) pairs (hashable, for caches).
Select = tuple[tuple[str, str], ...]


class Target(NamedTuple):
    subject: str
    service: str | None
    endpoint: str | None
    constraint: Constraint | None


@functools.lru_cache(maxsize=4096)
def parse_target(text: str) -> Target:
    """The target ``text`` names; ConfigError if it names none."""
    # ``service.endpoint`` or ``service@constraint.endpoint``; the constraint may hold dots
    # (``^1.2``), so the endpoint is what follows the last one.
    if "@" in text:
        service, _, rest = text.partition("@")
        constraint, _, endpoint = rest.rpartition(".")
        if not (
            subjects.is_valid_token(service) and subjects.is_valid_token(endpoint) and constraint
        ):
            raise ConfigError(
                f"{text!r} is not '<service>@<version constraint>.<endpoint>' "
                "(e.g. 'user-service@^1.2.users')"
            )
        subject = _checked_subject(subjects.endpoint_subject(service, endpoint))
        return Target(subject, service, endpoint, parse_constraint(constraint))
    subject = _checked_subject(text)
    tokens = subject.split(".")
    if len(tokens) == 2:
        return Target(subject, tokens[0], tokens[1], None)
    return Target(subject, None, None, None)


@functools.lru_cache(maxsize=4096)
def _checked_subject(subject: str) -> str:
    # Cached: the same few subjects are requested over and over, and a bad one raises anyway.
    if not subjects.is_valid_subject(subject) or subjects.is_reserved(subject):
        raise ConfigError(
            f"{subject!r} is not a subject natsreg can request: use '<service>.<endpoint>' "
            "with letters, digits, '-' and '_' (no spaces, '*', '>' or leading '$')"
        )
    return subject


def describe(target: Target, select: Select) -> str:
    """What a call asked for, in words (for NoInstanceError)."""
    parts = []
    if target.constraint is not None:
        parts.append(f"version {target.constraint}")
    parts.extend(f"{k}={v}" for k, v in select)
    parts.append(f"endpoint {target.endpoint!r}")
    return ", ".join(parts)
