"""Background tasks that live exactly as long as an ``async with`` body."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup


@asynccontextmanager
async def background(
    *tasks: Callable[[], Coroutine[Any, Any, object]],
) -> AsyncIterator[TaskGroup]:
    """Run ``tasks`` while the body runs and cancel them when it ends.

    An exception from the body comes out as itself: anyio's task group would wrap it in an
    ExceptionGroup, and ``except KeyError`` around a natsreg block would never match.
    """
    body_error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        for task in tasks:
            tg.start_soon(task)
        try:
            yield tg
        except BaseException as exc:
            body_error = exc
        tg.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
