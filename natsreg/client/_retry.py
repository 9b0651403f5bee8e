"""Retry policy: how many attempts, how long to wait between them, how to split the budget.

Pure: the client's retry loop asks it questions; nothing here sleeps or sends.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import (
    ConfigError,
    NoInstanceError,
    OutcomeUnknownError,
    RequestTimeoutError,
    ServiceError,
)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """When and how a failed call is sent again; set per client and per call.

    Only failures that are safe to repeat are retried: "no responders" (nothing received the
    request), a timeout or an outcome unknown (the instance went down mid-call) when the
    instance that ran it declares the endpoint idempotent, and a service error the service
    marked retryable (overload among them). Every retry goes to another instance when there is one.

    The defaults keep a caller safe from one bad instance without hiding a broken service:
    three attempts, a first backoff of a few milliseconds (a retry goes elsewhere, so waiting
    long helps nobody), and, when timeouts are retryable, an attempt may use at most
    ``attempt_share`` of the remaining budget, so that a frozen instance costs a caller half
    its timeout, not all of it.
    """

    #: Attempts in total, the first one included; 1 disables retries.
    attempts: int = 3
    #: Upper bound of the first backoff; each later one doubles, up to ``max_backoff_s``.
    backoff_s: float = 0.005
    max_backoff_s: float = 0.25
    #: Time for all attempts together, within the call's timeout (None: the whole timeout).
    budget_s: float | None = None
    #: Share of the remaining budget one attempt may wait for, when a timeout would be retried.
    #: The last attempt always gets all that is left.
    attempt_share: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"attempts must be at least 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ConfigError("backoff_s and max_backoff_s must be >= 0")
        if self.budget_s is not None and self.budget_s <= 0:
            raise ConfigError(f"budget_s must be > 0, got {self.budget_s}")
        if not 0 < self.attempt_share <= 1:
            raise ConfigError(f"attempt_share must be in (0, 1], got {self.attempt_share}")

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``retry`` (1 for the first): full jitter, so that
        callers that failed together do not retry together."""
        cap = min(self.max_backoff_s, self.backoff_s * (2 ** (retry - 1)))
        return (rng or random).uniform(0, cap)

    def attempt_timeout(self, remaining_s: float, attempt: int, timeouts_retried: bool) -> float:
        """How long attempt number ``attempt`` (1-based) may wait for its reply."""
        if not timeouts_retried or attempt >= self.attempts:
            return remaining_s
        return remaining_s * self.attempt_share


def is_retryable(exc: BaseException, idempotent: bool) -> bool:
    """Whether sending the request again is safe after ``exc``."""
    if isinstance(exc, NoInstanceError):
        return True
    if isinstance(exc, (RequestTimeoutError, OutcomeUnknownError)):
        # Either way the handler may have run: only an idempotent call may run again.
        return idempotent
    if isinstance(exc, ServiceError):
        return exc.retryable
    return False
