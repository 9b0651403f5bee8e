"""The JetStream key-value bucket that keeps sagas: settings, and every read and write of it.

One bucket per control prefix (``natsreg`` → ``natsreg_sagas``), created by the first
coordinator that needs it with :class:`SagaStore`'s settings; an existing bucket is used as it
is, so an operator may create it beforehand with settings of their own (``nats kv add``).
Every write is conditional on the revision read last (compare-and-set).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import api as js_api
from nats.js.kv import KeyValue

from .. import subjects
from .._jetstream import create_replicated, no_jetstream, when_ready
from ..errors import ConfigError, SagaLostError, SagaUnavailableError
from ._state import MAX_STATE_BYTES, SagaState, decode, encode

__all__ = ["Bucket", "SagaStore"]

log = logging.getLogger("natsreg.saga")

# The longest wait for the next entry of a scan: JetStream sends them back to back.
_SCAN_WAIT_S = 5.0
# How long a write is sent again while its stream has no leader, and how often.
_WRITE_RETRY_S = 15.0
_WRITE_RETRY_EVERY_S = 0.25
_NO_LEADER = (
    nats.errors.TimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


@dataclass(frozen=True, kw_only=True)
class SagaStore:
    """Where sagas are kept, and the settings of the bucket when natsreg creates it.

    The bucket is named after the client's control prefix
    (:func:`natsreg.subjects.saga_bucket`). ``replicas`` None asks for 3 and settles for
    what the cluster has (1 on a single server); ``history`` is how many
    revisions of each saga JetStream keeps (the saga's own history is inside each revision);
    ``max_age_s`` is how long a saga stays readable after its last write.
    """

    replicas: int | None = None
    history: int = 5
    max_age_s: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        if self.replicas is not None and not 1 <= self.replicas <= 5:
            raise ConfigError(f"replicas must be 1 to 5 (JetStream's limit), got {self.replicas}")
        if not 1 <= self.history <= 64:
            raise ConfigError(f"history must be 1 to 64 (JetStream's limit), got {self.history}")
        if self.max_age_s <= 0:
            raise ConfigError(f"max_age_s must be > 0, got {self.max_age_s}")

    def config(self, bucket: str, replicas: int) -> js_api.KeyValueConfig:
        """The bucket natsreg creates."""
        return js_api.KeyValueConfig(
            bucket=bucket,
            description="natsreg sagas: one entry per saga, its state and history",
            history=self.history,
            ttl=self.max_age_s,
            replicas=replicas,
            storage=js_api.StorageType.FILE,
            max_value_size=MAX_STATE_BYTES,
        )


class Bucket:
    """The sagas' bucket on one connection: reads and compare-and-set writes."""

    def __init__(self, kv: KeyValue, name: str) -> None:
        self._kv = kv
        self.name = name

    @classmethod
    async def find(cls, nc: NATS, prefix: str) -> Bucket | None:
        """The bucket of ``prefix``, or None when it does not exist (no saga has run with
        ``prefix``); SagaUnavailableError when JetStream is not there."""
        js = nc.jetstream()
        name = subjects.saga_bucket(prefix)
        try:
            return cls(await when_ready(lambda: js.key_value(name)), name)
        except nats.js.errors.BucketNotFoundError:
            return None
        except Exception as exc:
            raise _unavailable(exc) from exc

    @classmethod
    async def open(cls, nc: NATS, prefix: str, store: SagaStore | None = None) -> Bucket:
        """The bucket of ``prefix``, created with ``store``'s settings when it does not
        exist; SagaUnavailableError when JetStream is not there."""
        found = await cls.find(nc, prefix)
        if found is not None:
            return found
        js = nc.jetstream()
        name = subjects.saga_bucket(prefix)
        store = store or SagaStore()

        async def make(count: int) -> None:
            await js.create_key_value(store.config(name, count))

        try:
            count = await create_replicated(make, store.replicas)
        except Exception as exc:
            raise _unavailable(exc) from exc
        if count is not None:
            log.info("created saga bucket %s with %d replica(s)", name, count)
        return cls(await js.key_value(name), name)

    # Every operation below says what went wrong with JetStream in one SagaUnavailableError,
    # but for the answers that are part of the protocol (a key taken, a revision moved on).

    async def create(self, state: SagaState) -> int | None:
        """Store a new saga; its revision, or None when a saga of that id already exists."""
        try:
            return await self._write(state.id, encode(state), None)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    async def update(self, state: SagaState, revision: int) -> int:
        """Replace the saga if ``revision`` is still its latest; its new revision.
        SagaLostError when another coordinator wrote it meanwhile."""
        try:
            return await self._write(state.id, encode(state), revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise SagaLostError(
                f"saga {state.id} was taken over by another coordinator", saga_id=state.id
            ) from None

    async def _write(self, key: str, value: bytes, last: int | None) -> int:
        # A write that meets no stream leader (one was just lost: an election takes seconds)
        # is sent again for a while. If an attempt was stored but its acknowledgement lost,
        # the next is refused as a moved-on revision: the stored value then tells whether
        # that revision is this writer's own.
        deadline = time.monotonic() + _WRITE_RETRY_S
        retried = False
        while True:
            try:
                if last is None:
                    return await self._kv.create(key, value)
                return await self._kv.update(key, value, last=last)
            except nats.js.errors.KeyWrongLastSequenceError:
                if retried and (revision := await self._revision_of(key, value)) is not None:
                    return revision
                raise
            except _NO_LEADER as exc:
                if time.monotonic() > deadline:
                    raise _unavailable(exc) from exc
                retried = True
                await anyio.sleep(_WRITE_RETRY_EVERY_S)
            except nats.errors.Error as exc:
                raise _unavailable(exc) from exc

    async def _revision_of(self, key: str, value: bytes) -> int | None:
        # The latest revision of ``key`` if it holds exactly ``value``.
        try:
            stored = await self._kv.get(key)
        except nats.errors.Error:
            return None
        return stored.revision if stored.value == value else None

    async def get(self, saga_id: str) -> tuple[SagaState | None, int] | None:
        """The saga under ``saga_id`` (None if the entry is not a readable saga) and its
        revision; None when there is no such entry."""
        try:
            entry = await self._kv.get(saga_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        except nats.errors.Error as exc:
            raise _unavailable(exc) from exc
        return decode(saga_id, entry.value), entry.revision or 0

    async def scan(self, limit: int) -> AsyncIterator[tuple[str, SagaState | None, int]]:
        """Every saga's latest revision (at most ``limit``), in the bucket's order: key,
        state (None when unreadable) and revision."""
        try:
            watcher = await self._kv.watchall(ignore_deletes=True)
        except nats.errors.Error as exc:
            raise _unavailable(exc) from exc
        try:
            for _ in range(limit):
                try:
                    entry = await watcher.updates(timeout=_SCAN_WAIT_S)  # type: ignore[no-untyped-call]
                except nats.errors.Error as exc:
                    raise _unavailable(exc) from exc
                # The watcher says "nothing more stored" with None.
                if entry is None:
                    break
                yield entry.key, decode(entry.key, entry.value), entry.revision or 0
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]


def _unavailable(exc: Exception) -> SagaUnavailableError:
    if isinstance(exc, nats.errors.NoRespondersError) or no_jetstream(exc):
        reason = "JetStream is not enabled on this NATS server (natsreg up enables it)"
    else:
        reason = f"JetStream: {exc}"
    return SagaUnavailableError(f"cannot keep sagas: {reason}")
