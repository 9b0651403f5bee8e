"""The rules for endpoint schemas, without a server: how a schema is built from a type, the
caps every reader applies, the ADR-32 metadata form, and how a handler's types are read."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema
import msgspec
import pytest

import natsreg
from natsreg import _schemas, wire
from natsreg.cli import _schema
from natsreg.client._target import parse_target
from natsreg.errors import ConfigError
from natsreg.service import _typed
from natsreg.service._request import bad_request

pytestmark = pytest.mark.pure


class Address(msgspec.Struct):
    city: str


class Person(msgspec.Struct):
    name: str
    home: Address


class Couple(msgspec.Struct):
    home: Address
    work: Address


class Tree(msgspec.Struct):
    label: str
    children: list[Tree] = []


class UserQuery(msgspec.Struct):
    id: int


class User(msgspec.Struct):
    id: int
    name: str


def _valid(schema: dict[str, Any], value: object) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


# -- building ----------------------------------------------------------------------------------


def test_a_type_used_once_is_written_in_place_and_the_root_is_the_types_own_schema() -> None:
    schema = _schemas.of_type(Person)
    assert "$defs" not in schema and "$ref" not in json.dumps(schema)
    assert schema["title"] == "Person"
    assert schema["properties"]["home"]["properties"] == {"city": {"type": "string"}}
    assert _valid(schema, {"name": "a", "home": {"city": "x"}})
    assert not _valid(schema, {"name": "a", "home": {"city": 1}})


def test_a_type_used_twice_stays_in_defs_and_the_schema_still_validates_on_its_own() -> None:
    schema = _schemas.of_type(Couple)
    assert list(schema["$defs"]) == ["Address"]
    assert schema["properties"]["home"] == {"$ref": "#/$defs/Address"}
    assert _valid(schema, {"home": {"city": "x"}, "work": {"city": "y"}})
    assert not _valid(schema, {"home": {"city": "x"}, "work": {}})


def test_a_recursive_type_keeps_its_definition_and_validates_nested_values() -> None:
    schema = _schemas.of_type(Tree)
    assert schema["title"] == "Tree"
    assert list(schema["$defs"]) == ["Tree"]
    assert _valid(schema, {"label": "a", "children": [{"label": "b", "children": []}]})
    assert not _valid(schema, {"label": "a", "children": [{"label": 2}]})


def test_builtin_and_container_types_get_their_plain_schemas() -> None:
    assert _schemas.of_type(int) == {"type": "integer"}
    schema = _schemas.of_type(list[UserQuery])
    assert schema["type"] == "array" and "$defs" not in schema
    assert _valid(schema, [{"id": 1}]) and not _valid(schema, [{"id": "1"}])


# -- caps --------------------------------------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    for _ in range(depth - 1):
        schema = {"items": schema}
    return schema


def test_a_schema_up_to_the_byte_cap_is_kept_and_one_byte_more_is_not() -> None:
    overhead = _schemas.size({"description": ""})
    at_cap = {"description": "x" * (_schemas.MAX_SCHEMA_BYTES - overhead)}
    assert _schemas.size(at_cap) == _schemas.MAX_SCHEMA_BYTES
    assert _schemas.problem(at_cap) is None
    over = {"description": "x" * (_schemas.MAX_SCHEMA_BYTES - overhead + 1)}
    assert "over the 16384-byte cap" in (_schemas.problem(over) or "")


def test_a_schema_up_to_the_depth_cap_is_kept_and_one_level_more_is_not() -> None:
    assert _schemas.problem(_nested(_schemas.MAX_SCHEMA_DEPTH)) is None
    assert "deeper than" in (_schemas.problem(_nested(_schemas.MAX_SCHEMA_DEPTH + 1)) or "")
    # Lists count as levels too, and a hostile depth costs a loop, not the C stack.
    assert _schemas.problem({"anyOf": [[[[]]]]}) is None
    assert _schemas.problem({"a": [[]] * 3 + [_nested(5000)]}) is not None


def test_only_a_json_object_is_a_schema() -> None:
    for value in ([], "x", 1, None, True):
        assert _schemas.problem(value) == "a schema must be a JSON object"


def test_the_truncated_marker_is_small_says_why_and_accepts_anything() -> None:
    marker = _schemas.truncated("too big")
    assert _schemas.is_truncated(marker) and not _schemas.is_truncated({"type": "object"})
    assert not _schemas.is_truncated(None)
    assert marker["description"] == "too big" and _schemas.problem(marker) is None
    assert _valid(marker, {"anything": [1, 2]})


# -- ADR-32 metadata ---------------------------------------------------------------------------


def test_schemas_round_trip_through_adr32_metadata_as_json_text() -> None:
    schemas = wire.Schemas(request=_schemas.of_type(UserQuery), response=_schemas.of_type(User))
    metadata = {**schemas.metadata(), "team": "users"}
    assert all(isinstance(v, str) for v in metadata.values())
    assert json.loads(metadata["request_schema"])["title"] == "UserQuery"
    assert wire.Schemas.from_metadata(metadata) == (schemas, {"team": "users"})
    assert wire.Schemas.from_metadata({"team": "users"}) == (None, {"team": "users"})
    only = wire.Schemas(response={"type": "integer"})
    assert only.metadata() == {"response_schema": '{"type":"integer"}'}
    assert wire.Schemas.from_metadata(only.metadata()) == (only, {})


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("x" * (_schemas.MAX_SCHEMA_BYTES + 1), "over the"),
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps(_nested(_schemas.MAX_SCHEMA_DEPTH + 1)), "deeper than"),
        ("[" * 100_000 + "]" * 100_000, "over the"),
    ],
)
def test_a_schema_in_metadata_that_breaks_a_rule_becomes_the_marker(text: str, why: str) -> None:
    request, response, rest = _schemas.from_metadata({"request_schema": text, "k": "v"})
    assert _schemas.is_truncated(request) and why in request["description"]  # type: ignore[index]
    assert (response, rest) == (None, {"k": "v"})


def test_a_plain_services_info_with_big_schemas_passes_the_checks_and_is_viewed_bounded() -> None:
    big = json.dumps({"description": "x" * 40_000})
    info = wire.SrvInfo(
        name="svc",
        id="abc",
        version="1.0.0",
        endpoints=[
            wire.SrvEndpointInfo(
                name="e",
                subject="svc.e",
                metadata={"request_schema": big, "response_schema": '{"type":"string"}'},
            )
        ],
    )
    wire.check(info)  # the value cap of ordinary metadata is not the schemas' cap
    (endpoint,) = wire.micro_instance_view(info).endpoints
    assert endpoint.metadata == {}
    assert endpoint.schemas is not None
    assert _schemas.is_truncated(endpoint.schemas.request)
    assert endpoint.schemas.response == {"type": "string"}
    # Ordinary metadata keeps its cap.
    info.endpoints[0].metadata = {"k": "v" * (wire.MAX_METADATA_VALUE_CHARS + 1)}  # type: ignore[index]
    with pytest.raises(wire.Invalid):
        wire.check(info)


def test_an_announcement_or_view_with_a_schema_over_the_caps_is_invalid() -> None:
    def announcement(schemas: wire.Schemas) -> wire.Announce:
        endpoint = wire.Endpoint(name="e", subject="svc.e", queue_group="svc", schemas=schemas)
        return wire.Announce(id="a", name="svc", version="1.0.0", seq=1, endpoints=[endpoint])

    wire.check(announcement(wire.Schemas(request={"type": "object"})))
    wire.check(announcement(wire.Schemas(response=_schemas.truncated("left out"))))
    for bad in (
        wire.Schemas(request={"description": "x" * _schemas.MAX_SCHEMA_BYTES}),
        wire.Schemas(response=_nested(_schemas.MAX_SCHEMA_DEPTH + 1)),
    ):
        with pytest.raises(wire.Invalid) as caught:
            wire.check(announcement(bad))
        assert caught.value.reason == "invalid_schemas"
        with pytest.raises(wire.Invalid):
            wire.check(wire.instance_view(announcement(bad)))


# -- the handler's types -----------------------------------------------------------------------


async def typed(req: natsreg.Request[UserQuery]) -> User:
    return User(id=req.body.id, name="a")


async def untyped(req: natsreg.Request) -> bytes:  # type: ignore[type-arg]
    return req.data


async def maybe(req: natsreg.Request[Any]) -> User | None:
    return None


async def bare(req):  # type: ignore[no-untyped-def]
    return None


async def for_type_checkers(req: natsreg.Request[Any]) -> dict[str, object]:
    return {}


async def hidden(req: natsreg.Request[NotDefinedAnywhere]) -> None:  # type: ignore[name-defined]  # noqa: F821
    return None


async def hidden_return(req: natsreg.Request[Any]) -> NotDefinedAnywhere:  # type: ignore[name-defined]  # noqa: F821
    return None


async def hidden_plain(req: NotDefinedAnywhere) -> dict[str, int]:  # type: ignore[name-defined]  # noqa: F821
    return {}


def test_the_types_come_from_the_annotations() -> None:
    assert _typed.body_types(typed, None, None, "e") == (UserQuery, User)
    assert _typed.body_types(hidden_plain, None, None, "e") == (None, dict[str, int])


def test_a_decorated_handlers_types_are_those_of_the_function_it_wraps() -> None:
    @functools.wraps(typed)
    async def logged(req: Any) -> Any:
        return await typed(req)

    assert _typed.body_types(logged, None, None, "e") == (UserQuery, User)
    assert _typed.body_types(functools.partial(typed), None, None, "e") == (None, None)


@pytest.mark.parametrize("handler", [untyped, maybe, bare, for_type_checkers])
def test_payload_as_it_is_annotations_declare_no_type(handler: Any) -> None:
    assert _typed.body_types(handler, None, None, "e") == (None, None)
    assert not _typed.body_types(handler, None, None, "e").typed


def test_explicit_types_apply_and_may_repeat_the_annotations() -> None:
    assert _typed.body_types(bare, UserQuery, User, "e") == (UserQuery, User)
    assert _typed.body_types(typed, UserQuery, User, "e") == (UserQuery, User)
    assert _typed.body_types(untyped, None, User, "e") == (None, User)


def test_explicit_types_that_disagree_with_the_annotations_fail_at_declaration() -> None:
    with pytest.raises(ConfigError, match="request=User but the handler is annotated"):
        _typed.body_types(typed, User, None, "e")
    with pytest.raises(ConfigError, match="response=UserQuery"):
        _typed.body_types(typed, None, UserQuery, "e")
    svc = natsreg.Service("svc", version="1.0.0")
    with pytest.raises(ConfigError, match="endpoint 'users': request=User"):
        svc.endpoint("users", request=User)(typed)


def test_a_body_annotation_that_cannot_be_read_fails_at_declaration_unless_given() -> None:
    with pytest.raises(ConfigError, match="cannot read the handler's annotation"):
        _typed.body_types(hidden, None, None, "e")
    with pytest.raises(ConfigError, match="pass it to endpoint"):
        _typed.body_types(hidden_return, None, None, "e")
    assert _typed.body_types(hidden_plain, None, None, "e").request is None


def test_a_type_msgspec_cannot_describe_fails_at_declaration() -> None:
    class Opaque:
        pass

    with pytest.raises(ConfigError, match="request type Opaque is not one msgspec"):
        _typed.schemas_of(_typed.BodyTypes(Opaque, None), "e")


def test_schema_keys_are_natsregs_own_in_endpoint_metadata() -> None:
    svc = natsreg.Service("svc", version="1.0.0")
    with pytest.raises(ConfigError, match="'request_schema' is natsreg's own"):
        svc.endpoint("e", metadata={"request_schema": "{}"})


def test_the_largest_schemas_give_way_first_until_enough_is_saved() -> None:
    class E:
        def __init__(self, name: str, request: int, response: int) -> None:
            self.name = name
            self.schemas = wire.Schemas(
                request={"description": "r" * request}, response={"description": "s" * response}
            )

    endpoints = [E("a", 1000, 100), E("b", 3000, 200), E("c", 2000, 50)]
    assert _typed.fit_schemas(endpoints, 2500, "svc")
    left_out = [
        (e.name, side)
        for e in endpoints
        for side in ("request", "response")
        if _schemas.is_truncated(getattr(e.schemas, side))
    ]
    assert left_out == [("b", "request")]
    assert _typed.fit_schemas(endpoints, 2800, "svc")
    assert _schemas.is_truncated(endpoints[2].schemas.request)
    assert _schemas.is_truncated(endpoints[0].schemas.request)
    assert not _schemas.is_truncated(endpoints[0].schemas.response)
    assert not _typed.fit_schemas([E("d", 10, 10)], 0, "svc")


def test_a_decode_failure_names_the_path_first_then_the_reason() -> None:
    try:
        msgspec.json.decode(b'{"id": "x"}', type=UserQuery)
    except msgspec.ValidationError as exc:
        error = bad_request(exc)
    assert (error.code, error.description) == (400, "bad request: $.id: expected `int`, got `str`")
    try:
        msgspec.json.decode(b"[1]", type=UserQuery)
    except msgspec.ValidationError as exc:
        error = bad_request(exc)
    assert error.description == "bad request: $: expected `object`, got `array`"
    try:
        msgspec.json.decode(b"{", type=UserQuery)
    except msgspec.DecodeError as exc:
        error = bad_request(exc)
    assert error.description.startswith("the request is not valid JSON: ")


# -- the CLI's use of schemas ------------------------------------------------------------------


class Query(msgspec.Struct):
    id: int
    tags: list[str] = []
    kind: str | None = None


def test_a_schema_renders_as_one_readable_line() -> None:
    assert _schema.render(_schemas.of_type(Query)) == (
        "Query {id: integer, tags?: [string], kind?: string | null}"
    )
    assert _schema.render(_schemas.of_type(Tree)) == "Tree {label: string, children?: [Tree]}"
    assert _schema.render(None) == "-"
    assert _schema.render(_schemas.truncated("too big")) == "(not shown: too big)"
    assert _schema.render({"enum": ["a", "b"]}) == '"a" | "b"'
    assert _schema.render({"type": "object", "additionalProperties": {"type": "integer"}}) == (
        "{string: integer}"
    )
    long = _schema.render(
        _schemas.of_type(msgspec.defstruct("L", [(f"f{n}", int) for n in range(99)]))
    )
    assert len(long) == 240 and long.endswith("…")
    assert _schema.render(_nested(_schemas.MAX_SCHEMA_DEPTH + 1)).startswith("(not shown")


def test_a_payload_is_refused_with_the_path_and_what_was_expected() -> None:
    schema = _schemas.of_type(Query)
    problem = _schema.payload_problem
    assert problem({"id": 1, "tags": ["a"]}, [schema]) is None
    assert problem({"id": "x"}, [schema]) == '$.id: expected integer, got "x"'
    assert problem({"id": 1, "tags": [1]}, [schema]) == "$.tags[0]: expected string, got 1"
    assert problem({}, [schema]) == '$: missing required field "id"'
    assert problem(None, [schema]) == "$: expected object, got null"
    assert problem({"id": "x" * 100}, [schema]) == f'$.id: expected integer, got "{"x" * 38}…'
    assert problem({"id": 1, "kind": 3}, [schema]) is not None
    # Any schema that takes it will do: versions may differ.
    assert problem({"id": "x"}, [schema, {"type": "object"}]) is None
    assert problem({"id": "x"}, []) is None


def test_a_hostile_schema_is_never_fetched_from_nor_matched_as_a_pattern() -> None:
    # A remote $ref would make jsonschema's default registry fetch it over the network.
    for unusable in ({"$ref": "https://127.0.0.1:9/x.json"}, {"$ref": "#/$defs/nope"}, {"type": 3}):
        with pytest.raises(ValueError, match="Error"):
            _schema.payload_problem({"id": 1}, [unusable])
    # A pattern that backtracks for ages on this input is left to the service.
    evil = {"type": "string", "pattern": "^(a+)+$"}
    assert _schema.payload_problem("a" * 22 + "!", [evil]) is None


def _instance(version: str, schemas: wire.Schemas | None, **metadata: str) -> wire.InstanceView:
    endpoint = wire.Endpoint(name="users", subject="svc.users", queue_group="svc", schemas=schemas)
    return wire.InstanceView(
        id=version, name="svc", version=version, endpoints=[endpoint], metadata=metadata
    )


def test_the_schemas_checked_are_those_of_every_instance_a_call_may_reach() -> None:
    v1 = wire.Schemas(request={"type": "object"})
    v2 = wire.Schemas(request=_schemas.of_type(Query))
    fleet = [_instance("1.0.0", v1, zone="a"), _instance("2.0.0", v2, zone="b")]
    schemas = _schema.request_schemas
    assert schemas(fleet, parse_target("svc.users"), {}) == [v1.request, v2.request]
    assert schemas(fleet, parse_target("svc@^2.users"), {}) == [v2.request]
    assert schemas(fleet, parse_target("svc.users"), {"zone": "b"}) == [v2.request]
    assert schemas(fleet, parse_target("svc.other"), {}) == []
    # One instance that would take anything: nothing to refuse.
    for open_ in (
        None,
        wire.Schemas(response={"type": "object"}),
        wire.Schemas(request=_schemas.truncated("x")),
    ):
        assert schemas([*fleet, _instance("3.0.0", open_)], parse_target("svc.users"), {}) == []


def test_only_schemas_within_the_caps_are_remembered_and_at_most_so_many() -> None:
    deep = _nested(_schemas.MAX_SCHEMA_DEPTH + 1)
    for _ in range(2):  # asked again, still refused: a refusal is never remembered
        assert _schemas.problem(deep) is not None
    for n in range(_schemas._REMEMBERED + 10):
        assert _schemas.problem({"description": str(n)}) is None
    assert len(_schemas._within_caps) == _schemas._REMEMBERED
    assert _schemas.problem(deep) is not None
