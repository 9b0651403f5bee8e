"""Questions to the registry: every instance, one service, one instance, the services, and
its change events. Usable without a :class:`natsreg.Client` (the CLI's ``ls``, ``info`` and
``watch``); a client answers the same questions through one of these.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from .. import errors, subjects, wire
from .._gather import gather
from ..errors import (
    NO_RESPONDERS_STATUS,
    STATUS_HEADER,
    ConfigError,
    NoInstanceError,
    RequestError,
)
from ._transport import Reply, Transport

_T = TypeVar("_T")


class RegistryApi:
    """Asks the registry nodes on ``prefix`` over ``nc``. ``transport`` is the client's when
    a client asks; by default plain ``nc.request``."""

    def __init__(
        self, nc: NATS, *, prefix: str = subjects.DEFAULT_PREFIX, transport: Transport | None = None
    ) -> None:
        subjects.check_prefix(prefix)
        self.prefix = prefix
        self._nc = nc
        self._transport = transport or Transport(nc, mux=False)

    async def instances(
        self, service: str | None = None, *, timeout_s: float = 2.0
    ) -> wire.Snapshot:
        """Every instance a registry node knows (or those of ``service``)."""
        if service is None:
            subject = subjects.control_subject(self.prefix, "registry", "list")
        elif subjects.is_valid_token(service):
            subject = subjects.control_subject(self.prefix, "registry", "service", service)
        else:
            raise ConfigError(f"{service!r} is not a valid service name")
        return await self._ask_registry(subject, timeout_s)

    async def instance(self, instance_id: str, *, timeout_s: float = 2.0) -> wire.InstanceView:
        """One instance by id; raises :class:`~natsreg.ServiceError` (404) if unknown."""
        if not subjects.is_valid_token(instance_id):
            raise ConfigError(f"{instance_id!r} is not a valid instance id")
        subject = subjects.control_subject(self.prefix, "registry", "instance", instance_id)
        snapshot = await self._ask_registry(subject, timeout_s)
        if not snapshot.instances:
            raise errors.ServiceError(f"no instance {instance_id!r}", code=404, subject=subject)
        return snapshot.instances[0]

    async def services(self, *, timeout_s: float = 2.0) -> wire.ServiceList:
        """Every service at every version, summed over its instances (what ``natsreg ls``
        shows): one small answer, whatever the size of the fleet."""
        subject = subjects.control_subject(self.prefix, "registry", "services")

        async def ask(asked: str, deadline: float) -> Reply:
            try:
                return await self._transport.request(asked, b"", _left(deadline), None)
            except NoInstanceError as exc:
                raise _NoNode from exc

        reply = await self._warm_first(subject, timeout_s, ask)
        try:
            return wire.decode_service_list(reply.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RequestError(
                f"registry sent an unreadable answer: {exc}", subject=subject
            ) from exc

    async def nodes(self, *, wait_s: float = 0.5) -> list[wire.NodeStats]:
        """Every registry node on the prefix that answers within ``wait_s``, warm or not,
        with its own figures (``warming_up``, ``uptime_s``...), by node id."""
        found: dict[str, wire.NodeStats] = {}
        for data in await gather(self._nc, subjects.control_subject(self.prefix, "nodes"), wait_s):
            try:
                stats = wire.decode_node_stats(data)
            except wire.MALFORMED:
                continue
            found[stats.node] = stats
        return sorted(found.values(), key=lambda n: n.node)

    def _warming(self, subject: str) -> str:
        # The same question asked of warming nodes, which take none on <prefix>.registry.>
        # (docs/protocol.md, "Warm-up"): asked only when no warm node answers.
        tail = subject[len(subjects.control_subject(self.prefix, "registry")) :]
        return subjects.control_subject(self.prefix, "warming") + tail

    def _no_registry(self, subject: str) -> NoInstanceError:
        return NoInstanceError(
            f"no registry node answers on prefix {self.prefix!r}: start one with "
            "'natsreg registry' (or 'natsreg up')",
            subject=subject,
        )

    async def _ask_registry(self, subject: str, timeout_s: float) -> wire.Snapshot:
        return await self._warm_first(subject, timeout_s, self._ask_node)

    async def _warm_first(
        self, subject: str, timeout_s: float, ask: Callable[[str, float], Awaitable[_T]]
    ) -> _T:
        """``ask(subject, deadline)`` of the warm nodes, and of the warming ones only when no
        warm node answers (``ask`` raises _NoNode): docs/protocol.md, "Warm-up"."""
        deadline = time.monotonic() + timeout_s
        for asked in (subject, self._warming(subject)):
            try:
                return await ask(asked, deadline)
            except _NoNode:
                continue
        raise self._no_registry(subject)

    async def _ask_node(self, subject: str, deadline: float) -> wire.Snapshot:
        # A large view comes as several chunks, each under the server's max_payload, the last
        # with more=false; a plain request() would keep only the first.
        timeout_s = _left(deadline)
        inbox = self._nc.new_inbox()
        try:
            sub = await self._nc.subscribe(inbox)
        except nats.errors.Error as exc:
            raise errors.from_nats(exc, subject, timeout_s) from exc
        instances: list[wire.InstanceView] = []
        try:
            try:
                await self._nc.publish(subject, b"", reply=inbox)
            except nats.errors.Error as exc:
                raise errors.from_nats(exc, subject, timeout_s) from exc
            while True:
                try:
                    msg = await sub.next_msg(timeout=max(deadline - time.monotonic(), 0.001))
                except nats.errors.Error as exc:  # a timeout, or the connection closed
                    raise errors.from_nats(exc, subject, timeout_s) from exc
                if msg.headers and msg.headers.get(STATUS_HEADER) == NO_RESPONDERS_STATUS:
                    raise _NoNode
                error = errors.from_reply_headers(msg.headers, subject)
                if error is not None:
                    raise error
                try:
                    chunk = wire.decode_snapshot(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise RequestError(
                        f"registry sent an unreadable answer: {exc}", subject=subject
                    ) from exc
                instances.extend(chunk.instances)
                if not chunk.more:
                    chunk.instances = instances
                    return chunk
        finally:
            if not self._nc.is_closed:
                # Closed: nats-py dropped the subscription already, and its unsubscribe()
                # would raise over whatever ended this ask (a cancellation, say).
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    async def watch(self, service: str | None = None) -> AsyncIterator[wire.Event]:
        """Registry changes as they happen, one event per change.

        Every registry node publishes what it sees; the same change reported by several
        nodes is yielded once. An event that does not decode, or whose subject
        (``<prefix>.events.<name>``) names another service than its instance, is skipped.
        """
        if service is not None and not subjects.is_valid_token(service):
            raise ConfigError(f"{service!r} is not a valid service name")
        subject = subjects.control_subject(self.prefix, "events", service or ">")
        seen: OrderedDict[tuple[str, int, str], None] = OrderedDict()
        sub = await self._nc.subscribe(subject)
        try:
            async for msg in sub.messages:
                try:
                    event = wire.decode_event(msg.data)
                except wire.MALFORMED:
                    continue
                if msg.subject != subjects.control_subject(
                    self.prefix, "events", event.instance.name
                ):
                    continue
                key = (event.instance.id, event.instance.seq, event.kind)
                if key in seen:
                    continue
                seen[key] = None
                if len(seen) > 4096:
                    seen.popitem(last=False)
                yield event
        finally:
            await sub.unsubscribe()


class _NoNode(Exception):
    """Nobody subscribes to the subject asked."""


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)
