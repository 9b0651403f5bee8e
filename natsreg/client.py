"""The caller's side: requests to endpoints, and questions to the registry.

    client = natsreg.Client(nc)
    reply = await client.request("user-service.users", {"id": 1}, timeout_s=2.0)
    user = reply.json()
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from . import errors, subjects, wire
from ._codec import Message, to_bytes
from .errors import ConfigError, NoInstanceError, RequestError

__all__ = ["Client", "Reply"]


class Reply(Message):
    """A successful reply: ``data``, ``headers``, ``json()``, ``decode(Type)``, ``text()``."""

    __slots__ = ()


@functools.lru_cache(maxsize=4096)
def _checked_subject(subject: str) -> str:
    # Cached: the same few subjects are requested over and over, and a bad one raises anyway.
    if not subjects.is_valid_subject(subject) or subject.startswith(("$", "_INBOX")):
        raise ConfigError(
            f"{subject!r} is not a subject natsreg can request: use '<service>.<endpoint>' "
            "with letters, digits, '-' and '_' (no spaces, '*', '>' or leading '$')"
        )
    return subject


class Client:
    """Sends requests on ``nc``. The connection stays the caller's to close.

    ``timeout_s`` is the default for :meth:`request`; ``prefix`` must match the registry
    nodes' when asking them questions.
    """

    def __init__(
        self, nc: NATS, *, timeout_s: float = 5.0, prefix: str = subjects.DEFAULT_PREFIX
    ) -> None:
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        if not subjects.is_valid_subject(prefix):
            raise ConfigError(f"prefix {prefix!r} is not a valid subject")
        self.timeout_s = timeout_s
        self.prefix = prefix
        self._nc = nc

    async def request(
        self,
        subject: str,
        payload: Any = None,
        *,
        timeout_s: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send ``payload`` to ``subject`` and return the reply.

        ``payload`` may be bytes (sent untouched), str, None, or anything msgspec encodes
        to JSON (dict, list, Struct, dataclass). Raises :class:`~natsreg.NoInstanceError`,
        :class:`~natsreg.RequestTimeoutError` or :class:`~natsreg.ServiceError`.
        """
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        return await self._request(_checked_subject(subject), to_bytes(payload), timeout_s,
                                   dict(headers) if headers else None)

    async def _request(
        self, subject: str, data: bytes, timeout_s: float, headers: dict[str, str] | None
    ) -> Reply:
        try:
            msg = await self._nc.request(subject, data, timeout=timeout_s, headers=headers)
        except Exception as exc:
            raise errors.from_nats(exc, subject, timeout_s) from exc
        if msg.headers:
            error = errors.from_reply_headers(msg.headers, subject)
            if error is not None:
                raise error
        return Reply(subject, msg.data, msg.headers)

    # -- registry ----------------------------------------------------------------------------

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

    async def _ask_registry(self, subject: str, timeout_s: float) -> wire.Snapshot:
        # A large view comes as several chunks, each under the server's max_payload, the last
        # with more=false; a plain request() would keep only the first.
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        deadline = time.monotonic() + timeout_s
        instances: list[wire.InstanceView] = []
        try:
            await self._nc.publish(subject, b"", reply=inbox)
            while True:
                try:
                    msg = await sub.next_msg(timeout=max(deadline - time.monotonic(), 0.001))
                except nats.errors.TimeoutError as exc:
                    raise errors.from_nats(exc, subject, timeout_s) from exc
                if msg.headers and msg.headers.get("Status") == "503":
                    raise NoInstanceError(
                        f"no registry node answers on prefix {self.prefix!r}: start one with "
                        "'natsreg registry' (or 'natsreg up')", subject=subject)
                error = errors.from_reply_headers(msg.headers, subject)
                if error is not None:
                    raise error
                try:
                    chunk = wire.decode_snapshot(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise RequestError(f"registry sent an unreadable answer: {exc}",
                                       subject=subject) from exc
                instances.extend(chunk.instances)
                if not chunk.more:
                    chunk.instances = instances
                    return chunk
        finally:
            await sub.unsubscribe()

    async def watch(self, service: str | None = None) -> AsyncIterator[wire.Event]:
        """Registry changes as they happen, one event per change.

        Every registry node publishes what it sees; the same change reported by several
        nodes is yielded once.
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
                except (msgspec.DecodeError, msgspec.ValidationError):
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
