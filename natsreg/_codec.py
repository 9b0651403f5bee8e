"""Payload encoding shared by requests and replies: what a handler or caller hands us becomes
bytes one way, and bytes become JSON values or typed Structs the other way."""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any, TypeVar, cast

import msgspec

T = TypeVar("T")

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


def to_bytes(value: Any) -> bytes:
    """bytes pass through untouched, str is UTF-8, None is empty, anything else is JSON."""
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return _json_encode(value)


@functools.lru_cache(maxsize=256)
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


class Message:
    """A payload with its subject and headers: the base of requests and replies."""

    __slots__ = ("data", "headers", "subject")

    def __init__(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        self.subject = subject
        self.data = data
        self.headers: dict[str, str] = headers or {}

    def json(self) -> Any:
        """The payload decoded as JSON (``None`` for an empty payload)."""
        return _json_decode(self.data) if self.data else None

    def decode(self, type_: type[T]) -> T:
        """The payload decoded as JSON and validated into ``type_`` (a Struct, a dataclass...)."""
        # A class is hashable, whatever mypy makes of an unbounded type[T].
        decoded: T = _decoder(cast(Hashable, type_)).decode(self.data)
        return decoded

    def text(self) -> str:
        """The payload as UTF-8 text."""
        return self.data.decode()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(subject={self.subject!r}, data={self.data[:64]!r})"
