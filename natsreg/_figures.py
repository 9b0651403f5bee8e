"""The figures each role counts on its request path for Prometheus, and the roles running now.

Recording is plain arithmetic on objects the role already holds: no lock, no label
lookup in a metrics library, nothing formatted. :mod:`natsreg._collector` reads these figures
when Prometheus scrapes, from the roles in :data:`LIVE`, which hold them only while they run
(weakly: a client or bridge that is dropped without being closed leaves by itself).

``NATSREG_METRICS=0`` in the environment when a role is built turns its recording off and keeps
it out of the exposition (docs/operations.md, "Metrics").
"""

from __future__ import annotations

import os
import weakref
from bisect import bisect_left
from typing import TYPE_CHECKING, Final

from .errors import (
    BulkheadFullError,
    CircuitOpenError,
    NoInstanceError,
    NotConnectedError,
    OutcomeUnknownError,
    OverloadedError,
    RequestTimeoutError,
    ServiceError,
)

if TYPE_CHECKING:
    from .bridge._app import Bridge
    from .client._routing import Router
    from .registry import Registry
    from .service._endpoints import Endpoints

__all__ = [
    "BUCKETS_S",
    "CLIENT_OUTCOMES",
    "LIVE",
    "MAX_CALL_SERIES",
    "OTHER",
    "CallFigures",
    "Latency",
    "Live",
    "Responses",
    "call_figures",
    "client_outcome",
    "enabled",
]

#: Histogram bucket bounds, in seconds: from half a millisecond (a loopback call) to 10 s (a
#: caller's default budget is 5 s).
BUCKETS_S: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: At most this many (service, endpoint) label pairs per client: a caller that requests
#: made-up subjects (the bridge forwards whatever paths it is sent) must not grow the
#: exposition without bound. Beyond it, calls are counted under :data:`OTHER`. A pair is ~30
#: series (outcomes, histogram buckets, per-service counters): 256 keep a scanner-fed bridge's
#: exposition under ~8,000 series, far more pairs than a real caller uses.
MAX_CALL_SERIES: Final = 256
#: The label value of what is counted beyond a cap.
OTHER: Final = "_other"


def enabled() -> bool:
    """Whether a role built now records and exposes metrics (``NATSREG_METRICS`` is not 0)."""
    return os.environ.get("NATSREG_METRICS", "1").strip().lower() not in ("0", "false", "off", "no")


class Latency:
    """A histogram of durations over :data:`BUCKETS_S`: a count per bucket (not cumulative;
    the last is +Inf) and the sum, in seconds."""

    __slots__ = ("counts", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a duration equal to a bound belongs to that bound's bucket (``le``).
        self.counts[bisect_left(BUCKETS_S, seconds)] += 1
        self.sum_s += seconds

    def add(self, other: Latency) -> None:
        """Add ``other``'s observations to this one (to sum series with the same labels)."""
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.sum_s += other.sum_s

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as Prometheus wants them: cumulative, ending with +Inf."""
        total = 0
        buckets = []
        for bound, n in zip((*map(_float, BUCKETS_S), "+Inf"), self.counts, strict=True):
            total += n
            buckets.append((bound, float(total)))
        return buckets


def _float(bound: float) -> str:
    return repr(float(bound))


#: How a client's call ended (the ``outcome`` label; docs/operations.md, "Metrics").
CLIENT_OUTCOMES: Final = (
    "ok",
    "error",
    "overloaded",
    "timeout",
    "no_instance",
    "rejected",
    "outcome_unknown",
    "not_connected",
)


class CallFigures:
    """What one client's calls to one ``service.endpoint`` came to."""

    __slots__ = ("bulkhead", "endpoint", "failures", "latency", "ok", "retries", "service")

    def __init__(self, service: str, endpoint: str) -> None:
        self.service = service
        self.endpoint = endpoint
        # Successes apart, in a slot: an attribute costs a call half what a dict entry does.
        self.ok = 0
        #: Calls that failed, by outcome (every outcome but ``ok``).
        self.failures = dict.fromkeys(CLIENT_OUTCOMES[1:], 0)
        #: Calls that went out (not rejected), from the call to its end, retries included.
        self.latency = Latency()
        #: Attempts after the first.
        self.retries = 0
        #: Calls refused because the client's bulkhead for the service was full.
        self.bulkhead = 0

    def outcomes(self) -> dict[str, int]:
        """Calls by outcome, every outcome of :data:`CLIENT_OUTCOMES` included."""
        return {"ok": self.ok, **self.failures}


class Responses:
    """What a bridge answered on one route: a count per HTTP status, and the durations."""

    __slots__ = ("latency", "statuses")

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.latency = Latency()


def call_figures(
    table: dict[str, CallFigures], subject: str, service: str | None, endpoint: str | None
) -> CallFigures:
    """The figures of calls to ``subject`` in ``table``, made on first use; past
    :data:`MAX_CALL_SERIES` subjects, the shared figures of :data:`OTHER`."""
    figures = table.get(subject)
    if figures is None:
        if len(table) >= MAX_CALL_SERIES:
            figures = table.get(OTHER)
            if figures is None:
                figures = table[OTHER] = CallFigures(OTHER, OTHER)
            return figures
        # A plain subject (not ``service.endpoint``) is labelled by itself.
        figures = table[subject] = CallFigures(service or subject, endpoint or "")
    return figures


def client_outcome(exc: BaseException) -> str:
    """The ``outcome`` label of a call that raised ``exc``."""
    match exc:
        case OverloadedError():
            return "overloaded"
        case ServiceError():
            return "error"
        case RequestTimeoutError():
            return "timeout"
        case NoInstanceError():
            return "no_instance"
        case CircuitOpenError() | BulkheadFullError():
            return "rejected"
        case OutcomeUnknownError():
            return "outcome_unknown"
        case NotConnectedError():
            return "not_connected"
    return "error"


class Live:
    """The roles running in this process, one weak set per role; the collector reads them."""

    def __init__(self) -> None:
        #: Each running service instance's request path, from announce until it has drained.
        self.services: weakref.WeakSet[Endpoints] = weakref.WeakSet()
        #: Each client's router, from its construction on (a client has no end but its last
        #: reference: it still calls after ``aclose``).
        self.clients: weakref.WeakSet[Router] = weakref.WeakSet()
        #: Each registry node, while its ``async with`` block runs.
        self.registries: weakref.WeakSet[Registry] = weakref.WeakSet()
        #: Each bridge application, from its construction on (it starts nothing to stop).
        self.bridges: weakref.WeakSet[Bridge] = weakref.WeakSet()


#: Every role object running in this process.
LIVE: Final = Live()
