"""OpenTelemetry span contexts made without the API's constructor.

The API's ``SpanContext`` is a tuple (trace id, span id, remote, flags, state, valid) whose
``__new__`` fills defaults and computes validity in Python, and ``TraceFlags(n)`` is a call
of its own: together a fifth of the start of a span natsreg records (``natsreg._otelspans``;
bench/RESULTS.md, "span contexts made directly"). Every call and handler makes one or two,
so they are made here as the same tuple directly, the flags from a table, with the same
validity.
"""

from __future__ import annotations

from opentelemetry.trace import SpanContext, TraceFlags, TraceState
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

__all__ = ["span_context"]

# Every value of the flags' byte, made once.
_FLAGS = tuple(TraceFlags(flags) for flags in range(256))
_TRACE_ID_LIMIT, _SPAN_ID_LIMIT = 1 << 128, 1 << 64
_new = tuple.__new__


def span_context(
    trace_id: int, span_id: int, remote: bool, flags: int, state: TraceState | None
) -> SpanContext:
    """``SpanContext(trace_id, span_id, remote, TraceFlags(flags), state)``, equal to what the
    API makes, valid where its ids are in range and not zero."""
    return _new(
        SpanContext,
        (
            trace_id,
            span_id,
            remote,
            _FLAGS[flags],
            DEFAULT_TRACE_STATE if state is None else state,
            0 < trace_id < _TRACE_ID_LIMIT and 0 < span_id < _SPAN_ID_LIMIT,
        ),
    )
