"""The dashboard's server side: ``/_natsreg/events`` (server-sent events) and ``/_natsreg/ui``,
served by the bridge's real HTTP server against a real nats-server and registry; and the pure
rules beneath them (rates from ``$SRV.STATS``, replaying events over a snapshot, a stream's
bounded outbox). The pages themselves are driven in a browser in test_dashboard.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

import natsreg
from natsreg import bridge, wire
from natsreg.bridge import Auth, BridgeConfig
from natsreg.bridge._dashboard import asset
from natsreg.bridge._events import Outbox
from natsreg.bridge._fleet import Rates, replay
from tests.test_bridge import echo_service, wait_for_instances

Event = tuple[str, Any]


@asynccontextmanager
async def bridge_at(nc: NATS, **settings: Any) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    async with (
        bridge.run(nc, BridgeConfig(**settings), host="127.0.0.1", port=0) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as http,
    ):
        yield running.url, http


class Stream:
    """An open ``/_natsreg/events`` response, read one event (or comment) at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.comments: list[str] = []

    async def next(self, timeout_s: float = 5.0) -> Event:
        name, data = "message", ""
        async with asyncio.timeout(timeout_s):
            async for line in self._lines:
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data += line[6:]
                elif line == "" and data:
                    return name, json.loads(data)
        raise EOFError("the stream ended")

    async def until(self, check: Any, timeout_s: float = 5.0) -> Event:
        """The first event ``check`` accepts, within ``timeout_s`` in all."""
        deadline = time.monotonic() + timeout_s
        while True:
            event = await self.next(max(deadline - time.monotonic(), 0.01))
            if check(*event):
                return event


@asynccontextmanager
async def events(http: httpx.AsyncClient, **headers: str) -> AsyncIterator[Stream]:
    async with http.stream("GET", "/_natsreg/events", headers=headers) as response:
        yield Stream(response)


async def drain(stream: Stream) -> None:
    while True:
        await stream.next(timeout_s=5)


def names(fleet: dict[str, Any]) -> set[str]:
    return {i["name"] for i in fleet["instances"]}


# -- /_natsreg/events against a real registry ------------------------------------------------


async def test_the_event_stream_starts_with_the_fleet_then_follows_changes(
    nc: NATS, prefix: str, unique: str
) -> None:
    first, second = f"a-{unique}", f"b-{unique}"
    async with (
        natsreg.Registry(nc, prefix=prefix, discover_jitter_s=0),
        echo_service(nc, first, prefix),
        bridge_at(nc, prefix=prefix) as (_, http),
    ):
        await wait_for_instances(nc, prefix, first, 1)
        async with events(http) as stream:
            assert stream.response.status_code == 200
            assert stream.response.headers["content-type"].startswith("text/event-stream")
            _, fleet = await stream.until(lambda k, d: k == "fleet")
            assert first in names(fleet) and fleet["error"] == ""
            async with echo_service(nc, second, prefix, version="2.0.0") as svc:
                _, up = await stream.until(lambda k, d: k == "up")
                assert up["instance"]["name"] == second
                assert up["instance"]["version"] == "2.0.0"
                assert {e["name"] for e in up["instance"]["endpoints"]} >= {"echo", "raw"}
                gone = svc.id
            _, down = await stream.until(lambda k, d: k == "down")
            assert down["instance"]["id"] == gone and down["reason"] == "goodbye"
            # Refreshes carry the figures of $SRV.STATS: the service that answered requests
            # shows a rate.
            await http.post(f"/{first}/echo", content=b"{}")
            _, fleet = await stream.until(
                lambda k, d: k == "fleet" and first in d["rates"], timeout_s=8
            )
            assert second not in names(fleet)
            assert fleet["rates"][first]["requests_per_s"] >= 0


async def test_the_fleet_names_a_registry_node_still_warming_up(nc: NATS, prefix: str) -> None:
    # A node with a long discovery window stays warming up for its first seconds.
    async with (
        natsreg.Registry(nc, prefix=prefix, discover_jitter_s=6.0) as node,
        bridge_at(nc, prefix=prefix) as (_, http),
        events(http) as stream,
    ):
        _, fleet = await stream.until(lambda k, d: k == "fleet" and d["warming_nodes"])
        assert node.warming_up
    assert fleet["warming_nodes"] == [node.node_id]
    assert fleet["warming_up"] is True  # no warm node answered: the view may miss instances


async def test_the_event_stream_is_behind_the_bridges_auth_but_the_page_is_not(
    nc: NATS, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_DASHBOARD_TOKEN", "s3cret")
    auth = Auth(scheme="bearer", tokens_env="TEST_DASHBOARD_TOKEN")
    async with (
        natsreg.Registry(nc, prefix=prefix, discover_jitter_s=0),
        bridge_at(nc, prefix=prefix, auth=auth) as (_, http),
    ):
        refused = await http.get("/_natsreg/events")
        wrong = await http.get("/_natsreg/events", headers={"authorization": "Bearer nope"})
        page = await http.get("/_natsreg/ui")
        service_page = await http.get("/_natsreg/ui/service/anything")
        script = await http.get("/_natsreg/ui/dashboard.js")
        unknown = await http.get("/_natsreg/ui/secrets.txt")
        async with events(http, authorization="Bearer s3cret") as stream:
            kind, _ = await stream.until(lambda k, d: k == "fleet")
    assert refused.status_code == wrong.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    # The page holds no data: a browser must load it before it can send a token.
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert service_page.content == page.content
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert script.status_code == 200 and b"/_natsreg/events" in script.content
    assert unknown.status_code == 404
    assert kind == "fleet"


async def test_a_bridge_mounted_under_a_prefix_serves_a_page_that_names_it(nc: NATS) -> None:
    app = bridge.create_app(nc, BridgeConfig())
    transport = httpx.ASGITransport(app=app, root_path="/services")
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        page = await http.get("/services/_natsreg/ui")
        script = await http.get("/services/_natsreg/ui/dashboard.js")
    assert b'src="/services/_natsreg/ui/dashboard.js"' in page.content
    assert script.status_code == 200


async def test_event_streams_beyond_the_limit_are_refused_with_a_reason(
    nc: NATS, prefix: str
) -> None:
    async with bridge_at(nc, prefix=prefix, max_event_streams=1) as (_, http):
        async with events(http) as first:
            assert first.response.status_code == 200
            refused = await http.get("/_natsreg/events")
        # The slot is free once the bridge has seen the first client go.
        deadline = time.monotonic() + 5
        while True:
            async with events(http) as again:
                if again.response.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the first stream's slot was never freed"
            await asyncio.sleep(0.05)
    assert refused.status_code == 503
    assert refused.json()["error"] == "too_many_streams"
    assert "max_event_streams" in refused.json()["message"]


async def test_an_idle_stream_gets_keep_alive_comments_and_ends_when_the_bridge_stops(
    nc: NATS, prefix: str
) -> None:
    config = BridgeConfig(prefix=prefix, event_keepalive_s=0.2, drain_timeout_s=10)
    async with httpx.AsyncClient(timeout=10) as http:
        async with bridge.run(nc, config, port=0) as running:
            request = http.build_request("GET", running.url + "/_natsreg/events")
            response = await http.send(request, stream=True)
            stream = Stream(response)
            # No registry runs: the refresh says why there is no view, and the stream stays.
            _, fleet = await stream.until(lambda k, d: k == "fleet")
            assert "no registry node" in fleet["error"]
            deadline = time.monotonic() + 5
            while not stream.comments and time.monotonic() < deadline:
                await stream.next(timeout_s=5)
            assert stream.comments[0] == ": keep-alive"
            stopping_at = time.monotonic()
        # The bridge stopped: the stream ended cleanly, well before the drain timeout.
        assert time.monotonic() - stopping_at < 5
        with pytest.raises(EOFError):
            await drain(stream)
        await response.aclose()


async def test_the_dashboard_is_off_with_the_registry_view(nc: NATS, prefix: str) -> None:
    async with bridge_at(nc, prefix=prefix, expose_registry=False) as (_, http):
        page = await http.get("/_natsreg/ui")
        stream = await http.get("/_natsreg/events")
    assert page.status_code == stream.status_code == 404


async def test_a_stalled_client_is_dropped_and_the_stream_goes_on_for_others(
    nc: NATS, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "natsreg.bridge")
    async with bridge_at(nc, prefix=prefix, event_buffer_bytes=64 * 1024) as (url, http):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        # A client that asks for the stream and never reads, with a small receive window:
        # the bridge's socket fills up, then its outbox for that client, which is dropped
        # rather than buffered without bound.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        await asyncio.get_running_loop().sock_sendall(
            sock, b"GET /_natsreg/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        try:
            # Registry events, as a registry node publishes them: about 10 MB in all.
            instance = wire.InstanceView(
                id="x", name=f"flood-{prefix}", version="1.0.0", metadata={"pad": "p" * 500}
            )
            instance.metadata.update({f"k{i}": "v" * 500 for i in range(4)})
            for seq in range(1, 4001):
                instance.seq = seq
                event = wire.Event(node="n1", revision=seq, kind="changed", instance=instance)
                await nc.publish(f"{prefix}.events.{instance.name}", wire.encode(event))
            await nc.flush()
            deadline = time.monotonic() + 10
            while "reads too slowly" not in caplog.text and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert "reads too slowly" in caplog.text
            # The slot it held is free, and the others are served.
            async with events(http) as stream:
                await stream.until(lambda k, d: k in ("fleet", "changed"))
                metrics = (await http.get("/_natsreg/metrics")).text
            assert re.search(r"^natsreg_bridge_event_streams_dropped_total [1-9]", metrics, re.M)
            assert re.search(r"^natsreg_bridge_event_streams [1-9]", metrics, re.M)
        finally:
            sock.close()


# -- pure rules --------------------------------------------------------------------------------


def _stats(name: str, instance_id: str, requests: int, errors: int, time_ns: int) -> wire.SrvStats:
    return wire.SrvStats(
        name=name,
        id=instance_id,
        version="1.0.0",
        started="2026-01-01T00:00:00Z",
        endpoints=[
            wire.SrvEndpointStats(
                name="e",
                subject=f"{name}.e",
                queue_group=name,
                num_requests=requests,
                num_errors=errors,
                processing_time=time_ns,
            )
        ],
    )


@pytest.mark.pure
def test_rates_are_the_difference_between_two_rounds_summed_per_service() -> None:
    now = [100.0]
    rates = Rates(clock=lambda: now[0])
    known = {"i1": "users", "i2": "users", "i3": "orders"}
    first = rates.update(
        [_stats("users", "i1", 10, 1, 10_000_000), _stats("users", "i2", 0, 0, 0)], known
    )
    assert first == {}  # one round: nothing to compare yet
    now[0] = 102.0
    second = rates.update(
        [
            _stats("users", "i1", 30, 3, 30_000_000),
            _stats("users", "i2", 20, 0, 60_000_000),
            _stats("orders", "i3", 5, 0, 0),
        ],
        known,
    )
    users = second["users"]
    assert users.requests_per_s == 20.0  # (20 + 20) requests in 2 s
    assert users.errors_per_s == 1.0
    assert users.latency_ms == 2.0  # 80 ms of handling over 40 requests
    assert "orders" not in second  # heard for the first time
    now[0] = 104.0
    idle = rates.update([_stats("users", "i1", 30, 3, 30_000_000)], known)
    assert idle["users"].requests_per_s == 0.0 and idle["users"].latency_ms is None


@pytest.mark.pure
def test_rates_count_only_instances_the_registry_lists_under_their_own_name() -> None:
    now = [0.0]
    rates = Rates(clock=lambda: now[0])
    known = {"i1": "users"}
    rates.update([_stats("users", "i1", 0, 0, 0)], known)
    now[0] = 1.0
    forged = rates.update(
        [
            _stats("users", "i1", 10, 0, 0),
            _stats("users", "i1", 1_000_000, 0, 0),  # a second reply for the same instance
            _stats("users", "ghost", 1_000_000, 0, 0),  # an instance no registry lists
            _stats("orders", "i1", 1_000_000, 0, 0),  # another service's name for it
        ],
        known,
    )
    assert forged["users"].requests_per_s == 10.0 and set(forged) == {"users"}
    now[0] = 2.0
    restarted = rates.update([_stats("users", "i1", 3, 0, 0)], known)
    assert restarted == {}  # its counters went back: no negative rate


@pytest.mark.pure
def test_events_heard_during_a_refresh_win_over_its_older_snapshot() -> None:
    def view(instance_id: str, seq: int, health: wire.Health = "passing") -> wire.InstanceView:
        return wire.InstanceView(
            id=instance_id, name="users", version="1.0.0", seq=seq, health=health
        )

    def event(kind: str, instance: wire.InstanceView) -> wire.Event:
        return wire.Event(node="n", revision=1, kind=kind, instance=instance)  # type: ignore[arg-type]

    snapshot = [view("a", 5), view("b", 5), view("c", 9)]
    replayed = replay(
        snapshot,
        [
            event("down", view("a", 5)),  # died after the snapshot was taken
            event("up", view("d", 1)),  # started after it
            event("health", view("b", 6, "critical")),
            event("health", view("c", 8, "critical")),  # older than the snapshot's view
        ],
    )
    held = {v.id: v for v in replayed}
    assert set(held) == {"b", "c", "d"}
    assert held["b"].health == "critical" and held["c"].health == "passing"


@pytest.mark.pure
def test_an_outbox_over_its_limit_is_dropped_but_always_takes_one_chunk() -> None:
    outbox = Outbox(limit=100)
    assert outbox.put(b"x" * 500)  # larger than the limit, but the outbox was empty
    assert outbox.take() == b"x" * 500
    assert outbox.put(b"y" * 60)
    assert not outbox.put(b"z" * 60)
    assert outbox.dropped and outbox.take() == b""
    assert not outbox.put(b"later")


@pytest.mark.pure
def test_the_dashboard_files_ship_in_the_package() -> None:
    page = asset("/_natsreg/ui")
    assert page is not None and page[0].startswith(b"<!doctype html>")
    assert asset("/_natsreg/ui/service/users") == page
    for name in ("dashboard.js", "dashboard.css"):
        found = asset(f"/_natsreg/ui/{name}")
        assert found is not None and len(found[0]) > 1000
    assert asset("/_natsreg/ui/../_own.py") is None
    assert asset("/_natsreg/ui/index.html.bak") is None
