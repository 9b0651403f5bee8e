"""The one Prometheus collector of natsreg: reads the figures of every live role when scraped.

Each role counts on its own objects (:mod:`natsreg._figures`); this module turns them into
metric families only when Prometheus asks, so a request pays for none of it. Series with the
same labels from several objects of one role (two instances of one service in a process, two
clients calling the same endpoint) are summed. Every metric is listed in docs/operations.md,
"Metrics".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from nats.aio.client import Client as NATS
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import _figures, _probes

if TYPE_CHECKING:
    from .bridge._app import Bridge as _Bridge
    from .client._routing import Router as _Router
    from .registry import Registry as _Registry
    from .service._endpoints import Endpoints as _Endpoints

__all__ = ["NatsregCollector"]

_Labels = tuple[str, ...]


class _Role(Protocol):
    """What every role in :data:`natsreg._figures.LIVE` tells of its state."""

    @property
    def nc(self) -> NATS: ...

    def readiness(self) -> str | None: ...


class NatsregCollector(Collector):
    """Every natsreg role running in this process, as Prometheus metric families."""

    def __init__(self, live: _figures.Live = _figures.LIVE) -> None:
        self._live = live

    def collect(self) -> Iterator[Metric]:
        live = self._live
        # list(): a WeakSet may lose a member while it is walked. A role with nothing
        # running adds no family.
        if services := list(live.services):
            yield from _service(services)
        if clients := list(live.clients):
            yield from _client(clients)
        if registries := list(live.registries):
            yield from _registry(registries)
        if bridges := list(live.bridges):
            yield from _bridge(bridges)
        # A closed client is a role that has ended, not one that is unready: it stays in
        # LIVE until it is garbage-collected.
        clients = [c for c in clients if not c.closed]
        yield from _states(
            {"registry": registries, "service": services, "client": clients, "bridge": bridges}
        )


def _counter(name: str, doc: str, labels: _Labels, values: Counter[_Labels]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(key, value)
    return family


def _gauge(name: str, doc: str, labels: _Labels, values: Counter[_Labels]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(key, value)
    return family


def _histogram(
    name: str, doc: str, labels: _Labels, values: dict[_Labels, _figures.Latency]
) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for key, latency in sorted(values.items()):
        family.add_metric(key, latency.cumulative(), latency.sum_s)
    return family


def _summed(
    values: dict[_Labels, _figures.Latency], key: _Labels, latency: _figures.Latency
) -> None:
    total = values.get(key)
    if total is None:
        total = values[key] = _figures.Latency()
    total.add(latency)


# -- every role ---------------------------------------------------------------------------------


def _states(roles: dict[str, Sequence[_Role]]) -> Iterator[Metric]:
    # Per role, not per object: the flags of several objects of one role in a process (two
    # instances of a service) are 1 only when every one's is, so the labels stay bounded.
    ready: Counter[_Labels] = Counter()
    connected: Counter[_Labels] = Counter()
    for role, objects in roles.items():
        if objects:
            ready[(role,)] = int(all(o.readiness() is None for o in objects))
            connected[(role,)] = int(all(_probes.nats_problem(o.nc) is None for o in objects))
    if not ready:
        return
    yield _gauge(
        "natsreg_ready",
        "1 while every running object of the role is ready, as /readyz says; 0 otherwise.",
        ("role",),
        ready,
    )
    yield _gauge(
        "natsreg_nats_connected",
        "1 while the NATS connection of every running object of the role is up.",
        ("role",),
        connected,
    )


# -- service ---------------------------------------------------------------------------------


def _service(services: Iterable[_Endpoints]) -> Iterator[Metric]:
    requests: Counter[_Labels] = Counter()
    errors: Counter[_Labels] = Counter()
    durations: dict[_Labels, _figures.Latency] = {}
    in_flight: Counter[_Labels] = Counter()
    queued: Counter[_Labels] = Counter()
    draining: Counter[_Labels] = Counter()
    drains: Counter[_Labels] = Counter()
    events: Counter[_Labels] = Counter()
    lags: Counter[_Labels] = Counter()
    for instance in services:
        name = instance.service
        for event_type, counts in instance.event_counts().items():
            for outcome, n in counts.items():
                events[(name, event_type, outcome)] += n
        for event_type, lag in instance.event_lags().items():
            # Instances of one service in one process see the same consumer: the largest
            # figure, as an instance whose fetch found nothing may only be held back by the
            # others' unacknowledged events.
            lags[(name, event_type)] = max(lags[(name, event_type)], lag)
        for endpoint in list(instance.table.values()):
            for outcome, n in endpoint.outcomes.items():
                requests[(name, endpoint.name, outcome)] += n
            for code, n in list(endpoint.codes.items()):
                errors[(name, endpoint.name, code)] += n
            _summed(durations, (name, endpoint.name), endpoint.latency)
        in_flight[(name,)] += instance.in_flight
        queued[(name,)] += instance.queued
        draining[(name,)] = max(draining[(name,)], int(instance.draining))
        drains[(name,)] += instance.drains
    yield _counter(
        "natsreg_service_requests_total",
        "Requests an endpoint took, by how they ended.",
        ("service", "endpoint", "outcome"),
        requests,
    )
    yield _counter(
        "natsreg_service_errors_total",
        "Error replies by error code (overloaded and expired requests included).",
        ("service", "endpoint", "code"),
        errors,
    )
    yield _histogram(
        "natsreg_service_request_duration_seconds",
        "How long a request took from the start of its handler to its reply.",
        ("service", "endpoint"),
        durations,
    )
    yield _gauge("natsreg_service_in_flight", "Handlers running now.", ("service",), in_flight)
    yield _gauge(
        "natsreg_service_queued",
        "Requests waiting for a free handler slot (max_in_flight).",
        ("service",),
        queued,
    )
    yield _gauge(
        "natsreg_service_draining",
        "1 while an instance finishes its requests before it stops.",
        ("service",),
        draining,
    )
    yield _counter(
        "natsreg_service_drains_total", "Drains begun (graceful stops).", ("service",), drains
    )
    yield _counter(
        "natsreg_service_events_total",
        "Durable events: handled (acknowledged), failed (an attempt raised), dead (dead-lettered).",
        ("service", "event", "outcome"),
        events,
    )
    yield _gauge(
        "natsreg_service_event_lag",
        "Durable events stored for the service that no instance has taken yet, as of this "
        "process's last fetch.",
        ("service", "event"),
        lags,
    )


# -- client ----------------------------------------------------------------------------------


def _client(routers: Iterable[_Router]) -> Iterator[Metric]:
    requests: Counter[_Labels] = Counter()
    durations: dict[_Labels, _figures.Latency] = {}
    retries: Counter[_Labels] = Counter()
    bulkhead: Counter[_Labels] = Counter()
    no_instance: Counter[_Labels] = Counter()
    breaker_open: Counter[_Labels] = Counter()
    breaker_state: Counter[_Labels] = Counter()
    for router in routers:
        known = set()
        for calls in list(router.calls.values()):
            service, endpoint = calls.service, calls.endpoint
            known.add(service)
            outcomes = calls.outcomes()
            for outcome, n in outcomes.items():
                requests[(service, endpoint, outcome)] += n
            _summed(durations, (service, endpoint), calls.latency)
            retries[(service, endpoint)] += calls.retries
            bulkhead[(service,)] += calls.bulkhead
            no_instance[(service,)] += outcomes["no_instance"]
            breaker_open[(service,)] += 0
        owners = router.breaker_services
        for (target, endpoint), breaker in list(router.breakers.items()):
            state = breaker.reported
            if state == "closed":
                continue
            # Only services this client has series for: a breaker opened by calls to made-up
            # names is counted, but under OTHER, so it adds no series.
            service = owners.get((target, endpoint), _figures.OTHER)
            if service not in known:
                service = _figures.OTHER
            if state == "open":
                breaker_open[(service,)] += 1
            breaker_state[(service, f"{target}/{endpoint}", state)] = 1
    yield _counter(
        "natsreg_client_requests_total",
        "Calls made with Client.request, by how they ended (retries included in one call).",
        ("service", "endpoint", "outcome"),
        requests,
    )
    yield _histogram(
        "natsreg_client_request_duration_seconds",
        "How long a call took, retries included (calls rejected before sending excluded).",
        ("service", "endpoint"),
        durations,
    )
    yield _counter(
        "natsreg_client_retries_total",
        "Attempts after the first of a call.",
        ("service", "endpoint"),
        retries,
    )
    yield _gauge(
        "natsreg_client_breaker_open",
        "Targets (instance endpoints, queue groups) whose circuit breaker is open now.",
        ("service",),
        breaker_open,
    )
    yield _gauge(
        "natsreg_client_breaker_state",
        "1 for each target whose circuit breaker is not closed, labelled with its state.",
        ("service", "target", "state"),
        breaker_state,
    )
    yield _counter(
        "natsreg_client_bulkhead_rejections_total",
        "Calls refused because max_in_flight calls to the service were already in flight.",
        ("service",),
        bulkhead,
    )
    yield _counter(
        "natsreg_client_no_instance_total",
        "Calls that ended with no instance to serve them.",
        ("service",),
        no_instance,
    )


# -- registry --------------------------------------------------------------------------------


def _registry(registries: Iterable[_Registry]) -> Iterator[Metric]:
    # Several nodes in one process see the same fleet: figures are per node, so they are
    # summed for counters and the highest is taken for flags (one exposition per process).
    instances: Counter[_Labels] = Counter()
    messages: Counter[_Labels] = Counter()
    dropped: Counter[_Labels] = Counter()
    expiries: Counter[_Labels] = Counter()
    flags: Counter[_Labels] = Counter()
    queries: dict[_Labels, _figures.Latency] = {}
    revision = 0
    for node in registries:
        listing = node.service_list()
        for summary in listing.services:
            for health, n in summary.health.items():
                key = (summary.name, summary.version, health)
                instances[key] = max(instances[key], n)
        _add(messages, node.messages)
        _add(dropped, node.dropped)
        _add(expiries, node.expiries)
        flags[("mass",)] = max(flags[("mass",)], int(listing.mass_expiry is not None))
        flags[("warming",)] = max(flags[("warming",)], int(node.warming_up))
        revision = max(revision, node.revision)
        for kind, latency in node.query_latency().items():
            _summed(queries, (kind,), latency)
    yield _gauge(
        "natsreg_registry_instances",
        "Instances the node lists, by service, version and health.",
        ("service", "version", "health"),
        instances,
    )
    yield _counter(
        "natsreg_registry_messages_total",
        "Control messages received from instances, by kind.",
        ("kind",),
        messages,
    )
    yield _counter(
        "natsreg_registry_dropped_total",
        "Messages and queries the node refused, by reason.",
        ("reason",),
        dropped,
    )
    yield _counter(
        "natsreg_registry_expiries_total",
        "Instances removed from the view, by reason.",
        ("reason",),
        expiries,
    )
    yield _flag(
        "natsreg_registry_mass_expiry", "1 while a mass-expiry alert stands.", flags, "mass"
    )
    yield _flag(
        "natsreg_registry_warming",
        "1 while the node warms up (it does not answer queries as a warm node yet).",
        flags,
        "warming",
    )
    family = GaugeMetricFamily(
        "natsreg_registry_revision", "The node's revision: it grows by one per change."
    )
    family.add_metric((), revision)
    yield family
    yield _histogram(
        "natsreg_registry_query_duration_seconds",
        "How long the node took to answer a query, by kind of query.",
        ("query",),
        queries,
    )


def _add(total: Counter[_Labels], counts: Counter[str]) -> None:
    for key, n in list(counts.items()):
        total[(key,)] += n


def _flag(name: str, doc: str, flags: Counter[_Labels], key: str) -> Metric:
    family = GaugeMetricFamily(name, doc)
    family.add_metric((), flags[(key,)])
    return family


# -- bridge ----------------------------------------------------------------------------------


def _bridge(bridges: Iterable[_Bridge]) -> Iterator[Metric]:
    requests: Counter[_Labels] = Counter()
    durations: dict[_Labels, _figures.Latency] = {}
    refused: Counter[_Labels] = Counter()
    in_flight = streams = dropped = 0
    for app in bridges:
        for route, responses in list(app.routes.items()):
            for status, n in list(responses.statuses.items()):
                requests[(route, str(status))] += n
            _summed(durations, (route,), responses.latency)
        _add(refused, app.refused)
        in_flight += app.in_flight
        streams += app.event_streams.open
        dropped += app.event_streams.dropped
    yield _counter(
        "natsreg_bridge_requests_total",
        "HTTP requests, by route pattern ('default': /service/endpoint) and status.",
        ("route", "status"),
        requests,
    )
    yield _histogram(
        "natsreg_bridge_request_duration_seconds",
        "How long the bridge took to answer an HTTP request, by route.",
        ("route",),
        durations,
    )
    family = GaugeMetricFamily("natsreg_bridge_in_flight", "HTTP requests being handled now.")
    family.add_metric((), in_flight)
    yield family
    yield _counter(
        "natsreg_bridge_refused_total",
        "Requests the bridge answered itself, without sending them to NATS, by reason.",
        ("reason",),
        refused,
    )
    family = GaugeMetricFamily(
        "natsreg_bridge_event_streams", "Dashboard event streams (/_natsreg/events) open now."
    )
    family.add_metric((), streams)
    yield family
    yield _counter(
        "natsreg_bridge_event_streams_dropped",
        "Event streams dropped because their client read too slowly.",
        (),
        Counter({(): dropped}),
    )
