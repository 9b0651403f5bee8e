"""The JSON Schemas of typed endpoints: how one is built from a Python type, how big and deep
one may be, and how schemas travel in ADR-32 endpoint metadata.

A schema heard on the bus is data from anyone: readers keep it only within
:data:`MAX_SCHEMA_BYTES` and :data:`MAX_SCHEMA_DEPTH` (:func:`problem`), never fetch what it
refers to, and a schema that cannot be kept becomes the :func:`truncated` marker, which
describes nothing and so validates anything (docs/protocol.md, "Typed endpoints").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

__all__ = [
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "METADATA_KEYS",
    "REQUEST_KEY",
    "RESPONSE_KEY",
    "TRUNCATED_KEY",
    "from_metadata",
    "is_truncated",
    "of_type",
    "other_metadata",
    "problem",
    "size",
    "to_metadata",
    "truncated",
]

#: The ADR-32 endpoint metadata keys that carry an endpoint's schemas as JSON text (ADR-32
#: metadata is string to string), read from natsreg and plain ADR-32 services alike.
REQUEST_KEY = "request_schema"
RESPONSE_KEY = "response_schema"
METADATA_KEYS = (REQUEST_KEY, RESPONSE_KEY)

# One schema, JSON encoded. A Struct of a few dozen fields, nested types included, takes 1-4
# KB; 16 KiB lets four of the largest fit an announcement (64 KiB) with room to spare.
MAX_SCHEMA_BYTES = 16 * 1024
# Nesting of the schema document (each nested type adds about two levels). It keeps every
# reader that walks a schema (a validator, a renderer) far from Python's recursion limit.
MAX_SCHEMA_DEPTH = 64

#: The key of the marker that stands for a schema left out (:func:`truncated`).
TRUNCATED_KEY = "truncated"

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_DEFS = "#/$defs/"


def of_type(type_: Any) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``type_``, self-contained: the root is the type's
    own schema, a named type used once is written in place, and only types used more than
    once or recursively stay in ``$defs`` (their ``$ref`` is ``#/$defs/<Name>``, relative to
    this schema's root). Raises TypeError for a type msgspec cannot describe."""
    schema = msgspec.json.schema(type_)
    defs: dict[str, Any] = schema.pop("$defs", {})
    uses = Counter(_refs(schema))
    for body in defs.values():
        uses.update(_refs(body))
    kept: dict[str, Any] = {}

    def resolve(node: Any, inside: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [resolve(item, inside) for item in node]
        if not isinstance(node, dict):
            return node
        name = _ref_name(node)
        if name is None:
            return {key: resolve(value, inside) for key, value in node.items()}
        if uses[name] == 1 and name not in inside:
            return resolve(defs[name], inside | {name})
        if name not in kept:
            kept[name] = None  # taken, while its own body (which may refer to it) resolves
            kept[name] = resolve(defs[name], frozenset({name}))
        return node

    root_name = _ref_name(schema)
    if root_name is not None:
        root = resolve(defs[root_name], frozenset({root_name}))
    else:
        root = resolve(schema, frozenset())
    if kept:
        root["$defs"] = kept
    return root  # type: ignore[no-any-return]


def _ref_name(node: dict[str, Any]) -> str | None:
    ref = node.get("$ref")
    if len(node) == 1 and isinstance(ref, str) and ref.startswith(_DEFS):
        return ref[len(_DEFS) :]
    return None


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, list):
        for item in node:
            yield from _refs(item)
    elif isinstance(node, dict):
        name = _ref_name(node)
        if name is not None:
            yield name
        else:
            for value in node.values():
                yield from _refs(value)


def size(schema: Mapping[str, Any]) -> int:
    """Bytes of ``schema`` JSON encoded, as it travels."""
    return len(_encode(schema))


def truncated(reason: str) -> dict[str, Any]:
    """The marker that stands for a schema left out, saying why. It has no keyword a
    validator reads, so it accepts anything: a caller then sends unchecked."""
    return {TRUNCATED_KEY: True, "description": reason}


def is_truncated(schema: Mapping[str, Any] | None) -> bool:
    """Whether ``schema`` is the marker of a schema left out."""
    return schema is not None and schema.get(TRUNCATED_KEY) is True


# Schemas found within the caps, by the hash of their encoding: every instance of a service
# version announces the same ones, and walking each anew made checking a peer's snapshot of
# 50k typed instances take seconds. Only what passed is remembered, at most _REMEMBERED,
# so hostile input costs no more than it did. (bytes hash with a per-process secret key:
# nobody outside can make a bad schema collide with a remembered one.)
_REMEMBERED = 4096
_within_caps: dict[int, None] = {}


def problem(schema: object) -> str | None:
    """Why ``schema`` may not be kept (not an object, over :data:`MAX_SCHEMA_BYTES`, nested
    deeper than :data:`MAX_SCHEMA_DEPTH`), or None: the one rule writers and readers apply."""
    if not isinstance(schema, dict):
        return "a schema must be a JSON object"
    too_deep = f"schema nested deeper than {MAX_SCHEMA_DEPTH} levels"
    try:
        encoded = _encode(schema)
    except RecursionError:  # nested deeper than the encoder goes, far beyond the cap
        return too_deep
    if len(encoded) > MAX_SCHEMA_BYTES:
        return f"schema of {len(encoded)} bytes, over the {MAX_SCHEMA_BYTES}-byte cap"
    key = hash(encoded)
    if key in _within_caps:
        return None
    if _deeper_than(schema, MAX_SCHEMA_DEPTH):
        return too_deep
    if len(_within_caps) >= _REMEMBERED:
        del _within_caps[next(iter(_within_caps))]
    _within_caps[key] = None
    return None


def _deeper_than(value: object, limit: int) -> bool:
    # A loop rather than recursion: the value is hostile, and may be nested thousands deep.
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return False


def to_metadata(
    request: Mapping[str, Any] | None, response: Mapping[str, Any] | None
) -> dict[str, str]:
    """The ADR-32 endpoint metadata that carries these schemas (None: no key)."""
    metadata = {}
    for key, schema in ((REQUEST_KEY, request), (RESPONSE_KEY, response)):
        if schema is not None:
            metadata[key] = _encode(schema).decode()
    return metadata


def from_metadata(
    metadata: Mapping[str, str],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, str]]:
    """The request and response schemas that ADR-32 endpoint metadata carries (None where
    it has none), and the rest of the metadata. A value that is no schema within the caps
    becomes the :func:`truncated` marker: the endpoint has a schema, which is not shown."""
    found: list[dict[str, Any] | None] = []
    for key in METADATA_KEYS:
        text = metadata.get(key)
        found.append(None if text is None else _parsed(text))
    return found[0], found[1], other_metadata(metadata)


def other_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` without the keys that carry schemas."""
    return {k: v for k, v in metadata.items() if k not in METADATA_KEYS}


def _parsed(text: str) -> dict[str, Any]:
    if len(text) > MAX_SCHEMA_BYTES:
        return truncated(f"schema of {len(text)} characters, over the {MAX_SCHEMA_BYTES} cap")
    try:
        schema = _decode(text)
    except (msgspec.DecodeError, RecursionError):
        return truncated("schema that is not JSON")
    why = problem(schema)
    return truncated(why) if why is not None else schema
