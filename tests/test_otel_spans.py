"""natsreg's spans under OpenTelemetry's SDK (natsreg/_otelspans.py): what a tracer provider's
exporter receives is what the SDK's own span would have given it, and the provider's sampler,
id generator, span processors and limits decide as they do for any span.

No NATS: the spans are made as a call and a handler make them (``natsreg._otel``), so the
lowest SDK natsreg allows is held to this too (the fast tier runs under it)."""

from __future__ import annotations

import contextvars
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import (
    ReadableSpan,
    Span,
    SpanLimits,
    SpanProcessor,
    Tracer,
    TracerProvider,
)
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.util._once import Once

from natsreg import _otel, _otelcalls, _trace
from natsreg._otelspans import RecordedSpan

pytestmark = pytest.mark.pure

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = _trace.TraceContext(TRACE, "00f067aa0ba902b7", "01", "vendor=1")


class StartsSeen(SpanProcessor):
    """A span processor that stamps every span it sees start, as some vendors' do."""

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        span.set_attribute("seen.at.start", True)


@pytest.fixture
def provider(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """The global tracer provider for one test (its keyword arguments the test's parameter,
    if any); its exporter keeps the ended spans."""
    provider = TracerProvider(**getattr(request, "param", {}))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        yield provider, exporter
    finally:
        trace._TRACER_PROVIDER = None
        trace._TRACER_PROVIDER_SET_ONCE = Once()
        provider.shutdown()


def call(subject: str = "user-service.users") -> tuple[trace.Span, str | None]:
    """A CLIENT span as a call makes it, ended; and the ``traceparent`` it sent, if any."""
    tracer = _otel.tracer()
    assert tracer is not None
    span, sent = _otel.client_span(tracer, subject)
    _otel.end(span, None)
    return span, None if sent is None else sent[0]


def handle(parent: _trace.TraceContext | None, work: Any = None) -> trace.Span:
    """A SERVER span as a service makes it around a handler that runs ``work()``, ended (in
    a context of its own, as each handler's task has)."""
    return contextvars.copy_context().run(_handle, parent, work)


def _handle(parent: _trace.TraceContext | None, work: Any) -> trace.Span:
    tracer = _otel.tracer()
    assert tracer is not None
    span, token = _otel.server_span(tracer, "user-service.users", "user-service", parent)
    error = None
    try:
        if work is not None:
            work()
    except Exception as exc:
        error = exc
    _otel.end(span, error, token)
    return span


def comparable(span: ReadableSpan) -> dict[str, Any]:
    # What an exporter sends of a span, but for its ids and times.
    shown = json.loads(span.to_json())
    for key in ("context", "parent_id", "start_time", "end_time"):
        shown.pop(key)
    for event in shown["events"]:
        event.pop("timestamp")
    return shown


def test_the_exporter_gets_natsreg_spans_as_the_sdk_would_have_made_them(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    sdk, exporter = provider
    tracer = sdk.get_tracer("natsreg")
    parent = trace.set_span_in_context(trace.NonRecordingSpan(_otelcalls._remote(CALLER)))

    handle(CALLER, lambda: trace.get_current_span().add_event("cache miss", {"key": "1"}))
    with tracer.start_as_current_span(
        "process user-service.users",
        parent,
        kind=SpanKind.SERVER,
        attributes=_otelcalls._server_attributes("user-service.users", "user-service"),
    ) as span:
        span.add_event("cache miss", {"key": "1"})
    ours, theirs = exporter.get_finished_spans()

    assert type(_otel.tracer()).__name__ == "Recorder"
    assert comparable(ours) == comparable(theirs)
    assert ours.instrumentation_scope == theirs.instrumentation_scope
    assert ours.resource is theirs.resource
    assert ours.parent == theirs.parent and ours.parent is not None
    assert ours.context.trace_id == theirs.context.trace_id == int(TRACE, 16)
    assert ours.context.trace_flags == theirs.context.trace_flags
    assert ours.context.trace_state == theirs.context.trace_state
    assert ours.context.span_id not in (0, theirs.context.span_id, CALLER.span_id)
    assert ours.start_time is not None and ours.end_time is not None
    assert ours.start_time <= ours.end_time


class FixedIds(IdGenerator):
    """Draws the same ids every time, valid or not: a custom generator may."""

    def __init__(self, trace_id: int, span_id: int) -> None:
        self.trace_id, self.span_id = trace_id, span_id

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id


@pytest.mark.parametrize(
    "provider",
    [
        {"id_generator": FixedIds(0x4BF92F35, 7)},
        {"id_generator": FixedIds(0x4BF92F35, 0)},
        {"id_generator": FixedIds(0, 7)},
        {"id_generator": FixedIds(1 << 128, 7)},
        {"id_generator": FixedIds(0x4BF92F35, 1 << 64)},
    ],
    ids=["valid", "zero-span-id", "zero-trace-id", "trace-id-too-large", "span-id-too-large"],
    indirect=True,
)
def test_a_spans_context_is_the_one_the_sdk_makes_from_the_same_ids(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    # natsreg makes its spans' contexts itself: ids, flags, state and validity as the SDK's.
    sdk, exporter = provider
    tracer = sdk.get_tracer("natsreg")
    _, traceparent = call()
    tracer.start_span("request", kind=SpanKind.CLIENT).end()
    handle(CALLER)
    parent = trace.set_span_in_context(trace.NonRecordingSpan(_otelcalls._remote(CALLER)))
    tracer.start_span("process", parent, kind=SpanKind.SERVER).end()
    our_client, their_client, our_server, their_server = exporter.get_finished_spans()
    assert our_client.context == their_client.context
    assert our_server.context == their_server.context
    assert our_server.context.is_valid == their_server.context.is_valid
    # An invalid context is sent as no header at all, as OpenTelemetry's propagator does.
    if our_client.context.is_valid:
        sent = _trace.parse(traceparent)
        assert sent is not None and int(sent.span_id, 16) == our_client.context.span_id
    else:
        assert traceparent is None


def test_a_call_outside_any_trace_starts_one_and_sends_its_own_span_as_the_parent(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = provider
    _, traceparent = call()
    (exported,) = exporter.get_finished_spans()
    sent = _trace.parse(traceparent)
    assert sent is not None
    assert exported.parent is None and exported.kind == SpanKind.CLIENT
    assert (int(sent.trace_id, 16), int(sent.span_id, 16)) == (
        exported.context.trace_id,
        exported.context.span_id,
    )
    assert sent.flags in ("01", "03")  # sampled (and, with newer SDKs, a random trace id)


def test_what_a_handler_does_to_the_current_span_is_exported(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = provider
    linked = trace.SpanContext(int(TRACE, 16), 7, is_remote=True)

    def work() -> None:
        current = trace.get_current_span()
        current.set_attribute("user.id", 42)
        current.set_attributes({"user.tier": "gold", "user.roles": ["admin", "ops"]})
        current.add_link(linked, {"why": "batch"})
        current.update_name("process users")
        current.set_status(StatusCode.OK)
        current.set_status(StatusCode.ERROR, "too late: OK is final")
        with trace.get_tracer("app").start_as_current_span("db query") as child:
            child.set_attribute("db.system", "sqlite")

    handle(CALLER, work)
    child, server = exporter.get_finished_spans()
    assert server.name == "process users" and server.kind == SpanKind.SERVER
    assert server.attributes is not None
    assert server.attributes["user.id"] == 42 and server.attributes["user.tier"] == "gold"
    assert server.attributes["user.roles"] == ("admin", "ops")  # as the SDK keeps a list
    assert server.attributes["messaging.system"] == "nats"
    assert [(link.context, dict(link.attributes or {})) for link in server.links] == [
        (linked, {"why": "batch"})
    ]
    assert server.status.status_code == StatusCode.OK
    # The handler's own spans nest under natsreg's SERVER span.
    assert child.parent is not None and child.parent.span_id == server.context.span_id
    assert child.context.trace_id == int(TRACE, 16)


@pytest.mark.parametrize("through_api", [False, True], ids=["context-variable", "api"])
def test_a_handlers_span_is_current_while_it_runs_and_the_context_is_restored_after(
    provider: tuple[TracerProvider, InMemorySpanExporter],
    monkeypatch: pytest.MonkeyPatch,
    through_api: bool,
) -> None:
    # natsreg sets OpenTelemetry's context variable itself; another runtime context
    # (OTEL_PYTHON_CONTEXT) goes through the API. Either keeps what else the context holds.
    if through_api:
        monkeypatch.setattr(_otelcalls, "_current_context", None)
    sdk, exporter = provider
    tracer = _otel.tracer()
    assert tracer is not None
    key = otel_context.create_key("tenant")

    def handler_task() -> str | None:
        otel_context.attach(otel_context.set_value(key, "acme"))
        with sdk.get_tracer("app").start_as_current_span("outer") as outer:
            span, token = _otel.server_span(tracer, "user-service.users", "user-service", CALLER)
            assert trace.get_current_span() is span
            assert otel_context.get_value(key) == "acme"
            _, traceparent = call("billing.charge")
            _otel.end(span, None, token)
            assert trace.get_current_span() is outer
        return traceparent

    # In a context of its own, as a handler's task: what it sets stays in it.
    traceparent = contextvars.copy_context().run(handler_task)
    client, server, _ = exporter.get_finished_spans()
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    sent = _trace.parse(traceparent)
    assert sent is not None and int(sent.span_id, 16) == client.context.span_id


def test_a_failing_handler_records_its_exception_and_the_code(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = provider

    def work() -> None:
        try:
            raise KeyError("user 1")
        except KeyError as exc:
            trace.get_current_span().record_exception(exc, {"user": "1"})
            raise RuntimeError("lookup failed") from exc

    handle(CALLER, work)
    (server,) = exporter.get_finished_spans()
    assert server.status.status_code == StatusCode.ERROR
    assert server.status.description == "lookup failed"
    assert server.attributes is not None and server.attributes["error.type"] == "RuntimeError"
    (event,) = server.events
    assert event.name == "exception" and event.attributes is not None
    assert event.attributes["exception.type"] == "KeyError"
    assert event.attributes["exception.message"] == "'user 1'"
    assert "KeyError" in str(event.attributes["exception.stacktrace"])
    assert event.attributes["exception.escaped"] == "False"
    assert event.attributes["user"] == "1"


def test_an_ended_span_takes_no_more_writes(
    provider: tuple[TracerProvider, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    _, exporter = provider
    span = handle(CALLER)
    assert isinstance(span, RecordedSpan) and not span.is_recording()
    span.set_attribute("late", 1)
    span.add_event("late")
    span.update_name("late")
    span.end()
    (server,) = exporter.get_finished_spans()  # ended once, exported once
    assert server.name == "process user-service.users"
    assert server.attributes is not None and "late" not in server.attributes
    assert not server.events
    assert "it has ended" in caplog.text


@pytest.mark.parametrize(
    "provider",
    [{"span_limits": SpanLimits(max_attribute_length=4, max_span_attributes=6)}],
    indirect=True,
)
def test_the_providers_limits_bound_what_a_handler_writes(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = provider

    def work() -> None:
        current = trace.get_current_span()
        current.set_attribute("user.name", "Ada Lovelace")
        current.set_attribute("one.too.many", "x")

    handle(CALLER, work)
    (server,) = exporter.get_finished_spans()
    assert server.attributes is not None
    assert server.attributes["user.name"] == "Ada "
    assert server.attributes["messaging.destination.name"] == "user"  # as the SDK bounds it
    assert server.dropped_attributes == 1 and len(server.attributes) == 6


@pytest.mark.parametrize("provider", [{"sampler": ALWAYS_OFF}], indirect=True)
def test_a_sampler_that_drops_makes_no_spans_but_the_trace_still_travels(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = provider
    server = handle(CALLER, lambda: trace.get_current_span().set_attribute("ignored", 1))
    _, traceparent = call()
    assert not exporter.get_finished_spans()
    assert not server.is_recording()
    assert server.get_span_context().trace_id == int(TRACE, 16)
    sent = _trace.parse(traceparent)
    assert sent is not None and sent.flags in ("00", "02")  # not sampled


def test_an_unsampled_caller_is_followed_by_the_default_sampler(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = provider
    unsampled = CALLER._replace(flags="00")
    server = handle(unsampled)
    sampled = handle(CALLER)
    assert [s.context.span_id for s in exporter.get_finished_spans()] == [
        sampled.get_span_context().span_id
    ]
    assert server.get_span_context().trace_id == int(TRACE, 16)
    assert not server.get_span_context().trace_flags.sampled


class OnlyServers(Sampler):
    """Records SERVER spans, tagging them; drops the rest."""

    def __init__(self) -> None:
        self.parents: list[trace.SpanContext] = []

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        self.parents.append(trace.get_current_span(parent_context).get_span_context())
        if kind != SpanKind.SERVER:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, {**attributes, "sampled.by": "test"})

    def get_description(self) -> str:
        return "OnlyServers"


ONLY_SERVERS = OnlyServers()


@pytest.mark.parametrize("provider", [{"sampler": ONLY_SERVERS}], indirect=True)
def test_a_custom_sampler_decides_sees_the_parent_and_adds_attributes(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = provider
    ONLY_SERVERS.parents.clear()
    handle(CALLER)
    call()
    (server,) = exporter.get_finished_spans()
    assert server.kind == SpanKind.SERVER
    assert server.attributes is not None and server.attributes["sampled.by"] == "test"
    assert server.attributes["messaging.system"] == "nats"
    assert ONLY_SERVERS.parents[0].span_id == int(CALLER.span_id, 16)
    assert ONLY_SERVERS.parents[0].is_remote


@pytest.mark.parametrize(
    "provider", [{"sampler": ParentBased(TraceIdRatioBased(0.5))}], indirect=True
)
def test_a_ratio_sampler_keeps_the_traces_whose_ids_it_picks(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = provider
    sent = [call()[1] for _ in range(200)]
    kept = {s.context.trace_id for s in exporter.get_finished_spans()}
    picked = {int(t.split("-")[1], 16) for t in sent if t.split("-")[3] in ("01", "03")}
    assert kept == picked and 0 < len(kept) < 200


def test_a_span_processor_sees_natsreg_spans_start(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    sdk, exporter = provider
    sdk.add_span_processor(StartsSeen())
    handle(CALLER)
    call()
    for exported in exporter.get_finished_spans():
        assert exported.attributes is not None and exported.attributes["seen.at.start"] is True


def test_another_tracer_gets_natsreg_spans_through_the_api(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = provider

    class VendorTracer(Tracer):
        """A tracer of a class of its own, as a vendor's distribution may have."""

    class VendorProvider(TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
            tracer = super().get_tracer(*args, **kwargs)
            tracer.__class__ = VendorTracer
            return tracer

    wrapped = VendorProvider()
    wrapped.add_span_processor(SimpleSpanProcessor(exporter))
    trace._TRACER_PROVIDER = wrapped
    server = handle(CALLER)
    assert isinstance(server, Span) and not isinstance(server, RecordedSpan)
    (exported,) = exporter.get_finished_spans()
    assert exported.parent is not None and exported.parent.span_id == int(CALLER.span_id, 16)
    wrapped.shutdown()


def test_a_tracer_the_provider_turned_off_makes_no_span_and_the_trace_goes_on(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    sdk, exporter = provider
    turn_off = getattr(sdk, "_set_tracer_configurator", None)
    if turn_off is None:
        pytest.skip("this SDK has no tracer configurator (1.34+)")
    from opentelemetry.sdk.trace import _disable_tracer_configurator

    turn_off(tracer_configurator=_disable_tracer_configurator)
    server = handle(CALLER)
    _, traceparent = call()
    assert not exporter.get_finished_spans() and not server.is_recording()
    assert server.get_span_context().trace_id == int(TRACE, 16)
    sent = _trace.parse(traceparent)
    assert sent is not None and sent.flags in ("00", "02")  # a valid, unsampled trace


def python(code: str, **env: str) -> str:
    """What ``code`` prints, run by a Python process of its own with ``env`` added."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_a_process_that_configures_no_provider_does_not_load_opentelemetry() -> None:
    # Loading it costs every start of the CLI ~50 ms; it is loaded once something imports its
    # API, as configuring a provider does.
    shown = python(
        "import sys, natsreg, natsreg.cli\n"
        "from natsreg import _otel\n"
        "print(_otel.tracer(), sorted(m for m in sys.modules if 'opentelemetry' in m))\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "print(_otel.tracer())\n"
        "trace.set_tracer_provider(TracerProvider())\n"
        "print(type(_otel.tracer()).__name__)"
    )
    assert shown.splitlines() == ["None []", "None", "Recorder"]


def test_a_provider_named_in_the_environment_records_natsreg_spans() -> None:
    shown = python(
        "from natsreg import _otel\nprint(type(_otel.tracer()).__name__)",
        OTEL_PYTHON_TRACER_PROVIDER="sdk_tracer_provider",
    )
    assert shown == "Recorder"


VENDOR_WITHOUT_SDK = f"""
import sys
sys.modules["opentelemetry.sdk"] = None  # the API alone: no SDK installed
from opentelemetry import trace
from natsreg import _otel, _trace

class Tracer(trace.Tracer):
    # A vendor's own tracer: each span under its parent's trace (else trace 7), span ids 1, 2...
    ids = iter(range(1, 100))

    def start_span(self, name, context=None, *args, **kwargs):
        parent = trace.get_current_span(context).get_span_context()
        trace_id = parent.trace_id if parent.is_valid else 7
        own = trace.SpanContext(trace_id, next(self.ids), False, trace.TraceFlags(1))
        return trace.NonRecordingSpan(own)

    def start_as_current_span(self, *args, **kwargs):
        raise NotImplementedError

class Provider(trace.TracerProvider):
    def get_tracer(self, *args, **kwargs):
        return Tracer()

trace.set_tracer_provider(Provider())
tracer = _otel.tracer()
span, sent = _otel.client_span(tracer, "user-service.users")
_otel.end(span, None)
print(sent[0])
server, token = _otel.server_span(tracer, "user-service.users", "q", _trace.{CALLER!r})
_, nested = _otel.client_span(tracer, "billing.charge")
_otel.end(server, RuntimeError("boom"), token)
print(nested[0])
"""


def test_a_vendors_tracer_without_the_sdk_gets_natsreg_spans_through_the_api() -> None:
    sent, nested = python(VENDOR_WITHOUT_SDK).splitlines()
    assert sent == f"00-{7:032x}-{1:016x}-01"
    # The handler's span (2) continues the caller's trace; its nested call's span (3) too.
    assert nested == f"00-{TRACE}-{3:016x}-01"
