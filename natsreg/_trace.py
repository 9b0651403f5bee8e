"""The W3C trace context of the request being handled, carried to nested calls and log lines.

Like the deadline (``natsreg._deadline``), it travels through a context variable: a service
sets it for the duration of each handler from the request's ``traceparent`` header, a
:meth:`natsreg.Client.request` made inside the handler continues the same trace, and a log
line written meanwhile names the trace and span it belongs to.

Each hop gets a span id of its own, the trace id stays: a call made inside a trace sends a
fresh span id as the ``traceparent``'s parent id, and the service it reaches names its log
lines and nested calls by that id (with OpenTelemetry configured, by its own SERVER span's:
``natsreg._otel``). A service reads the headers lazily (:func:`receive`): only when a log line
or a nested call asks for the trace, which then starts anew if the request brought none, so
a handler that does neither pays two context-variable writes. Headers come from anyone who
can publish: :func:`parse` accepts only what the W3C Trace Context specification allows,
within a fixed size, and ignores anything else.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import NamedTuple

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "UNSTARTED",
    "TraceContext",
    "current",
    "defer",
    "from_headers",
    "ids",
    "next_hop",
    "outgoing",
    "parse",
    "receive",
    "started",
]

#: The NATS header names, lower-case as the W3C recommends for protocols other than HTTP.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# Longest accepted: a future version may append fields; nothing legitimate comes near these.
_MAX_TRACEPARENT = 256
_MAX_TRACESTATE = 512  # what the W3C asks every vendor to pass on at least
_MAX_STATE_MEMBERS = 32

# version "-" trace-id "-" parent-id "-" trace-flags, and for a later version "-" and more.
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
# One tracestate list member: key "=" value (W3C Trace Context, section 3.3.1.3).
_STATE_MEMBER_RE = re.compile(
    r"(?:[a-z][a-z0-9_*/-]{0,255}|[a-z0-9][a-z0-9_*/-]{0,240}@[a-z][a-z0-9_*/-]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_new_tuple = tuple.__new__


class TraceContext(NamedTuple):
    """One hop's place in a trace: W3C ``traceparent`` fields, as lower-case hex."""

    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits: the span of this hop
    flags: str = "01"  # 2 hex digits; 01 = sampled
    state: str = ""  # the ``tracestate`` header, passed on untouched


#: A handler's context until first use: then that of the headers it got, or a new trace.
UNSTARTED = TraceContext("", "", "01", "")

current: ContextVar[TraceContext | None] = ContextVar("natsreg_trace", default=None)
# What the trace of the request being handled is made of when first used: its trace
# headers, or what formats the context of its OpenTelemetry span (natsreg._otel).
_received: ContextVar[Mapping[str, str] | Callable[[], TraceContext] | None] = ContextVar(
    "natsreg_trace_headers", default=None
)

# Ids need to be unique, not secret (OpenTelemetry's SDK draws them the same way): a
# Mersenne Twister draw costs a fraction of a read from the OS. An all-zero id (one draw in
# 2^64) would make the receiver ignore the header and start a trace of its own: no harm.
_random_bytes = random.randbytes
# Span ids are drawn and formatted _SPAN_IDS at a time, and each call takes one: a draw of its
# own (randbytes, then hex) cost a traced call ~2.4k instructions, two fifths of what tracing
# added to it (bench/RESULTS.md, "Tracing"). A forked child must not hand out its parent's
# ids: it starts with none, as ``random`` reseeds itself in a child.
_SPAN_IDS = 128
_span_ids: list[str] = []
os.register_at_fork(after_in_child=_span_ids.clear)


def _draw_span_ids() -> str:
    """One fresh span id, after refilling the pool with more."""
    drawn = _random_bytes(8 * _SPAN_IDS).hex(" ", 8).split()  # 16 hex digits each
    span_id = drawn.pop()
    _span_ids.extend(drawn)
    return span_id


def _span_id() -> str:
    try:
        return _span_ids.pop()
    except IndexError:  # one call in _SPAN_IDS (or a thread emptied it first)
        return _draw_span_ids()


def _new_trace() -> TraceContext:
    return TraceContext(_random_bytes(16).hex(), _span_id())


def receive(headers: Mapping[str, str] | None) -> None:
    """Set the trace of the request a handler is about to serve, from its headers (read
    when first used: a handler that neither logs nor calls never looks)."""
    current.set(UNSTARTED)
    # Set either way: a queued request's task starts in a copy of the context of the handler
    # that made room for it, which holds that request's headers.
    _received.set(headers)


def defer(make: Callable[[], TraceContext]) -> None:
    """Set the trace of the request a handler is about to serve to what ``make()`` returns
    when it is first used."""
    current.set(UNSTARTED)
    _received.set(make)


def started() -> TraceContext | None:
    """The current trace context; in a handler, read from the request's headers (or a new
    trace if they name none) the first time it is asked for."""
    context = current.get()
    if context is UNSTARTED:
        received = _received.get()
        if callable(received):
            context = received()
        else:
            context = (from_headers(received) if received else None) or _new_trace()
        current.set(context)
    return context


def ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the request being handled or made, if any."""
    context = started()
    return None if context is None else (context.trace_id, context.span_id)


def outgoing(context: TraceContext) -> tuple[str, str]:
    """The ``traceparent`` and ``tracestate`` ("" for none) that carry ``context`` to the
    next hop (its span id as the parent id)."""
    return f"00-{context.trace_id}-{context.span_id}-{context.flags}", context.state


def next_hop(context: TraceContext) -> tuple[str, str]:
    """The ``traceparent`` and ``tracestate`` ("" for none) of a call made in ``context``:
    its trace, under a fresh span id.

    Runs on every traced call: the header is built here in one step (each step cost the
    caller a few hundred instructions a call), without a TraceContext for it.
    """
    if context is UNSTARTED:
        context = started() or context
    try:  # _span_id(), without a call of its own
        span_id = _span_ids.pop()
    except IndexError:
        span_id = _draw_span_ids()
    return f"00-{context.trace_id}-{span_id}-{context.flags}", context.state


def from_headers(headers: Mapping[str, str] | None) -> TraceContext | None:
    """The context a message's ``traceparent`` and ``tracestate`` headers name, or None."""
    if not headers:
        return None
    traceparent = headers.get(TRACEPARENT)
    return None if traceparent is None else parse(traceparent, headers.get(TRACESTATE))


def parse(traceparent: str | None, tracestate: str | None = None) -> TraceContext | None:
    """The context a valid ``traceparent`` names (the sender's span as ``span_id``), or None.

    Follows W3C Trace Context: a version this code does not know is read for the fields it
    does know; version ``ff``, all-zero ids, upper-case hex or anything over the size limit
    is no context at all. An invalid ``tracestate`` is dropped, the ``traceparent`` kept.
    """
    if not traceparent or len(traceparent) > _MAX_TRACEPARENT:
        return None
    match = _TRACEPARENT_RE.fullmatch(traceparent)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if (
        version == "ff"
        or (version == "00" and rest is not None)
        or trace_id == _ZERO_TRACE
        or span_id == _ZERO_SPAN
    ):
        return None
    # The tuple made directly: TraceContext's own __new__ is a Python call of its own.
    return _new_tuple(TraceContext, (trace_id, span_id, flags, _state(tracestate)))


def _state(tracestate: str | None) -> str:
    if not tracestate or len(tracestate) > _MAX_TRACESTATE:
        return ""
    members = [m.strip(" \t") for m in tracestate.split(",")]
    members = [m for m in members if m]
    if (
        len(members) > _MAX_STATE_MEMBERS
        or not all(_STATE_MEMBER_RE.fullmatch(m) for m in members)
        or len({m.partition("=")[0] for m in members}) < len(members)  # a key twice
    ):
        return ""
    return ",".join(members)
