"""The client's own reply inbox (natsreg/client/_mux.py), on a real nats-server."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import natsreg
from natsreg.client._mux import HeaderLines


async def echo(msg: Msg) -> None:
    await msg.respond(msg.data)


async def connect_collecting_errors(url: str, errors: list[Exception]) -> NATS:
    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    return await nats.connect(url, error_cb=on_error)


async def test_the_inbox_is_subscribed_on_the_first_request_not_before(
    nc: NATS, unique: str
) -> None:
    client = natsreg.Client(nc)
    assert client._transport.mux._sub is None
    await nc.subscribe(f"mux-{unique}.echo", cb=echo)
    assert (await client.request(f"mux-{unique}.echo", b"one")).data == b"one"
    sub = client._transport.mux._sub
    assert sub is not None
    assert (await client.request(f"mux-{unique}.echo", b"two")).data == b"two"
    assert client._transport.mux._sub is sub


async def test_concurrent_requests_each_get_their_own_reply(nc: NATS, unique: str) -> None:
    await nc.subscribe(f"mux-{unique}.echo", cb=echo)
    client = natsreg.Client(nc)
    replies = await asyncio.gather(
        *(client.request(f"mux-{unique}.echo", str(i).encode()) for i in range(300))
    )
    assert [r.data for r in replies] == [str(i).encode() for i in range(300)]
    assert client._transport.mux._waiting == {}


async def test_a_request_nobody_serves_is_a_no_instance_error_at_once(
    nc: NATS, unique: str
) -> None:
    client = natsreg.Client(nc)
    started = time.monotonic()
    with pytest.raises(natsreg.NoInstanceError) as caught:
        await client.request(f"mux-{unique}.nobody", b"", timeout_s=2.0)
    assert time.monotonic() - started < 1.0
    assert caught.value.subject == f"mux-{unique}.nobody"
    assert isinstance(caught.value.__cause__, nats.errors.NoRespondersError)


async def test_a_timeout_is_the_same_error_as_before_and_a_late_reply_is_dropped(
    nats_url: str, unique: str
) -> None:
    errors: list[Exception] = []
    nc = await connect_collecting_errors(nats_url, errors)
    try:
        late = asyncio.Event()

        async def slow(msg: Msg) -> None:
            await asyncio.sleep(0.2)
            await msg.respond(b"too late")
            late.set()

        await nc.subscribe(f"mux-{unique}.slow", cb=slow)
        await nc.subscribe(f"mux-{unique}.echo", cb=echo)
        client = natsreg.Client(nc)
        started = time.monotonic()
        with pytest.raises(natsreg.RequestTimeoutError) as caught:
            await client.request(f"mux-{unique}.slow", b"", timeout_s=0.05)
        assert 0.04 < time.monotonic() - started < 0.15
        assert str(caught.value).startswith(f"no reply from 'mux-{unique}.slow' within 0.05 s")
        assert isinstance(caught.value.__cause__, nats.errors.TimeoutError)
        await asyncio.wait_for(late.wait(), 2)
        await nc.flush()
        # The late reply reached the inbox, found no waiter, and nothing else noticed.
        assert (await client.request(f"mux-{unique}.echo", b"next")).data == b"next"
        assert client._transport.mux._waiting == {}
        assert errors == []
    finally:
        await nc.close()


async def test_a_cancelled_request_leaves_nothing_behind(nc: NATS, unique: str) -> None:
    async def never(msg: Msg) -> None:
        await asyncio.sleep(0.3)
        await msg.respond(b"")

    await nc.subscribe(f"mux-{unique}.never", cb=never)
    client = natsreg.Client(nc)
    call = asyncio.ensure_future(client.request(f"mux-{unique}.never", b"", timeout_s=5))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert client._transport.mux._waiting == {}
    assert client.stats()["in_flight"] == {f"mux-{unique}": 0}


async def test_requests_work_again_after_a_reconnect(nats_url: str, unique: str) -> None:
    nc = await nats.connect(nats_url, reconnect_time_wait=0.05)
    try:
        await nc.subscribe(f"mux-{unique}.echo", cb=echo)
        client = natsreg.Client(nc)
        assert (await client.request(f"mux-{unique}.echo", b"before")).data == b"before"
        reconnects = nc.stats["reconnects"]
        await nc.force_reconnect()
        deadline = time.monotonic() + 5
        while nc.stats["reconnects"] == reconnects or not nc.is_connected:
            assert time.monotonic() < deadline, "no reconnect"
            await asyncio.sleep(0.01)
        await nc.flush()
        reply = await client.request(f"mux-{unique}.echo", b"after", timeout_s=2)
        assert reply.data == b"after"
    finally:
        await nc.close()


async def test_aclose_lets_calls_in_flight_finish_then_ends_the_inbox(
    nc: NATS, unique: str
) -> None:
    arrived = asyncio.Event()

    async def slowish(msg: Msg) -> None:
        arrived.set()
        await asyncio.sleep(0.1)
        await msg.respond(msg.data)

    await nc.subscribe(f"mux-{unique}.slowish", cb=slowish)
    client = natsreg.Client(nc)
    call = asyncio.ensure_future(client.request(f"mux-{unique}.slowish", b"in flight"))
    await asyncio.wait_for(arrived.wait(), 10)  # the call is in flight: its service has it
    await client.aclose()
    assert call.done() and call.result().data == b"in flight"
    assert client._transport.mux._sub is None
    await client.aclose()
    # Calls still work after aclose(), on nats-py's own request inbox.
    assert (await client.request(f"mux-{unique}.slowish", b"after")).data == b"after"
    assert client._transport.mux._sub is None


async def test_a_closed_connection_is_a_not_connected_error(nats_url: str, unique: str) -> None:
    nc = await nats.connect(nats_url)
    await nc.subscribe(f"mux-{unique}.echo", cb=echo)
    client = natsreg.Client(nc)
    assert (await client.request(f"mux-{unique}.echo", b"x")).data == b"x"
    await nc.close()
    with pytest.raises(natsreg.NotConnectedError):
        await client.request(f"mux-{unique}.echo", b"x")
    await client.aclose()


async def test_every_request_still_carries_its_budget_and_the_callers_headers(
    nc: NATS, unique: str
) -> None:
    seen: list[dict[str, str]] = []

    async def record(msg: Msg) -> None:
        seen.append(dict(msg.headers or {}))
        await msg.respond(b"")

    await nc.subscribe(f"mux-{unique}.hdr", cb=record)
    client = natsreg.Client(nc)
    await client.request(f"mux-{unique}.hdr", b"", timeout_s=2.0)
    await client.request(f"mux-{unique}.hdr", b"", timeout_s=2.0, headers={"X-A": "1"})
    budget, request_id = natsreg.errors.BUDGET_HEADER, natsreg.errors.REQUEST_ID_HEADER
    assert [set(h) for h in seen] == [{budget, request_id}, {budget, request_id, "X-A"}]
    assert all(1500 < int(h[budget]) <= 2000 for h in seen)
    assert seen[1]["X-A"] == "1"
    assert seen[0][request_id] != seen[1][request_id]  # one id per call


async def test_nats_py_writes_header_lines_as_they_are_and_cleans_other_values(
    nc: NATS, unique: str
) -> None:
    # The contract HeaderLines relies on (natsreg/client/_mux.py): publish cleans a value by
    # calling its strip() and translate(), so the lines natsreg wrote reach the wire as
    # header lines, while a plain value's line breaks become spaces.
    sub = await nc.subscribe(f"mux-{unique}.lines")
    lines = HeaderLines("5\r\nX-B: 2\r\ntraceparent: 00-ab-cd-01")
    await nc.publish(f"mux-{unique}.lines", b"", headers={"X-Lines": lines})
    await nc.publish(f"mux-{unique}.lines", b"", headers={"X-Plain": "5\r\nX-B: 2"})
    first, second = await sub.next_msg(timeout=2), await sub.next_msg(timeout=2)
    assert first.headers == {"X-Lines": "5", "X-B": "2", "traceparent": "00-ab-cd-01"}
    assert second.headers == {"X-Plain": "5  X-B: 2"}


async def test_the_callers_headers_are_sent_as_written_and_cannot_forge_natsregs(
    nc: NATS, unique: str
) -> None:
    seen: list[dict[str, str]] = []

    async def record(msg: Msg) -> None:
        seen.append(dict(msg.headers or {}))
        await msg.respond(b"")

    await nc.subscribe(f"mux-{unique}.hdr", cb=record)
    client = natsreg.Client(nc)
    budget, request_id = natsreg.errors.BUDGET_HEADER, natsreg.errors.REQUEST_ID_HEADER
    subject = f"mux-{unique}.hdr"
    # A value with a line break stays one header; the budget is natsreg's to say.
    await client.request(subject, b"", headers={"X-A": f"1\r\n{request_id}: forged"})
    await client.request(subject, b"", timeout_s=2.0, headers={budget: "99999", "X-A": "1"})
    await client.request(subject, b"", headers={request_id: "mine-1"})
    await client.request(subject, b"", headers={request_id: ""})  # empty: a fresh one
    assert seen[0]["X-A"] == f"1  {request_id}: forged"
    assert seen[0][request_id] != "forged"
    assert 1500 < int(seen[1][budget]) <= 2000 and seen[1]["X-A"] == "1"
    assert seen[2][request_id] == "mine-1"
    assert seen[3][request_id] not in ("", seen[0][request_id])


async def test_requests_with_different_timeouts_each_expire_at_their_own(
    nc: NATS, unique: str
) -> None:
    async def silent(msg: Msg) -> None:
        pass

    await nc.subscribe(f"mux-{unique}.silent", cb=silent)
    client = natsreg.Client(nc)

    async def timed(timeout_s: float) -> float:
        started = time.monotonic()
        with pytest.raises(natsreg.RequestTimeoutError):
            await client.request(f"mux-{unique}.silent", b"", timeout_s=timeout_s)
        return time.monotonic() - started

    # The later requests have the earlier deadlines: each must still get its own.
    took = await asyncio.gather(timed(0.3), timed(0.1), timed(0.2))
    for got, wanted in zip(took, (0.3, 0.1, 0.2), strict=True):
        assert wanted - 0.01 <= got < wanted + 0.08, (got, wanted)
    assert client._transport.mux._waiting == {}
