"""natsreg's OpenTelemetry spans around calls and handlers (:mod:`natsreg._otel`), loaded with
OpenTelemetry once a tracer provider is configured."""

from __future__ import annotations

import functools
from contextvars import ContextVar

from opentelemetry import context as _context
from opentelemetry import trace as _api
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.trace import (
    NonRecordingSpan,
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    TraceState,
)
from opentelemetry.trace.propagation import _SPAN_KEY

from . import _trace
from ._spancontext import span_context
from .errors import ServiceError

try:  # The SDK's tracer gets natsreg's spans recorded for less (natsreg/_otelspans.py).
    from opentelemetry.sdk.trace import Tracer as _SdkTracer

    from ._otelspans import Recorder
except ImportError:
    _SdkTracer = None  # type: ignore[assignment,misc]

__all__ = ["client_span", "end", "server_span", "tracer_for"]


def tracer_for(provider: object) -> Tracer | None:
    """natsreg's tracer from ``provider``, the API's global one: None for the API's
    placeholders (no provider configured yet); for the SDK's provider, a
    :class:`natsreg._otelspans.Recorder` for its tracer."""
    if isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider)):
        return None
    tracer = provider.get_tracer("natsreg")  # type: ignore[attr-defined]
    if _SdkTracer is not None and type(tracer) is _SdkTracer:
        return Recorder(tracer)  # type: ignore[return-value]
    return tracer  # type: ignore[no-any-return]


# OpenTelemetry's current context where it is the API's default, a context variable: read and
# set here directly, as the API does it but without its four calls deep (a third of what
# making a handler's span current and restoring the context after cost; bench/RESULTS.md).
# Any other runtime context (OTEL_PYTHON_CONTEXT) goes through the API.
def _context_variable() -> ContextVar[Context] | None:
    _context.get_current()  # an older API loads its runtime context on first use
    runtime = _context._RUNTIME_CONTEXT
    return runtime._current_context if type(runtime) is ContextVarsRuntimeContext else None


_current_context = _context_variable()


def client_span(tracer: Tracer, subject: str) -> tuple[Span, tuple[str, str] | None]:
    """A started CLIENT span for a call to ``subject``, and the ``traceparent`` and
    ``tracestate`` that carry it (:func:`natsreg._trace.outgoing`); None for a span whose
    context is invalid (a custom id generator's zero or out-of-range id), which no receiver
    could read: as OpenTelemetry's own propagator, natsreg sends no trace header then.

    Its parent is OpenTelemetry's current span where there is one (the handler's SERVER
    span, or a span of the caller's own), else the trace context a bridge or handler set.
    """
    if _current_context is not None:
        current = _current_context.get().get(_SPAN_KEY)
    else:
        current = _api.get_current_span()
    parent = current.get_span_context() if isinstance(current, Span) else None
    if parent is None or not parent.is_valid:
        context = _trace.started()
        parent = _remote(context) if context is not None and context.trace_id else None
    span = _start(
        tracer, f"request {subject}", SpanKind.CLIENT, _client_attributes(subject), parent
    )
    # Unpacked at once: each of SpanContext's properties is a call.
    trace_id, span_id, _, flags, state, valid = span.get_span_context()
    if not valid:
        return span, None
    # to_bytes().hex(): half the instructions of formatting the ints as hex.
    traceparent = (
        f"00-{trace_id.to_bytes(16, 'big').hex()}-{span_id.to_bytes(8, 'big').hex()}-{flags:02x}"
    )
    return span, (traceparent, state.to_header() if state else "")


def server_span(
    tracer: Tracer, subject: str, queue_group: str, parent: _trace.TraceContext | None
) -> tuple[Span, object]:
    """A started SERVER span for a request on ``subject``, made OpenTelemetry's current span
    (spans the handler starts nest under it), and the token that :func:`end` detaches.
    natsreg's context becomes the span's, for nested calls and log lines (formatted when
    first asked for: most handlers never do)."""
    span = _start(
        tracer,
        f"process {subject}",
        SpanKind.SERVER,
        _server_attributes(subject, queue_group),
        None if parent is None else _remote(parent),
    )
    _trace.defer(functools.partial(_context_of, span))
    if _current_context is not None:
        return span, _current_context.set(Context({**_current_context.get(), _SPAN_KEY: span}))
    return span, _context.attach(_api.set_span_in_context(span))


def _start(
    tracer: Tracer,
    name: str,
    kind: SpanKind,
    attributes: dict[str, str],
    parent: SpanContext | None,
) -> Span:
    # A started span under ``parent`` (a SpanContext; None: a new trace). Without the SDK
    # (the API alone, a vendor's provider) there is no Recorder: every span is the tracer's.
    if _SdkTracer is not None and isinstance(tracer, Recorder):
        return tracer.start(name, kind, attributes, parent)
    context = None if parent is None else _api.set_span_in_context(NonRecordingSpan(parent))
    return tracer.start_span(name, context, kind=kind, attributes=attributes)


def end(span: Span, error: BaseException | None, token: object = None) -> None:
    """End ``span``; a failure sets its status to ERROR and its code as ``error.type``: a
    service's error code (``500`` for a handler that raised anything else), or the name of
    the caller's error (``RequestTimeoutError``, ``NoInstanceError``, ...)."""
    if error is not None:
        if isinstance(error, ServiceError):
            code, description = str(error.code), error.description
        else:
            code, description = type(error).__name__, str(error)
        span.set_attribute("error.type", code)
        span.set_status(Status(StatusCode.ERROR, description[:256]))
    span.end()
    if token is None:
        return
    if _current_context is not None:
        _current_context.reset(token)  # type: ignore[arg-type]
    else:
        _context.detach(token)  # type: ignore[arg-type]


# Bounded: a bridge's subjects come from the paths HTTP clients ask for.
@functools.lru_cache(maxsize=1024)
def _client_attributes(subject: str) -> dict[str, str]:
    # One per subject, as the SDK copies what it is given: not built again on every call.
    return {
        "messaging.system": "nats",
        "messaging.operation.name": "request",
        "messaging.operation.type": "send",
        "messaging.destination.name": subject,
    }


@functools.lru_cache(maxsize=1024)
def _server_attributes(subject: str, queue_group: str) -> dict[str, str]:
    return {
        "messaging.system": "nats",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": subject,
        "messaging.consumer.group.name": queue_group,
    }


def _remote(context: _trace.TraceContext) -> SpanContext:
    # The sender's span, as a parent this process did not make.
    trace_id, span_id, flags, state = context
    return span_context(
        int(trace_id, 16),
        int(span_id, 16),
        True,
        int(flags, 16),
        TraceState.from_header([state]) if state else None,
    )


def _context_of(span: Span) -> _trace.TraceContext:
    context = span.get_span_context()
    return _trace.TraceContext(
        f"{context.trace_id:032x}",
        f"{context.span_id:016x}",
        f"{context.trace_flags:02x}",
        context.trace_state.to_header() if context.trace_state else "",
    )
