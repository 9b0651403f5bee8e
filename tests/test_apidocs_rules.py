"""The API documents' generators, on hand-made views: what each document says of an endpoint,
and that no schema or name off the bus can make a document invalid or costly."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from openapi_spec_validator import validate

from natsreg import _apidocs, _schemas, wire
from natsreg._apidocs import SchemaBook, asyncapi, offered
from natsreg.bridge import Auth, BridgeConfig, Route
from natsreg.bridge._openapi import openapi

pytestmark = pytest.mark.pure


class Address(msgspec.Struct):
    street: str


class UserQuery(msgspec.Struct):
    id: int


class User(msgspec.Struct):
    id: int
    name: str
    address: Address | None = None
    pair: tuple[int, str] | None = None


class Cat(msgspec.Struct, tag=True):
    meows: bool


class Dog(msgspec.Struct, tag=True):
    barks: bool


class Pet(msgspec.Struct):
    pet: Cat | Dog
    friends: list[Pet] = []


def schemas(request: Any = None, response: Any = None) -> wire.Schemas:
    return wire.Schemas(
        request=msgspec.json.schema(request) if isinstance(request, type) else request,
        response=msgspec.json.schema(response) if isinstance(response, type) else response,
    )


def endpoint(
    service: str, name: str, typed: wire.Schemas | None = None, **kw: Any
) -> wire.Endpoint:
    return wire.Endpoint(
        name=name,
        subject=kw.pop("subject", f"{service}.{name}"),
        queue_group=kw.pop("queue_group", service),
        schemas=typed,
        **kw,
    )


def instance(name: str, version: str, *endpoints: wire.Endpoint, **kw: Any) -> wire.InstanceView:
    return wire.InstanceView(
        id=kw.pop("id", f"{name}-{version}"),
        name=name,
        version=version,
        endpoints=list(endpoints),
        **kw,
    )


def fleet() -> list[wire.InstanceView]:
    return [
        instance("users", "1.0.0", endpoint("users", "get", schemas(UserQuery, User))),
        instance(
            "users",
            "1.1.0",
            endpoint("users", "get", schemas(UserQuery, User), idempotent=True),
            endpoint("users", "raw"),
        ),
        instance("pets", "2.0.0", endpoint("pets", "adopt", schemas(Pet, Pet))),
        instance("calc", "0.3.0", endpoint("calc", "add", queue_group="q"), kind="micro"),
    ]


def components(document: dict[str, Any]) -> dict[str, Any]:
    return document.get("components", {}).get("schemas", {})


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# -- OpenAPI ---------------------------------------------------------------------------------


def test_each_listed_endpoint_is_a_post_at_its_default_mapping_with_its_schemas() -> None:
    document = openapi(fleet(), BridgeConfig(), "http://127.0.0.1:8080")
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": "http://127.0.0.1:8080"}]
    paths = document["paths"]
    assert {"/users/get", "/users/raw", "/pets/adopt", "/calc/add"} <= set(paths)
    get = paths["/users/get"]["post"]
    assert get["requestBody"]["content"]["application/json"]["schema"] == ref("users.UserQuery")
    assert get["responses"]["200"]["content"]["application/json"]["schema"] == ref("users.User")
    # Address | None: msgspec releases list the two in either order.
    assert (
        ref("users.Address") in components(document)["users.User"]["properties"]["address"]["anyOf"]
    )
    assert get["x-natsreg-idempotent"] is True
    # Untyped and plain ADR-32 endpoints: any body.
    assert paths["/users/raw"]["post"]["responses"]["200"]["content"] == {"*/*": {}}
    assert "plain ADR-32" in paths["/calc/add"]["description"]


def test_errors_are_the_status_table_with_the_json_error_body() -> None:
    document = openapi(fleet(), BridgeConfig())
    responses = document["paths"]["/users/get"]["post"]["responses"]
    assert {"400", "408", "413", "429", "502", "503", "504", "default"} <= set(responses)
    assert "401" not in responses  # no auth, no 401
    unavailable = document["components"]["responses"]["status_503"]
    assert "no_instance" in unavailable["description"]
    error = components(document)["natsreg.Error"]
    assert set(error["required"]) == {"error", "message", "service", "endpoint"}
    assert document["servers"] == [{"url": "/"}]


def routed_config(monkeypatch: pytest.MonkeyPatch) -> BridgeConfig:
    monkeypatch.setenv("APIDOCS_TOKENS", "secret")
    return BridgeConfig(
        routes=(
            Route(path="/api/users", subject="users.get", methods=frozenset({"GET", "PUT"})),
            Route(path="/v1/users", subject="users.get", version="~1.0"),
            Route(
                path="/keys",
                subject="pets.adopt",
                auth=Auth(scheme="api-key", header="x-key", tokens_env="APIDOCS_TOKENS"),
            ),
            Route(path="/nobody", subject="ghost.home"),
        ),
        auth=Auth(scheme="bearer", tokens_env="APIDOCS_TOKENS"),
    )


def test_route_table_entries_appear_with_their_methods_auth_and_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The versioned route reaches 1.0.0 only, whose `get` is not idempotent.
    document = openapi(fleet(), routed_config(monkeypatch))
    paths = document["paths"]
    assert set(paths["/api/users"]) >= {"get", "put"} and "post" not in paths["/api/users"]
    assert "requestBody" not in paths["/api/users"]["get"]
    assert paths["/api/users"]["put"]["security"] == [{"bearer": []}]
    assert "401" in paths["/api/users"]["put"]["responses"]
    assert "~1.0" in paths["/v1/users"]["description"]
    assert "x-natsreg-idempotent" not in paths["/v1/users"]["post"]
    assert "/v1/users/{token}" not in paths  # a versioned route has no sub-paths
    token = paths["/api/users/{token}"]
    assert token["parameters"][0]["name"] == "token"
    assert paths["/keys"]["post"]["security"] == [{"api-key.x-key": []}]
    schemes = document["components"]["securitySchemes"]
    assert schemes["api-key.x-key"] == {"type": "apiKey", "in": "header", "name": "x-key"}
    # A route with nobody behind it is still a route the bridge serves.
    assert "No instance" in paths["/nobody"]["description"]


def test_only_paths_the_bridge_would_resolve_to_the_endpoint_are_listed() -> None:
    views = [
        *fleet(),
        # Under natsreg's control prefix, and with a name the default mapping refuses.
        instance("sneaky", "1.0.0", endpoint("sneaky", "x", subject="natsreg.registry.list")),
        instance("odd", "1.0.0", endpoint("odd", "x", subject="odd.a:b.c")),
    ]
    config = BridgeConfig(
        allow=frozenset({"users", "sneaky", "odd"}),
        routes=(Route(path="/u", subject="users"),),
    )
    paths = openapi(views, config)["paths"]
    assert "/pets/adopt" not in paths  # not on the allow-list
    assert not any("registry" in p for p in paths)
    assert "/odd/a:b/c" not in paths  # 'a:b' is no service-endpoint name pair
    # users.get is reached by its default mapping and by the route's sub-path.
    assert "/users/get" in paths and "/u/get" in paths
    assert paths["/u/get"]["post"]["requestBody"]["required"] is True


def test_the_newest_version_describes_a_subject_served_by_several() -> None:
    class UserV2(msgspec.Struct):
        id: int
        email: str

    views = [
        instance("users", "1.2.0", endpoint("users", "get", schemas(UserQuery, User))),
        instance("users", "1.10.0", endpoint("users", "get", schemas(UserQuery, UserV2))),
        # Not SemVer (the registry refuses it; a hand-made view need not): ranks last.
        instance("users", "latest", endpoint("users", "get", schemas(UserQuery, User))),
    ]
    (item,), left_out = offered(views)
    assert left_out == 0 and item.instances == 3
    assert item.versions == ("1.10.0", "1.2.0", "latest")
    document = openapi(views, BridgeConfig())
    reply = document["paths"]["/users/get"]["post"]["responses"]["200"]["content"]
    assert reply["application/json"]["schema"] == ref("users.UserV2")


def test_the_same_definition_is_one_component_and_a_different_one_gets_its_own_name() -> None:
    class Other(msgspec.Struct):
        street: int

    book = SchemaBook("#/components/schemas/", "openapi")
    first = book.take(msgspec.json.schema(Address), "svc")
    again = book.take(msgspec.json.schema(list[Address]), "svc")
    renamed = msgspec.json.schema(Other)
    renamed["$defs"] = {"Address": renamed["$defs"].pop("Other")}
    renamed["$ref"] = "#/$defs/Address"
    other = book.take(renamed, "svc")
    assert first == ref("svc.Address")
    assert again == {"type": "array", "items": ref("svc.Address")}
    assert other == ref("svc.Address-2")
    assert book.schemas["svc.Address-2"]["properties"]["street"] == {"type": "integer"}


# -- AsyncAPI --------------------------------------------------------------------------------


def test_each_endpoint_is_a_send_operation_on_its_subject_with_a_reply_on_an_inbox() -> None:
    document = asyncapi(fleet(), ["nats://user:pw@127.0.0.1:4222,nats://127.0.0.1:4223"])
    assert document["asyncapi"] == "3.0.0"
    assert document["servers"] == {
        "nats": {"host": "127.0.0.1:4222", "protocol": "nats"},
        "nats-2": {"host": "127.0.0.1:4223", "protocol": "nats"},
    }
    channel = document["channels"]["users.get"]
    assert channel["address"] == "users.get"
    operation = document["operations"]["users.get"]
    assert operation["action"] == "send"
    assert operation["channel"] == {"$ref": "#/channels/users.get"}
    assert operation["bindings"]["nats"]["queue"] == "users"
    reply = operation["reply"]
    reply_channel = document["channels"][reply["channel"]["$ref"].rsplit("/", 1)[1]]
    assert reply_channel["address"] is None
    assert reply_channel["messages"]["reply"]["payload"] == ref("users.User")
    assert channel["messages"]["request"]["payload"] == ref("users.UserQuery")
    assert document["operations"]["calc.add"]["bindings"]["nats"]["queue"] == "q"
    assert "payload" not in document["channels"]["calc.add"]["messages"]["request"]


def test_asyncapi_schemas_take_the_draft_07_forms() -> None:
    document = asyncapi(fleet())
    schemas = components(document)
    # A tagged union's discriminator is the property's name; a tuple an items array.
    assert schemas["pets.Pet"]["properties"]["pet"]["discriminator"] == "type"
    pair = schemas["users.User"]["properties"]["pair"]["anyOf"][0]
    assert pair["items"] == [{"type": "integer"}, {"type": "string"}]
    assert pair["additionalItems"] is False and "prefixItems" not in pair
    assert "x-natsreg-omitted" not in document


# -- what the bus may send -------------------------------------------------------------------


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


HOSTILE: dict[str, Any] = {
    "remote ref": {"$ref": "http://127.0.0.1:1/evil.json"},
    "pointer into itself": {"$ref": "#/properties/a", "properties": {"a": {}}},
    "dangling local ref": {"$ref": "#/$defs/Nowhere", "$defs": {}},
    "an $id": {"$id": "urn:x", "type": "object"},
    "nested $defs": {"properties": {"a": {"$defs": {"b": {}}}}},
    "invalid keyword value": {"type": 5},
    "not an object": ["type", "string"],
    "a bare string": "string",
    "too deep": _deep(200),
    "deeper than the stack": _deep(5000),
    "too large": {"enum": list(range(20_000))},
    "left out by its sender": _schemas.truncated("schema of 99999 bytes, over the cap"),
    "too many definitions": {"$defs": {f"D{i}": {} for i in range(500)}},
    "discriminator to elsewhere": {
        "anyOf": [{}],
        "discriminator": {"propertyName": "t", "mapping": {"a": "http://127.0.0.1:1/x"}},
    },
}


def hostile_fleet(*cases: str) -> list[wire.InstanceView]:
    """The fleet, and a service ``bad`` whose endpoint ``x<n>`` takes ``HOSTILE[cases[n]]``
    (built directly: a Struct's constructor checks no types, and some of these could not even
    be decoded off the bus; the generators must not rely on that)."""
    bad = [
        endpoint(
            "bad",
            f"x{n}",
            wire.Schemas(request=HOSTILE[case], response=msgspec.json.schema(User)),
        )
        for n, case in enumerate(cases)
    ]
    return [*fleet(), instance("bad", "1.0.0", *bad)]


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_schema_the_document_cannot_hold_is_dropped_and_the_rest_is_kept(case: str) -> None:
    views = hostile_fleet(case)
    # Also reached through a route's sub-path: dropped once, counted once.
    config = BridgeConfig(routes=(Route(path="/b", subject="bad"),))
    started = time.perf_counter()
    document = openapi(views, config)
    assert document["paths"]["/b/x0"]["post"] == {
        **document["paths"]["/bad/x0"]["post"],
        "operationId": "post_b_x0",
    }
    post = document["paths"]["/bad/x0"]["post"]
    assert post["requestBody"] == {"required": False, "content": {"*/*": {}}}
    # The other half of the endpoint's schemas, and the rest of the fleet, are kept.
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == ref("bad.User")
    assert "users.User" in components(document)
    assert document["x-natsreg-omitted"]["schemas_dropped"] == 1
    async_document = asyncapi(views)
    assert "payload" not in async_document["channels"]["bad.x0"]["messages"]["request"]
    assert async_document["x-natsreg-omitted"]["schemas_dropped"] == 1
    assert time.perf_counter() - started < 2.0


# openapi-spec-validator takes about half a second a document: the documents of the tests
# above are checked together here, outside the fast tier.


@pytest.mark.slow
def test_the_openapi_documents_validate_whatever_the_routes_names_and_schemas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    odd = {
        "$ref": "#/$defs/Wéird name{x}",
        "$defs": {"Wéird name{x}": {"type": "object", "properties": {"$ref": {"const": "#/x"}}}},
    }
    views = [
        *hostile_fleet(*HOSTILE),
        instance("odd", "1.0.0", endpoint("odd", "x", schemas(odd), subject="odd.x.ü{x}")),
    ]
    validate(openapi(views, routed_config(monkeypatch), "http://[::1]:8080"))


def test_odd_names_from_the_bus_become_valid_component_and_channel_names() -> None:
    schema = {
        "$ref": "#/$defs/Wéird name{x}",
        "$defs": {"Wéird name{x}": {"type": "object", "properties": {"$ref": {"const": "#/x"}}}},
    }
    views = [
        instance("odd", "1.0.0", endpoint("odd", "x", schemas(schema), subject="odd.x.ü{x}")),
        instance("odd2", "1.0.0", endpoint("odd2", "y", schemas(schema), subject="odd2.y.ü")),
    ]
    document = openapi(views, BridgeConfig())
    assert "odd.W_ird_name_x_" in components(document)
    # A property named "$ref" is a name, not a reference, and a const a value.
    assert components(document)["odd.W_ird_name_x_"]["properties"]["$ref"] == {"const": "#/x"}
    assert "/odd/x/%C3%BC%7Bx%7D" in document["paths"]
    async_document = asyncapi(views)
    assert list(async_document["channels"]) == ["odd2.y._", "odd2.y._.reply"]
    assert async_document["x-natsreg-omitted"]["skipped"] == [
        {"subject": "odd.x.ü{x}", "reason": "braces in the subject"}
    ]


def test_a_document_holds_a_bounded_number_of_subjects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_apidocs, "MAX_OPERATIONS", 10)
    views = [instance(f"s{n}", "1.0.0", endpoint(f"s{n}", "x")) for n in range(25)]
    document = asyncapi(views)
    assert len(document["operations"]) == 10
    assert document["x-natsreg-omitted"]["subjects"] == 15
    assert openapi(views, BridgeConfig())["x-natsreg-omitted"]["subjects"] == 15


def test_a_document_holds_a_bounded_weight_of_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    one = len(msgspec.json.encode(msgspec.json.schema(User)))
    monkeypatch.setattr(_apidocs, "MAX_DOCUMENT_SCHEMA_BYTES", one * 3)
    views = [
        instance(f"s{n}", "1.0.0", endpoint(f"s{n}", "x", schemas(None, User))) for n in range(5)
    ]
    document = openapi(views, BridgeConfig())
    assert document["x-natsreg-omitted"]["schemas_dropped"] == 2
