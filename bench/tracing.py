"""What carrying the trace context costs a call, in instructions: the steps a caller and a
responder take for one request, outside a trace and inside one, in one process under
valgrind's callgrind.

bench/instructions.py counts whole processes serving real requests, and their counts move by
a few thousand instructions a request from one run to the next (how replies batch depends on
timing), as much as trace context adds. This counts only the steps that differ, each with
natsreg's and nats-py's real functions, so the difference is exact:

- caller:    what ``Client.request`` does about the trace (``_trace.next_hop``, the
             ``traceparent`` added to natsreg's header lines by ``_routing._headers``) and
             nats-py's ``_send_publish`` writing the message (on a client that is not
             connected: the command is built and queued, nothing is sent);
- responder: the received header block parsed by natsreg's parser (``_headers``), and the
             service noting the request's headers for its trace (``_trace.receive``);
- bridge:    an HTTP request's head read (``HeadReader.read``: with a ``traceparent`` from
             the HTTP client, or without), the trace it names (``Head.trace``) made current
             around the call, and the caller's steps above for the call the bridge makes
             (with the bridge's headers, outside a trace when the client sent none).

Callgrind writes what it counted so far whenever the process calls ``getppid()``, which the
script does around each count (N steps after a warm-up) and nothing else in it does.

    python bench/tracing.py                  # 2,000 steps per count (a minute or two)
    python bench/tracing.py --steps 500

Needs valgrind (Debian: apt-get install -y valgrind).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from headers import BUDGET_AND_ID
from instructions import count, counted_main

SUBJECT = "natsreg.svc.echo.echo"
INBOX = "_INBOX.Wq3x9J0PqYH7mRhYvN6zQb.17"
REQUEST_ID = "Wq3x9J0PqYH7mRhYvN6zQb-17"
PAYLOAD = b"x" * 51  # bench/rpc.py's echo
TRACE_ID, SPAN_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT_LINE = f"traceparent: 00-{TRACE_ID}-3e1f0a9b8c7d6e5f-01\r\n\r\n".encode()
STEPS = ("caller", "responder", "bridge")
MODES = ("off", "trace context")


def _steps() -> dict[tuple[str, str], Callable[[], object]]:
    from nats.aio.client import Client as NATS

    from natsreg import _trace
    from natsreg._headers import parse_header_lines
    from natsreg.bridge import BridgeConfig
    from natsreg.bridge._app import METHOD_HEADER, PATH_HEADER
    from natsreg.bridge._head import HeadReader
    from natsreg.client import _traced
    from natsreg.client._routing import _headers

    nc = NATS()

    def call(headers: dict[str, str] | None = None) -> None:
        # natsreg.Client.request's trace part, as it runs with no OpenTelemetry tracer
        # (bench/rpc.py's calls have no headers of their own; the bridge's do).
        traceparent = None
        current = _trace.current.get()
        if current is not None:
            trace = _trace.next_hop(current)
            if headers or trace[1]:
                traceparent, headers = _traced(headers, trace)
            else:
                traceparent = trace[0]
        sent = _headers(headers, 4.999, REQUEST_ID, traceparent)
        step = nc._send_publish(SUBJECT, INBOX, PAYLOAD, len(PAYLOAD), sent)
        for _ in step.__await__():  # run to its end: it never waits, not being connected
            pass
        nc._pending.clear()

    blocks = {"off": BUDGET_AND_ID, "trace context": BUDGET_AND_ID[:-2] + TRACEPARENT_LINE}

    def serve(raw: bytes) -> Callable[[], None]:
        def step() -> None:
            _trace.receive(parse_header_lines(raw))

        return step

    reader = HeadReader(BridgeConfig(prefix="bench"))
    path = "/bench-natsreg/echo"

    def forward(traceparent: bytes | None) -> Callable[[], None]:
        # Bridge._forward's steps up to the call, for a GET from an HTTP client.
        sent = [(b"host", b"127.0.0.1"), (b"user-agent", b"wrk")]
        if traceparent is not None:
            sent.append((b"traceparent", traceparent))
        scope = {
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": sent,
        }

        def step() -> None:
            head = reader.read(scope)
            forwarded = head.forwarded
            forwarded[METHOD_HEADER] = head.method
            forwarded[PATH_HEADER] = path
            trace = head.trace()
            token = _trace.current.set(trace) if trace is not None else None
            try:
                call(forwarded)
            finally:
                if token is not None:
                    _trace.current.reset(token)

        return step

    return {
        ("caller", "off"): call,
        ("caller", "trace context"): call,
        ("responder", "off"): serve(blocks["off"]),
        ("responder", "trace context"): serve(blocks["trace context"]),
        ("bridge", "off"): forward(None),
        ("bridge", "trace context"): forward(f"00-{TRACE_ID}-{SPAN_ID}-01".encode()),
    }


def _run(steps: int) -> None:
    from natsreg import _trace

    for (side, mode), step in _steps().items():
        # A caller in a trace; the bridge is in none until its HTTP client names one.
        traced = side == "caller" and mode == "trace context"
        token = _trace.current.set(_trace.TraceContext(TRACE_ID, SPAN_ID) if traced else None)
        count(step, steps)  # the warm-up teaches the parser the names, as a service's learns
        _trace.current.reset(token)


def main() -> None:
    measured = counted_main(__doc__, __file__, _run, "steps", len(STEPS) * len(MODES))
    if measured is None:
        return
    n, totals = measured
    counts = [total / n for total in totals]
    print(f"\ninstructions per request, {n:,} steps per count, in one process\n")
    print("| side | off | trace context | what trace context adds |")
    print("|---|---:|---:|---:|")
    for i, side in enumerate(STEPS):
        off, traced = counts[2 * i], counts[2 * i + 1]
        print(f"| {side} | {off:,.0f} | {traced:,.0f} | +{traced - off:,.0f} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
