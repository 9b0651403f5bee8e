"""The deadline of the request being handled, carried to nested calls through a contextvar.

A service sets it (monotonic clock) for the duration of each handler; a
:meth:`natsreg.Client.request` made inside the handler reads it, so a nested call never waits
longer than the original caller still waits. Each handler runs in its own task, so the value
never leaks from one request into another.
"""

from __future__ import annotations

from contextvars import ContextVar

current: ContextVar[float | None] = ContextVar("natsreg_deadline", default=None)
