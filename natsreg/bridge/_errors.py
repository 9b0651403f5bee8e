"""The bridge's error table: every ``error`` name its JSON error bodies carry, with its HTTP
status and what it means. A :class:`~natsreg.bridge._routes.Refusal` takes its status from
here, :func:`~natsreg.bridge.status_for` names a failed request's error from here, and the
OpenAPI document lists these responses; docs/operations.md ("Status table") says the same, and
a test holds the two together.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ERRORS", "SERVICE_ERROR", "ErrorKind"]


class ErrorKind(NamedTuple):
    status: int
    meaning: str


#: The service's own error: the code it gave if 400-599, else 502 (not in :data:`ERRORS`, as
#: its status is the service's).
SERVICE_ERROR = "service_error"

ERRORS: dict[str, ErrorKind] = {
    "bad_request": ErrorKind(
        400,
        "the request cannot become a NATS request (a path segment that is no subject token, a "
        "reserved subject, a bad timeout header, a header holding CR/LF/NUL)",
    ),
    "unauthorized": ErrorKind(401, "missing or wrong credentials"),
    "cross_site": ErrorKind(403, "a cross-site request the CORS settings do not allow"),
    "not_found": ErrorKind(404, "no route matches the path"),
    "method_not_allowed": ErrorKind(405, "the route does not take this method"),
    "body_timeout": ErrorKind(408, "the body did not arrive in time"),
    "body_too_large": ErrorKind(413, "the body is over the bridge's limit or NATS' max_payload"),
    "misdirected_request": ErrorKind(421, "the bridge does not serve the host named in Host"),
    "too_many_requests": ErrorKind(429, "too many requests in flight from this client"),
    "headers_too_large": ErrorKind(431, "the path, query and headers are over the limit"),
    "internal_error": ErrorKind(500, "a bug in the bridge"),
    "bad_gateway": ErrorKind(502, "no usable reply"),
    "no_instance": ErrorKind(503, "no instance serves the subject or matches the version"),
    "not_connected": ErrorKind(503, "the bridge's NATS connection is closed or draining"),
    "circuit_open": ErrorKind(503, "the circuit breaker for the target is open"),
    "overloaded": ErrorKind(503, "the bulkhead for the service is full"),
    "stopping": ErrorKind(503, "the bridge is stopping"),
    "too_many_streams": ErrorKind(503, "the bridge serves as many event streams as it may"),
    "timeout": ErrorKind(504, "no reply within the timeout"),
}
