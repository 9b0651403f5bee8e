"""How the bridge answers: the status of a failed request (:func:`status_for`), and the
writing of a response and of a JSON error body, shared by the request path (``_app``) and the
bridge's own resources (``_own``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
import nats.errors

from ..errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigError,
    NatsregError,
    NoInstanceError,
    NotConnectedError,
    RequestTimeoutError,
    ServiceError,
)
from ._errors import ERRORS, SERVICE_ERROR
from ._routes import Refusal, Target

__all__ = [
    "JSON",
    "ErrorBody",
    "Receive",
    "Scope",
    "Send",
    "encode",
    "refuse",
    "respond",
    "status_for",
    "unauthorized",
]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = b"application/json"
encode = msgspec.json.Encoder().encode


# The natsreg errors a failed request may end in, by the name the error table gives them;
# the first that matches wins (a subclass before its base).
_NAMES: tuple[tuple[type[BaseException], str], ...] = (
    (NoInstanceError, "no_instance"),
    (RequestTimeoutError, "timeout"),
    (NotConnectedError, "not_connected"),
    (CircuitOpenError, "circuit_open"),
    (BulkheadFullError, "overloaded"),
    (ConfigError, "bad_request"),
    (nats.errors.MaxPayloadError, "body_too_large"),
    (NatsregError, "bad_gateway"),
)


def status_for(error: BaseException) -> tuple[int, str]:
    """The HTTP status and error name for a failed request (the statuses: ``_errors``)."""
    if isinstance(error, ServiceError):
        return (error.code if 400 <= error.code <= 599 else 502), SERVICE_ERROR
    for kind, name in _NAMES:
        if isinstance(error, kind):
            return ERRORS[name].status, name
    return ERRORS["internal_error"].status, "internal_error"


class ErrorBody(msgspec.Struct):
    """The JSON body of every error response (the OpenAPI document states it from here)."""

    error: str
    message: str
    service: str
    endpoint: str


async def respond(
    send: Send, status: int, content_type: bytes, body: bytes, extra: Iterable[tuple[bytes, bytes]]
) -> None:
    """A whole response: the head (with ``extra`` headers), then the body."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def refuse(send: Send, refusal: Refusal, extra: Iterable[tuple[bytes, bytes]]) -> None:
    """``refusal`` as its JSON error response."""
    body = encode(
        ErrorBody(refusal.error, refusal.message[:1024], refusal.service, refusal.endpoint)
    )
    await respond(send, refusal.status, JSON, body, extra)


def unauthorized(target: Target | None) -> Refusal:
    """The refusal of missing or wrong credentials (for ``target``, if the path named one)."""
    return Refusal(
        "unauthorized",
        "missing or invalid credentials",
        target.service if target else "",
        target.endpoint if target else "",
    )
