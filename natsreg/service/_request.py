"""A request as a handler sees it, and the handler's type."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, Generic, TypeVar

import msgspec
from nats.aio.msg import Msg

from .._codec import Message
from ..errors import BUDGET_HEADER, ServiceError

__all__ = ["Handler", "Request", "bad_request"]

T = TypeVar("T")
B = TypeVar("B")

Handler = Callable[["Request[Any]"], Awaitable[Any]]

# What ``body`` holds until a typed endpoint decodes the request.
_UNDECODED: Any = object()


class Request(Message, Generic[B]):
    """A request as a handler sees it: ``data``, ``headers``, ``subject``, ``body``,
    ``json()``, ``decode(Type)``, and ``deadline``.

    ``body`` is the payload decoded into the endpoint's request type: a handler annotated
    ``req: natsreg.Request[UserQuery]`` (or declared with ``request=UserQuery``) runs only
    for a payload that decodes into ``UserQuery``, and reads it as ``req.body``. An untyped
    endpoint's ``body`` is ``json()``.

    ``deadline`` is when the caller stops waiting, on this process' monotonic clock (compare
    with ``time.monotonic()``), or None if the caller sent no budget. Requests made through a
    :class:`natsreg.Client` inside the handler inherit it. ``state`` is the instance's own
    namespace, where ``on_start`` hooks put what handlers share (``ctx.state.db``).
    """

    __slots__ = ("_body", "deadline", "reply", "state")

    def __init__(
        self, msg: Msg, received: float | None = None, state: SimpleNamespace | None = None
    ) -> None:
        # Message.__init__ inlined: one Request is built per request served.
        self.subject = msg.subject
        self.data = msg.data
        self.headers = headers = msg.headers or {}
        self.reply = msg.reply
        self.state = state if state is not None else SimpleNamespace()
        self._body: B = _UNDECODED
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

    @property
    def body(self) -> B:
        """The payload decoded into the endpoint's request type (untyped: ``json()``)."""
        if self._body is _UNDECODED:
            return self.json()  # type: ignore[no-any-return]
        return self._body

    def set_body(self, body: B) -> None:
        """What ``body`` returns from now on (a typed endpoint's decoded payload)."""
        self._body = body

    # A payload that does not decode is the caller's mistake: it becomes a 400 reply, not a
    # 500 with a logged traceback.
    def json(self) -> Any:
        try:
            return super().json()
        except msgspec.DecodeError as exc:
            raise bad_request(exc) from exc

    def decode(self, type_: type[T]) -> T:
        try:
            return super().decode(type_)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise bad_request(exc) from exc


# msgspec's own wording: "Expected `int`, got `str` - at `$.id`".
_AT_PATH = re.compile(r"^(?P<reason>.*) - at `(?P<path>\$[^`]*)`$", re.DOTALL)


def bad_request(exc: msgspec.DecodeError | msgspec.ValidationError) -> ServiceError:
    """The 400 error for a payload that does not decode: the field's path first, then why
    (``$.id: expected `int`, got `str```), as a caller fixes it."""
    message = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        match = _AT_PATH.match(message)
        path, reason = (match["path"], match["reason"]) if match else ("$", message)
        return ServiceError(f"bad request: {path}: {reason[:1].lower()}{reason[1:]}", code=400)
    return ServiceError(f"the request is not valid JSON: {message}", code=400)
