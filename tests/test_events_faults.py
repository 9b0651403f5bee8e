"""Events through faults, with real processes and real signals: an instance killed with
SIGKILL mid-handler under a steady stream, the nats-server restarted on its file store
mid-stream, and the node leading the stream killed in a 3-node cluster. Nothing is lost in
any of them; duplicates come only from events the killed instance held."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import natsreg
from natsreg.events import EventsUnavailableError
from natsreg.testing import NatsCluster, NatsServer, free_port
from tests.helpers import eventually

EVENTS_PROC = Path(__file__).with_name("events_proc.py")


@contextmanager
def consumer_process(*args: str) -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen(
        [sys.executable, str(EVENTS_PROC), *args], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            yield proc
        finally:
            proc.kill()


async def emit_all(events: natsreg.Events, event_type: str, keys: range) -> None:
    """Emit one event per key, as a careful producer does: an emit that fails is sent again
    with the same key until JetStream confirms it (the key makes that safe)."""
    pending = list(keys)
    while pending:
        results = await asyncio.gather(
            *(events.emit(event_type, {"n": k}, key=str(k)) for k in pending[:200]),
            return_exceptions=True,
        )
        failed = [
            k for k, r in zip(pending[:200], results, strict=True) if isinstance(r, Exception)
        ]
        for r in results:
            if isinstance(r, Exception) and not isinstance(r, EventsUnavailableError):
                raise r
        pending = failed + pending[200:]
        if failed:
            await asyncio.sleep(0.1)


async def test_an_instance_killed_mid_handler_loses_nothing_of_10000_events(
    prefix: str, unique: str
) -> None:
    in_flight = 32
    with NatsServer(jetstream=True) as server:
        nc = await nats.connect(server.url)
        records: list[tuple[int, str, str]] = []

        async def record(msg: Msg) -> None:
            records.append(tuple(msgspec.json.decode(msg.data)))  # type: ignore[arg-type]

        await nc.subscribe(f"record.{unique}", cb=record)
        args = (server.url, f"mail-{unique}", prefix, "user.created", f"record.{unique}")
        extra = ("--max-in-flight", str(in_flight), "--delay-ms", "0.2", "--ack-wait-s", "1")
        with consumer_process(*args, *extra) as victim, consumer_process(*args, *extra):
            events = natsreg.Events(nc, prefix=prefix)
            producer = asyncio.create_task(emit_all(events, "user.created", range(10_000)))

            def victim_busy() -> bool:
                # Both instances well into their share: the one killed is mid-handler.
                ids = Counter(r[2] for r in records)
                return len(ids) == 2 and min(ids.values()) > 500

            await eventually(victim_busy, timeout_s=30, what="both instances handling")
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            await producer
            await eventually(
                lambda: {r[1] for r in records} >= {str(k) for k in range(10_000)},
                timeout_s=60,
                what="every event handled",
            )
        counts = Counter(r[1] for r in records)
        duplicates = sum(c - 1 for c in counts.values())
        print(f"10000 events, {duplicates} handled twice (the killed instance held <= {in_flight})")
        assert set(counts) == {str(k) for k in range(10_000)}, "none lost"
        assert duplicates <= in_flight
        await nc.close()


async def test_a_nats_server_restart_mid_stream_loses_no_event(
    tmp_path: Path, prefix: str, unique: str
) -> None:
    port = free_port()
    store = tmp_path / "js"
    server = NatsServer(port=port, jetstream=True, store_dir=store)
    try:
        nc = await nats.connect(
            server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, connect_timeout=1
        )
        handled: Counter[str] = Counter()
        async with natsreg.announce(nc, f"mail-{unique}", version="1.0.0", prefix=prefix) as svc:

            @svc.on_event("user.created", ack_wait_s=1.0)
            async def welcome(ev: natsreg.Event[Any]) -> None:
                assert ev.key is not None
                handled[ev.key] += 1

            await svc.ready()
            events = natsreg.Events(nc, prefix=prefix, timeout_s=1.0)
            producer = asyncio.create_task(emit_all(events, "user.created", range(3000)))
            await eventually(lambda: len(handled) > 500, timeout_s=30, what="events flowing")
            await asyncio.to_thread(server.stop)
            server = NatsServer(port=port, jetstream=True, store_dir=store)
            await producer
            await eventually(lambda: len(handled) == 3000, timeout_s=60, what="every event handled")
        assert set(handled) == {str(k) for k in range(3000)}
        await nc.close()
    finally:
        server.stop()


async def test_killing_the_node_that_leads_the_stream_stops_neither_emits_nor_handling(
    prefix: str, unique: str
) -> None:
    async with NatsCluster(jetstream=True) as cluster:
        nc = await _connect_any(cluster.urls)
        handled: set[str] = set()
        async with natsreg.announce(nc, f"mail-{unique}", version="1.0.0", prefix=prefix) as svc:

            @svc.on_event("user.created", ack_wait_s=1.0)
            async def welcome(ev: natsreg.Event[Any]) -> None:
                assert ev.key is not None
                handled.add(ev.key)

            await svc.ready()
            js = nc.jetstream()
            info = await js.stream_info(f"{prefix}_events")
            assert info.config.num_replicas == 3, "min(3, the cluster's size)"
            events = natsreg.Events(nc, prefix=prefix, timeout_s=2.0)
            await emit_all(events, "user.created", range(300))
            await eventually(lambda: len(handled) == 300, timeout_s=30, what="first half")
            assert info.cluster is not None and info.cluster.leader is not None
            leader = int(info.cluster.leader.rsplit("-", 1)[1])
            await asyncio.to_thread(cluster.kill, leader)
            await emit_all(events, "user.created", range(300, 600))
            await eventually(
                lambda: len(handled) == 600, timeout_s=60, what="handled after the leader died"
            )
        await nc.close()


async def _connect_any(urls: list[str]) -> NATS:
    return await nats.connect(
        servers=urls, max_reconnect_attempts=-1, reconnect_time_wait=0.1, connect_timeout=1
    )
