"""natsreg: service discovery and RPC for Python microservices on NATS."""

import importlib
from types import ModuleType

from .client import BreakerConfig, Client, Reply, RetryPolicy
from .errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigError,
    NatsregError,
    NoInstanceError,
    NotConnectedError,
    OutcomeUnknownError,
    OverloadedError,
    RequestError,
    RequestTimeoutError,
    SagaBusyError,
    SagaCompensationError,
    SagaError,
    SagaLostError,
    SagaNotFoundError,
    SagaUnavailableError,
    ServiceError,
)
from .events import Event, Events
from .registry import Registry
from .saga import Saga, SagaResult, SagaStore, Step
from .service import Instance, Request, Service, announce

__all__ = [
    "BreakerConfig",
    "BulkheadFullError",
    "CircuitOpenError",
    "Client",
    "ConfigError",
    "Event",
    "Events",
    "Instance",
    "NatsregError",
    "NoInstanceError",
    "NotConnectedError",
    "OutcomeUnknownError",
    "OverloadedError",
    "Registry",
    "Reply",
    "Request",
    "RequestError",
    "RequestTimeoutError",
    "RetryPolicy",
    "Saga",
    "SagaBusyError",
    "SagaCompensationError",
    "SagaError",
    "SagaLostError",
    "SagaNotFoundError",
    "SagaResult",
    "SagaStore",
    "SagaUnavailableError",
    "Service",
    "ServiceError",
    "Step",
    "announce",
]
__version__ = "0.1.0"

# The modules not imported above, loaded when first named (``natsreg.metrics.serve(...)``
# after a plain ``import natsreg``): each pulls in libraries that not every process needs.
_SUBMODULES = frozenset(
    {"bridge", "cli", "logs", "metrics", "permissions", "subjects", "testing", "wire"}
)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
