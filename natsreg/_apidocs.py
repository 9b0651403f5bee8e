"""API documents of the live fleet: what they share, and the AsyncAPI document of the NATS side.

Pure functions of the registry's view (a list of :class:`~natsreg.wire.InstanceView`), no I/O:
:func:`offered` gathers the endpoints the fleet serves, one per subject; :class:`SchemaBook`
takes their JSON Schemas into a document's ``components``; :func:`asyncapi` builds the AsyncAPI
3.0 document (``natsreg docs asyncapi``). The bridge's OpenAPI document is built from the same
parts (``natsreg.bridge._openapi``).

Names and schemas come from the bus, so from anyone who may publish there: a schema is taken
only when it keeps within the caps every reader applies (:func:`natsreg._schemas.problem`), is
a valid JSON Schema (draft 2020-12) and refers to nothing but its own ``$defs``; anything else
is dropped (the endpoint is then documented as untyped) and the document stays valid. Every
list a document holds is bounded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
import msgspec

from . import __version__, _schemas, wire
from ._semver import Constraint, Version, parse_version
from .errors import ConfigError

__all__ = [
    "MAX_DOCUMENT_SCHEMA_BYTES",
    "MAX_OPERATIONS",
    "Offered",
    "SchemaBook",
    "asyncapi",
    "offered",
]

#: All the schemas of one document, encoded; past it, further endpoints are documented untyped.
MAX_DOCUMENT_SCHEMA_BYTES = 8 * 1024 * 1024
#: Endpoints (subjects) one document describes; past it, the rest are left out and counted.
MAX_OPERATIONS = 4096
# A schema's $defs: naming them in a document is quadratic in their count (SchemaBook._name),
# and a real one holds tens at most (natsreg._schemas.of_type keeps only shared ones).
_MAX_DEFS = 128

# Keywords whose value is data, not schemas: never walked (a "$ref" inside is a value).
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "example"})
# Keywords whose value maps names to schemas: the names are not keywords.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas"})
# Keywords that give a schema an identity of its own, or refer by one: a document could not
# keep them meaning the same once the schema moves into it.
_IDENTITY_KEYWORDS = frozenset(
    {
        "$id",
        "$anchor",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
        "$recursiveAnchor",
        "$vocabulary",
    }
)
_LOCAL_REF = re.compile(r"^#/\$defs/([^/~%]+)$")
# Component names in OpenAPI 3.1 and AsyncAPI 3.0 (the stricter of the two).
_COMPONENT_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME_CHARS = 128

_encode = msgspec.json.Encoder(order="deterministic").encode


def _metaschema(cls: Any) -> Any:
    # What cls.check_schema does, built once: building it on every call is most of the cost.
    return cls(cls.META_SCHEMA, format_checker=cls.FORMAT_CHECKER)


_VALID_2020 = _metaschema(jsonschema.Draft202012Validator)
_VALID_07 = _metaschema(jsonschema.Draft7Validator)

Dialect = Literal["openapi", "asyncapi"]


@dataclass(frozen=True)
class Offered:
    """One subject the fleet serves: the endpoint as its newest version announces it, the
    services behind it and their versions, and the instances that serve it."""

    subject: str
    service: str
    endpoint: wire.Endpoint
    kinds: frozenset[str]
    versions: tuple[str, ...]
    instances: int
    # Every version's endpoint, newest first: a versioned route documents the newest match.
    by_version: tuple[tuple[Version | None, wire.Endpoint], ...] = field(repr=False)

    def served_by(self) -> str:
        """Who serves it, in words: "2 natsreg instance(s) of user-service (1.3.0, 1.2.0)"."""
        kinds = " and ".join(sorted("plain ADR-32" if k == "micro" else k for k in self.kinds))
        versions = ", ".join(self.versions[:16])
        return f"{self.instances} {kinds} instance(s) of {self.service} ({versions})"

    def matching(self, constraint: Constraint | None) -> wire.Endpoint | None:
        """The endpoint as the newest version that ``constraint`` accepts announces it."""
        if constraint is None:
            return self.endpoint
        for version, endpoint in self.by_version:
            if version is not None and constraint.matches(version):
                return endpoint
        return None


def offered(instances: Iterable[wire.InstanceView]) -> tuple[list[Offered], int]:
    """The subjects ``instances`` serve, sorted, one :class:`Offered` each (at most
    :data:`MAX_OPERATIONS`), and how many more were left out."""
    seen: dict[str, list[tuple[wire.InstanceView, wire.Endpoint]]] = {}
    for instance in instances:
        for endpoint in instance.endpoints[: wire.MAX_ENDPOINTS]:
            seen.setdefault(endpoint.subject, []).append((instance, endpoint))
    subjects = sorted(seen)
    result = []
    for subject in subjects[:MAX_OPERATIONS]:
        servers = seen[subject]
        by_version = sorted(
            ((_version(i.version), i.version, e, i) for i, e in servers),
            key=lambda t: (t[0] is not None, t[0].key() if t[0] else (), t[1]),
            reverse=True,
        )
        newest = by_version[0]
        result.append(
            Offered(
                subject=subject,
                service=newest[3].name,
                endpoint=newest[2],
                kinds=frozenset(i.kind for i, _ in servers),
                versions=tuple(dict.fromkeys(t[1] for t in by_version)),
                instances=len({i.id for i, _ in servers}),
                by_version=tuple((t[0], t[2]) for t in by_version),
            )
        )
    return result, max(len(subjects) - MAX_OPERATIONS, 0)


def _version(text: str) -> Version | None:
    try:
        return parse_version(text)
    except ConfigError:
        # A plain ADR-32 service's version is checked by the registry too; should one not
        # parse, it ranks below every version that does.
        return None


class _Dropped(Exception):
    """A schema from the bus that a document cannot hold."""


class SchemaBook:
    """The reusable schemas (``components.schemas``) of one document.

    :meth:`take` checks a schema off the bus, moves its ``$defs`` here under names of their
    own (``<service>.<Definition>``, the same name for the same definition, a suffix for
    another one) and hands back the schema to put in place, or None when it was dropped.
    ``dialect`` ``asyncapi`` turns 2020-12 forms into draft-07 ones (the AsyncAPI schema
    object's base) and OpenAPI's ``discriminator`` object into AsyncAPI's property name.
    """

    def __init__(self, ref_base: str, dialect: Dialect) -> None:
        self.ref_base = ref_base
        self.dialect = dialect
        self.schemas: dict[str, Any] = {}
        #: Schemas dropped: too large, invalid, or referring outside themselves.
        self.dropped = 0
        self._bytes = 0
        self._taken: dict[tuple[str, bytes], Any] = {}
        self._refused: set[int] = set()

    def take(self, schema: object, owner: str) -> dict[str, Any] | None:
        """``schema`` as the document holds it, its definitions filed under ``owner``."""
        if schema is None or id(schema) in self._refused:
            return None
        if (
            not isinstance(schema, dict)
            or _schemas.is_truncated(schema)
            or _schemas.problem(schema)
        ):
            # Over the caps, or the marker of a schema its sender left out: not encoded,
            # so known again by identity (the document is built from one view).
            self._refused.add(id(schema))
            self.dropped += 1
            return None
        encoded = _encode(schema)
        key = (owner, encoded)
        if key in self._taken:
            result: dict[str, Any] | None = self._taken[key]
            return result
        result = None
        if self._bytes + len(encoded) <= MAX_DOCUMENT_SCHEMA_BYTES:
            try:
                result = self._file(schema, owner)
                self._bytes += len(encoded)
            except _Dropped:
                result = None
        if result is None:
            self.dropped += 1
        if len(self._taken) < MAX_OPERATIONS:
            self._taken[key] = result
        return result

    def _file(self, schema: dict[str, Any], owner: str) -> dict[str, Any]:
        defs = schema.get("$defs", {})
        if not isinstance(defs, dict) or len(defs) > _MAX_DEFS:
            raise _Dropped
        if not _valid(_VALID_2020, schema):
            raise _Dropped
        root = {k: v for k, v in schema.items() if k not in ("$defs", "$schema")}
        names = self._name(defs, owner)
        rewrite = _rewriter(names, self.ref_base, self.dialect)
        rewritten_root = rewrite(root)
        rewritten_defs = {names[d]: rewrite(body) for d, body in defs.items()}
        if self.dialect == "asyncapi" and not all(
            _valid(_VALID_07, b) for b in (rewritten_root, *rewritten_defs.values())
        ):
            raise _Dropped
        self.schemas.update(rewritten_defs)
        return rewritten_root if isinstance(rewritten_root, dict) else {}

    def _name(self, defs: Mapping[str, Any], owner: str) -> dict[str, str]:
        """A component name for each definition: ``<owner>.<Definition>`` where that name is
        free or holds the same definition already, the next free ``-<n>`` otherwise."""
        names = {d: _component_name(f"{owner}.{d}") for d in defs}
        used = set(self.schemas)
        # A definition's final form depends on the names of those it refers to: rename what
        # collides until nothing does. A new name is free, so it never collides again, and
        # this ends within one round per definition.
        for _ in range(len(defs) + 1):
            rewrite = _rewriter(names, self.ref_base, self.dialect)
            collided = False
            for d, body in defs.items():
                held = self.schemas.get(names[d])
                if held is not None and held != rewrite(body):
                    names[d] = _free(names[d], used | set(names.values()))
                    collided = True
            if not collided:
                break
        return names


def _rewriter(names: Mapping[str, str], ref_base: str, dialect: Dialect) -> Callable[[Any], Any]:
    """A schema's rewriting into a document: its references to its own ``$defs`` point at
    ``ref_base`` + their names there, in ``dialect``'s forms."""

    def rewrite(node: Any) -> Any:
        return _rewrite(node, names, ref_base, dialect)

    return rewrite


def _rewrite(node: Any, names: Mapping[str, str], ref_base: str, dialect: Dialect) -> Any:
    if not isinstance(node, dict):
        if isinstance(node, list):
            return [_rewrite(n, names, ref_base, dialect) for n in node]
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _IDENTITY_KEYWORDS or key == "$defs":
            raise _Dropped  # only the root's $defs, moved out by the caller
        if key == "$ref":
            out[key] = _ref(value, names, ref_base)
        elif key in _DATA_KEYWORDS or not isinstance(value, dict | list):
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {k: _rewrite(v, names, ref_base, dialect) for k, v in value.items()}
        elif key == "discriminator" and isinstance(value, dict):
            out[key] = _discriminator(value, names, ref_base, dialect)
        else:
            out[key] = _rewrite(value, names, ref_base, dialect)
    if dialect == "asyncapi" and "prefixItems" in out:
        # Draft-07 spells a tuple as an items array, and what may follow it additionalItems.
        following = out.pop("items", None)
        out["items"] = out.pop("prefixItems")
        if following is not None:
            out["additionalItems"] = following
    return out


def _ref(value: Any, names: Mapping[str, str], ref_base: str) -> str:
    match = _LOCAL_REF.match(value) if isinstance(value, str) else None
    if match is None or match[1] not in names:
        # A remote reference would have a document's reader fetch it; any other pointer
        # into the schema would not survive the move.
        raise _Dropped
    return ref_base + names[match[1]]


def _discriminator(
    value: dict[str, Any], names: Mapping[str, str], ref_base: str, dialect: Dialect
) -> Any:
    name = value.get("propertyName")
    mapping = value.get("mapping", {})
    if not isinstance(name, str) or not isinstance(mapping, dict):
        raise _Dropped
    refs = {str(k): _ref(v, names, ref_base) for k, v in mapping.items()}
    if dialect == "asyncapi":
        return name  # AsyncAPI's discriminator is the property's name only
    return {"propertyName": name, "mapping": refs} if refs else {"propertyName": name}


# Verdicts on schemas already checked, by their encoding: checking takes milliseconds a schema
# (jsonschema walks the metaschema), and a fleet's schemas rarely change between documents.
# Only _MAX_VERDICTS are kept, so that hostile schemas cost no more than they did.
_verdicts: dict[tuple[int, bytes], bool] = {}
_MAX_VERDICTS = 4096


def _valid(metaschema: Any, schema: Any) -> bool:
    key = (id(metaschema), _encode(schema))
    verdict = _verdicts.get(key)
    if verdict is None:
        try:
            verdict = bool(metaschema.is_valid(schema))
        except (RecursionError, ValueError, TypeError):
            verdict = False
        if len(_verdicts) < _MAX_VERDICTS:
            _verdicts[key] = verdict
    return verdict


def _component_name(text: str) -> str:
    return _COMPONENT_CHARS.sub("_", text)[:_MAX_NAME_CHARS] or "_"


def _free(name: str, used: set[str]) -> str:
    base = name[: _MAX_NAME_CHARS - 8]
    n = 2
    while f"{base}-{n}" in used:
        n += 1
    return f"{base}-{n}"


# -- AsyncAPI ------------------------------------------------------------------------------


_ERROR_HEADERS = {
    "type": "object",
    "properties": {
        "Nats-Service-Error": {
            "type": "string",
            "description": "set on an error reply: what went wrong",
        },
        "Nats-Service-Error-Code": {
            "type": "string",
            "description": "set on an error reply: an HTTP-like status code",
        },
    },
}
# NATS bindings (github.com/asyncapi/bindings, nats): an operation's queue group, 255 at most.
_NATS_BINDING_VERSION = "0.1.0"
_MAX_QUEUE_CHARS = 255
_CHANNEL_ID = re.compile(r"[^A-Za-z0-9._-]")


def asyncapi(instances: Sequence[wire.InstanceView], servers: Sequence[str] = ()) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the endpoints ``instances`` serve, from a caller's side:
    one request-reply operation per subject (``action: send``, the reply on the caller's
    inbox), with the payload schemas of typed endpoints and the queue group as a NATS
    binding. ``servers``: NATS URLs (``nats://host:port``)."""
    book = SchemaBook("#/components/schemas/", "asyncapi")
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    endpoints, left_out = offered(instances)
    skipped: list[dict[str, str]] = []
    for item in endpoints:
        if "{" in item.subject or "}" in item.subject:
            # A channel address reads {name} as a parameter: such a subject cannot be said.
            skipped.append({"subject": item.subject[:256], "reason": "braces in the subject"})
            continue
        channel_id = _unique(_CHANNEL_ID.sub("_", item.subject)[:_MAX_NAME_CHARS], channels)
        reply_id = _unique(f"{channel_id}.reply", channels)
        schemas = item.endpoint.schemas
        request = book.take(schemas.request if schemas else None, item.service)
        response = book.take(schemas.response if schemas else None, item.service)
        channels[channel_id] = {
            "address": item.subject,
            "title": f"{item.service} {item.endpoint.name}",
            "description": f"served by {item.served_by()}; queue group "
            f"{item.endpoint.queue_group or 'none'}",
            "messages": {"request": _message(item, "request", request)},
        }
        reply_message = _message(item, "reply", response)
        reply_message["headers"] = _ERROR_HEADERS
        channels[reply_id] = {
            "address": None,
            "description": "the caller's inbox: NATS delivers the reply to the request's "
            "reply subject (_INBOX.… by default)",
            "messages": {"reply": reply_message},
        }
        operation: dict[str, Any] = {
            "action": "send",
            "title": f"{item.service}.{item.endpoint.name}",
            "summary": f"request {item.endpoint.name} of {item.service}",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/request"}],
            "reply": {
                "address": {
                    "description": "the request's reply subject, a fresh inbox",
                    "location": "$message.header#/reply_to",
                },
                "channel": {"$ref": f"#/channels/{reply_id}"},
                "messages": [{"$ref": f"#/channels/{reply_id}/messages/reply"}],
            },
            "x-natsreg-idempotent": item.endpoint.idempotent,
        }
        queue = item.endpoint.queue_group
        if queue and len(queue) <= _MAX_QUEUE_CHARS:
            operation["bindings"] = {
                "nats": {"queue": queue, "bindingVersion": _NATS_BINDING_VERSION}
            }
        elif queue:
            operation["x-natsreg-queue-group"] = queue
        operations[channel_id] = operation
    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "natsreg fleet",
            "version": __version__,
            "description": "The endpoints the natsreg registry lists, as a caller reaches "
            "them over NATS: one request-reply operation per subject. Generated from the live "
            "registry by `natsreg docs asyncapi`.",
        },
        "defaultContentType": "application/json",
    }
    nats_servers = _servers(servers)
    if nats_servers:
        document["servers"] = nats_servers
    document["channels"] = channels
    document["operations"] = operations
    if book.schemas:
        document["components"] = {"schemas": book.schemas}
    if left_out or skipped or book.dropped:
        document["x-natsreg-omitted"] = {
            "subjects": left_out,
            "skipped": skipped[:64],
            "schemas_dropped": book.dropped,
        }
    return document


def _message(item: Offered, role: str, schema: dict[str, Any] | None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": role,
        "title": f"{item.service}.{item.endpoint.name} {role}",
        "contentType": "application/json",
    }
    if schema is not None:
        message["payload"] = schema
    else:
        message["description"] = "untyped: any body the endpoint accepts"
    return message


def _unique(name: str, taken: Mapping[str, Any]) -> str:
    if name not in taken:
        return name
    return _free(name, set(taken))


def _servers(urls: Sequence[str]) -> dict[str, Any]:
    """The servers of ``urls`` (each may list several, comma-separated, as nats-py takes
    them), without the credentials a URL may hold."""
    found: dict[str, Any] = {}
    for url in urls:
        for one in url.split(","):
            scheme, sep, rest = one.strip().partition("://")
            host = rest.rsplit("@", 1)[-1].split("/", 1)[0]
            if not sep or not host:
                continue
            server = {"host": host, "protocol": "nats"}
            if scheme == "tls":
                server["description"] = "TLS"
            found["nats" if not found else f"nats-{len(found) + 1}"] = server
            if len(found) == 16:
                return found
    return found
