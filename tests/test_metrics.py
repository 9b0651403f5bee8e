"""Prometheus metrics of each role: the figures after known traffic, read from the exposition
text as Prometheus would scrape it, and promtool's verdict on that text."""

from __future__ import annotations

import asyncio
import gc
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import natsreg
from natsreg import _figures, bridge, metrics, subjects
from natsreg._collector import NatsregCollector
from natsreg.bridge import BridgeConfig, Route
from natsreg.client._breaker import BreakerState
from natsreg.errors import (
    BUDGET_HEADER,
    BulkheadFullError,
    CircuitOpenError,
    NoInstanceError,
    OutcomeUnknownError,
    OverloadedError,
    RequestTimeoutError,
    ServiceError,
)
from natsreg.testing import NatsServer
from tests.helpers import eventually, read_id, require_tool, start_service, until_warm

SYS_ACCOUNTS = Path(__file__).with_name("sys-accounts.conf")

# -- reading the exposition ------------------------------------------------------------------


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: bytes) -> Samples:
    """Each sample name in an exposition text, with its labels and values."""
    found: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def scrape() -> Samples:
    """What Prometheus would read from this process now."""
    return parse(metrics.exposition())


def exposition_of(live: _figures.Live) -> bytes:
    """What a process running only ``live``'s roles would expose."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NatsregCollector(live))
    return generate_latest(registry)


def value(name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(
        v for have, v in scrape().get(name, []) if all(have.get(k) == w for k, w in labels.items())
    )


def has_series(name: str, **labels: str) -> bool:
    return any(
        all(have.get(k) == w for k, w in labels.items()) for have, _ in scrape().get(name, [])
    )


# -- the rules, without a server -------------------------------------------------------------


@pytest.mark.pure
def test_a_duration_on_a_bound_is_counted_in_that_bucket_and_buckets_add_up() -> None:
    latency = _figures.Latency()
    for seconds in (0.0004, 0.001, 0.0011, 20.0):
        latency.observe(seconds)
    buckets = dict(latency.cumulative())
    assert buckets["0.0005"] == 1  # le: 0.0004 only
    assert buckets["0.001"] == 2  # 0.001 is on the bound: counted there
    assert buckets["0.0025"] == 3
    assert buckets["10.0"] == 3 and buckets["+Inf"] == 4
    assert latency.sum_s == pytest.approx(20.0025)
    total = _figures.Latency()
    total.add(latency)
    total.add(latency)
    assert dict(total.cumulative())["+Inf"] == 8


@pytest.mark.pure
def test_calls_to_more_subjects_than_the_cap_share_one_series() -> None:
    table: dict[str, _figures.CallFigures] = {}
    for n in range(_figures.MAX_CALL_SERIES):
        _figures.call_figures(table, f"s{n}.e", f"s{n}", "e")
    beyond = _figures.call_figures(table, "made-up.x", "made-up", "x")
    assert (beyond.service, beyond.endpoint) == (_figures.OTHER, _figures.OTHER)
    assert _figures.call_figures(table, "another.y", "another", "y") is beyond
    assert _figures.call_figures(table, "s7.e", "s7", "e").service == "s7"  # known: its own
    plain = _figures.call_figures({}, "a.b.c", None, None)
    assert (plain.service, plain.endpoint) == ("a.b.c", "")


@pytest.mark.pure
def test_each_failure_of_a_call_has_its_outcome() -> None:
    outcome = _figures.client_outcome
    assert outcome(OverloadedError()) == "overloaded"
    assert outcome(ServiceError("x", code=404)) == "error"
    assert outcome(RequestTimeoutError("x")) == "timeout"
    assert outcome(NoInstanceError("x")) == "no_instance"
    assert outcome(BulkheadFullError("x")) == "rejected"
    assert outcome(CircuitOpenError("x", retry_at=0, retry_in_s=0)) == "rejected"
    assert outcome(OutcomeUnknownError("x")) == "outcome_unknown"
    assert set(_figures.CLIENT_OUTCOMES) >= {"ok", "error", "not_connected"}


@pytest.mark.pure
@pytest.mark.parametrize(
    ("setting", "on"), [(None, True), ("1", True), ("0", False), ("off", False)]
)
def test_natsreg_metrics_in_the_environment_turns_recording_off(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, on: bool
) -> None:
    if setting is None:
        monkeypatch.delenv("NATSREG_METRICS", raising=False)
    else:
        monkeypatch.setenv("NATSREG_METRICS", setting)
    assert _figures.enabled() is on


@pytest.mark.pure
def test_two_clients_calling_one_endpoint_make_one_series_holding_both_counts() -> None:
    live = _figures.Live()
    for calls in (3, 4):
        router = natsreg.Client(NATS())._router  # never connected: no call is sent
        live.clients.add(router)
        figures = _figures.call_figures(router.calls, "svc.ok", "svc", "ok")
        figures.ok += calls
        figures.latency.observe(0.002)
    found = parse(exposition_of(live))
    ok = [(labels, v) for labels, v in found["natsreg_client_requests_total"] if v]
    assert ok == [({"service": "svc", "endpoint": "ok", "outcome": "ok"}, 7.0)]
    assert found["natsreg_client_request_duration_seconds_count"] == [
        ({"service": "svc", "endpoint": "ok"}, 2.0)
    ]


@pytest.mark.pure
def test_an_open_breaker_of_a_service_without_series_is_counted_under_other() -> None:
    router = natsreg.Client(NATS())._router
    _figures.call_figures(router.calls, "svc.ok", "svc", "ok")
    chooser = router._chooser

    def breaker(target: str, endpoint: str, service: str, state: BreakerState) -> None:
        made = chooser.breaker_for(target, endpoint, service, instance=target != "queue")
        made.state = state
        made.retry_at = time.monotonic() + 60  # open for a minute more, not yet half-open

    breaker("queue", "svc.ok", "svc", "open")
    breaker("instance-1", "ok", "svc", "half_open")
    breaker("queue", "made-up.x", "made-up", "open")  # no call counted for it
    breaker("queue", "svc.closed", "svc", "closed")  # closed: no state series
    live = _figures.Live()
    live.clients.add(router)
    found = parse(exposition_of(live))
    assert {labels["service"]: v for labels, v in found["natsreg_client_breaker_open"]} == {
        "svc": 1.0,
        "_other": 1.0,
    }
    states = {
        (labels["service"], labels["target"], labels["state"])
        for labels, _ in found["natsreg_client_breaker_state"]
    }
    assert states == {
        ("svc", "queue/svc.ok", "open"),
        ("svc", "instance-1/ok", "half_open"),
        ("_other", "queue/made-up.x", "open"),
    }


# -- roles at work ---------------------------------------------------------------------------


def counting_service(nc: NATS, name: str, prefix: str, **settings: object) -> natsreg.Instance:
    """``ok`` answers, ``fail`` raises the code it is sent, ``hold`` waits for ``release``."""
    svc = natsreg.announce(nc, name, version="1.2.0", prefix=prefix, **settings)  # type: ignore[arg-type]
    release = asyncio.Event()
    svc.state.release = release

    @svc.endpoint("ok")
    async def ok(req: natsreg.Request) -> str:
        return "ok"

    @svc.endpoint("fail")
    async def fail(req: natsreg.Request) -> None:
        raise ServiceError("refused", code=int(req.data or b"409"))

    @svc.endpoint("hold")
    async def hold(req: natsreg.Request) -> str:
        await release.wait()
        return "held"

    return svc


async def test_a_service_counts_requests_by_outcome_code_and_duration_until_it_has_drained(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"svc-{unique}"
    svc = counting_service(nc, name, prefix, max_in_flight=1, max_queued=0)
    labels = {"service": name}
    served, leave = asyncio.Event(), asyncio.Event()

    async def serve() -> None:
        async with svc:
            served.set()
            await leave.wait()

    serving = asyncio.ensure_future(serve())
    await served.wait()
    for _ in range(8):
        await nc.request(f"{name}.ok", b"", timeout=2)
    for _ in range(2):
        await nc.request(f"{name}.fail", b"409", timeout=2)
    # The caller's budget is spent: the handler is not started.
    await nc.request(f"{name}.ok", b"", timeout=2, headers={BUDGET_HEADER: "0"})
    held = asyncio.ensure_future(nc.request(f"{name}.hold", b"", timeout=5))
    await eventually(lambda: value("natsreg_service_in_flight", **labels) == 1)
    # One handler slot, no queue: refused at once.
    await nc.request(f"{name}.ok", b"", timeout=2)
    requests = "natsreg_service_requests_total"
    assert value(requests, endpoint="ok", outcome="ok", **labels) == 8
    assert value(requests, endpoint="fail", outcome="error", **labels) == 2
    assert value(requests, endpoint="ok", outcome="expired", **labels) == 1
    assert value(requests, endpoint="ok", outcome="overloaded", **labels) == 1
    errors = "natsreg_service_errors_total"
    assert value(errors, endpoint="fail", code="409", **labels) == 2
    assert value(errors, endpoint="ok", code="504", **labels) == 1
    assert value(errors, endpoint="ok", code="503", **labels) == 1
    durations = "natsreg_service_request_duration_seconds_count"
    assert value(durations, endpoint="ok", **labels) == 9  # the refused one never ran
    assert value(durations, endpoint="fail", **labels) == 2
    assert value("natsreg_service_draining", **labels) == 0
    # Stopping drains the held request; the instance is still exposed meanwhile.
    leave.set()
    await eventually(lambda: value("natsreg_service_draining", **labels) == 1)
    assert value("natsreg_service_drains_total", **labels) == 1
    svc.state.release.set()
    assert (await held).data == b"held"
    await serving
    assert not has_series("natsreg_service_requests_total", **labels)


async def test_a_client_counts_calls_by_outcome_with_retries_rejections_and_breakers(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"svc-{unique}"
    client = natsreg.Client(
        nc,
        prefix=prefix,
        timeout_s=2,
        max_in_flight=1,
        breaker=natsreg.BreakerConfig(min_requests=2, failure_rate=0.5, open_s=60),
    )
    labels = {"service": name}
    requests = "natsreg_client_requests_total"
    async with counting_service(nc, name, prefix) as svc:
        for _ in range(8):
            await client.request(f"{name}.ok")
        for _ in range(2):
            with pytest.raises(ServiceError):
                await client.request(f"{name}.fail", b"409")
        assert value(requests, endpoint="ok", outcome="ok", **labels) == 8
        assert value(requests, endpoint="fail", outcome="error", **labels) == 2
        assert value("natsreg_client_request_duration_seconds_count", **labels) == 10
        # One call in flight to the service at most: the second is refused unsent.
        held = asyncio.ensure_future(client.request(f"{name}.hold"))
        await eventually(lambda: value("natsreg_service_in_flight", **labels) == 1)
        with pytest.raises(BulkheadFullError):
            await client.request(f"{name}.ok")
        svc.state.release.set()
        await held
        assert value("natsreg_client_bulkhead_rejections_total", **labels) == 1
        assert value(requests, endpoint="ok", outcome="rejected", **labels) == 1
        # Two 5xx replies open the breaker of the endpoint's queue group.
        for _ in range(2):
            with pytest.raises(ServiceError):
                await client.request(f"{name}.fail", b"500")
        with pytest.raises(CircuitOpenError):
            await client.request(f"{name}.fail", b"500")
        assert value("natsreg_client_breaker_open", **labels) == 1
        assert value(
            "natsreg_client_breaker_state", target=f"queue/{name}.fail", state="open", **labels
        )
        assert value(requests, endpoint="fail", outcome="rejected", **labels) == 1
    # Nobody serves it now: each attempt finds no instance, and the call is retried.
    with pytest.raises(NoInstanceError):
        await client.request(f"{name}.ok")
    assert value(requests, endpoint="ok", outcome="no_instance", **labels) == 1
    assert value("natsreg_client_no_instance_total", **labels) == 1
    assert value("natsreg_client_retries_total", endpoint="ok", **labels) == 2
    assert value("natsreg_client_retries_total", endpoint="fail", **labels) == 0


async def test_a_registry_node_counts_messages_drops_expiries_and_queries(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"svc-{unique}"
    before = {
        key: value("natsreg_registry_messages_total", kind=key)
        for key in ("announce", "heartbeat", "goodbye")
    }
    async with natsreg.Registry(nc, prefix=prefix, discover_jitter_s=0.2):
        assert value("natsreg_registry_warming") == 1
        await until_warm(nc, prefix)
        assert value("natsreg_registry_warming") == 0
        dropped = value("natsreg_registry_dropped_total", reason="malformed")
        # A forged announcement that is no message at all: dropped and counted, nothing more.
        await nc.publish(subjects.control_subject(prefix, "announce", name, "x"), b"{not json")
        await eventually(
            lambda: value("natsreg_registry_dropped_total", reason="malformed") == dropped + 1
        )
        revision = value("natsreg_registry_revision")
        async with counting_service(nc, name, prefix, heartbeat_s=0.1):
            await eventually(
                lambda: value("natsreg_registry_instances", service=name, health="passing") == 1
            )
            assert value("natsreg_registry_instances", version="1.2.0", service=name) == 1
            await eventually(
                lambda: (
                    value("natsreg_registry_messages_total", kind="heartbeat") > before["heartbeat"]
                )
            )
            await natsreg.Client(nc, prefix=prefix).services()
            assert value("natsreg_registry_query_duration_seconds_count", query="services") >= 1
        await eventually(lambda: not has_series("natsreg_registry_instances", service=name))
        assert value("natsreg_registry_messages_total", kind="announce") > before["announce"]
        assert value("natsreg_registry_messages_total", kind="goodbye") == before["goodbye"] + 1
        assert value("natsreg_registry_expiries_total", reason="goodbye") >= 1
        assert value("natsreg_registry_revision") >= revision + 2  # up, then down
        assert value("natsreg_registry_mass_expiry") == 0
    assert not has_series("natsreg_registry_revision")


def expiries_since(before: dict[str, float]) -> dict[str, float]:
    """``natsreg_registry_expiries_total`` now less ``before``, by reason, for the reasons
    that moved (``expiries_since({})``: the counter as it stands)."""
    now = {labels["reason"]: v for labels, v in scrape().get("natsreg_registry_expiries_total", [])}
    return {
        reason: v - before.get(reason, 0) for reason, v in now.items() if v != before.get(reason, 0)
    }


async def test_an_instance_whose_heartbeats_stop_is_counted_as_expired(
    nc: NATS, nats_url: str, prefix: str, unique: str
) -> None:
    before = expiries_since({})
    async with natsreg.Registry(nc, prefix=prefix, discover_jitter_s=0.1) as node:
        with start_service(nats_url, f"frozen-{unique}", prefix) as proc:
            instance_id = read_id(proc)
            await eventually(lambda: [i.id for i in node.snapshot().instances] == [instance_id])
            # Frozen, its socket stays open: only the missing heartbeats can remove it.
            proc.send_signal(signal.SIGSTOP)
            await eventually(
                lambda: node.snapshot().instances == [], timeout_s=10, what="the expiry"
            )
            assert expiries_since(before) == {"expired": 1}


@pytest.fixture(scope="module")
def accounts_server() -> Iterator[NatsServer]:
    """A nats-server with a system account, whose disconnect advisories a node can read."""
    with NatsServer(args=("-c", str(SYS_ACCOUNTS))) as server:
        yield server


async def test_an_instance_whose_connection_closes_is_counted_as_disconnected(
    accounts_server: NatsServer, prefix: str, unique: str
) -> None:
    app = await nats.connect(accounts_server.url, user="app", password="app")
    system = await nats.connect(accounts_server.url, user="sys", password="sys")
    url = accounts_server.url.replace("nats://", "nats://app:app@")
    before = expiries_since({})
    try:
        # Ten missed heartbeats: the advisory, not the expiry, must be what removes it.
        async with natsreg.Registry(
            app, prefix=prefix, system_nc=system, discover_jitter_s=0.1, missed_heartbeats=10
        ) as node:
            with start_service(url, f"killed-{unique}", prefix) as proc:
                instance_id = read_id(proc)
                await eventually(lambda: [i.id for i in node.snapshot().instances] == [instance_id])
                proc.send_signal(signal.SIGKILL)
                await eventually(
                    lambda: node.snapshot().instances == [], timeout_s=10, what="the removal"
                )
                assert expiries_since(before) == {"disconnected": 1}
    finally:
        await app.close()
        await system.close()


@asynccontextmanager
async def bridge_on(nc: NATS, prefix: str, name: str) -> AsyncIterator[httpx.AsyncClient]:
    config = BridgeConfig(prefix=prefix, routes=[Route(path="/api/ok", subject=f"{name}.ok")])
    async with (
        bridge.run(nc, config, host="127.0.0.1", port=0) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as http,
    ):
        yield http


async def test_the_bridge_counts_requests_by_route_pattern_and_status(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"svc-{unique}"
    gc.collect()  # bridges of earlier tests leave the exposition once collected
    requests = "natsreg_bridge_requests_total"
    before = {
        (route, status): value(requests, route=route, status=status)
        for route, status in (("/api/ok", "200"), ("default", "200"), ("default", "409"))
    }
    refused = value("natsreg_bridge_refused_total", reason="not_found")
    async with counting_service(nc, name, prefix) as svc, bridge_on(nc, prefix, name) as http:
        for path in ("/api/ok", "/api/ok", f"/{name}/ok", f"/{name}/fail", "/nowhere"):
            await http.post(path, content=b"409" if "fail" in path else b"")
        held = asyncio.ensure_future(http.get(f"/{name}/hold"))
        await eventually(lambda: value("natsreg_bridge_in_flight") == 1)
        svc.state.release.set()
        assert (await held).status_code == 200
        assert value(requests, route="/api/ok", status="200") == before[("/api/ok", "200")] + 2
        assert value(requests, route="default", status="200") == before[("default", "200")] + 2
        assert value(requests, route="default", status="409") == before[("default", "409")] + 1
        # The path itself never becomes a label.
        assert not has_series(requests, route=f"/{name}/ok")
        assert value("natsreg_bridge_refused_total", reason="not_found") == refused + 1
        assert value("natsreg_bridge_request_duration_seconds_count", route="/api/ok") >= 2
        assert value("natsreg_bridge_in_flight") == 0


async def test_a_role_built_with_natsreg_metrics_0_is_neither_counted_nor_exposed(
    nc: NATS, prefix: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"svc-{unique}"
    monkeypatch.setenv("NATSREG_METRICS", "0")
    client = natsreg.Client(nc, prefix=prefix)
    async with counting_service(nc, name, prefix):
        await client.request(f"{name}.ok")
        assert not has_series("natsreg_service_requests_total", service=name)
        assert not has_series("natsreg_client_requests_total", service=name)


async def test_promtool_accepts_the_exposition_of_each_role(
    nc: NATS, prefix: str, unique: str
) -> None:
    require_tool(
        shutil.which("promtool") is not None,
        "promtool is not installed (Debian: apt-get install prometheus; .ci/run installs it)",
    )
    name = f"svc-{unique}"
    async with (
        natsreg.Registry(nc, prefix=prefix, discover_jitter_s=0.1) as node,
        counting_service(nc, name, prefix),
        bridge_on(nc, prefix, name) as http,
    ):
        await until_warm(nc, prefix)
        client = natsreg.Client(nc, prefix=prefix)
        await client.request(f"{name}.ok")
        await client.services()
        await http.get(f"/{name}/fail")
        await http.get("/nowhere")
        # Each role alone in a collector of its own, as a process running only it exposes.
        roles = {
            "service": ("services", [e for e in _figures.LIVE.services if e.service == name]),
            "client": ("clients", [r for r in _figures.LIVE.clients if f"{name}.ok" in r.calls]),
            "registry": ("registries", [node]),
            "bridge": ("bridges", list(_figures.LIVE.bridges)),
        }
        for role, (kind, objects) in roles.items():
            assert objects, role
            live = _figures.Live()
            getattr(live, kind).update(objects)
            text = exposition_of(live)
            assert f"natsreg_{role}_".encode() in text
            checked = subprocess.run(
                ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30
            )
            assert checked.returncode == 0, (role, checked.stdout, checked.stderr)
