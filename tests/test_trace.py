"""One trace across every hop: HTTP client → bridge → service A → (nested call) → service B,
with and without OpenTelemetry's SDK, against a real nats-server and the bridge's real server."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

import natsreg
from natsreg import _deadline, _trace, bridge
from natsreg.bridge import BridgeConfig

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CURL_SPAN = "00f067aa0ba902b7"


@asynccontextmanager
async def chain(nc: NATS, prefix: str, unique: str) -> AsyncIterator[dict[str, Any]]:
    """Service A, whose endpoint calls service B; the bridge in front. Yields what each hop
    saw (``a``/``b``: the headers it got and the ids of its own hop) and the HTTP client."""
    seen: dict[str, Any] = {}
    a = natsreg.announce(nc, f"a-{unique}", version="1.0.0", prefix=prefix)
    b = natsreg.announce(nc, f"b-{unique}", version="1.0.0", prefix=prefix)
    client = natsreg.Client(nc, prefix=prefix)

    @a.endpoint("work")
    async def work(req: natsreg.Request) -> Any:
        seen["a"] = (dict(req.headers), _trace.ids())
        reply = await client.request(f"b-{unique}.{req.data.decode()}", b"")
        seen["a-after"] = _trace.ids()
        return reply.data

    @b.endpoint("ok")
    async def ok(req: natsreg.Request) -> str:
        seen["b"] = (dict(req.headers), _trace.ids())
        return "done"

    @b.endpoint("fail")
    async def fail(req: natsreg.Request) -> str:
        seen["b"] = (dict(req.headers), _trace.ids())
        raise natsreg.ServiceError("no such user", code=404)

    config = BridgeConfig(prefix=prefix)
    async with (
        a,
        b,
        client,
        bridge.run(nc, config, host="127.0.0.1", port=0) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as http,
    ):
        seen["http"] = http
        seen["path"] = f"/a-{unique}/work"
        yield seen


def traceparent_ids(headers: dict[str, str]) -> tuple[str, str]:
    context = _trace.parse(headers.get("traceparent"))
    assert context is not None, headers
    return context.trace_id, context.span_id


async def test_without_the_sdk_the_http_clients_trace_reaches_b_under_a_new_span_id_per_hop(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with chain(nc, prefix, unique) as seen:
        reply = await seen["http"].post(
            seen["path"],
            content=b"ok",
            headers={"traceparent": f"00-{TRACE}-{CURL_SPAN}-01", "tracestate": "vendor=x"},
        )
    assert reply.status_code == 200, reply.text
    a_headers, a_ids = seen["a"]
    b_headers, b_ids = seen["b"]
    # Each hop: the trace of the HTTP client, and a span id none before it used, drawn by
    # its caller (the parent id of the traceparent it got) and its own in its log lines.
    assert traceparent_ids(a_headers) == a_ids
    assert traceparent_ids(b_headers) == b_ids
    assert a_ids[0] == b_ids[0] == TRACE
    assert len({CURL_SPAN, a_ids[1], b_ids[1]}) == 3
    assert a_headers["tracestate"] == b_headers["tracestate"] == "vendor=x"
    # The nested call left the handler's own context as it was.
    assert seen["a-after"] == a_ids


async def test_without_a_traceparent_a_starts_the_trace_and_b_receives_it(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with chain(nc, prefix, unique) as seen:
        reply = await seen["http"].post(seen["path"], content=b"ok")
        assert reply.status_code == 200, reply.text
        first = seen["a"][1][0]
        assert "traceparent" not in seen["a"][0]
        assert traceparent_ids(seen["b"][0])[0] == seen["b"][1][0] == first
        # The next request is a trace of its own.
        await seen["http"].post(seen["path"], content=b"ok")
        assert seen["a"][1][0] != first


@pytest.mark.parametrize(
    "forged",
    [
        [("traceparent", f"00-{TRACE.upper()}-{CURL_SPAN}-01")],
        [("traceparent", f"ff-{TRACE}-{CURL_SPAN}-01")],
        [("traceparent", f"00-{'0' * 32}-{CURL_SPAN}-01")],
        [("traceparent", f"00-{TRACE}-{CURL_SPAN}-01-" + "x" * 3000)],
        # Two traceparent headers name no single parent.
        [
            ("traceparent", f"00-{TRACE}-{CURL_SPAN}-01"),
            ("traceparent", f"00-{TRACE}-{CURL_SPAN}-00"),
        ],
        # Named in Connection, it is for the bridge alone (hop-by-hop).
        [("traceparent", f"00-{TRACE}-{CURL_SPAN}-01"), ("connection", "traceparent")],
    ],
)
async def test_a_forged_or_hop_by_hop_traceparent_is_ignored_and_the_request_served(
    nc: NATS, prefix: str, unique: str, forged: list[tuple[str, str]]
) -> None:
    async with chain(nc, prefix, unique) as seen:
        reply = await seen["http"].post(seen["path"], content=b"ok", headers=forged)
    assert reply.status_code == 200, reply.text
    a_headers, a_ids = seen["a"]
    assert "traceparent" not in a_headers and a_ids[0] != TRACE
    assert traceparent_ids(seen["b"][0])[0] == a_ids[0]


async def test_a_forged_traceparent_on_nats_is_ignored_and_the_service_starts_a_trace(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with chain(nc, prefix, unique) as seen:
        for forged in [f"00-{TRACE}-{CURL_SPAN}-01-x", "x" * 5000, f"00-{TRACE}-{CURL_SPAN}"]:
            reply = await nc.request(
                f"a-{unique}.work", b"ok", timeout=5, headers={"traceparent": forged}
            )
            assert reply.data == b"done"
            assert seen["a"][1][0] != TRACE
            assert traceparent_ids(seen["b"][0])[0] == seen["a"][1][0]


async def test_a_queued_request_keeps_neither_the_trace_nor_the_deadline_of_the_one_before(
    nc: NATS, prefix: str, unique: str
) -> None:
    # One handler slot: the second request waits in the queue, and its task is started by the
    # first one's as it finishes.
    release = asyncio.Event()
    seen: list[tuple[Any, float | None]] = []
    name = f"q-{unique}"
    async with natsreg.announce(nc, name, version="1.0.0", prefix=prefix, max_in_flight=1) as svc:

        @svc.endpoint("work")
        async def work(req: natsreg.Request) -> None:
            seen.append((_trace.ids(), _deadline.current.get()))
            await release.wait()

        first = asyncio.create_task(
            nc.request(
                f"{name}.work",
                b"",
                timeout=5,
                headers={"traceparent": f"00-{TRACE}-{CURL_SPAN}-01", "Natsreg-Budget-Ms": "5000"},
            )
        )
        async with asyncio.timeout(5):
            while not seen:
                await asyncio.sleep(0.01)
        second = asyncio.create_task(nc.request(f"{name}.work", b"", timeout=5))
        # Only the service's own queue can say that the second request waits in it.
        async with asyncio.timeout(5):
            while not svc._endpoints._queue:
                await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(first, second)
    assert seen[0][0] == (TRACE, CURL_SPAN) and seen[0][1] is not None
    assert seen[1][0] is not None and seen[1][0][0] != TRACE
    assert seen[1][1] is None


# -- with OpenTelemetry's SDK ----------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """A configured global tracer provider (the SDK, sampling every trace) for this test only."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        # OpenTelemetry sets the global provider once per process; its own tests reset it so.
        trace._TRACER_PROVIDER = None
        trace._TRACER_PROVIDER_SET_ONCE = Once()
        provider.shutdown()


def one(found: list[ReadableSpan], kind: SpanKind, name: str) -> ReadableSpan:
    matching = [s for s in found if s.kind == kind and s.name == name]
    assert len(matching) == 1, [(s.kind, s.name) for s in found]
    return matching[0]


async def test_with_the_sdk_every_hop_makes_a_span_in_one_trace_chained_to_its_caller(
    nc: NATS, prefix: str, unique: str, spans: InMemorySpanExporter
) -> None:
    async with chain(nc, prefix, unique) as seen:
        ok = await seen["http"].post(
            seen["path"], content=b"ok", headers={"traceparent": f"00-{TRACE}-{CURL_SPAN}-01"}
        )
        assert ok.status_code == 200, ok.text
        found = list(spans.get_finished_spans())
        handlers_saw = seen["a"][1], seen["b"][1]
        spans.clear()
        failed = await seen["http"].post(
            seen["path"], content=b"fail", headers={"traceparent": f"00-{TRACE}-{CURL_SPAN}-01"}
        )
        assert failed.status_code == 404, failed.text
        failing = list(spans.get_finished_spans())

    a, b = f"a-{unique}.work", f"b-{unique}.ok"
    bridge_call = one(found, SpanKind.CLIENT, f"request {a}")
    a_server = one(found, SpanKind.SERVER, f"process {a}")
    a_call = one(found, SpanKind.CLIENT, f"request {b}")
    b_server = one(found, SpanKind.SERVER, f"process {b}")
    assert len(found) == 4
    chain_ = [bridge_call, a_server, a_call, b_server]
    assert {s.context.trace_id for s in chain_} == {int(TRACE, 16)}
    assert bridge_call.parent is not None and bridge_call.parent.span_id == int(CURL_SPAN, 16)
    for parent, child in itertools.pairwise(chain_):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id
    # What the handlers saw as their own ids are their SERVER spans'.
    assert handlers_saw == (
        (TRACE, f"{a_server.context.span_id:016x}"),
        (TRACE, f"{b_server.context.span_id:016x}"),
    )
    for s in chain_:
        assert s.attributes is not None
        assert s.attributes["messaging.system"] == "nats"
        assert s.status.status_code == StatusCode.UNSET
    assert b_server.attributes is not None
    assert b_server.attributes["messaging.destination.name"] == b
    assert b_server.attributes["messaging.consumer.group.name"] == f"b-{unique}"

    # The failing hop: B's span and every span above it say so, with the code.
    b_fail = f"b-{unique}.fail"
    for kind, name in [
        (SpanKind.SERVER, f"process {b_fail}"),
        (SpanKind.CLIENT, f"request {b_fail}"),
        (SpanKind.SERVER, f"process {a}"),
        (SpanKind.CLIENT, f"request {a}"),
    ]:
        span = one(failing, kind, name)
        assert span.status.status_code == StatusCode.ERROR, name
        assert span.attributes is not None and span.attributes["error.type"] == "404", name
        assert span.context.trace_id == int(TRACE, 16)


async def test_with_the_sdk_a_call_outside_any_trace_starts_one(
    nc: NATS, prefix: str, unique: str, spans: InMemorySpanExporter
) -> None:
    async with chain(nc, prefix, unique) as seen:
        reply = await seen["http"].post(seen["path"], content=b"ok")
        assert reply.status_code == 200, reply.text
    found = list(spans.get_finished_spans())
    root = one(found, SpanKind.CLIENT, f"request a-{unique}.work")
    assert root.parent is None
    assert len(found) == 4 and {s.context.trace_id for s in found} == {root.context.trace_id}


# -- without the extra -----------------------------------------------------------------------

WITHOUT_OTEL = """
import asyncio, sys
sys.modules["opentelemetry"] = None  # as if natsreg[otel] were not installed
import nats, natsreg
from natsreg import _otel, _trace

async def main(url, prefix):
    nc = await nats.connect(url)
    seen = {}
    a = natsreg.announce(nc, "a", version="1.0.0", prefix=prefix)
    b = natsreg.announce(nc, "b", version="1.0.0", prefix=prefix)
    client = natsreg.Client(nc, prefix=prefix)

    @a.endpoint("work")
    async def work(req):
        seen["a"] = _trace.ids()
        return (await client.request("b.ok", b"")).data

    @b.endpoint("ok")
    async def ok(req):
        seen["b"] = req.headers.get("traceparent")
        return b"done"

    async with a, b, client:
        assert (await nc.request("a.work", b"", timeout=5)).data == b"done"
    await nc.close()
    assert _otel.tracer() is None
    assert _trace.parse(seen["b"]).trace_id == seen["a"][0], seen
    print("ok")

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_without_the_extra_installed_b_receives_the_trace_a_started(
    nats_url: str, prefix: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WITHOUT_OTEL,
        nats_url,
        prefix,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        out, _ = await process.communicate()
    assert process.returncode == 0 and out.decode().strip() == "ok", out.decode()
