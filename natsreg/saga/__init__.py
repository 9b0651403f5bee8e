"""Sagas: work that spans services, undone step by step when a step fails.

    saga = natsreg.Saga("place-order", steps=[
        natsreg.Step("inventory.reserve", compensate="inventory.release"),
        natsreg.Step("billing.charge", compensate="billing.refund"),
        natsreg.Step("shipping.schedule"),
    ])
    result = await saga.run(client, {"order": 42})

The steps run in order through :meth:`natsreg.Client.request`; when one fails, the
compensations of those that ran run in reverse order, each retried with backoff until it
succeeds or is dead-lettered. The saga's state is written to a JetStream key-value bucket
after every step, so that when its coordinator dies another process resumes it
(:meth:`Saga.resume`, :meth:`Saga.recover`). docs/sagas.md says what is guaranteed.
"""

from __future__ import annotations

import logging
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
from nats.aio.client import Client as NATS

from ..client import Client, RetryPolicy
from ..client._target import parse_target
from ..errors import (
    ConfigError,
    NatsregError,
    SagaBusyError,
    SagaCompensationError,
    SagaLostError,
    SagaNotFoundError,
)
from ._coordinator import KEY_HEADER, SAGA_HEADER, Coordinator, coordinator_id
from ._state import (
    MAX_LEASE_S,
    MAX_PAYLOAD_BYTES,
    MAX_STEPS,
    MIN_LEASE_S,
    HistoryEntry,
    LeaseWatch,
    SagaState,
    StepState,
    begin,
    check_id,
    check_name,
    note,
)
from ._store import Bucket, SagaStore

__all__ = [
    "KEY_HEADER",
    "SAGA_HEADER",
    "HistoryEntry",
    "Saga",
    "SagaResult",
    "SagaState",
    "SagaStore",
    "Step",
]

log = logging.getLogger("natsreg.saga")

#: Compensations: 6 attempts, with random waits of up to 0.5, 1, 2, 4 and 8 s between them
#: (at most about 16 s) before one is dead-lettered.
DEFAULT_COMPENSATION = RetryPolicy(attempts=6, backoff_s=0.5, max_backoff_s=10.0)


@dataclass(frozen=True)
class Step:
    """One step: the endpoint that does it (``service.endpoint``, a version constraint
    allowed) and the one that undoes it (None: nothing to undo). ``timeout_s`` bounds each
    call (None: the client's timeout)."""

    subject: str
    compensate: str | None = None
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        parse_target(self.subject)
        if self.compensate is not None:
            parse_target(self.compensate)
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(f"step {self.subject}: timeout_s must be > 0, got {self.timeout_s}")


@dataclass(frozen=True)
class SagaResult:
    """How a saga ended: ``status`` is ``completed`` or ``compensated`` (a step failed:
    ``error`` says which and why; what ran was undone). ``replies`` holds each successful
    step's reply by subject, as stored (JSON values)."""

    id: str
    name: str
    status: str
    replies: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    history: list[HistoryEntry] = field(default_factory=list)

    @classmethod
    def of(cls, state: SagaState) -> SagaResult:
        """The result of ``state``."""
        return cls(
            id=state.id,
            name=state.name,
            status=state.status,
            replies={k: msgspec.json.decode(v) for k, v in state.replies.items()},
            error=state.error,
            history=list(state.history),
        )


class Saga:
    """A named sequence of steps. Define it once, at import time, in every process that may
    run or resume it: a resumer takes over only sagas of its name whose steps are its own.

    ``store`` holds the settings of the bucket, should natsreg create it; ``lease_s`` is how
    long a coordinator may stay silent before another may take its saga over (it renews
    every third of it); ``compensation`` says how often and how patiently each compensation
    is tried (its ``attempts`` and backoff) before it is dead-lettered.
    """

    def __init__(
        self,
        name: str,
        steps: Sequence[Step],
        *,
        store: SagaStore | None = None,
        lease_s: float = 10.0,
        compensation: RetryPolicy = DEFAULT_COMPENSATION,
    ) -> None:
        self.name = check_name(name)
        self.steps = tuple(steps)
        if not 0 < len(self.steps) <= MAX_STEPS:
            raise ConfigError(f"saga {name}: give 1 to {MAX_STEPS} steps, got {len(self.steps)}")
        subjects = [step.subject for step in self.steps]
        if len(set(subjects)) != len(subjects):
            # Replies are handed on by subject.
            raise ConfigError(f"saga {name}: each step needs a subject of its own")
        if not MIN_LEASE_S <= lease_s <= MAX_LEASE_S:
            raise ConfigError(f"lease_s must be {MIN_LEASE_S} to {MAX_LEASE_S} s, got {lease_s}")
        self.store = store or SagaStore()
        self.lease_s = lease_s
        self.compensation = compensation
        # The bucket opened on each connection (and prefix): opening it asks JetStream for
        # its stream's info, which costs as much as a step.
        self._buckets: weakref.WeakKeyDictionary[NATS, dict[str, Bucket]] = (
            weakref.WeakKeyDictionary()
        )

    async def run(
        self, client: Client, payload: Any = None, *, saga_id: str | None = None
    ) -> SagaResult:
        """Run the saga to its end with ``payload`` (anything msgspec encodes to JSON).

        ``saga_id`` (default: a fresh one) names it in the bucket; running an id that has
        ended returns its result again without running anything. Returns the result when it
        completed or was compensated; raises SagaCompensationError when a compensation was
        dead-lettered, SagaBusyError when the id is running elsewhere, SagaLostError when
        another coordinator took it over meanwhile.
        """
        saga_id = uuid.uuid4().hex if saga_id is None else check_id(saga_id)
        encoded = msgspec.json.encode(payload)
        if len(encoded) > MAX_PAYLOAD_BYTES:
            raise ConfigError(
                f"saga payload is {len(encoded)} bytes; at most {MAX_PAYLOAD_BYTES} are kept: "
                "store large data elsewhere and pass a reference"
            )
        bucket = await self._bucket(client)
        now = time.time()
        state = SagaState(
            id=saga_id,
            name=self.name,
            payload=msgspec.Raw(encoded),
            steps=[StepState(subject=s.subject, compensate=s.compensate) for s in self.steps],
            coordinator=coordinator_id(),
            lease_s=self.lease_s,
            created_at=now,
        )
        note(state, now, "started", detail=f"{len(self.steps)} steps")
        begin(state, 0, now)
        revision = await bucket.create(state)
        if revision is None:
            stored = await bucket.get(saga_id)
            existing = stored[0] if stored else None
            if existing is not None and existing.done and self._owns(existing):
                return self._result(existing)
            raise SagaBusyError(
                f"saga {saga_id} already exists ({existing.status if existing else 'unreadable'})"
                f": see 'natsreg saga show {saga_id}'",
                saga_id=saga_id,
            )
        coordinator = Coordinator(self, client, bucket, state, revision, begun=0)
        return self._result(await coordinator.drive())

    async def resume(self, client: Client, saga_id: str) -> SagaResult:
        """Finish (or compensate) saga ``saga_id`` whose coordinator is gone.

        Waits up to the saga's lease for a sign of its coordinator (a new revision); with
        none, takes it over and drives it to its end. Returns at once the result of a saga
        that has ended. Raises SagaBusyError when its coordinator is alive (or another
        resumer took it first), SagaNotFoundError when no saga of this name is under the id.
        """
        bucket = await self._bucket(client)
        state, revision = await self._read(bucket, check_id(saga_id))
        if state.done:
            return self._result(state)
        watch = LeaseWatch()
        while not watch.expired(saga_id, revision, state.lease_s, time.monotonic()):
            await anyio.sleep(state.lease_s / 4)
            state, latest = await self._read(bucket, saga_id)
            if latest != revision or state.done:
                raise SagaBusyError(
                    f"saga {saga_id} is running: coordinator {state.coordinator} renews its lease",
                    saga_id=saga_id,
                )
        return self._result(await self._take_over(client, bucket, state, revision))

    async def recover(self, client: Client, *, limit: int = 10_000) -> list[SagaResult]:
        """Find the sagas of this name whose coordinator is gone and finish each.

        One pass: reads the bucket (at most ``limit`` sagas), watches the sagas in progress
        for up to their lease, and takes over those that stayed silent; returns their
        results (``failed-compensation`` among them, logged as errors). Entries that are no
        readable saga of this definition are skipped and logged, never acted on. Run it at
        start-up and then every so often (a lease or so) in a process that defines the saga.
        """
        bucket = await self._bucket(client)
        watch = LeaseWatch()
        waiting: dict[str, tuple[SagaState, int]] = {}
        async for key, state, revision in bucket.scan(limit):
            if state is None:
                log.warning("saga bucket %s: entry %r is no saga; skipped", bucket.name, key)
            elif state.name == self.name and not state.done:
                if self._owns(state):
                    watch.expired(key, revision, state.lease_s, time.monotonic())
                    waiting[key] = (state, revision)
                else:
                    log.warning("saga %s: stored steps differ from %s's; skipped", key, self.name)
        results: list[SagaResult] = []
        # Sagas taken over run side by side: one compensating with long backoffs does not
        # hold up the others.
        async with anyio.create_task_group() as tg:
            while waiting:
                await anyio.sleep(min(state.lease_s for state, _ in waiting.values()) / 4)
                for saga_id in list(waiting):
                    stored = await bucket.get(saga_id)
                    current = stored[0] if stored else None
                    if stored is None or current is None or current.done:
                        del waiting[saga_id]
                    elif stored[1] != waiting[saga_id][1]:
                        del waiting[saga_id]  # its coordinator is alive
                    elif watch.expired(saga_id, stored[1], current.lease_s, time.monotonic()):
                        del waiting[saga_id]
                        tg.start_soon(
                            self._recover_one, client, bucket, current, stored[1], results
                        )
        return results

    async def _recover_one(
        self,
        client: Client,
        bucket: Bucket,
        state: SagaState,
        revision: int,
        results: list[SagaResult],
    ) -> None:
        try:
            final = await self._take_over(client, bucket, state, revision)
        except (SagaBusyError, SagaLostError) as exc:
            log.info("saga %s: %s", state.id, exc)
            return
        except NatsregError as exc:
            # Its state is as the last write left it: a later recover takes it up again.
            log.warning("saga %s: not finished: %s", state.id, exc)
            return
        results.append(SagaResult.of(final))
        if final.status == "failed-compensation":
            log.error("%s", _dead_lettered(final))

    async def _bucket(self, client: Client) -> Bucket:
        opened = self._buckets.setdefault(client.nc, {})
        bucket = opened.get(client.prefix)
        if bucket is None:
            bucket = opened[client.prefix] = await Bucket.open(client.nc, client.prefix, self.store)
        return bucket

    async def _take_over(
        self, client: Client, bucket: Bucket, state: SagaState, revision: int
    ) -> SagaState:
        previous = state.coordinator
        state.coordinator = coordinator_id()
        state.lease_s = self.lease_s
        state.beat += 1
        note(state, time.time(), "resumed", detail=f"lease of {previous} ran out")
        try:
            revision = await bucket.update(state, revision)
        except SagaLostError:
            raise SagaBusyError(
                f"saga {state.id} was taken over by another resumer first", saga_id=state.id
            ) from None
        log.info("saga %s: resumed (lease of %s ran out)", state.id, previous)
        return await Coordinator(self, client, bucket, state, revision).drive()

    async def _read(self, bucket: Bucket, saga_id: str) -> tuple[SagaState, int]:
        stored = await bucket.get(saga_id)
        if stored is None or stored[0] is None or not self._owns(stored[0]):
            raise SagaNotFoundError(
                f"no saga {self.name!r} with these steps is stored under id {saga_id!r} "
                f"(see 'natsreg saga show {saga_id}')",
                saga_id=saga_id,
            )
        return stored[0], stored[1]

    def _owns(self, state: SagaState) -> bool:
        # Its steps, not only its name: a resumer never runs the steps of another version
        # of the definition on a saga that started with the old one.
        return state.name == self.name and [(s.subject, s.compensate) for s in state.steps] == [
            (s.subject, s.compensate) for s in self.steps
        ]

    def _result(self, state: SagaState) -> SagaResult:
        result = SagaResult.of(state)
        if state.status == "failed-compensation":
            raise SagaCompensationError(_dead_lettered(state), saga_id=state.id, result=result)
        return result


def _dead_lettered(state: SagaState) -> str:
    dead = ", ".join(str(s.compensate) for s in state.steps if s.status == "dead")
    return (
        f"saga {state.id}: compensation {dead} failed every attempt and was dead-lettered; "
        f"undo it by hand (natsreg saga show {state.id})"
    )
