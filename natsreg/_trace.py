"""The W3C trace context of the request being handled, carried to nested calls and log lines.

Like the deadline (``natsreg._deadline``), it travels through a context variable: a service
sets it for the duration of each handler from the request's ``traceparent`` header, a
:meth:`natsreg.Client.request` made inside the handler continues the same trace, and a log
line written meanwhile names the trace and span it belongs to.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import NamedTuple

__all__ = ["TraceContext", "current", "ids"]


class TraceContext(NamedTuple):
    """One hop's place in a trace: W3C ``traceparent`` fields, as lower-case hex."""

    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits: the span of this hop
    flags: str = "01"  # 2 hex digits; 01 = sampled
    state: str = ""  # the ``tracestate`` header, passed on untouched


current: ContextVar[TraceContext | None] = ContextVar("natsreg_trace", default=None)


def ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the request being handled or made, if any."""
    context = current.get()
    return None if context is None else (context.trace_id, context.span_id)
