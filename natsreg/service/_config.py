"""What describes one service instance: :class:`ServiceConfig`, validated once, at construction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

from .. import subjects, wire
from .._probes import parse_listen
from ..errors import ConfigError

__all__ = ["HealthCheck", "ServiceConfig", "ServiceSettings", "check_metadata", "check_name"]

HealthCheck = Callable[[], "wire.Health | Awaitable[wire.Health]"]


def check_metadata(metadata: Mapping[str, str], what: str) -> dict[str, str]:
    try:
        wire.check_metadata(metadata, what)
    except wire.Invalid as exc:
        raise ConfigError(str(exc)) from None
    return dict(metadata)


def check_name(name: str, what: str) -> str:
    try:
        wire.check_name(name, what)
    except wire.Invalid as exc:
        raise ConfigError(str(exc)) from None
    return name


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """Everything that describes one service instance, validated once, at construction."""

    name: str
    version: str
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: Queue group of the endpoints; the service name unless set.
    queue_group: str | None = None
    #: Subject prefix of natsreg's control traffic; must match the registry's.
    prefix: str = subjects.DEFAULT_PREFIX
    heartbeat_s: float = 1.0
    #: Handlers running at once (the service-side bulkhead).
    max_in_flight: int = 256
    #: Requests waiting for a handler slot; beyond this a request is refused at once with a
    #: retryable :class:`~natsreg.errors.OverloadedError` (503), which a natsreg client
    #: retries on another instance, rather than queueing without bound.
    max_queued: int = 1024
    #: How long leaving the block waits for in-flight handlers before cancelling them.
    drain_timeout_s: float = 10.0
    #: Called every heartbeat; returns "passing", "warning" or "critical".
    health: HealthCheck | None = None
    #: Serve /metrics, /healthz and /readyz on this address while the instance runs:
    #: ``"HOST:PORT"``, or ``":PORT"`` for every interface (docs/operations.md, "Probes").
    http: str | None = None
    #: The event types this service emits (``natsreg.Events(...).emit``), announced so that
    #: the registry shows who emits each type (docs/events.md, "Who emits, who consumes").
    emits: Sequence[str] = ()

    def __post_init__(self) -> None:
        check_name(self.name, "service name")
        if not isinstance(self.version, str) or not wire.SEMVER_PATTERN.match(self.version):
            raise ConfigError(f"version {self.version!r} is not SemVer (e.g. '1.2.0')")
        limit = wire.MAX_DESCRIPTION_CHARS
        if not isinstance(self.description, str) or len(self.description) > limit:
            raise ConfigError(f"description must be a string of at most {limit}")
        object.__setattr__(self, "metadata", check_metadata(self.metadata, "service"))
        if self.queue_group is not None and not subjects.is_valid_token(self.queue_group):
            raise ConfigError(f"queue group {self.queue_group!r} is not a valid NATS token")
        subjects.check_prefix(self.prefix)
        if self.http is not None:
            parse_listen(self.http, "http")
        object.__setattr__(self, "emits", _check_emits(self.emits))
        self._check_numbers()

    def _check_numbers(self) -> None:
        if not wire.MIN_HEARTBEAT_S <= self.heartbeat_s <= wire.MAX_HEARTBEAT_S:
            raise ConfigError(
                f"heartbeat_s must be between {wire.MIN_HEARTBEAT_S} and "
                f"{wire.MAX_HEARTBEAT_S}, got {self.heartbeat_s}"
            )
        if self.max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1, got {self.max_in_flight}")
        if self.max_queued < 0:
            raise ConfigError(f"max_queued must be >= 0, got {self.max_queued}")
        if self.drain_timeout_s < 0:
            raise ConfigError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")


def _check_emits(emits: Sequence[str]) -> tuple[str, ...]:
    if isinstance(emits, str):
        raise ConfigError(f"emits must be a list of event types, e.g. [{emits!r}]")
    unique = tuple(dict.fromkeys(emits))
    try:
        wire.check_emits(list(unique))
    except wire.Invalid as exc:
        raise ConfigError(f"emits: {exc}") from None
    return unique


class ServiceSettings(TypedDict, total=False):
    """The keyword arguments of :func:`natsreg.service.announce` and :class:`natsreg.Service`:
    ServiceConfig's fields after ``name`` and ``version``, for type checkers and editors only.

    The defaults and the checks live in :class:`ServiceConfig` alone; a test keeps the two
    field lists equal (tests/test_core.py).
    """

    description: str
    #: None is taken as no metadata, as announce() always has.
    metadata: Mapping[str, str] | None
    queue_group: str | None
    prefix: str
    heartbeat_s: float
    max_in_flight: int
    max_queued: int
    drain_timeout_s: float
    health: HealthCheck | None
    http: str | None
    emits: Sequence[str]
