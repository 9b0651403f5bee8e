"""An event as a handler sees it, and how its body is decoded from the handler's annotation."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from .._codec import Message

__all__ = ["Event", "EventHandler", "body_type"]

T = TypeVar("T")

EventHandler = Callable[["Event[Any]"], Awaitable[object]]


class Event(Message, Generic[T]):
    """One event: ``type``, ``body`` (decoded as the handler's annotation ``Event[T]`` asks;
    ``Event[bytes]``: the bytes as sent; else the JSON value), ``data`` (the bytes),
    ``headers``, and what makes a handler idempotent: ``id``, stable across redeliveries and
    replays (the stream sequence of the event as first stored), and ``delivery``, 1 on the
    first attempt. ``key`` is the ordering key the emitter gave, or None. A broadcast event
    has ``id`` 0 and ``delivery`` 1.
    """

    __slots__ = ("body", "delivery", "id", "key", "type")

    def __init__(
        self,
        *,
        event_type: str,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None,
        body: T,
        event_id: int,
        delivery: int,
        key: str | None,
    ) -> None:
        super().__init__(subject, data, headers)
        self.type = event_type
        self.body = body
        self.id = event_id
        self.delivery = delivery
        self.key = key

    def __repr__(self) -> str:
        return f"Event(type={self.type!r}, id={self.id}, delivery={self.delivery})"


def body_type(handler: EventHandler) -> Any:
    """The type ``handler`` wants its events' bodies decoded as: the ``T`` of an
    ``Event[T]`` annotation on its first parameter, or None (the JSON value)."""
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # an annotation that does not resolve: no decoding asked
        return None
    parameters = list(inspect.signature(handler).parameters)
    if not parameters:
        return None
    hint = hints.get(parameters[0])
    if typing.get_origin(hint) is Event:
        (argument,) = typing.get_args(hint)
        return None if argument is Any else argument
    return None
