"""``natsreg saga show ID`` and ``natsreg saga ls``: reading the sagas' bucket for people.

_lookups parses the arguments and prints JSON; this module reads the bucket and draws the
tables (with the table and console _output makes, so every command's tables look alike).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from nats.aio.client import Client as NATS

from ..errors import SagaNotFoundError
from ..saga._state import SagaState, check_id
from ..saga._store import Bucket

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["read_saga", "read_sagas", "render_saga", "render_sagas"]

#: Sagas read by ``saga ls`` at most (it shows the latest ``--limit`` of them).
SCAN_LIMIT = 10_000

_STATUS_STYLE = {
    "running": "cyan",
    "compensating": "yellow",
    "completed": "green",
    "compensated": "yellow",
    "failed-compensation": "red",
    "succeeded": "green",
    "failed": "red",
    "dead": "red",
}


async def read_saga(nc: NATS, prefix: str, saga_id: str) -> SagaState:
    """The saga ``saga_id``; SagaNotFoundError when there is none (or it is unreadable)."""
    bucket = await Bucket.find(nc, prefix)
    if bucket is None:
        raise SagaNotFoundError(
            f"no saga {saga_id!r}: no saga has run with prefix {prefix!r} yet "
            "(or pass the --prefix the sagas use)",
            saga_id=saga_id,
        )
    stored = await bucket.get(check_id(saga_id))
    if stored is None:
        raise SagaNotFoundError(
            f"no saga {saga_id!r} in bucket {bucket.name} (natsreg saga ls lists them)",
            saga_id=saga_id,
        )
    if stored[0] is None:
        raise SagaNotFoundError(
            f"the entry {saga_id!r} in bucket {bucket.name} is no saga natsreg can read "
            "(forged, or written by another version)",
            saga_id=saga_id,
        )
    return stored[0]


async def read_sagas(nc: NATS, prefix: str, *, running: bool, limit: int) -> list[SagaState]:
    """The ``limit`` sagas written last (only those in progress with ``running``), newest
    first; unreadable entries are left out. None at all when no saga has run with ``prefix``
    yet (its bucket does not exist)."""
    bucket = await Bucket.find(nc, prefix)
    if bucket is None:
        return []
    found = [
        state
        async for _, state, _ in bucket.scan(SCAN_LIMIT)
        if state is not None and not (running and state.done)
    ]
    found.sort(key=lambda state: state.updated_at, reverse=True)
    return found[:limit]


def render_saga(state: SagaState, console: Console, table: Callable[..., Table]) -> None:
    """One saga: what it is, its steps, its history."""
    console.print(f"saga [bold]{state.id}[/] ({state.name}): {_styled(state.status)}")
    if state.error:
        console.print(f"error: {state.error}", markup=False)
    console.print(f"coordinator: {state.coordinator} (lease {state.lease_s:g} s)", markup=False)
    steps = table("#", "STEP", "STATUS", "COMPENSATE", "ATTEMPTS", "ERROR")
    for index, step in enumerate(state.steps):
        steps.add_row(
            str(index),
            step.subject,
            _styled(step.status),
            step.compensate or "-",
            str(step.attempts) if step.compensate else "-",
            _escape(step.error),
        )
    console.print(steps)
    history = table("TIME", "COORDINATOR", "EVENT", "STEP", "DETAIL")
    if state.history_dropped:
        history.add_row("", "", f"({state.history_dropped} older entries dropped)", "", "")
    for entry in state.history:
        history.add_row(
            _when(entry.at),
            _escape(entry.coordinator),
            entry.event,
            "" if entry.step < 0 else str(entry.step),
            _escape(entry.detail),
        )
    console.print(history)


def render_sagas(
    states: list[SagaState],
    console: Console,
    table: Callable[..., Table],
    age: Callable[[float], str],
    *,
    running: bool = False,
) -> None:
    """A line per saga, newest first; ``age`` words how long ago it was written;
    ``running``: only sagas in progress were asked for."""
    if not states:
        if running:
            console.print("no saga is running (natsreg saga ls lists finished ones too)")
        else:
            console.print("no sagas yet (natsreg.Saga(...).run(client, payload) starts one)")
        return
    listing = table("ID", "NAME", "STATUS", "STEPS DONE", "UPDATED", "COORDINATOR")
    now = time.time()
    for state in states:
        done = sum(step.status == "succeeded" for step in state.steps)
        listing.add_row(
            state.id,
            state.name,
            _styled(state.status),
            f"{done}/{len(state.steps)}",
            age(max(0.0, now - state.updated_at)),
            _escape(state.coordinator),
        )
    console.print(listing)


def _styled(status: str) -> str:
    style = _STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


def _when(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _escape(text: str) -> str:
    # Errors and coordinator names come from the bus: never read as rich markup.
    from rich.markup import escape

    return escape(text)
