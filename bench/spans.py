"""What OpenTelemetry spans cost, in instructions: the SDK's own spans against natsreg's.

A call with spans on makes two: a CLIENT span in the caller and a SERVER span in the service
(natsreg/_otel.py). This counts, in one process under valgrind's callgrind, N iterations of
each mode below, each after a warm-up, every trace sampled, the spans going to an exporter
that drops them:

- sdk-span:        ``with tracer.start_as_current_span("x"): pass``, the SDK's least span;
- sdk-span-attrs:  the same, of kind CLIENT with natsreg's four semantic-convention attributes;
- sdk-pair:        what natsreg does for one call, with the SDK's own spans: its CLIENT span
                   under a remote parent and the ``traceparent`` formatted, that header
                   parsed as a service would, its SERVER span made current (in a context
                   of its own, as a handler's task), both ended
                   (``_otel.client_span``, ``_otel.server_span``, ``_otel.end``), as it
                   does for a tracer that is not the SDK's;
- natsreg-pair:    the same with natsreg's spans recorded for the SDK's tracer
                   (``natsreg/_otelspans.py``), what a call costs with the SDK configured;

each with the batch span processor (what a user configures, and bench/rpc.py uses; its
queue flushed at the end of each count, so its export thread's work is counted) and with the
simple one. Callgrind is told to write what it counted so far whenever the process calls
``getppid()``, which the script does around each count and nothing else in it does.

    python bench/spans.py                  # 2,000 iterations per mode (a few minutes)
    python bench/spans.py --iterations 500

Needs valgrind (Debian: apt-get install -y valgrind) and natsreg[otel] with the SDK.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable
from typing import Any

from instructions import count, counted_main

MODES = ("sdk-span", "sdk-span-attrs", "sdk-pair", "natsreg-pair")
PROCESSORS = ("batch", "simple")


def _step(mode: str, processor: str) -> tuple[Callable[[], None], Any]:
    """One iteration of ``mode`` with a provider of its own set up for ``processor``, and
    that provider."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.trace import SpanKind

    from natsreg import _otel, _trace

    class Discard(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    make = BatchSpanProcessor if processor == "batch" else SimpleSpanProcessor
    provider.add_span_processor(make(Discard()))
    trace._TRACER_PROVIDER = provider  # as bench/rpc.py does: one provider per count
    tracer = provider.get_tracer("natsreg")  # the SDK's own
    recorder = _otel.tracer()  # natsreg's for it (natsreg/_otelspans.py)
    assert recorder is not None and recorder is not tracer
    subject = "natsreg.svc.echo.echo"

    if mode == "sdk-span":

        def step() -> None:
            with tracer.start_as_current_span("x"):
                pass

    elif mode == "sdk-span-attrs":
        attributes = {
            "messaging.system": "nats",
            "messaging.operation.name": "request",
            "messaging.operation.type": "send",
            "messaging.destination.name": subject,
        }

        def step() -> None:
            with tracer.start_as_current_span("x", kind=SpanKind.CLIENT, attributes=attributes):
                pass

    else:
        # Inside a trace, as a handler's nested call or a bridge's request is.
        trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        _trace.current.set(_trace.TraceContext(trace_id, span_id))

        pair_tracer = tracer if mode == "sdk-pair" else recorder

        def serve(traceparent: str, tracestate: str) -> None:
            parent = _trace.parse(traceparent, tracestate)
            server, token = _otel.server_span(pair_tracer, subject, "q", parent)
            _otel.end(server, None, token)

        def step() -> None:
            client, (traceparent, tracestate) = _otel.client_span(pair_tracer, subject)
            # In a context of its own, as a handler's task is: what the SERVER span leaves
            # in it (the handler's trace) is not the next call's parent.
            contextvars.copy_context().run(serve, traceparent, tracestate)
            _otel.end(client, None)

    return step, provider


def _run(iterations: int) -> None:
    for mode in MODES:
        for processor in PROCESSORS:
            step, provider = _step(mode, processor)
            count(step, iterations, provider.force_flush)
            provider.shutdown()  # its export thread ends: nothing of it in the next count


def main() -> None:
    measured = counted_main(__doc__, __file__, _run, "iterations", len(MODES) * len(PROCESSORS))
    if measured is None:
        return
    n, counts = measured
    print(f"\ninstructions per iteration, {n:,} iterations per mode, in one process\n")
    print("| mode | " + " | ".join(f"{p} processor" for p in PROCESSORS) + " |")
    print("|---|" + "---:|" * len(PROCESSORS))
    for i, mode in enumerate(MODES):
        cells = counts[i * len(PROCESSORS) : (i + 1) * len(PROCESSORS)]
        print(f"| {mode} | " + " | ".join(f"{c / n:,.0f}" for c in cells) + " |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
