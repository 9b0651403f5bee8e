"""A request as a handler sees it, and the handler's type."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, TypeVar

import msgspec
from nats.aio.msg import Msg

from .._codec import Message
from ..errors import BUDGET_HEADER, ServiceError

__all__ = ["Handler", "Request"]

T = TypeVar("T")

Handler = Callable[["Request"], Awaitable[Any]]


class Request(Message):
    """A request as a handler sees it: ``data``, ``headers``, ``subject``, ``json()``,
    ``decode(Type)``, and ``deadline``.

    ``deadline`` is when the caller stops waiting, on this process' monotonic clock (compare
    with ``time.monotonic()``), or None if the caller sent no budget. Requests made through a
    :class:`natsreg.Client` inside the handler inherit it. ``state`` is the instance's own
    namespace, where ``on_start`` hooks put what handlers share (``ctx.state.db``).
    """

    __slots__ = ("deadline", "reply", "state")

    def __init__(
        self, msg: Msg, received: float | None = None, state: SimpleNamespace | None = None
    ) -> None:
        # Message.__init__ inlined: one Request is built per request served.
        self.subject = msg.subject
        self.data = msg.data
        self.headers = headers = msg.headers or {}
        self.reply = msg.reply
        self.state = state if state is not None else SimpleNamespace()
        self.deadline: float | None = None
        budget = headers.get(BUDGET_HEADER) if headers else None
        if budget is not None:
            # The budget is relative to when the request reached us (a queued request has
            # already spent some of it), so clocks of different machines never meet.
            try:
                budget_s = int(budget) / 1000
            except ValueError:
                budget_s = None
            if budget_s is not None:
                self.deadline = (received or time.monotonic()) + budget_s

    # A payload that does not decode is the caller's mistake: it becomes a 400 reply, not a
    # 500 with a logged traceback.
    def json(self) -> Any:
        try:
            return super().json()
        except msgspec.DecodeError as exc:
            raise ServiceError(f"the request is not valid JSON: {exc}", code=400) from exc

    def decode(self, type_: type[T]) -> T:
        try:
            return super().decode(type_)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ServiceError(f"bad request: {exc}", code=400) from exc
