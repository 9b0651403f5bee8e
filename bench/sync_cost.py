"""What a warm peer's view costs to give and to take, in CPU seconds: the sync answer's compact
form against the same view as a ``registry.list`` answer (``Snapshot`` chunks), same run.

    python bench/sync_cost.py                     # 50,000 instances, 5 rounds
    python bench/sync_cost.py --instances 10000 --rounds 3
    python bench/sync_cost.py --nats              # and through a real nats-server (~1 min)

No NATS and no network: a view of the bench fleet's shape (bench/fleet.py: 100 services, two
endpoints each, three zones) is encoded as the warm peer encodes it, then decoded, checked and
restored into a new view as a starting node does (``registry/_sync.py``'s ``SyncAnswer``), so
what is left is the CPU the sync path costs at both ends, without the transfer. CPU seconds
(``time.process_time``) move less with the machine's load than wall time; the ratio of the two
forms, measured in the same rounds, moves less still.

With ``--nats``, then: a warm registry node on a local nats-server, the instances announced to
it, and ``--rounds`` fresh nodes (``Registry``, in this process) each timed from start to
holding every instance: the whole path, transfer included, with no fleet competing for the
CPU (bench/scale.py ``--only warm`` measures it under a fleet's heartbeats).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable

import nats

import natsreg
from natsreg import subjects, wire
from natsreg.registry._queries import _chunks
from natsreg.registry._sync import SyncAnswer, sync_chunks
from natsreg.registry._view import View
from natsreg.testing import NatsServer

MAX_PAYLOAD = 1024 * 1024  # nats-server's default


def announcement(n: int, services: int) -> wire.Announce:
    """Instance ``n`` of the fleet, announced as bench/fleet.py's are."""
    name = f"svc-{n % services}"
    return wire.Announce(
        id=f"f0-{n}",
        name=name,
        version="1.0.0",
        seq=1,
        metadata={"zone": "abc"[n % 3]},
        endpoints=[
            wire.Endpoint(name=e, subject=f"{name}.{e}", queue_group=name) for e in ("get", "list")
        ],
        host="fleet",
        pid=4242,
        heartbeat_s=60.0,  # nothing expires while the bench runs: nobody heartbeats
    )


def fleet_view(instances: int, services: int) -> View:
    """A view holding ``instances`` announced as bench/fleet.py's do."""
    view = View(max_instances=2 * instances)
    for n in range(instances):
        view.apply(announcement(n, services))
    return view


async def over_nats(instances: int, services: int, rounds: int) -> None:
    """Fresh nodes taking a warm node's view through a real nats-server: wall seconds to the
    full view, and CPU seconds of this process (both nodes) meanwhile."""
    bound_s = 30 + instances / 2_000
    with NatsServer() as server:
        fleet = await nats.connect(server.url)
        peer_nc = await nats.connect(server.url, pending_size=256 * 1024 * 1024)
        cap = 2 * instances
        try:
            async with natsreg.Registry(
                peer_nc, prefix="sync", sync=False, max_instances=cap
            ) as peer:
                for n in range(instances):
                    ann = announcement(n, services)
                    subject = subjects.control_subject("sync", "announce", ann.name, ann.id)
                    await fleet.publish(subject, wire.encode(ann))
                    if n % 1000 == 999:
                        # Paced: a node that falls 9k announcements behind sheds the rest.
                        await fleet.flush()
                        await until(lambda n=n: peer.stats().instances > n, bound_s)
                await fleet.flush()
                await until(
                    lambda: peer.stats().instances >= instances and not peer.warming_up, bound_s
                )
                walls, cpus = [], []
                for _ in range(rounds):
                    nc = await nats.connect(server.url, pending_size=256 * 1024 * 1024)
                    try:
                        start, cpu0 = time.monotonic(), time.process_time()
                        async with natsreg.Registry(nc, prefix="sync", max_instances=cap) as fresh:
                            await until(lambda: fresh.stats().instances >= instances, bound_s)
                            walls.append(time.monotonic() - start)
                            cpus.append(time.process_time() - cpu0)
                            if not fresh._sync.peer:
                                raise SystemExit(
                                    "sync_cost.py: the fresh node warmed by re-announce"
                                )
                    finally:
                        await nc.close()
                    await asyncio.sleep(1.1)  # the peer's cached answer expires: encoded anew
        finally:
            await peer_nc.close()
            await fleet.close()
    print(
        f"through nats-server, {rounds} fresh nodes: full view in "
        f"{', '.join(f'{w:.3f}' for w in walls)} s (median {statistics.median(walls):.3f} s); "
        f"CPU of both nodes, median {statistics.median(cpus):.3f} s"
    )


async def until(check: Callable[[], bool], bound_s: float) -> None:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > bound_s:
            raise SystemExit(f"sync_cost.py: not within {bound_s:.0f} s")
        await asyncio.sleep(0.005)


def cpu(work: Callable[[], object]) -> tuple[float, object]:
    start = time.process_time()
    result = work()
    return time.process_time() - start, result


def as_list(view: View) -> list[bytes]:
    """The view as the peer answered a sync before: the ``registry.list`` answer."""
    snapshot = wire.Snapshot(node="peer", revision=1, instances=view.instances())
    return list(_chunks(snapshot, MAX_PAYLOAD))


def take_list(chunks: list[bytes]) -> list[wire.InstanceView]:
    """Each ``Snapshot`` chunk decoded and every instance checked, as a starting node did."""
    instances = []
    for data in chunks:
        chunk = wire.decode_snapshot(data)
        for instance in chunk.instances:
            wire.check(instance)
        instances.extend(chunk.instances)
    return instances


def as_sync(view: View) -> list[bytes]:
    return list(sync_chunks("peer", 1, view.heard(), MAX_PAYLOAD))


def take_sync(chunks: list[bytes]) -> list[wire.InstanceView]:
    answer = SyncAnswer(len(chunks) * MAX_PAYLOAD, Counter())
    done = [answer.take(data) for data in chunks]
    assert done[-1]
    return answer.instances


def restore(instances: list[wire.InstanceView]) -> View:
    fresh = View(max_instances=2 * len(instances))
    fresh.restore_all(instances)
    return fresh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=50_000)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nats", action="store_true", help="also sync through a nats-server")
    args = parser.parse_args()
    if args.instances <= 0 or args.rounds <= 0 or args.services <= 0:
        raise SystemExit("sync_cost.py: --instances, --services and --rounds must be above 0")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    view = fleet_view(args.instances, args.services)
    forms = {
        "registry.list (Snapshot)": (as_list, take_list),
        "sync (SyncChunk)": (as_sync, take_sync),
    }
    figures: dict[str, dict[str, list[float]]] = {f: {} for f in forms}
    sizes: dict[str, tuple[int, int]] = {}
    for _ in range(args.rounds):
        for form, (give, take) in forms.items():
            give_s, chunks = cpu(functools.partial(give, view))
            assert isinstance(chunks, list)
            take_s, instances = cpu(functools.partial(take, chunks))
            assert isinstance(instances, list) and len(instances) == args.instances
            restore_s, fresh = cpu(functools.partial(restore, instances))
            assert isinstance(fresh, View) and len(fresh) == args.instances
            sizes[form] = (len(chunks), sum(len(c) for c in chunks))
            for stage, seconds in [("give", give_s), ("take", take_s), ("restore", restore_s)]:
                figures[form].setdefault(stage, []).append(seconds)
    print(f"{args.instances:,} instances, medians of {args.rounds} rounds, CPU seconds")
    print("form | chunks | MB | peer: encode | node: decode + check | node: restore | both ends")
    totals = {}
    for form, stages in figures.items():
        med = {stage: statistics.median(values) for stage, values in stages.items()}
        totals[form] = sum(med.values())
        count, size = sizes[form]
        print(
            f"{form} | {count} | {size / 1e6:.1f} | {med['give']:.3f} | {med['take']:.3f} | "
            f"{med['restore']:.3f} | {totals[form]:.3f}"
        )
    old, new = totals.values()
    print(f"sync costs {new / old:.2f}x the CPU of the list form ({old / new:.1f}x less)")
    if args.nats:
        asyncio.run(over_nats(args.instances, args.services, args.rounds))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
