"""At most once, on a real nats-server: a call with a request id runs once on an instance,
however many times it arrives, and a service answers only inbox reply subjects."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import natsreg
from natsreg import subjects
from natsreg.errors import BUDGET_HEADER, CODE_HEADER, ERROR_HEADER, REQUEST_ID_HEADER
from natsreg.service import _dedupe
from tests.helpers import eventually

_ids = itertools.count()


def request_id(label: str) -> str:
    return f"{label}-{next(_ids)}"


class Charges:
    """A service whose endpoints are not idempotent; counts each run by request id."""

    def __init__(self, svc: natsreg.Instance, delay_s: float = 0.0) -> None:
        self.runs: Counter[str] = Counter()
        self.total = 0

        @svc.endpoint("charge")
        async def charge(req: natsreg.Request) -> dict[str, int]:
            self.total += 1
            self.runs[req.headers.get(REQUEST_ID_HEADER, "")] += 1
            await asyncio.sleep(delay_s)
            return {"charge": self.total}

        @svc.endpoint("decline")
        async def decline(req: natsreg.Request) -> None:
            self.total += 1
            raise natsreg.ServiceError(f"card declined (run {self.total})", code=402)

        @svc.endpoint("receipt")
        async def receipt(req: natsreg.Request) -> bytes:
            self.total += 1
            return b"r" * (_dedupe.MAX_REPLY_BYTES + 1)


@asynccontextmanager
async def charge_service(
    nc: NATS, name: str, prefix: str, delay_s: float = 0.0
) -> AsyncIterator[tuple[natsreg.Instance, Charges]]:
    svc = natsreg.announce(nc, name, version="1.0.0", prefix=prefix)
    charges = Charges(svc, delay_s)
    async with svc:
        await nc.flush()
        yield svc, charges


async def call(
    nc: NATS, subject: str, rid: str | None, budget_ms: int | None = None, timeout_s: float = 2.0
) -> Msg:
    headers = {}
    if rid is not None:
        headers[REQUEST_ID_HEADER] = rid
    if budget_ms is not None:
        headers[BUDGET_HEADER] = str(budget_ms)
    return await nc.request(subject, b"{}", timeout=timeout_s, headers=headers or None)


async def test_six_charges_behind_a_rogue_forging_no_responders_each_run_at_most_once(
    nc: NATS, nats_url: str, prefix: str, unique: str
) -> None:
    name = f"pay-{unique}"
    rogue = await nats.connect(nats_url)
    try:
        async with (
            natsreg.Registry(nc, prefix=prefix),
            charge_service(nc, name, prefix, delay_s=0.05) as (svc, charges),
            natsreg.Client(nc, prefix=prefix) as client,
        ):

            async def forge(msg: Msg) -> None:
                # Faster than the real handler: the caller reads "no responders".
                await rogue.publish(msg.reply, b"", headers={"Status": "503"})

            await rogue.subscribe(subjects.direct_subject(prefix, name, svc.id, "charge"), cb=forge)
            await rogue.flush()

            async def listed() -> bool:
                return [i.id for i in await client.view(name)] == [svc.id]

            await eventually(listed, what="the client's view of the charge service")
            outcomes = []
            for _ in range(6):
                try:
                    # No id given: the client makes one per call and sends it on every attempt.
                    await client.request(f"{name}.charge", {}, timeout_s=2.0)
                    outcomes.append("ok")
                except natsreg.NatsregError as exc:
                    outcomes.append(type(exc).__name__)
            # Every attempt reached the real instance too; let the last ones land.
            await asyncio.sleep(0.3)
    finally:
        await rogue.close()
    # Each attempt that reached the instance was a repeat of the first or ran it: a call may
    # not run at all (an open breaker stops it before it is sent), never twice.
    assert "" not in charges.runs, "an attempt came without a request id"
    assert 1 <= len(charges.runs) <= 6, outcomes
    assert max(charges.runs.values()) == 1, (charges.runs, outcomes)
    assert charges.total == len(charges.runs)
    repeats = svc.at_most_once()["replayed"] + svc.at_most_once()["joined"]
    assert repeats >= len(charges.runs), outcomes


async def test_the_same_request_id_sent_twice_gets_the_same_reply_and_runs_once(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with charge_service(nc, f"pay-{unique}", prefix) as (_, charges):
        rid = request_id("twice")
        first = await call(nc, f"pay-{unique}.charge", rid)
        second = await call(nc, f"pay-{unique}.charge", rid)
    assert msgspec.json.decode(first.data) == {"charge": 1}
    assert second.data == first.data
    assert charges.total == 1


async def test_a_repeat_of_a_failed_call_gets_the_same_error_and_runs_once(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with charge_service(nc, f"pay-{unique}", prefix) as (_, charges):
        rid = request_id("declined")
        first = await call(nc, f"pay-{unique}.decline", rid)
        second = await call(nc, f"pay-{unique}.decline", rid)
    assert first.headers is not None
    assert first.headers[CODE_HEADER] == "402"
    assert first.headers[ERROR_HEADER] == "card declined (run 1)"
    assert second.headers == first.headers
    assert charges.total == 1


async def test_the_same_request_id_sent_twice_at_once_to_a_slow_handler_runs_once(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with charge_service(nc, f"pay-{unique}", prefix, delay_s=0.3) as (_, charges):
        rid = request_id("concurrent")
        first, second = await asyncio.gather(
            call(nc, f"pay-{unique}.charge", rid), call(nc, f"pay-{unique}.charge", rid)
        )
    assert charges.total == 1
    assert first.data == second.data == b'{"charge":1}'


async def test_after_the_remembered_window_the_same_id_runs_again(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with charge_service(nc, f"pay-{unique}", prefix) as (_, charges):
        rid = request_id("window")
        await call(nc, f"pay-{unique}.charge", rid, budget_ms=50)
        await call(nc, f"pay-{unique}.charge", rid, budget_ms=50)
        assert charges.total == 1
        await asyncio.sleep(0.05 + _dedupe.MARGIN_S + 0.1)
        again = await call(nc, f"pay-{unique}.charge", rid, budget_ms=50)
    assert again.data == b'{"charge":2}'
    assert charges.total == 2


async def test_the_same_id_on_two_endpoints_runs_both(nc: NATS, prefix: str, unique: str) -> None:
    async with charge_service(nc, f"pay-{unique}", prefix) as (_, charges):
        rid = request_id("two-endpoints")
        await call(nc, f"pay-{unique}.charge", rid)
        await call(nc, f"pay-{unique}.decline", rid)
    assert charges.total == 2


async def test_a_repeat_of_a_call_whose_reply_was_too_large_to_keep_fails_with_409_unrun(
    nc: NATS, prefix: str, unique: str
) -> None:
    async with charge_service(nc, f"pay-{unique}", prefix) as (svc, charges):
        rid = request_id("large")
        first = await call(nc, f"pay-{unique}.receipt", rid)
        second = await call(nc, f"pay-{unique}.receipt", rid)
    assert len(first.data) == _dedupe.MAX_REPLY_BYTES + 1
    assert second.headers is not None
    assert second.headers[CODE_HEADER] == "409"
    assert f"request {rid} already ran" in second.headers[ERROR_HEADER]
    assert charges.total == 1
    assert svc.at_most_once()["not_kept"] == 1


@pytest.mark.parametrize("hostile", ["x" * 65, "two words", "caf\u00e9"])
async def test_a_hostile_request_id_is_served_as_if_absent(
    nc: NATS, prefix: str, unique: str, hostile: str
) -> None:
    async with charge_service(nc, f"pay-{unique}", prefix) as (svc, charges):
        await call(nc, f"pay-{unique}.charge", hostile)
        await call(nc, f"pay-{unique}.charge", hostile)
        assert charges.total == 2
        assert svc.dropped["request_id"] == 2
        assert svc.at_most_once()["remembered"] == 0


async def test_requests_without_an_id_run_every_time(nc: NATS, prefix: str, unique: str) -> None:
    async with charge_service(nc, f"pay-{unique}", prefix) as (svc, charges):
        for _ in range(3):
            await call(nc, f"pay-{unique}.charge", None)
    assert charges.total == 3
    assert svc.at_most_once()["remembered"] == 0


async def test_an_endpoint_declared_idempotent_is_not_remembered_and_a_repeat_runs_again(
    nc: NATS, prefix: str, unique: str
) -> None:
    runs = 0
    async with natsreg.announce(nc, f"lookup-{unique}", version="1.0.0", prefix=prefix) as svc:

        @svc.endpoint("get", idempotent=True)
        async def get(req: natsreg.Request) -> dict[str, int]:
            nonlocal runs
            runs += 1
            return {"run": runs}

        await svc.ready()
        rid = request_id("idempotent")
        first = await call(nc, f"lookup-{unique}.get", rid)
        second = await call(nc, f"lookup-{unique}.get", rid)
        assert svc.at_most_once()["remembered"] == 0
    assert (msgspec.json.decode(first.data), msgspec.json.decode(second.data)) == (
        {"run": 1},
        {"run": 2},
    )


async def test_a_request_whose_reply_subject_is_no_inbox_is_neither_run_nor_answered(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"pay-{unique}"
    reflected: list[Msg] = []
    async with charge_service(nc, name, prefix) as (svc, charges):

        async def victim(msg: Msg) -> None:
            reflected.append(msg)

        await nc.subscribe(f"victim-{unique}.users", cb=victim)
        for reply in (f"victim-{unique}.users", f"{prefix}.announce.{name}.x"):
            await nc.publish(f"{name}.charge", b"{}", reply=reply)
            await nc.publish(
                subjects.direct_subject(prefix, name, svc.id, "charge"), b"{}", reply=reply
            )
        await eventually(lambda: svc.dropped["reply_subject"] == 4, what="4 refusals")
        # An inbox reply still works: the service is serving, and refused only those.
        ok = await call(nc, f"{name}.charge", None)
        await asyncio.sleep(0.1)
    assert ok.data == b'{"charge":1}'
    assert charges.total == 1
    assert reflected == []


async def test_srv_queries_answer_only_inbox_reply_subjects(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"pay-{unique}"
    reflected: list[Msg] = []
    async with charge_service(nc, name, prefix) as (svc, _):

        async def victim(msg: Msg) -> None:
            reflected.append(msg)

        await nc.subscribe(f"victim-{unique}.users", cb=victim)
        for verb in ("PING", "INFO", "STATS"):
            await nc.publish(subjects.srv_subject(verb, name), b"", reply=f"victim-{unique}.users")
        await eventually(lambda: svc.dropped["reply_subject"] == 3, what="3 refusals")
        info = await nc.request(subjects.srv_subject("INFO", name, svc.id), b"", timeout=2)
        await asyncio.sleep(0.1)
    assert msgspec.json.decode(info.data)["name"] == name
    assert reflected == []
