"""A sharded node's answer to a question about more than its own services: every sharded node
is asked for its part (``<prefix>.part.<question>``, no queue group, so each hears it) and the
parts are merged (docs/protocol.md, "Sharding").

The node waits for the parts of every live member, at most :data:`GATHER_S`. Each service is
taken from the first of its owners that answered (so two holders' counts are not summed); the
services none of their owners answered for are named in the answer's ``unanswered``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec
from nats.aio.client import Client as NATS

from .. import subjects, wire
from .._gather import gather
from ._shard import Shard, merge_instances

if TYPE_CHECKING:
    from . import Registry

#: How long a node waits for the other nodes' parts: a node that has not answered by then is
#: taken as gone (its lease ends soon after).
GATHER_S = 1.0
#: Services named in ``unanswered`` at most.
MAX_UNANSWERED = 100

_Parts = dict[str, list[wire.Snapshot]]


def gathers(question: tuple[str, ...], shard: Shard) -> bool:
    """Whether ``question`` (``("registry", verb, ...)``) needs the other nodes' parts:
    everything but this node's own figures and a service it answers for."""
    match question:
        case ("registry", "services" | "list") | ("registry", "instance", _):
            return True
        case ("registry", "service", name):
            return not shard.answers_for(name)
    return False


async def answer(
    nc: NATS, registry: Registry, shard: Shard, question: tuple[str, ...]
) -> wire.Snapshot | wire.ServiceList:
    """The answer to a question :func:`gathers`, from every member's part."""
    match question:
        case ("registry", "services"):
            own_list = registry.service_list()
            lists = await service_parts(nc, shard, own_list)
            return merged_services(own_list, shard, lists)
        case ("registry", "service", name):
            names: Iterable[str] = (name,)
            own = registry.snapshot(name=name)
        case ("registry", "instance", instance_id):
            names = ()
            own = registry.snapshot(instance_id=instance_id)
        case _:
            names = shard.known()
            own = registry.snapshot()
    parts = await snapshot_parts(nc, shard, question[1:], own)
    return merged_snapshot(own, shard, parts, names)


async def snapshot_parts(
    nc: NATS, shard: Shard, question: tuple[str, ...], own: wire.Snapshot
) -> _Parts:
    """Every member's answer to ``question`` (``("list",)``, ``("service", name)``...), by
    node, this node's being ``own``; a node's chunks in order. Members that did not answer
    whole are left out."""
    parts: _Parts = defaultdict(list)
    complete = {shard.members.me}
    members = set(shard.nodes)

    def until(data: bytes) -> bool:
        try:
            chunk = wire.decode_snapshot(data)
        except wire.MALFORMED:
            return False
        if chunk.node in members and chunk.node not in complete:
            parts[chunk.node].append(chunk)
            complete.update([chunk.node] if not chunk.more else [])
        return members <= complete

    if members != complete:
        await gather(nc, _subject(shard, question), GATHER_S, until=until)
    parts[shard.members.me] = [own]
    return {node: chunks for node, chunks in parts.items() if node in complete}


async def service_parts(
    nc: NATS, shard: Shard, own: wire.ServiceList
) -> dict[str, wire.ServiceList]:
    """Every member's own services, by node, this node's being ``own``."""
    lists = {shard.members.me: own}
    members = set(shard.nodes)

    def until(data: bytes) -> bool:
        try:
            answer = wire.decode_service_list(data)
        except wire.MALFORMED:
            return False
        if answer.node in members:
            lists[answer.node] = answer
        return members <= lists.keys()

    if members != lists.keys():
        await gather(nc, _subject(shard, ("services",)), GATHER_S, until=until)
    return lists


def merged_snapshot(
    own: wire.Snapshot, shard: Shard, parts: _Parts, names: Iterable[str]
) -> wire.Snapshot:
    """``own`` (this node's snapshot, for its header) with the instances of every part; the
    ``names`` none of whose owners answered are ``unanswered``."""
    instances = merge_instances(
        [i for chunk in chunks for i in chunk.instances] for chunks in parts.values()
    )
    return msgspec.structs.replace(
        own, instances=instances, unanswered=_unanswered(shard, names, parts.keys())
    )


def merged_services(
    own: wire.ServiceList, shard: Shard, lists: dict[str, wire.ServiceList]
) -> wire.ServiceList:
    """``own`` (this node's list, for its header) with each service from one of its owners."""
    by_node: dict[str, dict[str, list[wire.ServiceSummary]]] = {}
    for node, answer in lists.items():
        grouped = by_node[node] = defaultdict(list)
        for summary in answer.services:
            grouped[summary.name].append(summary)
    services: list[wire.ServiceSummary] = []
    names = {name for grouped in by_node.values() for name in grouped}
    for name in sorted(names):
        ranked = [*shard.owners(name), *sorted(by_node)]
        source = next(node for node in ranked if name in by_node.get(node, {}))
        services.extend(by_node[source][name])
    return msgspec.structs.replace(
        own, services=services, unanswered=_unanswered(shard, shard.known(), lists.keys())
    )


def _unanswered(shard: Shard, names: Iterable[str], answered: Iterable[str]) -> list[str]:
    heard = set(answered)
    missing = sorted(n for n in names if not heard.intersection(shard.owners(n)))
    return missing[:MAX_UNANSWERED]


def _subject(shard: Shard, question: tuple[str, ...]) -> str:
    # Naming the asking node: a node does not answer its own question (it has its part).
    return subjects.control_subject(shard.prefix, "part", shard.members.me, *question)
