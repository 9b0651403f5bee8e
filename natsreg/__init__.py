"""natsreg: service discovery and RPC for Python microservices on NATS."""

from .client import Client, Reply
from .errors import (ConfigError, NatsregError, NoInstanceError, NotConnectedError, RequestError,
                     RequestTimeoutError, ServiceError)
from .registry import Registry
from .service import Request, Service, announce

__all__ = [
    "Client",
    "ConfigError",
    "NatsregError",
    "NoInstanceError",
    "NotConnectedError",
    "Registry",
    "Reply",
    "Request",
    "RequestError",
    "RequestTimeoutError",
    "Service",
    "ServiceError",
    "announce",
]
__version__ = "0.1.0"
