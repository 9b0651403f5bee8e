"""natsreg: service discovery and RPC for Python microservices on NATS."""

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
