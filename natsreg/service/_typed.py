"""Typed endpoints: the request and response types of a handler, their JSON Schemas, and the
check that runs before the handler (the innermost of the service's middleware).

The types come from the handler's annotations (``req: natsreg.Request[UserQuery]``,
``-> User``) or from ``endpoint(..., request=UserQuery, response=User)``; given both ways,
they must agree.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import msgspec

from .. import _schemas, wire
from .._codec import to_bytes
from ..errors import ConfigError
from ._log import log
from ._request import Handler, Request, bad_request

__all__ = ["BodyTypes", "body_types", "fit_schemas", "schemas_of", "validating"]

# Return annotations that say "a payload as it is" rather than a type: the handler's
# bytes, text or nothing go out untouched (what untyped handlers have always done).
_UNTYPED: tuple[Any, ...] = (
    Any,
    object,
    None,
    type(None),
    bytes,
    bytearray,
    memoryview,
    str,
    inspect.Parameter.empty,
)


class BodyTypes(NamedTuple):
    """An endpoint's request and response types; None where it declares none."""

    request: Any
    response: Any

    @property
    def typed(self) -> bool:
        return self.request is not None or self.response is not None


class _Unresolved(NamedTuple):
    text: str
    error: str


def body_types(handler: Handler, request: Any, response: Any, what: str) -> BodyTypes:
    """The body types of ``handler``: ``request``/``response`` when given, else its
    annotations; ConfigError when the two disagree or an annotation cannot be read."""
    hints = _annotations(handler)
    params = list(inspect.signature(handler).parameters.values())
    annotated_request = _request_type(hints.get(params[0].name) if params else None, what)
    annotated_response = _response_type(hints.get("return"), what)
    return BodyTypes(
        _agreed(what, "request", request, annotated_request),
        _agreed(what, "response", response, annotated_response),
    )


def _annotations(handler: Handler) -> dict[str, Any]:
    # Each annotation on its own: one that cannot be resolved (a type only imported for
    # type checkers, say) matters only if it is a body type. A decorated handler's names
    # are those of the module that defines it, not of the decorator's.
    target = inspect.unwrap(handler)
    try:
        raw = inspect.get_annotations(target)
    except TypeError:
        return {}  # a functools.partial, say: nothing declared
    globalns = getattr(target, "__globals__", {})
    hints: dict[str, Any] = {}
    for name, annotation in raw.items():
        holder = types.SimpleNamespace(__annotations__={name: annotation})
        try:
            hints[name] = typing.get_type_hints(holder, globalns=globalns)[name]
        except Exception as exc:
            hints[name] = _Unresolved(str(annotation), f"{type(exc).__name__}: {exc}")
    return hints


def _request_type(annotation: Any, what: str) -> Any:
    if isinstance(annotation, _Unresolved):
        if "[" in annotation.text:  # Request[Something]: a body type the reader cannot see
            raise _unresolved(what, annotation)
        return None
    if typing.get_origin(annotation) is Request:
        (type_,) = typing.get_args(annotation)
        return None if type_ in (Any, object) else type_
    return None


def _response_type(annotation: Any, what: str) -> Any:
    if isinstance(annotation, _Unresolved):
        raise _unresolved(what, annotation)
    if _is_untyped(annotation):
        return None
    try:
        msgspec.json.schema(annotation)
    except (TypeError, ValueError):
        # A return annotation written for type checkers (``dict[str, object]``), not a
        # declared wire type: the endpoint stays untyped, as it always was.
        return None
    return annotation


def _is_untyped(annotation: Any) -> bool:
    if annotation in _UNTYPED:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        # A payload-as-it-is member (``User | None``, ``User | bytes``) keeps the handler's
        # say over the bytes: no response type.
        return any(_is_untyped(arg) for arg in typing.get_args(annotation))
    return False


def _unresolved(what: str, annotation: _Unresolved) -> ConfigError:
    return ConfigError(
        f"{what}: cannot read the handler's annotation {annotation.text!r} "
        f"({annotation.error}); define the type at module level, or pass it to "
        "endpoint() as request=... / response=..."
    )


def _agreed(what: str, side: str, given: Any, annotated: Any) -> Any:
    if given is not None and annotated is not None and given != annotated:
        raise ConfigError(
            f"{what}: {side}={_name(given)} but the handler is annotated with "
            f"{_name(annotated)}; give one, or make them agree"
        )
    return given if given is not None else annotated


def _name(type_: Any) -> str:
    return getattr(type_, "__name__", None) or repr(type_)


def schemas_of(types_: BodyTypes, what: str) -> wire.Schemas | None:
    """The JSON Schemas of ``types_`` for the announcement: a schema over the caps is left
    out (the truncated marker, with a warning); ConfigError for a type msgspec cannot
    describe."""
    if not types_.typed:
        return None
    built: list[dict[str, Any] | None] = []
    for side, type_ in (("request", types_.request), ("response", types_.response)):
        if type_ is None:
            built.append(None)
            continue
        try:
            schema = _schemas.of_type(type_)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"{what}: {side} type {_name(type_)} is not one msgspec can decode and "
                f"describe ({exc}); use a msgspec Struct, a dataclass or a builtin type"
            ) from None
        why = _schemas.problem(schema)
        if why is not None:
            log.warning("%s: %s schema left out of the announcement: %s", what, side, why)
            schema = _schemas.truncated(why)
        built.append(schema)
    return wire.Schemas(request=built[0], response=built[1])


def validating(handler: Handler, types_: BodyTypes) -> Handler:
    """``handler`` behind its endpoint's types: a payload that does not decode into the
    request type is refused with a 400 naming the field (the handler does not run); what the
    handler returns is converted to the response type and encoded (bytes go out as they
    are; anything that does not convert is the handler's bug, a 500)."""
    decode = msgspec.json.Decoder(types_.request).decode if types_.request is not None else None
    check = _response_check(types_.response)

    async def typed(req: Request[Any]) -> Any:
        if decode is not None:
            try:
                req.set_body(decode(req.data))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise bad_request(exc) from None
        result = await handler(req)
        if check is None or isinstance(result, bytes | bytearray | memoryview):
            return result
        return to_bytes(check(result))

    return typed


def _response_check(type_: Any) -> Callable[[Any], Any] | None:
    if type_ is None:
        return None
    exact = type_ if isinstance(type_, type) and typing.get_origin(type_) is None else None

    def check(result: Any) -> Any:
        if exact is not None and type(result) is exact:
            return result
        try:
            return msgspec.convert(result, type_, from_attributes=True)
        except msgspec.ValidationError as exc:
            raise TypeError(
                f"the handler returned {type(result).__name__}, which is not the declared "
                f"response type {_name(type_)}: {exc}"
            ) from None

    return check


def fit_schemas(endpoints: Iterable[Any], excess: int, service: str) -> bool:
    """Leave out the largest schemas of ``endpoints`` (objects with ``name`` and
    ``schemas``) until about ``excess`` bytes are saved, each with a warning; whether any
    was left out. What keeps a typed service's announcement within its bound."""
    sizes = []
    for endpoint in endpoints:
        schemas: wire.Schemas | None = endpoint.schemas
        if schemas is None:
            continue
        for side in ("request", "response"):
            schema = getattr(schemas, side)
            if schema is not None and not _schemas.is_truncated(schema):
                sizes.append((_schemas.size(schema), endpoint, side))
    sizes.sort(key=lambda item: item[0], reverse=True)
    saved = 0
    for size, endpoint, side in sizes:
        if saved >= excess:
            break
        why = f"left out to keep the announcement within {wire.MAX_CONTROL_BYTES} bytes"
        marker = _schemas.truncated(why)
        endpoint.schemas = msgspec.structs.replace(endpoint.schemas, **{side: marker})
        saved += size - _schemas.size(marker)
        log.warning(
            "%s: endpoint %r: %s schema (%d bytes) %s", service, endpoint.name, side, size, why
        )
    return saved > 0
