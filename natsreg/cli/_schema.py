"""What the CLI does with endpoint schemas: shows them in a line (``natsreg info``) and checks
a payload against one before sending it (``natsreg request``).

The schemas come from the bus, so they are hostile data: one over the caps of
:mod:`natsreg._schemas` (or the marker of one left out) checks nothing; a reference is never
fetched (jsonschema's registry resolves only what the schema holds); ``pattern`` is not
matched here (a hostile regular expression could take the CLI's time; the service, which
checks every request with its own types, still applies it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import _schemas, wire
from ..client._target import Target

__all__ = ["payload_needed", "payload_problem", "render", "request_schemas"]

# How much of a schema one line shows: nesting, and characters.
_RENDER_DEPTH = 4
_RENDER_CHARS = 240


def render(schema: Mapping[str, Any] | None) -> str:
    """``schema`` in one readable line: ``UserQuery {id: integer, note?: string}``."""
    if schema is None:
        return "-"
    if _schemas.is_truncated(schema):
        return f"(not shown: {schema.get('description', 'left out')})"
    if _schemas.problem(dict(schema)) is not None:
        return "(not shown: over the schema caps)"
    text = _render(schema, 0)
    title = schema.get("title")
    if isinstance(title, str) and title and "properties" in schema:
        text = f"{title} {text}"
    return text if len(text) <= _RENDER_CHARS else text[: _RENDER_CHARS - 1] + "…"


def _render(schema: Any, depth: int) -> str:
    if not isinstance(schema, Mapping):
        return "any"
    if depth > _RENDER_DEPTH:
        return "…"
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref.rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return " | ".join(_render(option, depth + 1) for option in options)
    if "const" in schema:
        return json.dumps(schema["const"])
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return " | ".join(json.dumps(value) for value in enum)
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    if kind == "array":
        return f"[{_render(schema.get('items', {}), depth + 1)}]"
    if kind == "object" or "properties" in schema:
        return _render_object(schema, depth)
    return str(kind) if isinstance(kind, str) else "any"


def _render_object(schema: Mapping[str, Any], depth: int) -> str:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        values = schema.get("additionalProperties")
        return f"{{string: {_render(values, depth + 1)}}}" if values else "object"
    required = schema.get("required")
    required = set(required) if isinstance(required, list) else set()
    fields = (
        f"{name}{'' if name in required else '?'}: {_render(value, depth + 1)}"
        for name, value in properties.items()
    )
    return "{" + ", ".join(fields) + "}"


def request_schemas(
    instances: Iterable[wire.InstanceView], target: Target, select: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The request schemas a call to ``target`` may meet: those of the endpoint on every
    instance it may reach. Empty (nothing to check) when any such endpoint has none, or
    one left out: a payload is refused only if no instance could take it."""
    found: list[dict[str, Any]] = []
    for instance in instances:
        if target.constraint is not None and not target.constraint.matches(instance.version):
            continue
        if any(instance.metadata.get(k) != v for k, v in select.items()):
            continue
        for endpoint in instance.endpoints:
            if endpoint.name != target.endpoint:
                continue
            schema = endpoint.schemas.request if endpoint.schemas is not None else None
            if schema is None or _schemas.is_truncated(schema) or _schemas.problem(schema):
                return []
            if schema not in found:
                found.append(schema)
    return found


def payload_problem(value: Any, schemas: Sequence[Mapping[str, Any]]) -> str | None:
    """Why ``value`` (the decoded payload) matches none of ``schemas``, in one line
    (``$.id: expected integer, got "x"``), or None if it matches one, or there are none.
    Raises ValueError when a schema cannot be used at all (not a schema, or it refers to
    something it does not hold)."""
    if not schemas:
        return None
    # Here: only a request to a typed endpoint pays for the import.
    import jsonschema
    import referencing
    import referencing.exceptions

    # The stubs leave extend() untyped; it returns a validator class like the one given.
    checker = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        jsonschema.Draft202012Validator, {"pattern": _unchecked}
    )
    # An empty registry of its own: jsonschema's default one fetches remote references
    # over the network (deprecated, but still done), which a schema from the bus must not
    # make this command do.
    offline: referencing.Registry[Any] = referencing.Registry()
    first: Any = None
    for schema in schemas:
        try:
            checker.check_schema(schema)
            validator = checker(schema, registry=offline)
            error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        except (
            jsonschema.exceptions.SchemaError,
            referencing.exceptions.Unresolvable,
            RecursionError,
        ) as exc:
            raise ValueError(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        if error is None:
            return None
        first = first or error
    return _describe(first)


def payload_needed(subject: str, schemas: Sequence[Mapping[str, Any]]) -> str:
    """The line for a request sent with no payload to an endpoint whose schemas want one:
    the shape it takes and, where one can be made that fits, a command line to copy."""
    shape = " or ".join(render(schema) for schema in schemas)
    line = f"{subject} needs a payload ({shape}) and none was given"
    value = _example(schemas[0], schemas[0], 0)
    if value is not _NONE and payload_problem(value, schemas) is None:
        quoted = json.dumps(value).replace("'", "'\\''")
        line += f": e.g. natsreg request {subject} '{quoted}'"
    return f"{line}; nothing was sent"


# No example can be made (None is the example of a schema that takes null).
_NONE: Any = object()
_EXAMPLES = {"integer": 1, "number": 1, "string": "text", "boolean": True, "null": None}


def _example(schema: Any, root: Mapping[str, Any], depth: int) -> Any:
    # The smallest value of the schema's shape: its required fields only, the first option
    # of a union; nothing (_NONE) where the schema says too little to make one.
    if not isinstance(schema, Mapping) or depth > _RENDER_DEPTH:
        return _NONE
    ref = schema.get("$ref")
    if isinstance(ref, str):
        definitions = root.get("$defs")
        name = ref.removeprefix("#/$defs/")
        if name == ref or not isinstance(definitions, Mapping):
            return _NONE
        return _example(definitions.get(name), root, depth + 1)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return _example(options[0], root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list) and kind:
        kind = next((k for k in kind if k != "null"), kind[0])
    if kind == "object" or "properties" in schema:
        return _example_object(schema, root, depth)
    if kind == "array":
        return []
    return _EXAMPLES.get(kind, _NONE) if isinstance(kind, str) else _NONE


def _example_object(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> Any:
    properties = schema.get("properties")
    required = schema.get("required")
    if not isinstance(properties, Mapping) or not isinstance(required, list):
        return {}
    value = {}
    for name in required:
        field = _example(properties.get(name), root, depth + 1)
        if field is _NONE:
            return _NONE
        value[name] = field
    return value


def _unchecked(*_: object) -> Iterable[Any]:
    return ()


def _describe(error: Any) -> str:
    path: str = error.json_path
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{path}: expected {expected}, got {_short(error.instance)}"
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        if missing:
            return f"{path}: missing required field {json.dumps(missing[0])}"
    return f"{path}: {error.message[:200]}"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:39] + "…"
