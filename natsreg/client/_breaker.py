"""Circuit breakers: pure state, time from an injected clock, no I/O.

A breaker guards one target the client addresses (one instance's endpoint, or one endpoint's
queue group). It counts outcomes in a rolling window of buckets; when at least
``min_requests`` calls ended in the window and the share of failures reaches
``failure_rate``, it opens: calls fail fast for ``open_s``. Then it half-opens and lets
``half_open_calls`` trial calls through; if they all succeed it closes, if one fails it opens
again for another ``open_s``.

Buckets, not a list of outcomes: memory and work per call stay constant at any request rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, kw_only=True)
class BreakerConfig:
    """When a breaker opens and for how long. Validated once, at construction."""

    #: Share of failed calls in the window that opens the breaker.
    failure_rate: float = 0.5
    #: Length of the rolling window the rate is measured over.
    window_s: float = 10.0
    #: Fewer calls than this in the window never open the breaker: two failures out of
    #: two calls is no evidence yet.
    min_requests: int = 10
    #: How long an open breaker fails fast before letting trial calls through.
    open_s: float = 5.0
    #: Trial calls allowed at once while half-open; all must succeed to close.
    half_open_calls: int = 1
    #: Buckets the window is divided into: the rate forgets old outcomes in steps of
    #: ``window_s / buckets``.
    buckets: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate <= 1:
            raise ConfigError(f"failure_rate must be in (0, 1], got {self.failure_rate}")
        if self.window_s <= 0 or self.open_s <= 0:
            raise ConfigError("window_s and open_s must be > 0")
        if self.min_requests < 1 or self.half_open_calls < 1 or self.buckets < 1:
            raise ConfigError("min_requests, half_open_calls and buckets must be >= 1")


class Breaker:
    """One circuit breaker. Call :meth:`allow` before a call and :meth:`record` after it."""

    __slots__ = (
        "_bucket_s",
        "_clock",
        "_counts",
        "_epoch",
        "_trials",
        "config",
        "retry_at",
        "state",
    )

    def __init__(
        self, config: BreakerConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or BreakerConfig()
        self._clock = clock
        self._bucket_s = self.config.window_s / self.config.buckets
        # One [calls, failures] pair per bucket; _epoch is the index of the newest bucket.
        self._counts = [[0, 0] for _ in range(self.config.buckets)]
        self._epoch = self._epoch_now()
        self.state: BreakerState = "closed"
        self.retry_at = 0.0  # pragma: no mutate (equivalent: read only once open, _open sets it)
        self._trials = 0  # pragma: no mutate (equivalent: read only half-open, allow resets it)

    def allow(self) -> bool:
        """Whether a call may go now. While half-open this takes one of the trial slots."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self._clock() < self.retry_at:
                return False
            self.state = "half_open"
            self._trials = 0
        if self._trials >= self.config.half_open_calls:
            return False
        self._trials += 1
        return True

    @property
    def reported(self) -> BreakerState:
        """The state as metrics and stats show it: an open breaker whose ``open_s`` has run
        out lets the next call through, so it reads half-open though no call has tried it
        yet (an open breaker nobody calls would otherwise read open for ever)."""
        if self.state == "open" and self._clock() >= self.retry_at:
            return "half_open"
        return self.state

    def available(self) -> bool:
        """Whether :meth:`allow` would let a call through, without taking a trial slot."""
        if self.state == "closed":
            return True
        if self.state == "open":
            return self._clock() >= self.retry_at
        return self._trials < self.config.half_open_calls

    def record(self, ok: bool) -> None:
        """The outcome of a call that :meth:`allow` let through."""
        if self.state == "half_open":
            if ok:
                self._trials -= 1
                if self._trials <= 0:
                    self._close()
            else:
                self._open()
            return
        if self.state == "open":
            # A call that started before the breaker opened; its outcome changes nothing.
            return
        bucket = self._bucket()
        bucket[0] += 1
        if not ok:
            bucket[1] += 1
            calls, failures = self.totals()
            if calls >= self.config.min_requests and failures >= calls * self.config.failure_rate:
                self._open()

    def release(self) -> None:
        """A call :meth:`allow` let through ended with no verdict on the target (the
        connection closed, say): give its trial slot back."""
        if self.state == "half_open":
            self._trials = max(0, self._trials - 1)

    def totals(self) -> tuple[int, int]:
        """Calls and failures counted in the current window."""
        self._advance()
        return sum(c[0] for c in self._counts), sum(c[1] for c in self._counts)

    def snapshot(self) -> dict[str, object]:
        """State for stats and the CLI: state, calls and failures in the window, retry time."""
        calls, failures = self.totals()
        state = self.reported
        out: dict[str, object] = {"state": state, "calls": calls, "failures": failures}
        if state != "closed":
            out["retry_in_s"] = round(max(0.0, self.retry_at - self._clock()), 3)
        return out

    def _open(self) -> None:
        self.state = "open"
        self.retry_at = self._clock() + self.config.open_s

    def _close(self) -> None:
        self.state = "closed"
        # A fresh window: the failures that opened the breaker must not reopen it at once.
        for c in self._counts:
            c[0] = c[1] = 0

    def _bucket(self) -> list[int]:
        self._advance()
        return self._counts[self._epoch % self.config.buckets]

    def _epoch_now(self) -> int:
        return int(self._clock() // self._bucket_s)

    def _advance(self) -> None:
        epoch = self._epoch_now()
        if epoch == self._epoch:
            return
        # Clear the buckets that fell out of the window since the last call (all of them
        # after a long quiet spell).
        for e in range(self._epoch + 1, min(epoch, self._epoch + self.config.buckets) + 1):
            c = self._counts[e % self.config.buckets]
            c[0] = c[1] = 0
        self._epoch = epoch
