"""The service instance on whose behalf code runs, for the log lines it writes.

An instance binds it while it subscribes and starts its tasks: nats-py runs each
subscription's callbacks in a task created at subscribe time, and a task copies the context
it was created in, so every handler (and every nested call a handler makes) inherits it
without costing the request path anything. :mod:`natsreg.logs` reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple


class Origin(NamedTuple):
    service: str
    instance: str


current: ContextVar[Origin | None] = ContextVar("natsreg_origin", default=None)


@contextmanager
def bound(service: str, instance: str) -> Iterator[None]:
    """Run the block, and every task or subscription it starts, as ``instance`` of ``service``.

    Reset on leaving, so the caller's own code (the body of ``async with announce(...)``,
    another instance in the same task) is never taken for this instance.
    """
    token = current.set(Origin(service, instance))
    try:
        yield
    finally:
        current.reset(token)
