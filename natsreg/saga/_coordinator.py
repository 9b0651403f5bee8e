"""Driving one saga to its end: the steps forward, the compensations backward, a write of the
state after each, and the lease renewed all along.

A coordinator holds a saga while its writes succeed: every write is compare-and-set on the
revision it wrote last, so when another process took the saga over (this one's lease ran out,
e.g. while it was frozen) the next write fails and this one stops at once (SagaLostError).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from ..errors import (
    REQUEST_ID_HEADER,
    NatsregError,
    NotConnectedError,
    OutcomeUnknownError,
    RequestTimeoutError,
    SagaLostError,
)
from ._state import (
    MAX_ERROR_CHARS,
    MAX_NAME_CHARS,
    SagaState,
    begin,
    next_action,
    note,
    settle,
    stored_reply,
)
from ._store import Bucket, log

if TYPE_CHECKING:
    from ..client import Client
    from . import Saga

__all__ = ["KEY_HEADER", "SAGA_HEADER", "Coordinator", "coordinator_id", "step_key"]

#: Sent with every step and compensation: the saga's id.
SAGA_HEADER = "Natsreg-Saga"
#: Sent with every step and compensation: the same for every call of that step (or of its
#: compensation) whoever coordinates, so an endpoint can recognise a repeat by it.
KEY_HEADER = "Natsreg-Saga-Key"

_encode = msgspec.json.Encoder().encode


def coordinator_id() -> str:
    """Who coordinates, as the history shows it: host, process id and a random tag (a
    process may coordinate from several event loops)."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"[:MAX_NAME_CHARS]


def step_key(saga_id: str, index: int, *, compensation: bool = False) -> str:
    """The idempotency key of step ``index`` of a saga (``<id>.<index>``, and
    ``<id>.<index>.undo`` for its compensation)."""
    return f"{saga_id}.{index}{'.undo' if compensation else ''}"


class Coordinator:
    """Drives ``state`` (stored at ``revision``) to its end, as the coordinator it names."""

    def __init__(
        self,
        saga: Saga,
        client: Client,
        bucket: Bucket,
        state: SagaState,
        revision: int,
        *,
        begun: int | None = None,
    ) -> None:
        self._saga = saga
        self._client = client
        self._bucket = bucket
        self.state = state
        self._revision = revision
        self._lock = anyio.Lock()
        self._lost: SagaLostError | None = None
        # The step this coordinator itself marked started in its last write, if any.
        self._begun = begun

    async def drive(self) -> SagaState:
        """Run what is left of the saga, renewing the lease meanwhile; the final state.

        Raises SagaLostError when another coordinator took the saga over, and lets through
        what leaves the state unwritable (the connection closing): the lease then runs out
        and a resumer finishes the saga.
        """
        failure: list[Exception] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._renew, tg.cancel_scope)
            try:
                await self._advance()
            except Exception as exc:
                failure.append(exc)
            tg.cancel_scope.cancel()
        if self._lost is not None:
            raise self._lost
        if failure:
            raise failure[0]
        return self.state

    async def _renew(self, scope: anyio.CancelScope) -> None:
        # A third of the lease: two renewals may be late or lost before a resumer may take
        # over.
        while True:
            await anyio.sleep(self.state.lease_s / 3)
            try:
                self.state.beat += 1
                await self._save()
            except SagaLostError as exc:
                self._lost = exc
                scope.cancel()
                return
            except Exception as exc:
                # A lost renewal is one of three a lease allows; the steps' own writes fail
                # and say so if the bucket stays out of reach.
                log.warning("saga %s: lease not renewed: %s", self.state.id, exc)

    async def _save(self) -> None:
        async with self._lock:
            self._revision = await self._bucket.update(self.state, self._revision)

    async def _advance(self) -> None:
        while (action := next_action(self.state)) is not None:
            match action:
                case ("step", index):
                    await self._step(index)
                case ("compensate", index):
                    await self._compensate(index)
                case _:
                    # A saga taken over with nothing left to call.
                    settle(self.state, time.time())
                    await self._save()

    async def _step(self, index: int) -> None:
        step = self.state.steps[index]
        if self._begun != index:
            begin(self.state, index, time.time())
            await self._save()
        self._begun = None
        try:
            reply = await self._call(step.subject, index, attempt="", compensation=False)
        except NotConnectedError:
            raise
        except NatsregError as exc:
            step.status = "failed"
            step.error = str(exc)[:MAX_ERROR_CHARS]
            # The step may have taken effect: its own compensation runs too.
            step.uncertain = isinstance(exc, (RequestTimeoutError, OutcomeUnknownError))
            self.state.status = "compensating"
            self.state.error = f"{step.subject}: {exc}"[:MAX_ERROR_CHARS]
            note(self.state, time.time(), "step-failed", step=index, detail=step.error)
            settle(self.state, time.time())
            await self._save()
            return
        self.state.replies[step.subject] = stored_reply(reply)
        step.status = "succeeded"
        note(self.state, time.time(), "step-succeeded", step=index, detail=step.subject)
        self._begun = settle(self.state, time.time())
        await self._save()

    async def _compensate(self, index: int) -> None:
        step = self.state.steps[index]
        assert step.compensate is not None
        policy = self._saga.compensation
        while True:
            step.attempts += 1
            try:
                await self._call(
                    step.compensate, index, attempt=f".{step.attempts}", compensation=True
                )
            except NotConnectedError:
                raise
            except NatsregError as exc:
                step.error = str(exc)[:MAX_ERROR_CHARS]
                detail = f"attempt {step.attempts}: {step.error}"
                if step.attempts >= policy.attempts:
                    step.status = "dead"
                    note(self.state, time.time(), "compensation-dead", step=index, detail=detail)
                    settle(self.state, time.time())
                    await self._save()
                    return
                note(self.state, time.time(), "compensation-failed", step=index, detail=detail)
                await self._save()
                await anyio.sleep(policy.backoff(step.attempts))
                continue
            step.status = "compensated"
            note(
                self.state,
                time.time(),
                "compensation-succeeded",
                step=index,
                detail=step.compensate,
            )
            settle(self.state, time.time())
            await self._save()
            return

    async def _call(self, subject: str, index: int, *, attempt: str, compensation: bool) -> bytes:
        key = step_key(self.state.id, index, compensation=compensation)
        # A forward step keeps its request id across coordinators: a natsreg service that
        # already ran it answers a repeat from memory. Each compensation attempt has its own,
        # or the service would answer a retry with the failure it remembers.
        headers = {
            SAGA_HEADER: self.state.id,
            KEY_HEADER: key,
            REQUEST_ID_HEADER: key + attempt,
        }
        body: dict[str, Any] = {
            "saga": {
                "id": self.state.id,
                "name": self.state.name,
                "step": index,
                "subject": self.state.steps[index].subject,
                "compensation": compensation,
                "key": key,
            },
            "payload": self.state.payload,
            "replies": self.state.replies,
        }
        timeout_s = self._saga.steps[index].timeout_s
        reply = await self._client.request(
            subject, _encode(body), timeout_s=timeout_s, headers=headers
        )
        return reply.data
