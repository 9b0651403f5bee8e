"""What the dashboard shows of the fleet, as pure state: the figures of one refresh
(:class:`FleetUpdate`) and the request rate, error rate and latency of each service, from the
difference between two rounds of ADR-32 ``$SRV.STATS`` replies (:class:`Rates`).

``$SRV.STATS`` is what every service answers, natsreg's and plain ADR-32 ones alike; its
counters only grow, so two rounds a few seconds apart give the figures of those seconds.
Any reply may be forged: only instances the registry's view lists are counted, each under the
service the view names, once per round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import msgspec

from .. import wire

__all__ = ["FleetUpdate", "Rates", "ServiceRates", "replay"]


class ServiceRates(msgspec.Struct, gc=False, kw_only=True):
    """One service's figures between the last two rounds, summed over its instances."""

    requests_per_s: float
    errors_per_s: float
    #: Mean time to handle a request, in milliseconds; None when none was handled.
    latency_ms: float | None


class FleetUpdate(msgspec.Struct, gc=False, kw_only=True):
    """One refresh of the dashboard: the registry's view and the figures beside it."""

    instances: list[wire.InstanceView] = []
    #: The view came from a registry node still warming up (it may miss instances).
    warming_up: bool = False
    #: Registry nodes that said they are warming up.
    warming_nodes: list[str] = []
    mass_expiry: wire.MassExpiry | None = None
    #: Per service name, from ``$SRV.STATS`` (absent until two rounds were heard).
    rates: dict[str, ServiceRates] = {}
    #: Why there is no view, when the registry could not be asked ("" when it answered).
    error: str = ""


@dataclass(slots=True)
class _Sample:
    at: float
    requests: int
    errors: int
    processing_ns: int


class Rates:
    """Per-service rates from successive rounds of ``$SRV.STATS`` replies."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, _Sample] = {}

    def update(
        self, stats: Iterable[wire.SrvStats], known: Mapping[str, str]
    ) -> dict[str, ServiceRates]:
        """Take one round of replies; ``known`` maps the ids of the instances the registry
        lists to their service names. The figures of each service since the last round."""
        now = self._clock()
        samples: dict[str, _Sample] = {}
        for reply in stats:
            if known.get(reply.id) != reply.name or reply.id in samples:
                continue
            samples[reply.id] = _Sample(
                now,
                sum(max(e.num_requests, 0) for e in reply.endpoints),
                sum(max(e.num_errors, 0) for e in reply.endpoints),
                sum(max(e.processing_time, 0) for e in reply.endpoints),
            )
        # Per service: requests/s, errors/s, processing time and requests handled, summed
        # over the instances heard in both rounds.
        sums: dict[str, list[float]] = {}
        for instance_id, sample in samples.items():
            last = self._last.get(instance_id)
            if last is None or sample.at <= last.at or sample.requests < last.requests:
                continue  # first heard, or its counters went back: nothing to compare yet
            seconds = sample.at - last.at
            handled = sample.requests - last.requests
            total = sums.setdefault(known[instance_id], [0.0, 0.0, 0.0, 0.0])
            total[0] += handled / seconds
            total[1] += max(sample.errors - last.errors, 0) / seconds
            total[2] += max(sample.processing_ns - last.processing_ns, 0)
            total[3] += handled
        # Instances not heard this round are forgotten: a reply lost once costs one round.
        self._last = samples
        return {
            name: ServiceRates(
                requests_per_s=round(requests_per_s, 3),
                errors_per_s=round(errors_per_s, 3),
                latency_ms=round(time_ns / handled / 1e6, 3) if handled else None,
            )
            for name, (requests_per_s, errors_per_s, time_ns, handled) in sums.items()
        }


def replay(
    instances: Iterable[wire.InstanceView], events: Iterable[wire.Event]
) -> list[wire.InstanceView]:
    """``instances`` (a registry snapshot) with ``events`` (heard lately, in order) applied
    where they are newer than what the snapshot holds of their instance.

    The snapshot may have been taken before an event that reached the bridge first: without
    this, a refresh would bring back for a moment an instance whose ``down`` was shown, or
    hide one whose ``up`` was. An instance's sequence number orders the two; a ``down``
    carries the last one the instance sent, so a snapshot from before it holds no newer one.
    """
    held = {view.id: view for view in instances}
    for event in events:
        view = event.instance
        old = held.get(view.id)
        if old is not None and old.seq > view.seq:
            continue
        if event.kind == "down":
            held.pop(view.id, None)
        else:
            held[view.id] = view
    return list(held.values())
