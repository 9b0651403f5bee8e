"""natsreg's CLIENT and SERVER spans for the OpenTelemetry SDK's tracer, recorded for a
fraction of what the SDK's own span costs.

The SDK's span checks every attribute as it is set and guards every field with a lock, and
the SDK runs its tracer's self-metrics and the processors' ``_on_ending`` on each: at a bare
echo, one SDK span costs about what natsreg's whole responder spends on the request
(bench/RESULTS.md, "Tracing"). natsreg's own spans carry a fixed set of attributes it knows
to be valid, so for a tracer of the SDK (``opentelemetry.sdk.trace.Tracer``, what
``TracerProvider.get_tracer`` gives) :class:`Recorder` records them itself, with everything
else the provider's: its sampler decides, its id generator draws the ids, its span
processors see the span start and receive it ended, as the SDK's ``ReadableSpan``, with its
resource, so its exporters send it like any other span. Two things of the SDK's span it does
not do: the tracer's self-metrics, and the processors' experimental, private ``_on_ending``
(called before ``on_end``, where a newer SDK has it); a processor that relies on that hook
does not see natsreg's spans through it, only through ``on_start`` and ``on_end``.

What code running in a handler does with the current span (``trace.get_current_span()``:
attributes, events, links, status, a recorded exception, a new name) is kept, checked
against the provider's limits as the SDK checks it. Any other tracer (another SDK, a
vendor's) makes natsreg's spans through the OpenTelemetry API as before (``natsreg._otelcalls``).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from time import time_ns
from typing import Any

from opentelemetry import trace as api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, Tracer
from opentelemetry.sdk.trace.sampling import DEFAULT_ON, Decision
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util import types

from ._spancontext import span_context

__all__ = ["RecordedSpan", "Recorder"]

log = logging.getLogger("natsreg.otel")

# The W3C level-2 "random trace id" flag, where this API knows it (1.37+).
_RANDOM: int = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
_UNSET = Status(StatusCode.UNSET)
# More than natsreg gives any span of its own (five, and error.type on failure).
_OWN_ATTRIBUTES = 8


class Recorder:
    """Starts natsreg's spans for one SDK tracer, with what it reads from the tracer once:
    its sampler, id generator, resource and span processors, the provider's own objects (a
    processor added to the provider later is seen too)."""

    __slots__ = (
        "_bounded",
        "_enabled",
        "_ids",
        "_random",
        "_sampler",
        "limits",
        "processor",
        "resource",
        "scope",
    )

    def __init__(self, tracer: Tracer) -> None:
        self._sampler = tracer.sampler
        self._ids = tracer.id_generator
        self.processor = tracer.span_processor
        self.resource = tracer.resource
        # The scope the tracer was made for (its name, version, schema and attributes).
        self.scope: InstrumentationScope = getattr(tracer, "_instrumentation_scope", None) or (
            InstrumentationScope(tracer.instrumentation_info.name)
        )
        # Read by the SDK on each span, so the checks a user's writes get are the provider's.
        self.limits: SpanLimits = getattr(tracer, "_span_limits", None) or SpanLimits()
        # Limits tighter than the defaults bound natsreg's own attributes too, from the start,
        # as the SDK's span does; the defaults leave them as they are.
        self._bounded = self.limits.max_attribute_length is not None or (
            self.limits.max_span_attributes is not None
            and self.limits.max_span_attributes < _OWN_ATTRIBUTES
        )
        # A tracer the provider's configurator turned off makes no spans (SDK 1.34+).
        self._enabled = getattr(tracer, "_is_enabled", None)
        is_random = getattr(self._ids, "is_trace_id_random", None)
        self._random = _RANDOM if is_random is not None and is_random() else 0

    def start(
        self, name: str, kind: SpanKind, attributes: Mapping[str, str], parent: SpanContext | None
    ) -> api.Span:
        """A started span under ``parent`` (a new trace if None), as the SDK's
        ``Tracer.start_span`` makes it: a :class:`RecordedSpan` if the sampler records it,
        else one that records nothing and carries the ids on."""
        if parent is None:
            trace_id = self._ids.generate_trace_id()
            flags, sampled, state = self._random, True, None
        else:
            # Unpacked at once: each of SpanContext's and TraceFlags' properties is a call.
            trace_id, _, _, parent_flags, state, _ = parent
            flags, sampled = parent_flags & _RANDOM, bool(parent_flags & TraceFlags.SAMPLED)
        if self._enabled is not None and not self._enabled():
            # A tracer the provider's configurator turned off: no span, the trace goes on.
            record = False
        elif self._sampler is DEFAULT_ON:
            # The provider's default: ParentBased(ALWAYS_ON)'s answer, without its three calls
            # through the context and a SamplingResult per span.
            record = sampled
            flags |= TraceFlags.SAMPLED if record else 0
        else:
            context = None if parent is None else api.set_span_in_context(NonRecordingSpan(parent))
            result = self._sampler.should_sample(context, trace_id, name, kind, attributes, ())
            record = result.decision is not Decision.DROP
            flags |= TraceFlags.SAMPLED if result.decision is Decision.RECORD_AND_SAMPLE else 0
            state, attributes = result.trace_state, result.attributes
        own = span_context(trace_id, self._ids.generate_span_id(), False, flags, state)
        if not record:
            return NonRecordingSpan(own)
        span = RecordedSpan(self, name, own, parent, kind, attributes)
        if self._bounded:
            span.set_attributes({})
        self.processor.on_start(span)  # type: ignore[arg-type]
        return span


class RecordedSpan(api.Span, ReadableSpan):
    """One of natsreg's spans: while it runs, the OpenTelemetry API's span that a handler's
    code writes to; ended, the SDK's ``ReadableSpan`` the provider's span processors
    receive, as the SDK's own span is both. It takes no writes once ended. Its attributes
    stay the mapping natsreg made until something else writes one: then they become the
    SDK's bounded, checked attributes."""

    def __init__(
        self,
        recorder: Recorder,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Mapping[str, Any],
    ) -> None:
        ReadableSpan.__init__(
            self,
            name=name,
            context=context,
            parent=parent,
            resource=recorder.resource,
            attributes=attributes,
            kind=kind,
            status=_UNSET,
            start_time=time_ns(),
            instrumentation_scope=recorder.scope,
        )
        self._recorder = recorder

    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value]

    def is_recording(self) -> bool:
        return self._end_time is None

    def end(self, end_time: int | None = None) -> None:
        if self._ended("end"):
            return
        self._end_time = end_time if end_time is not None else time_ns()
        self._recorder.processor.on_end(self)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if not self._ended("set an attribute on"):
            self._writable()[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if not self._ended("set attributes on"):
            writable = self._writable()
            for key, value in attributes.items():
                writable[key] = value

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._ended("add an event to"):
            return
        limits = self._recorder.limits
        if not isinstance(self._events, BoundedList):
            self._events = BoundedList(limits.max_events)
        checked = BoundedAttributes(
            limits.max_event_attributes, attributes, max_value_len=limits.max_attribute_length
        )
        self._events.append(Event(name, checked, timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._ended("add a link to") or not (
            context.is_valid or attributes or context.trace_state
        ):
            return
        limits = self._recorder.limits
        if not isinstance(self._links, BoundedList):
            self._links = BoundedList(limits.max_links)
        checked = BoundedAttributes(
            limits.max_link_attributes, attributes, max_value_len=limits.max_attribute_length
        )
        self._links.append(Link(context, checked))

    def update_name(self, name: str) -> None:
        if not self._ended("rename"):
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK's span: OK is final, UNSET is no change.
        if self._ended("set the status of") or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        # The event the SDK's span records, by the semantic conventions for exceptions.
        kind = type(exception)
        module = kind.__module__
        event: dict[str, types.AnyValue] = {
            "exception.type": kind.__qualname__
            if module in ("builtins", "")
            else f"{module}.{kind.__qualname__}",
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        event.update(attributes or {})
        self.add_event("exception", event, timestamp)

    def _writable(self) -> BoundedAttributes:
        if not isinstance(self._attributes, BoundedAttributes):
            limits = self._recorder.limits
            self._attributes = BoundedAttributes(
                limits.max_span_attributes,
                self._attributes,
                immutable=False,
                max_value_len=limits.max_attribute_length,
            )
        return self._attributes

    def _ended(self, what: str) -> bool:
        if self._end_time is None:
            return False
        log.warning("cannot %s span %r: it has ended", what, self._name)
        return True
