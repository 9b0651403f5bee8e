"""OpenTelemetry span contexts made for a third of what the API's constructor costs.

The API's ``SpanContext`` is a tuple (trace id, span id, remote, flags, state, valid) whose
``__new__`` fills defaults and computes validity in Python, about a tenth of a span natsreg
records (``natsreg._otelspans``). Every call and handler makes one or two, so they are made
here as the same tuple directly, with the same validity.
"""

from __future__ import annotations

from opentelemetry.trace import SpanContext, TraceFlags, TraceState
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

__all__ = ["FLAGS", "span_context"]

#: Every value of the flags' byte, made once: ``TraceFlags(n)`` is a call of its own.
FLAGS = tuple(TraceFlags(flags) for flags in range(256))
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
            FLAGS[flags],
            DEFAULT_TRACE_STATE if state is None else state,
            0 < trace_id < _TRACE_ID_LIMIT and 0 < span_id < _SPAN_ID_LIMIT,
        ),
    )
