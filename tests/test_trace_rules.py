"""The W3C trace context rules, without a server: what is accepted, what is ignored."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from natsreg import _trace
from natsreg._trace import TraceContext

pytestmark = pytest.mark.pure

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


def test_a_valid_traceparent_names_its_trace_its_senders_span_and_flags() -> None:
    assert _trace.parse(VALID) == TraceContext(TRACE, SPAN, "01", "")
    assert _trace.parse(f"00-{TRACE}-{SPAN}-00") == TraceContext(TRACE, SPAN, "00", "")


def test_a_later_version_is_read_for_the_fields_this_one_knows() -> None:
    assert _trace.parse(f"cc-{TRACE}-{SPAN}-01-what-comes-later") == TraceContext(
        TRACE, SPAN, "01", ""
    )
    assert _trace.parse(f"01-{TRACE}-{SPAN}-01") == TraceContext(TRACE, SPAN, "01", "")


@pytest.mark.parametrize(
    "forged",
    [
        "",
        "garbage",
        VALID.upper(),  # upper-case hex
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE}-{SPAN}-1",
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}0-01",
        f"ff-{TRACE}-{SPAN}-01",  # version ff is forbidden
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE}-{SPAN}-0g",
        f" {VALID}",
        f"{VALID}\r\nNatsreg-Budget-Ms: 1",
        f"cc-{TRACE}-{SPAN}-01x",  # a later version still separates its fields with '-'
        f"cc-{TRACE}-{SPAN}-01-" + "x" * 300,  # over the size limit
        f"00_{TRACE}_{SPAN}_01",
    ],
)
def test_a_malformed_or_forged_traceparent_names_no_trace(forged: str) -> None:
    assert _trace.parse(forged) is None
    assert _trace.parse(forged, "vendor=value") is None


def test_a_valid_tracestate_travels_and_an_invalid_one_is_dropped() -> None:
    state = _trace.parse(VALID, "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE,,t@sys=x y")
    assert state is not None and state.state == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,t@sys=x y"
    for bad in [
        "Upper=1",  # keys are lower-case
        "novalue",
        "k= ",  # an empty value
        "k=a=b",
        "k=1,j=2,k=3",  # a key twice
        "k=a\r\nx=y",
        ",".join(f"k{i}=v" for i in range(33)),  # over 32 members
        "k=" + "v" * 600,  # over 512 characters
    ]:
        context = _trace.parse(VALID, bad)
        assert context == TraceContext(TRACE, SPAN, "01", ""), bad


def test_each_call_keeps_the_trace_and_draws_a_span_id_of_its_own() -> None:
    parent = TraceContext(TRACE, SPAN, "00", "k=v")
    hops = [_trace.parse(*_trace.next_hop(parent)) for _ in range(50)]
    assert {h.trace_id for h in hops if h} == {TRACE}
    assert {(h.flags, h.state) for h in hops if h} == {("00", "k=v")}
    spans = {h.span_id for h in hops if h}
    assert len(spans) == 50 and SPAN not in spans


def test_a_call_from_a_handler_whose_request_brought_no_trace_starts_one() -> None:
    token = _trace.current.set(_trace.UNSTARTED)
    try:
        sent = [_trace.parse(*_trace.next_hop(_trace.UNSTARTED)) for _ in range(3)]
        own = _trace.ids()
    finally:
        _trace.current.reset(token)
    assert own is not None and len(own[0]) == 32 and int(own[0], 16)
    # One trace for the handler's calls and its log lines, a span id for each call.
    assert {h.trace_id for h in sent if h} == {own[0]}
    assert len({h.span_id for h in sent if h} | {own[1]}) == 4
    assert {h.flags for h in sent if h} == {"01"}


def test_the_outgoing_headers_parse_back_to_the_context_they_carry() -> None:
    context = TraceContext(TRACE, SPAN)
    traceparent, state = _trace.outgoing(context)
    assert state == ""
    assert _trace.parse(traceparent) == context
    with_state = context._replace(state="k=v")
    assert _trace.parse(*_trace.outgoing(with_state)) == with_state


def test_a_handlers_trace_starts_on_first_use_and_stays() -> None:
    token = _trace.current.set(_trace.UNSTARTED)
    try:
        first = _trace.ids()
        assert first is not None and len(first[0]) == 32
        assert _trace.ids() == first
    finally:
        _trace.current.reset(token)
    assert _trace.ids() is None


async def test_a_handlers_trace_is_read_from_its_headers_on_first_use() -> None:
    # In a task of its own, as a handler runs: what it sets stays in it.
    async def handler(traceparent: str | None) -> tuple[str, str] | None:
        _trace.receive(
            None if traceparent is None else {"traceparent": traceparent, "tracestate": "k=v"}
        )
        assert _trace.current.get() is _trace.UNSTARTED  # nothing read yet
        return _trace.ids()

    assert await asyncio.create_task(handler(VALID)) == (TRACE, SPAN)
    for forged in (None, VALID.upper(), "x" * 10_000):
        ids = await asyncio.create_task(handler(forged))
        assert ids is not None and ids[0] != TRACE and len(ids[0]) == 32
    assert _trace.ids() is None


def test_span_ids_drawn_many_at_a_time_are_each_handed_out_once() -> None:
    parent = TraceContext(TRACE, SPAN)
    # Across several refills of the pool, and new traces drawing from it too.
    hops = [_trace.parse(*_trace.next_hop(parent)) for _ in range(3 * _trace._SPAN_IDS + 5)]
    spans = [h.span_id for h in hops if h] + [_trace._new_trace().span_id for _ in range(50)]
    assert len(spans) == 3 * _trace._SPAN_IDS + 55
    assert len(set(spans)) == len(spans)
    assert all(len(s) == 16 and int(s, 16) >= 0 for s in spans)


def test_a_forked_child_hands_out_no_span_id_its_parent_holds() -> None:
    # In a process of its own: a fork from pytest's, which may run threads, would warn.
    script = """
import os
from natsreg import _trace
_trace._span_id()  # the pool now holds the parent's next ids
pending = set(_trace._span_ids)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write, " ".join(_trace._span_id() for _ in range(5)).encode())
    os._exit(0)
os.close(write)
child = os.read(read, 4096).decode().split()
os.waitpid(pid, 0)
assert len(child) == 5 and not pending & set(child), (pending & set(child))
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "ok", done.stderr
