"""natsreg's errors: one base class, one class per condition, NATS exceptions translated here.

Caller-side errors carry ``retryable``: whether sending the same request again may succeed.
A handler's error travels to the caller in the ADR-32 headers ``Nats-Service-Error`` and
``Nats-Service-Error-Code`` and comes back as the same :class:`ServiceError`.
"""

from __future__ import annotations

import nats.errors

__all__ = [
    "BUDGET_HEADER",
    "CODE_HEADER",
    "ERROR_HEADER",
    "NO_RESPONDERS_STATUS",
    "REQUEST_ID_HEADER",
    "RETRYABLE_HEADER",
    "STATUS_HEADER",
    "BulkheadFullError",
    "CircuitOpenError",
    "ConfigError",
    "NatsregError",
    "NoInstanceError",
    "NotConnectedError",
    "OutcomeUnknownError",
    "OverloadedError",
    "RequestError",
    "RequestTimeoutError",
    "SagaBusyError",
    "SagaCompensationError",
    "SagaError",
    "SagaLostError",
    "SagaNotFoundError",
    "SagaUnavailableError",
    "ServiceError",
    "error_headers",
    "from_nats",
    "from_reply_headers",
    "no_reply",
]

ERROR_HEADER = "Nats-Service-Error"
CODE_HEADER = "Nats-Service-Error-Code"
# Not part of ADR-32: a natsreg service's way to say "this failure is safe to retry".
RETRYABLE_HEADER = "Natsreg-Retryable"
# Not part of ADR-32: the caller's remaining time budget in whole milliseconds. Relative, not
# an absolute deadline, so that clock skew between machines does not matter.
BUDGET_HEADER = "Natsreg-Budget-Ms"
# Not part of ADR-32: one id for every attempt of one call, so that a service that already
# ran (or is running) the call answers a repeat from what it remembers instead of running it
# again (docs/protocol.md, "At most once").
REQUEST_ID_HEADER = "Natsreg-Request-Id"
# Set by nats-server, not by a service: a reply whose ``Status`` header is ``503`` and whose
# body is empty says that nobody was subscribed to the subject when the request arrived.
STATUS_HEADER = "Status"
NO_RESPONDERS_STATUS = "503"


class NatsregError(Exception):
    """Base class of every error natsreg raises."""

    retryable: bool = False


class ConfigError(NatsregError, ValueError):
    """A name, version, subject or setting was refused before anything was sent."""


class RequestError(NatsregError):
    """A request did not produce a reply."""

    def __init__(self, message: str, *, subject: str = "") -> None:
        super().__init__(message)
        self.subject = subject


class NoInstanceError(RequestError):
    """Nothing serves the subject: NATS answered 'no responders' at once."""

    retryable = True


class RequestTimeoutError(RequestError, TimeoutError):
    """No reply came within the timeout. The handler may still have run."""


class OutcomeUnknownError(RequestError):
    """The call was sent, and the instance it went to is gone (it crashed, said goodbye or
    was reported down) before it answered: the handler may or may not have run.

    Not retried by natsreg unless the endpoint is idempotent; the caller decides, knowing
    that a repeat may run the call a second time.
    """


class NotConnectedError(RequestError):
    """The NATS connection is closed or draining."""


class ServiceError(RequestError):
    """The handler failed. Raise it in a handler to reply with a code; callers receive it.

    ``code`` follows HTTP's classes where it can (4xx: the request is wrong, 5xx: the service
    failed), which is what ADR-32 services in other languages do too.
    """

    def __init__(
        self, description: str, *, code: int = 500, retryable: bool = False, subject: str = ""
    ) -> None:
        super().__init__(f"{code} {description}", subject=subject)
        self.description = description
        self.code = code
        self.retryable = retryable


class OverloadedError(ServiceError):
    """The service runs as many handlers as it may and its queue is full (code 503).

    Nothing was started, so it is always safe to send the request again, to any instance.
    """

    def __init__(
        self,
        description: str = "overloaded: too many requests in flight",
        *,
        code: int = 503,
        retryable: bool = True,
        subject: str = "",
    ) -> None:
        super().__init__(description, code=code, retryable=retryable, subject=subject)


class CircuitOpenError(RequestError):
    """Every instance that could serve the call has an open circuit breaker: failed fast.

    ``retry_at`` (monotonic clock) is when the first breaker lets a trial call through;
    ``retry_in_s`` is the same as a duration from when the error was raised.
    """

    def __init__(
        self, message: str, *, retry_at: float, retry_in_s: float, subject: str = ""
    ) -> None:
        super().__init__(f"{message}; next trial in {retry_in_s:.2f} s", subject=subject)
        self.retry_at = retry_at
        self.retry_in_s = retry_in_s


class BulkheadFullError(RequestError):
    """This client already has its maximum of calls in flight to the service: not sent."""


class SagaError(NatsregError):
    """A saga could not go on as asked; ``saga_id`` names it (``natsreg saga show ID``)."""

    def __init__(self, message: str, *, saga_id: str = "") -> None:
        super().__init__(message)
        self.saga_id = saga_id


class SagaUnavailableError(SagaError):
    """JetStream is not there to keep sagas (not enabled on the server, no quorum, or the
    bucket does not exist yet where natsreg may not create it)."""

    retryable = True


class SagaNotFoundError(SagaError):
    """No saga (none this code can read) is stored under the id."""


class SagaBusyError(SagaError):
    """Another coordinator holds the saga's lease: it is still running there."""

    retryable = True


class SagaLostError(SagaError):
    """This coordinator lost the saga: another took it over (its lease had run out, e.g. while
    this process was frozen). The other one finishes it; this one stops at once."""


class SagaCompensationError(SagaError):
    """A compensation failed every attempt and was dead-lettered: the saga ended in
    ``failed-compensation`` and an operator must undo by hand what the history shows.
    ``result`` is the saga's final state."""

    def __init__(self, message: str, *, saga_id: str = "", result: object = None) -> None:
        super().__init__(message, saga_id=saga_id)
        self.result = result


def error_headers(error: ServiceError) -> dict[str, str]:
    """The ADR-32 headers that carry ``error`` in a reply."""
    headers = {ERROR_HEADER: error.description, CODE_HEADER: str(error.code)}
    if error.retryable:
        headers[RETRYABLE_HEADER] = "true"
    return headers


def from_reply_headers(headers: dict[str, str] | None, subject: str) -> ServiceError | None:
    """The error a reply carries in its headers, or None for a successful reply."""
    if not headers or (ERROR_HEADER not in headers and CODE_HEADER not in headers):
        return None
    try:
        code = int(headers.get(CODE_HEADER, "500"))
    except ValueError:
        code = 500
    cls = OverloadedError if code == 503 else ServiceError
    return cls(
        headers.get(ERROR_HEADER, ""),
        code=code,
        retryable=headers.get(RETRYABLE_HEADER) == "true",
        subject=subject,
    )


def no_reply(
    asked: str,
    service: str | None,
    within: str,
    *,
    subject: str,
    more_time: str = "allow it more time",
) -> RequestTimeoutError:
    """The error of a call that got no reply, in the caller's words: what they asked for
    (not the instance's own subject the call went to), the time it had (``within``: "within
    1 s"), and what to do."""
    check = f", or check the service with 'natsreg info {service}'" if service else ""
    return RequestTimeoutError(
        f"no reply from {asked!r} {within} (the handler may still be running): {more_time}{check}",
        subject=subject,
    )


def from_nats(exc: Exception, subject: str, timeout_s: float) -> NatsregError | Exception:
    """Translate a nats-py exception raised by a request; anything unknown is returned as is."""
    match exc:
        case nats.errors.NoRespondersError():
            return NoInstanceError(f"no instance serves {subject!r}", subject=subject)
        case nats.errors.TimeoutError():
            return RequestTimeoutError(
                f"no reply on {subject!r} within {timeout_s:g} s", subject=subject
            )
        case nats.errors.ConnectionClosedError() | nats.errors.ConnectionDrainingError():
            return NotConnectedError(f"NATS connection is closed ({subject!r})", subject=subject)
        case nats.errors.BadSubjectError():
            return ConfigError(f"{subject!r} is not a valid subject")
    return exc
