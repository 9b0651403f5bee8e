"""Durable events: natsreg against raw nats-py JetStream in the same run, and against
Moleculer's balanced events when an instance is killed with SIGKILL.

- emit:     events stored per second, 64 emits in flight. raw: ``js.publish(subject, data)``;
            natsreg: ``Events.emit(type, data)`` (both wait for JetStream's PubAck).
- consume:  events handled per second from a stream already holding them. raw: a durable
            pull consumer, ``fetch(64)`` in a loop and ``msg.ack()`` each; natsreg: an
            ``on_event`` handler (``max_in_flight=64``).
- latency:  one event at a time, from before the emit to the handler: p50 and p99.
- kill -9:  10,000 events emitted at a steady 2,000/s to a service of two instances (each its
            own process); one is killed with SIGKILL after 1 s. Counted from what the handlers
            printed: events never handled (lost) and handled twice. natsreg, then Moleculer
            0.14 (its NATS transporter, defaults) with the same numbers, where node and
            Moleculer are installed (``--moleculer``).

- instructions (``--instructions N``): the CPU instructions the consuming process executes per
            event, counted by valgrind's callgrind (as bench/instructions.py does): a process
            consumes N, another 4N stored events, and the difference over 3N is one event's
            cost with start-up cancelled out. Deterministic where events/s on a shared machine
            is not.

Goal: natsreg >= 0.9x raw on emit and consume, p50 latency <= 1.1x raw; 0 lost under kill -9.

    python bench/events.py                 # 5 rounds of each comparison, then kill -9 (natsreg)
    python bench/events.py --rounds 3      # 3 rounds
    python bench/events.py --quick         # 2 rounds, fewer events
    python bench/events.py --instructions 500   # consume: instructions per event (valgrind)
    npm install --prefix DIR moleculer@0.14.36 nats@2.29.3
    NODE_PATH=DIR/node_modules python bench/events.py --moleculer   # and Moleculer's kill -9
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.js import api

import natsreg
from natsreg import subjects
from natsreg.events import EventsUnavailableError
from natsreg.testing import NatsServer

HERE = Path(__file__).resolve().parent
PAYLOAD = b'{"id": 7, "email": "ada@example.com", "name": "Ada Lovelace"}'
IN_FLIGHT = 64


# -- emit ------------------------------------------------------------------------------------


async def emit_rate(count: int, send: Callable[[int], Awaitable[object]]) -> float:
    async def worker(first: int) -> None:
        for n in range(first, count, IN_FLIGHT):
            await send(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(IN_FLIGHT)))
    return count / (time.perf_counter() - started)


async def emit_round(nc: NATS, prefix: str, count: int, natsreg_first: bool) -> dict[str, float]:
    js = nc.jetstream()
    events = natsreg.Events(nc, prefix=prefix)
    await events.ensure()
    subject = subjects.event_subject(prefix, "bench.emitted", "0")
    senders: dict[str, Callable[[int], Awaitable[object]]] = {
        "raw": lambda n: js.publish(subject, PAYLOAD),
        "natsreg": lambda n: events.emit("bench.emitted", PAYLOAD),
    }
    order = ["natsreg", "raw"] if natsreg_first else ["raw", "natsreg"]
    return {mode: await emit_rate(count, senders[mode]) for mode in order}


# -- consume and latency ---------------------------------------------------------------------


class RawConsumer:
    """A durable pull consumer: fetch(64) in a loop, ack each, as nats-py's docs show."""

    def __init__(self, nc: NATS, stream: str, subject: str, name: str) -> None:
        self.nc, self.stream, self.subject, self.name = nc, stream, subject, name
        self.seen = 0
        self.on_event: Callable[[bytes], None] = lambda data: None

    async def run(self) -> None:
        js = self.nc.jetstream()
        await js.add_consumer(
            self.stream,
            api.ConsumerConfig(
                durable_name=self.name,
                filter_subject=self.subject,
                ack_policy=api.AckPolicy.EXPLICIT,
                max_ack_pending=1000,
            ),
        )
        sub = await js.pull_subscribe_bind(durable=self.name, stream=self.stream)
        while True:
            try:
                msgs = await sub.fetch(IN_FLIGHT, timeout=5)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                self.on_event(msg.data)
                self.seen += 1
                await msg.ack()


async def consume_round(url: str, prefix: str, count: int, flip: bool) -> dict[str, float]:
    order = ("natsreg", "raw") if flip else ("raw", "natsreg")
    return {mode: await consume_one(url, prefix, count, mode) for mode in order}


async def consume_one(url: str, prefix: str, count: int, mode: str) -> float:
    nc, consumer_nc = await nats.connect(url), await nats.connect(url)
    events = natsreg.Events(nc, prefix=prefix)
    event_type = f"bench.{mode}"
    await asyncio.gather(*(events.emit(event_type, PAYLOAD) for _ in range(count)))
    done = asyncio.Event()
    seen = 0
    first = last = 0.0

    def count_one(data: bytes) -> None:
        # From the first event handled to the last: creating the consumer is not consuming.
        nonlocal seen, first, last
        seen += 1
        if seen == 1:
            first = time.perf_counter()
        if seen == count:
            last = time.perf_counter()
            done.set()

    await consuming(consumer_nc, prefix, event_type, mode, count_one, done.wait)
    rate = (count - 1) / (last - first)
    await nc.close()
    await consumer_nc.close()
    return rate


async def consuming(
    nc: NATS,
    prefix: str,
    event_type: str,
    mode: str,
    on_event: Callable[[bytes], None],
    body: Callable[[], Awaitable[object]],
) -> None:
    """Run ``body`` while ``on_event`` is called for each event, by a raw pull consumer or
    by a natsreg handler."""
    if mode == "raw":
        raw = RawConsumer(
            nc,
            f"{prefix}_events",
            subjects.event_subject(prefix, event_type, "*"),
            f"raw-{event_type.replace('.', '-')}",
        )
        raw.on_event = on_event
        task = asyncio.create_task(raw.run())
        await body()
        task.cancel()
        return
    async with natsreg.announce(nc, "bench-consumer", version="1.0.0", prefix=prefix) as svc:

        @svc.on_event(event_type, max_in_flight=IN_FLIGHT)
        async def handle(ev: natsreg.Event[bytes]) -> None:
            on_event(ev.data)

        await svc.ready()
        await body()


async def latency_round(
    url: str, prefix: str, count: int, flip: bool
) -> dict[str, tuple[float, float]]:
    order = ("natsreg", "raw") if flip else ("raw", "natsreg")
    return {mode: await latency_one(url, prefix, count, mode) for mode in order}


async def latency_one(url: str, prefix: str, count: int, mode: str) -> tuple[float, float]:
    nc, consumer_nc = await nats.connect(url), await nats.connect(url)
    events = natsreg.Events(nc, prefix=prefix)
    await events.ensure()
    event_type = f"lat.{mode}"
    arrived = asyncio.Event()
    samples: list[float] = []

    async def measure() -> None:
        await asyncio.sleep(0.2)  # the consumer created and its first fetch waiting
        for _ in range(count):
            arrived.clear()
            started = time.perf_counter()
            await events.emit(event_type, PAYLOAD)
            await arrived.wait()
            samples.append((time.perf_counter() - started) * 1000)

    await consuming(consumer_nc, prefix, event_type, mode, lambda data: arrived.set(), measure)
    samples.sort()
    await nc.close()
    await consumer_nc.close()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


# -- kill -9 ---------------------------------------------------------------------------------


async def worker(url: str, prefix: str) -> None:
    """One instance of the kill -9 scenario's service: prints each event's key it handled."""
    nc = await nats.connect(url, max_reconnect_attempts=-1)
    async with natsreg.announce(nc, "mail", version="1.0.0", prefix=prefix) as svc:

        @svc.on_event("user.created", ack_wait_s=2.0, max_in_flight=32)
        async def handle(ev: natsreg.Event[dict[str, int]]) -> None:
            sys.stdout.write(f"H {ev.body['n']}\n")
            sys.stdout.flush()

        await svc.ready()
        print("READY", flush=True)
        await svc.serve_forever()


class Handled:
    """The "H <n>" lines of the consumer processes, read in threads."""

    def __init__(self, procs: list[subprocess.Popen[str]]) -> None:
        self.per_proc: list[Counter[int]] = [Counter() for _ in procs]
        self._lock = threading.Lock()  # the reader threads count while the bench reads
        self._threads = [
            asyncio.create_task(asyncio.to_thread(self._read, p, i)) for i, p in enumerate(procs)
        ]

    def _read(self, proc: subprocess.Popen[str], index: int) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("H "):
                with self._lock:
                    self.per_proc[index][int(line[2:])] += 1

    def distinct(self) -> int:
        """How many different events have been handled so far, by any process."""
        with self._lock:
            return len(set().union(*self.per_proc))

    async def done(self) -> Counter[int]:
        await asyncio.gather(*self._threads)
        total: Counter[int] = Counter()
        for c in self.per_proc:
            total.update(c)
        return total


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "READY\n", f"{argv}: {line!r}"
    return proc


def stop(procs: list[subprocess.Popen[str]]) -> None:
    """SIGTERM, then SIGKILL for any still running after 30 s (so that their readers end)."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            print(f"pid {proc.pid} did not stop within 30 s of SIGTERM", file=sys.stderr)
            proc.kill()
            proc.wait()


async def kill_natsreg(url: str, prefix: str, count: int, rate: int) -> tuple[int, int]:
    procs = [
        start([sys.executable, __file__, "--worker", url, "--prefix", prefix]) for _ in range(2)
    ]
    handled = Handled(procs)
    try:
        nc = await nats.connect(url)
        events = natsreg.Events(nc, prefix=prefix)

        give_up = time.monotonic() + 120

        async def emit(n: int) -> None:
            # Again with the same key until stored, as a careful producer does; bounded in time.
            while time.monotonic() < give_up:
                try:
                    await events.emit("user.created", {"n": n}, key=str(n))
                    return
                except EventsUnavailableError as exc:
                    print(f"emit {n}: {exc}; again", file=sys.stderr)
                    await asyncio.sleep(0.05)
            raise SystemExit(f"event {n} not stored within 120 s")

        started = time.monotonic()
        tasks = []
        killed = False
        for n in range(count):
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            tasks.append(asyncio.create_task(emit(n)))
            if not killed and time.monotonic() - started > 1.0:
                procs[0].send_signal(signal.SIGKILL)
                killed = True
        await asyncio.gather(*tasks)
        print(f"natsreg: {count} events stored", file=sys.stderr, flush=True)
        # Redelivery of what the killed one held comes after ack_wait_s.
        deadline = time.monotonic() + 30
        while handled.distinct() < count and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        # Also when the phase fails: a process left running would keep its reader thread,
        # and so this command, waiting for ever.
        stop(procs)
    total = await handled.done()
    await nc.close()
    return count - len(total), sum(c - 1 for c in total.values())


async def kill_moleculer(url: str, count: int, rate: int) -> tuple[int, int]:
    script = str(HERE / "moleculer_events.js")
    env = {**os.environ, "NATS_URL": url}
    procs = [start(["node", script, "consumer", f"mail-{i}"], env) for i in range(2)]
    handled = Handled(procs)
    emitter = subprocess.Popen(
        ["node", script, "emitter", str(count), str(rate)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert emitter.stdout is not None
    assert (await asyncio.to_thread(emitter.stdout.readline)) == "EMITTING\n"
    await asyncio.sleep(1.0)
    procs[0].send_signal(signal.SIGKILL)
    await asyncio.to_thread(emitter.wait, 120)
    await asyncio.sleep(2.0)
    stop(procs)
    emitter.stdout.close()
    total = await handled.done()
    return count - len(total), sum(c - 1 for c in total.values())


# -- instructions per event consumed --------------------------------------------------------


async def consume_only(url: str, prefix: str, mode: str, count: int) -> None:
    """The counted process: consume ``count`` events already stored, then exit."""
    nc = await nats.connect(url)
    done = asyncio.Event()
    seen = 0

    def count_one(data: bytes) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            done.set()

    await consuming(nc, prefix, f"bench.{mode}", mode, count_one, done.wait)
    await nc.close()


async def store(url: str, prefix: str, mode: str, count: int) -> None:
    nc = await nats.connect(url)
    events = natsreg.Events(nc, prefix=prefix)
    for first in range(0, count, IN_FLIGHT):
        batch = range(first, min(count, first + IN_FLIGHT))
        await asyncio.gather(*(events.emit(f"bench.{mode}", PAYLOAD) for _ in batch))
    await nc.close()


def consume_instructions(url: str, n: int) -> dict[str, float]:
    sys.path.insert(0, str(HERE))
    from instructions import _callgrind, _total

    per_event: dict[str, float] = {}
    for mode in ("raw", "natsreg"):
        totals = []
        for count in (n, 4 * n):
            prefix = f"i{count}"
            asyncio.run(store(url, prefix, mode, count))
            with tempfile.TemporaryDirectory() as folder:
                out = Path(folder) / "callgrind.out"
                argv = _callgrind(out, __file__, "--consume-only", url, prefix, mode, str(count))
                subprocess.run(argv, check=True, timeout=1200)
                totals.append(_total(out))
        per_event[mode] = (totals[1] - totals[0]) / (3 * n)
        print(f"  {mode:<8} {per_event[mode]:>10,.0f} instructions per event", file=sys.stderr)
    return per_event


# -- main ------------------------------------------------------------------------------------


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


async def main(args: argparse.Namespace) -> None:
    rounds = 2 if args.quick else args.rounds
    emits = 1000 if args.quick else 3000
    with NatsServer(jetstream=True) as server:
        print(f"# bench/events.py, {load()}")
        emit_r: dict[str, list[float]] = {"raw": [], "natsreg": []}
        consume_r: dict[str, list[float]] = {"raw": [], "natsreg": []}
        latency_r: dict[str, list[tuple[float, float]]] = {"raw": [], "natsreg": []}
        for r in range(rounds):
            nc = await nats.connect(server.url)
            for mode, rate in (await emit_round(nc, f"e{r}", emits, r % 2 == 1)).items():
                emit_r[mode].append(rate)
            await nc.close()
            for mode, rate in (await consume_round(server.url, f"c{r}", emits, r % 2 == 1)).items():
                consume_r[mode].append(rate)
            for mode, lat in (await latency_round(server.url, f"l{r}", 200, r % 2 == 1)).items():
                latency_r[mode].append(lat)
            print(f"round {r + 1}/{rounds} done, {load()}", file=sys.stderr, flush=True)
        print("\n| what | raw | natsreg | natsreg vs raw |\n|---|---:|---:|---:|")
        for what, table in (("emit, events/s", emit_r), ("consume, events/s", consume_r)):
            raw, ours = statistics.median(table["raw"]), statistics.median(table["natsreg"])
            print(f"| {what} | {raw:.0f} | {ours:.0f} | **{ours / raw:.2f}x** |")
        for index, what in ((0, "latency p50, ms"), (1, "latency p99, ms")):
            raw = statistics.median(x[index] for x in latency_r["raw"])
            ours = statistics.median(x[index] for x in latency_r["natsreg"])
            print(f"| {what} | {raw:.3f} | {ours:.3f} | **{ours / raw:.2f}x** |")
        count, rate = (2000, 1000) if args.quick else (10_000, 2000)
        print(f"\nkill -9 of 1 of 2 instances after 1 s, {count} events at {rate}/s:\n")
        print("| system | lost | handled twice |\n|---|---:|---:|")
        lost, twice = await kill_natsreg(server.url, "k", count, rate)
        print(f"| natsreg | {lost} | {twice} |", flush=True)
        if args.moleculer:
            if shutil.which("node") is None:
                raise SystemExit("--moleculer needs node, and moleculer where NODE_PATH says")
            lost, twice = await kill_moleculer(server.url, count, rate)
            print(f"| Moleculer 0.14 (balanced events) | {lost} | {twice} |")
        print(f"\n# {load()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and events")
    parser.add_argument("--moleculer", action="store_true", help="also Moleculer's kill -9")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each comparison")
    parser.add_argument(
        "--instructions",
        type=int,
        metavar="N",
        help="only consume's instructions per event: N and 4N events per mode (valgrind)",
    )
    parser.add_argument("--consume-only", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="k", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        asyncio.run(worker(options.worker, options.prefix))
    elif options.consume_only:
        url, prefix, mode, count = options.consume_only
        asyncio.run(consume_only(url, prefix, mode, int(count)))
    elif options.instructions:
        if shutil.which("valgrind") is None:
            raise SystemExit("--instructions needs valgrind: apt-get install -y valgrind")
        with NatsServer(jetstream=True) as server:
            print(f"# bench/events.py --instructions, {load()}")
            counts = consume_instructions(server.url, options.instructions)
        n = options.instructions
        print(f"\nconsumer instructions per event, {n:,} and {4 * n:,} events per mode\n")
        print("| mode | instructions per event | vs raw |\n|---|---:|---:|")
        for mode, value in counts.items():
            print(f"| {mode} | {value:,.0f} | {value / counts['raw']:.2f}x |")
    else:
        asyncio.run(main(options))
