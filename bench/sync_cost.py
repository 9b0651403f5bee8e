"""What a warm peer's view costs to give and to take, in CPU seconds: the sync answer's compact
form against the same view as a ``registry.list`` answer (``Snapshot`` chunks), same run.

    python bench/sync_cost.py                     # 50,000 instances, 5 rounds
    python bench/sync_cost.py --instances 10000 --rounds 3

No NATS and no network: a view of the bench fleet's shape (bench/fleet.py: 100 services, two
endpoints each, three zones) is encoded as the warm peer encodes it, then decoded, checked and
restored into a new view as a starting node does (``registry/_sync.py``'s ``SyncAnswer``), so
what is left is the CPU the sync path costs at both ends, without the transfer. CPU seconds
(``time.process_time``) move less with the machine's load than wall time; the ratio of the two
forms, measured in the same rounds, moves less still.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable

from natsreg import wire
from natsreg.registry._queries import _chunks
from natsreg.registry._sync import SyncAnswer, sync_chunks
from natsreg.registry._view import View

MAX_PAYLOAD = 1024 * 1024  # nats-server's default


def fleet_view(instances: int, services: int) -> View:
    """A view holding ``instances`` announced as bench/fleet.py's do."""
    view = View(max_instances=2 * instances)
    for n in range(instances):
        name = f"svc-{n % services}"
        view.apply(
            wire.Announce(
                id=f"f0-{n}",
                name=name,
                version="1.0.0",
                seq=1,
                metadata={"zone": "abc"[n % 3]},
                endpoints=[
                    wire.Endpoint(name=e, subject=f"{name}.{e}", queue_group=name)
                    for e in ("get", "list")
                ],
                host="fleet",
                pid=4242,
                heartbeat_s=10.0,
            )
        )
    return view


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
    for instance in instances:
        fresh.restore(instance)
    return fresh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=50_000)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
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
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
