"""What a registry node costs as the fleet grows: 1k to 250k instances.

    python bench/scale.py                 # 1k, 10k, 50k, 100k, 250k at 1 s heartbeats
    python bench/scale.py --sizes 1000    # one size
    python bench/scale.py --heartbeat-s 1,10 --chart bench/scale.png --json bench/scale.json
    python bench/scale.py --system-events # the node also reads disconnect advisories
    python bench/scale.py --fleet-cost    # the simulator's own CPU, no registry
    python bench/scale.py --from-json a.json,b.json --chart bench/scale.png   # runs, one chart
    python bench/scale.py --sizes 50000 --profile bench/profile   # and where the node's CPU goes
    python bench/scale.py --watch 50000   # a node under 50k instances, second by second, 30 s
    python bench/scale.py --watch 250000 --heartbeat-s 10 --system-events --watch-s 60
                                          # the 250k announcement storm: cut or not
    python bench/scale.py --sizes 50000 --heartbeat-s 10 --system-events --only warm
                                          # only a fresh node's full view (under 3 min)

For each size and heartbeat interval: a fresh nats-server, a registry node (``natsreg
registry``, its own process), and fleet simulator processes (bench/fleet.py, up to 125,000
virtual instances each) whose instances announce and heartbeat as real ones do. Measured:

- registry CPU (% of one core, over a 10 s window) and resident memory; the fleet's and
  nats-server's CPU over the same window, so what the machine spent elsewhere is in view;
- heartbeat messages per second the node takes in, and its CPU time per heartbeat; and, as a
  baseline of the host's speed in the same minute, what nats-py's parser takes for one
  heartbeat's frame in this process (``parse_us``) and the node's heartbeat in those
  (``heartbeat_in_parses``: what a faster or slower moment of a shared machine moves least);
- ``ls`` latency: the service summary ``natsreg ls`` shows (``registry.services``), and a
  whole-view query (``Client.instances()``, every instance), medians;
- a fresh registry node's time to the full view (from entering ``Registry`` to holding every
  instance): taken from the warm node (``<prefix>.sync``), and, as the baseline in the same
  run, by the re-announce round (``Registry(sync=False)``);
- kill -9 of one real service process (1 s heartbeats) to its removal from the view: by
  heartbeat expiry, or with ``--system-events`` by the server's disconnect advisory; and
  once, with no fleet, by the advisory;
- messages the node dropped because its queues were full (``slow_consumer``), the times it
  shed its heartbeats or announcements (``shed``), how often it lost its NATS connection (from
  its log), and the connections nats-server closed as slow consumers (from its ``/varz``).

Every wait is bounded: a node that cannot take in a fleet is reported as such ("not within
N s", its CPU and drops), and the bench goes on to the next size. Rows are written to
``--json`` after each size, so a long run that is stopped keeps what it measured.

With ``--profile DIR``, py-spy (the ``bench`` extra) then samples the registry process for
another window and writes ``DIR/registry-<size>.txt`` (collapsed stacks, for flame graph
tools) and prints the functions where it spent its time.

Goals: at 50k instances, a fresh node's full view within 1 s; at 250k, ``ls`` within 200 ms;
earlier ones: under 50% of one core and 500 MB, ``ls`` under 200 ms. Everything runs on
127.0.0.1 and stops by itself; the machine's other processes share its 2 cores, so read the
figures as ranges and mind the load average printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable
from pathlib import Path
from typing import IO, TypeVar

import nats

import natsreg
from natsreg import subjects, wire
from natsreg.registry import MAX_INSTANCES
from natsreg.testing import NatsServer, free_port

HERE = Path(__file__).resolve().parent
SERVICE_PROC = HERE.parent / "tests" / "service_proc.py"
PER_FLEET_PROCESS = 125_000  # two simulator processes at 250k, one per core
SYS_ACCOUNTS = HERE.parent / "tests" / "sys-accounts.conf"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


async def node_stats(nc: nats.NATS, prefix: str) -> wire.NodeStats:
    reply = await nc.request(subjects.control_subject(prefix, "registry", "stats"), b"", timeout=5)
    return wire.decode_node_stats(reply.data)


async def wait_for(
    check,
    timeout_s: float,
    what: str,  # type: ignore[no-untyped-def]
    poll_s: float = 0.05,
) -> float:
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(poll_s)
    return time.monotonic() - start


def max_instances(size: int) -> int:
    """What a node under a fleet of ``size`` must be allowed to hold (and the victim)."""
    return max(MAX_INSTANCES, 2 * size)


async def fresh_node_s(
    url: str, prefix: str, size: int, *, sync: bool
) -> tuple[float, float, float]:
    """A new registry node's seconds to hold every instance, and to be warm; and the CPU
    seconds this process (the node, and the bench's polling of it) spent until then."""
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    bound_s = 30 + size / 5_000
    try:
        start, cpu = time.monotonic(), time.process_time()
        async with natsreg.Registry(
            nc, prefix=prefix, sync=sync, max_instances=max_instances(size)
        ) as fresh:

            async def complete() -> bool:
                return fresh.stats().instances >= size

            await wait_for(complete, bound_s, "fresh node full view", poll_s=0.005)
            full_s, cpu_s = time.monotonic() - start, time.process_time() - cpu

            async def warm() -> bool:
                return not fresh.warming_up

            await wait_for(warm, bound_s, "fresh node warm", poll_s=0.005)
            warm_s = time.monotonic() - start
            if sync and not fresh._sync.peer:
                raise TimeoutError("fresh node: no view from the peer, warm by re-announce")
        return full_s, warm_s, cpu_s
    finally:
        await nc.close()


async def fresh_nodes(
    url: str, prefix: str, size: int, registry: int, row: Row, notes: list[str], syncs: int
) -> None:
    """A fresh node's full view from the warm node (``syncs`` times) and, once, by the
    re-announce round (the baseline), in between; medians, and the warm node's CPU seconds
    while it gave its view."""
    synced, peer_cpu = [], []
    reannounced = None
    for n in range(syncs):
        if n == 1:
            reannounced = await bounded(notes, fresh_node_s(url, prefix, size, sync=False))
            await asyncio.sleep(2.0)  # the fleet's re-announce round, out of the next run's way
        cpu = cpu_seconds(registry)
        synced.append(await bounded(notes, fresh_node_s(url, prefix, size, sync=True)))
        if synced[-1] is not None:
            peer_cpu.append(cpu_seconds(registry) - cpu)
    if done := [s for s in synced if s is not None]:
        row["fresh_full_view_s"] = round(statistics.median(s[0] for s in done), 3)
        row["fresh_warm_s"] = round(statistics.median(s[1] for s in done), 3)
        row["fresh_runs_s"] = [round(s[0], 3) for s in done]
        row["fresh_cpu_s"] = round(statistics.median(s[2] for s in done), 3)
        row["peer_cpu_s"] = round(statistics.median(peer_cpu), 3)
    if reannounced is not None:
        row["fresh_reannounce_s"] = round(reannounced[0], 3)
        if done:
            row["fresh_speedup"] = round(reannounced[0] / float(row["fresh_full_view_s"]), 1)  # type: ignore[arg-type]


def profile(pid: int, window_s: float, path: Path) -> None:
    """Sample ``pid`` with py-spy for ``window_s``; collapsed stacks to ``path``; print the
    functions that held the CPU, by own time and with what they call."""
    path.parent.mkdir(parents=True, exist_ok=True)
    beside = Path(sys.executable).with_name("py-spy")  # installed in this venv
    subprocess.run(
        [
            str(beside) if beside.exists() else "py-spy",
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(round(window_s)),
            "--rate",
            "250",
            "--format",
            "raw",
            "--nonblocking",
            "--function",
            "--output",
            str(path),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    own: dict[str, int] = {}
    within: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        frames = stack.split(";")
        total += samples
        own[frames[-1]] = own.get(frames[-1], 0) + samples
        for frame in set(frames):
            within[frame] = within.get(frame, 0) + samples
    print(f"py-spy, {total} samples of the registry process ({path}):")
    print("  own time:")
    for frame, samples in sorted(own.items(), key=lambda kv: -kv[1])[:15]:
        print(f"    {100 * samples / total:5.1f}%  {frame}")
    print("  with callees:")
    for frame, samples in sorted(within.items(), key=lambda kv: -kv[1])[:25]:
        print(f"    {100 * samples / total:5.1f}%  {frame}")


Row = dict[str, object]
T = TypeVar("T")


async def bounded(notes: list[str], awaitable: Awaitable[T]) -> T | None:
    """``awaitable``'s result; or, if it timed out or NATS failed, None and a note why."""
    try:
        return await awaitable
    except (TimeoutError, nats.errors.Error) as exc:
        notes.append(str(exc) or type(exc).__name__)
        return None


def varz(monitor_port: int, field: str) -> int:
    """One of nats-server's figures from its monitoring ``/varz``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/varz", timeout=5) as reply:
        count: int = json.load(reply)[field]
        return count


def messages_in(monitor_port: int) -> int:
    """Messages nats-server has taken in from its clients so far."""
    return varz(monitor_port, "in_msgs")


async def over_window(
    window_s: float, monitor_port: int, *groups: list[int]
) -> tuple[list[float], float]:
    """Each group of processes' CPU over the next ``window_s``, in % of one core, and the
    messages a second nats-server took in meanwhile (what the fleet really offered)."""
    before = [sum(cpu_seconds(pid) for pid in group) for group in groups]
    messages = messages_in(monitor_port)
    start = time.monotonic()
    await asyncio.sleep(window_s)
    elapsed = time.monotonic() - start
    rate = (messages_in(monitor_port) - messages) / elapsed
    cpu = [
        round(100 * (sum(cpu_seconds(pid) for pid in group) - cpu0) / elapsed, 1)
        for group, cpu0 in zip(groups, before, strict=True)
    ]
    return cpu, rate


def monitored_server(events: bool) -> tuple[NatsServer, int]:
    """A nats-server with its monitoring port (and, with ``events``, a system account)."""
    port = free_port()
    config = ("-c", str(SYS_ACCOUNTS)) if events else ()
    return NatsServer(args=(*config, "-m", str(port))), port


def app_url(server: NatsServer, events: bool) -> str:
    return server.url.replace("nats://", "nats://app:app@") if events else server.url


async def start_registry(
    server: NatsServer, prefix: str, size: int, events: bool, log: IO[str]
) -> subprocess.Popen[str]:
    """A registry node (its log to ``log``), answering; with ``events``, it also reads the
    server's disconnect advisories."""
    command = [sys.executable, "-m", "natsreg", "registry", "--server", app_url(server, events)]
    command += ["--prefix", prefix, "--max-instances", str(max_instances(size))]
    if events:
        command += ["--system-server", server.url.replace("nats://", "nats://sys:sys@")]
    registry = subprocess.Popen(command, stderr=log, text=True)
    nc = await nats.connect(app_url(server, events))
    try:
        await wait_for(lambda: _answers(nc, prefix), 30, "registry up")
    except TimeoutError:
        registry.kill()
        raise
    finally:
        await nc.close()
    return registry


async def start_fleets(
    url: str,
    prefix: str,
    size: int,
    heartbeat_s: float,
    processes: list[subprocess.Popen[str]],
    script: Path = HERE / "fleet.py",
    ramp_s: float | None = None,
) -> list[subprocess.Popen[str]]:
    """``size`` simulated instances, in processes of at most PER_FLEET_PROCESS, every one
    announced (over ``ramp_s``, by default a second per 10,000 instances of a process); each
    process is appended to ``processes`` as it starts."""
    count = math.ceil(size / PER_FLEET_PROCESS)
    fleets = []
    for k in range(count):
        instances = size // count + (1 if k < size % count else 0)
        command = [sys.executable, str(script), "--url", url, "--prefix", prefix]
        command += ["--instances", str(instances), "--tag", f"f{k}"]
        # --heartbeat: the name both this simulator and the nats-py one before it take
        ramp = ramp_s if ramp_s is not None else max(1.0, instances / 10_000)
        command += ["--heartbeat", str(heartbeat_s), "--ramp", str(ramp)]
        fleets.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
        processes.append(fleets[-1])
    bound_s = 30 + size / 2_000 + (ramp_s or 0.0)
    for fleet in fleets:
        assert fleet.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(fleet.stdout.readline), bound_s)
        if not line.startswith("ready"):
            raise RuntimeError(f"a fleet simulator stopped before it was ready ({line!r})")
    return fleets


async def watch(size: int, heartbeat_s: float, seconds: float, events: bool) -> None:
    """Once a second for ``seconds``: what the node under a fleet of ``size`` holds, how long
    it takes to answer, what it dropped and shed, how often it lost its connection, and how
    many connections nats-server closed as slow consumers (the fleet's start included)."""
    prefix = "scale"
    processes: list[subprocess.Popen[str]] = []
    server, monitor_port = monitored_server(events)
    with server, tempfile.TemporaryFile("w+") as registry_log:
        try:
            processes.append(await start_registry(server, prefix, size, events, registry_log))
            url = app_url(server, events)
            await start_fleets(url, prefix, size, heartbeat_s, processes)
            nc = await nats.connect(url)
            warming = subjects.control_subject(prefix, "warming", "stats")
            print(
                "second | answered in s | instances | slow_consumer dropped | shed | "
                "connection lost | server slow consumers"
            )
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                asked = time.monotonic()
                try:
                    reply = await nc.request(warming, b"", timeout=5)
                    stats = wire.decode_node_stats(reply.data)
                    answer = f"{time.monotonic() - asked:.3f} | {stats.instances}"
                    answer += f" | {stats.dropped.get('slow_consumer', 0)}"
                    answer += f" | {stats.dropped.get('shed', 0)}"
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
                    answer = f"{type(exc).__name__} | - | - | -"
                registry_log.seek(0)
                lost = registry_log.read().count("NATS: Connection lost")
                slow = varz(monitor_port, "slow_consumers")
                print(f"{asked - start:.0f} | {answer} | {lost} | {slow}", flush=True)
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - asked)))
            await nc.close()
        finally:
            stop(processes)


def stop(processes: list[subprocess.Popen[str]]) -> None:
    for proc in reversed(processes):
        proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


async def measure(size: int, heartbeat_s: float, args: argparse.Namespace) -> Row:
    """One row: a node under ``size`` instances heartbeating every ``heartbeat_s``. What could
    not be measured within its bound is missing from the row and said in its notes."""
    prefix = "scale"
    events: bool = args.system_events
    row: Row = {"instances": size, "heartbeat_s": heartbeat_s, "system_events": events}
    notes: list[str] = []
    processes: list[subprocess.Popen[str]] = []
    server, monitor_port = monitored_server(events)
    with server, tempfile.TemporaryFile("w+") as log:
        try:
            registry = await start_registry(server, prefix, size, events, log)
            processes.append(registry)
            fleets = await start_fleets(
                app_url(server, events), prefix, size, heartbeat_s, processes
            )
            nc = await nats.connect(app_url(server, events), pending_size=64 * 1024 * 1024)
            try:
                pids = (registry.pid, [f.pid for f in fleets], server.process.pid)
                await measure_node(
                    nc, app_url(server, events), pids, monitor_port, row, notes, args
                )
            finally:
                await nc.close()
            log.seek(0)
            row["connection_lost"] = log.read().count("NATS: Connection lost")
            # Connections nats-server closed for reading too slowly (its max_pending or
            # write_deadline): the node's, or the bench's own fresh nodes'.
            row["server_slow_consumers"] = varz(monitor_port, "slow_consumers")
        except (TimeoutError, RuntimeError, nats.errors.Error) as exc:
            notes.append(str(exc) or type(exc).__name__)
        finally:
            stop(processes)
    row["notes"] = "; ".join(notes)
    return row


def parse_us(frames: int = 20_000, tries: int = 3) -> float:
    """µs nats-py's parser takes for one heartbeat's ``MSG`` frame, in this process (the
    fastest of ``tries``): bench/heartbeat.py's baseline, a measure of the host's speed."""
    from heartbeat import Round, _Sink
    from nats.protocol.parser import Parser

    ids = [f"inst-{n}" for n in range(frames)]
    wire_bytes = Round(ids, [f"svc-{n % 100}" for n in range(frames)], 2).wire_bytes
    best = math.inf
    for _ in range(tries):
        parser = Parser(_Sink())
        started = time.perf_counter()
        asyncio.run(parser.parse(wire_bytes))
        best = min(best, time.perf_counter() - started)
    return round(best / frames * 1e6, 2)


async def measure_node(
    nc: nats.NATS,
    url: str,
    pids: tuple[int, list[int], int],
    monitor_port: int,
    row: Row,
    notes: list[str],
    args: argparse.Namespace,
) -> None:
    prefix = "scale"
    size, heartbeat_s = int(row["instances"]), float(row["heartbeat_s"])  # type: ignore[arg-type]
    registry, fleets, server = pids

    async def complete() -> bool:
        try:
            return (await node_stats(nc, prefix)).instances == size
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return False  # busy taking in the fleet, or warming again: ask again

    held_s = await bounded(
        notes, wait_for(complete, 60 + size / 2_500, f"registry holding {size} instances", 0.5)
    )
    if held_s is not None:
        await asyncio.sleep(2.0)
    if args.only == "warm":
        if held_s is not None:
            row["held_after_s"] = round(held_s, 1)
            await fresh_nodes(url, prefix, size, registry, row, notes, syncs=5)
        return
    (cpu, fleet_cpu, server_cpu), offered = await over_window(
        args.window, monitor_port, [registry], fleets, [server]
    )
    row["cpu_pct"] = cpu
    row["rss_mb"] = round(rss_mb(registry))
    row["heartbeats_per_s"] = round(size / heartbeat_s)
    row["offered_per_s"] = round(offered)  # short of heartbeats_per_s: the fleet fell behind
    row["us_per_heartbeat"] = round(cpu / 100 / max(offered, 1) * 1e6, 1)
    # The host's speed this minute, beside the node: what one heartbeat costs the node, in
    # nats-py parses of a heartbeat, moves far less from run to run than the CPU share does.
    row["parse_us"] = await asyncio.to_thread(parse_us)
    row["heartbeat_in_parses"] = round(float(row["us_per_heartbeat"]) / row["parse_us"], 2)
    row["fleet_cpu_pct"], row["server_cpu_pct"] = fleet_cpu, server_cpu
    stats = await bounded(notes, node_stats(nc, prefix))
    if stats is not None:
        row["instances_held"] = stats.instances
        row["stale_dropped"] = stats.dropped.get("stale", 0)
        row["slow_consumer_dropped"] = stats.dropped.get("slow_consumer", 0)
        row["shed"] = stats.dropped.get("shed", 0)
    if held_s is None:
        return  # what follows needs a node that holds the fleet
    row["held_after_s"] = round(held_s, 1)
    reps = 5 if size <= 50_000 else 3

    async def summary_ms() -> float:
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            reply = await nc.request(
                subjects.control_subject(prefix, "registry", "services"), b"", timeout=10
            )
            times.append((time.perf_counter() - start) * 1000)
            services = wire.decode_service_list(reply.data).services
            if (listed := sum(s.instances for s in services)) != size:
                notes.append(f"ls listed {listed} instances")
        return round(statistics.median(times))

    async def all_instances_ms() -> float:
        client = natsreg.Client(nc, prefix=prefix)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            snapshot = await client.instances(timeout_s=30 + size / 10_000)
            times.append((time.perf_counter() - start) * 1000)
            if len(snapshot.instances) != size:
                notes.append(f"instances() gave {len(snapshot.instances)}")
        return round(statistics.median(times))

    row["ls_ms"] = await bounded(notes, summary_ms())
    row["all_instances_ms"] = await bounded(notes, all_instances_ms())

    # From the warm node, then by re-announce (the baseline), then from the warm node
    # again: the median of the two sync runs against the one round in between.
    await fresh_nodes(url, prefix, size, registry, row, notes, syncs=2)

    if args.profile:
        profile(registry, args.window, Path(args.profile) / f"registry-{size}.txt")

    removal_s = await bounded(notes, kill_to_removal(nc, url, prefix, size))
    if removal_s is not None:
        row["kill_to_removal_s"] = round(removal_s, 3 if row["system_events"] else 2)


async def _answers(nc: nats.NATS, prefix: str) -> bool:
    try:
        await node_stats(nc, prefix)
        return True
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False


async def kill_to_removal(nc: nats.NATS, url: str, prefix: str, fleet: int) -> float:
    """kill -9 one real service process among the fleet; seconds until the node drops it."""

    async def count_is(n: int) -> bool:
        return (await node_stats(nc, prefix)).instances == n

    with subprocess.Popen(
        [sys.executable, str(SERVICE_PROC), url, "victim", prefix],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().startswith("id ")
            await wait_for(lambda: count_is(fleet + 1), 10, "victim listed")
            proc.kill()
            killed = time.monotonic()
            await wait_for(lambda: count_is(fleet), 10, "victim removed", 0.002)
            return time.monotonic() - killed
        finally:
            proc.kill()


async def removal_with_system_events() -> float:
    """kill -9 to removal when the registry reads the server's disconnect advisories."""
    with NatsServer(args=("-c", str(SYS_ACCOUNTS))) as server:
        app = await nats.connect(app_url(server, True))
        system = await nats.connect(server.url.replace("nats://", "nats://sys:sys@"))
        try:
            async with natsreg.Registry(app, prefix="events", system_nc=system) as registry:
                with subprocess.Popen(
                    [sys.executable, str(SERVICE_PROC), app_url(server, True), "victim", "events"],
                    stdout=subprocess.PIPE,
                    text=True,
                ) as proc:
                    try:
                        assert proc.stdout is not None
                        assert proc.stdout.readline().startswith("id ")

                        async def count_is(n: int) -> bool:
                            return registry.stats().instances == n

                        await wait_for(lambda: count_is(1), 10, "victim listed")
                        proc.kill()
                        killed = time.monotonic()
                        await wait_for(lambda: count_is(0), 10, "victim removed", 0.002)
                        return time.monotonic() - killed
                    finally:
                        proc.kill()
        finally:
            await app.close()
            await system.close()


async def fleet_cost(sizes: list[int], heartbeats: list[float], args: argparse.Namespace) -> None:
    """The simulator's own CPU per message and per 1,000 instances, with no registry; with
    ``--baseline-fleet``, that script's too, in the same run (same sizes, one after the other).
    A fleet that cannot keep up sends fewer messages than asked: ``offered`` says so."""
    scripts = [HERE / "fleet.py"] + ([Path(args.baseline_fleet)] if args.baseline_fleet else [])
    print(
        "simulator | heartbeat_s | instances | messages/s asked | offered | fleet CPU % | "
        "us/message | ms/s per 1k instances | nats-server CPU %"
    )
    for heartbeat_s in heartbeats:
        for size in sizes:
            for script in scripts:
                processes: list[subprocess.Popen[str]] = []
                server, monitor_port = monitored_server(False)
                with server:
                    try:
                        fleets = await start_fleets(
                            server.url, "scale", size, heartbeat_s, processes, script
                        )
                        await asyncio.sleep(2.0)
                        (fleet, nats_server), offered = await over_window(
                            args.window, monitor_port, [f.pid for f in fleets], [server.process.pid]
                        )
                        us = fleet / 100 / max(offered, 1) * 1e6
                        per_1k = us * 1000 / heartbeat_s / 1000  # ms of CPU a second
                        print(
                            f"{script.name} | {heartbeat_s} | {size} | {size / heartbeat_s:.0f}"
                            f" | {offered:.0f} | {fleet} | {us:.2f} | {per_1k:.2f} | {nats_server}",
                            flush=True,
                        )
                    except (TimeoutError, RuntimeError) as exc:
                        print(f"{script.name} | {heartbeat_s} | {size} | {exc}", flush=True)
                    finally:
                        stop(processes)


def chart(rows: list[Row], path: str) -> None:
    """Registry CPU and memory against fleet size, one line per heartbeat interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, cpu_axis = plt.subplots(figsize=(8, 4.5))
    memory_axis = cpu_axis.twinx()
    intervals = sorted({float(r["heartbeat_s"]) for r in rows})  # type: ignore[arg-type]
    for style, heartbeat_s in zip(("-", "--", ":", "-."), intervals, strict=False):
        done = [r for r in rows if r["heartbeat_s"] == heartbeat_s and "cpu_pct" in r]
        sizes = [r["instances"] for r in done]
        label = f"heartbeat every {heartbeat_s:g} s"
        cpu_axis.plot(
            sizes,
            [r["cpu_pct"] for r in done],
            "o" + style,
            color="tab:blue",
            label=f"CPU, {label}",
        )
        memory_axis.plot(
            sizes, [r["rss_mb"] for r in done], "s" + style, color="tab:red", label=f"RSS, {label}"
        )
        for r in done:
            if "held_after_s" not in r:  # the node never held the whole fleet
                held = f" ({r['instances_held']:,})" if "instances_held" in r else ""
                cpu_axis.annotate(
                    f"not held{held}",
                    (r["instances"], r["cpu_pct"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(-30, 6),
                )
    cpu_axis.set_xscale("log")
    cpu_axis.set_xlabel("instances (log scale)")
    cpu_axis.set_ylabel("registry CPU, % of one core", color="tab:blue")
    memory_axis.set_ylabel("registry RSS, MB", color="tab:red")
    cpu_axis.axhline(100, color="tab:blue", linestyle=":", linewidth=1)
    cpu_axis.axvline(8_000, color="grey", linestyle=":", linewidth=1)
    cpu_axis.annotate(
        "Eureka: ~8k instances\nper 8-core node\n(user reports)",
        (8_000, 5),
        fontsize=7,
        color="grey",
        xytext=(4, 0),
        textcoords="offset points",
    )
    lines = cpu_axis.get_legend_handles_labels()
    more = memory_axis.get_legend_handles_labels()
    cpu_axis.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper left")
    loads = [float(r["load_average"]) for r in rows if "load_average" in r]  # type: ignore[arg-type]
    shared = f", load average {min(loads):.0f}-{max(loads):.0f}" if loads else ""
    cpu_axis.set_title(f"natsreg: one registry node against fleet size (2 cores{shared})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


COLUMNS = (
    "instances",
    "heartbeat_s",
    "cpu_pct",
    "rss_mb",
    "heartbeats_per_s",
    "us_per_heartbeat",
    "parse_us",
    "heartbeat_in_parses",
    "offered_per_s",
    "fleet_cpu_pct",
    "server_cpu_pct",
    "held_after_s",
    "ls_ms",
    "all_instances_ms",
    "fresh_full_view_s",
    "fresh_warm_s",
    "fresh_reannounce_s",
    "fresh_speedup",
    "fresh_cpu_s",
    "peer_cpu_s",
    "kill_to_removal_s",
    "stale_dropped",
    "slow_consumer_dropped",
    "shed",
    "connection_lost",
    "server_slow_consumers",
    "notes",
)


def numbers(text: str, kind: type[T]) -> list[T]:
    try:
        values = [kind(s) for s in text.split(",")]  # type: ignore[call-arg]
    except ValueError:
        raise SystemExit(f"scale.py: {text!r} is not a comma-separated list of numbers") from None
    if not values or min(values) <= 0:  # type: ignore[type-var,operator]
        raise SystemExit(f"scale.py: {text!r}: every number must be above 0")
    return values


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000,100000,250000")
    parser.add_argument(
        "--heartbeat-s", default="1", help="the fleet's heartbeat interval(s), e.g. 1,10"
    )
    parser.add_argument(
        "--system-events",
        action="store_true",
        help="the node also reads disconnect advisories; kill -9 removal is by them",
    )
    parser.add_argument("--window", type=float, default=10.0, help="CPU window, seconds")
    parser.add_argument("--chart", help="write a PNG chart here (needs matplotlib)")
    parser.add_argument(
        "--from-json",
        metavar="FILE,...",
        help="measure nothing: draw --chart from the rows of these --json files",
    )
    parser.add_argument("--json", help="write the rows as JSON here, after each size")
    parser.add_argument("--profile", help="sample the registry with py-spy; stacks to this folder")
    parser.add_argument(
        "--watch", type=int, metavar="N", help="only watch a node under N instances for 30 s"
    )
    parser.add_argument(
        "--watch-s", type=float, default=30.0, help="with --watch: for this many seconds"
    )
    parser.add_argument(
        "--fleet-cost", action="store_true", help="only the simulator's own CPU, no registry"
    )
    parser.add_argument(
        "--only",
        choices=["warm"],
        help="warm: measure only a fresh node's full view (5 from the warm node, 1 baseline)",
    )
    parser.add_argument(
        "--baseline-fleet", metavar="FILE", help="with --fleet-cost: another simulator to compare"
    )
    args = parser.parse_args()
    if args.from_json and not args.chart:
        parser.error("--from-json draws a chart: give --chart FILE.png too")
    sizes, heartbeats = numbers(args.sizes, int), numbers(args.heartbeat_s, float)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.watch:
        await watch(args.watch, heartbeats[0], args.watch_s, args.system_events)
        return
    if args.from_json:
        files = args.from_json.split(",")
        chart([r for f in files for r in json.loads(Path(f).read_text())["rows"]], args.chart)
        return
    if args.fleet_cost:
        await fleet_cost(sizes, heartbeats, args)
        return
    rows: list[Row] = []
    result: dict[str, object] = {"rows": rows}
    print(" | ".join(COLUMNS))
    for heartbeat_s in heartbeats:
        for size in sizes:
            row = await measure(size, heartbeat_s, args)
            row["load_average"] = round(os.getloadavg()[0], 2)
            rows.append(row)
            print(" | ".join(str(row.get(c, "-")) for c in COLUMNS), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=2))
    if args.only:
        return
    with_events = await removal_with_system_events()
    result["kill_to_removal_with_events_s"] = with_events
    print(f"kill -9 to removal with system events, no fleet: {with_events * 1000:.0f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.chart:
        chart(rows, args.chart)


if __name__ == "__main__":
    asyncio.run(main())
