"""The HTTP bridge, served by its real HTTP server, against a real nats-server and services."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import natsreg
from natsreg import ConfigError, ServiceError, bridge
from natsreg.bridge import Auth, BridgeConfig, Cors, Route
from natsreg.bridge._errors import ERRORS, SERVICE_ERROR
from natsreg.bridge._routes import Refusal, RouteTable
from natsreg.errors import BulkheadFullError, CircuitOpenError

# -- helpers ---------------------------------------------------------------------------------


@asynccontextmanager
async def serving(nc: NATS, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A bridge on a free loopback port, and an HTTP client pointed at it."""
    config = BridgeConfig(**settings)
    async with (
        bridge.run(nc, config, host="127.0.0.1", port=0) as running,
        httpx.AsyncClient(base_url=running.url, timeout=10) as http,
    ):
        yield http


def echo_service(nc: NATS, name: str, prefix: str, version: str = "1.0.0") -> natsreg.Instance:
    """A service whose endpoints show what reached them, and fail or stall on demand."""
    svc = natsreg.announce(nc, name, version=version, prefix=prefix)

    @svc.endpoint("echo")
    async def echo(req: natsreg.Request) -> dict[str, Any]:
        return {
            "headers": req.headers,
            "body": req.data.decode(errors="replace"),
            "subject": req.subject,
        }

    @svc.endpoint("raw")
    async def raw(req: natsreg.Request) -> bytes:
        return req.data

    @svc.endpoint("which")
    async def which(req: natsreg.Request) -> str:
        return version

    @svc.endpoint("fail")
    async def fail(req: natsreg.Request) -> None:
        code = int(req.headers[bridge.QUERY_HEADER].removeprefix("code="))
        raise ServiceError("refused by the service", code=code)

    @svc.endpoint("crash")
    async def crash(req: natsreg.Request) -> None:
        raise ValueError("boom")

    @svc.endpoint("slow")
    async def slow(req: natsreg.Request) -> str:
        await asyncio.sleep(float(req.headers.get(bridge.QUERY_HEADER, "s=2")[2:]))
        return "late"

    return svc


async def raw_http(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side cleaning) and read one response."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            body = await (reader.readexactly(int(length[1])) if length else reader.read())
        finally:
            writer.close()
    return int(head.split()[1]), body


# -- the happy path --------------------------------------------------------------------------


async def test_a_request_reaches_its_endpoint_with_method_path_query_and_chosen_headers(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"svc-{unique}"
    async with echo_service(nc, name, prefix), serving(nc, prefix=prefix) as http:
        reply = await http.post(
            f"/{name}/echo?id=1&x=%20",
            content=b'{"id": 1}',
            headers={"x-request-id": "r-1", "content-type": "application/json", "x-private": "no"},
        )
    assert reply.status_code == 200
    seen = reply.json()
    assert seen["subject"] == f"{name}.echo"
    assert seen["body"] == '{"id": 1}'
    headers = seen["headers"]
    assert headers[bridge.METHOD_HEADER] == "POST"
    assert headers[bridge.PATH_HEADER] == f"/{name}/echo"
    assert headers[bridge.QUERY_HEADER] == "id=1&x=%20"
    assert headers["X-Request-Id"] == "r-1"
    assert headers["Content-Type"] == "application/json"
    assert "X-Private" not in headers and "Host" not in headers


async def test_the_body_and_the_reply_content_type_travel_unchanged(
    nc: NATS, prefix: str, unique: str
) -> None:
    body = bytes(range(256)) * 4

    async def plain(msg: Msg) -> None:
        await nc.publish(msg.reply, b"hello", headers={"Content-Type": "text/plain; charset=utf-8"})

    await nc.subscribe(f"plain-{unique}.hello", cb=plain)
    name = f"svc-{unique}"
    async with echo_service(nc, name, prefix), serving(nc, prefix=prefix) as http:
        raw = await http.put(f"/{name}/raw", content=body)
        hello = await http.get(f"/plain-{unique}/hello")
    assert raw.status_code == 200 and raw.content == body
    assert raw.headers["content-type"] == "application/json"  # natsreg's default: JSON
    assert hello.content == b"hello"
    assert hello.headers["content-type"] == "text/plain; charset=utf-8"


async def test_more_path_segments_become_more_subject_tokens(nc: NATS, unique: str) -> None:
    async def answer(msg: Msg) -> None:
        await msg.respond(msg.subject.encode())

    await nc.subscribe(f"deep-{unique}.users.>", cb=answer)
    async with serving(nc) as http:
        reply = await http.get(f"/deep-{unique}/users/42/roles")
    assert reply.text == f"deep-{unique}.users.42.roles"


# -- the status table ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [(404, 404), (418, 418), (500, 500), (503, 503), (302, 502), (99, 502), (600, 502)],
)
async def test_a_service_error_becomes_its_code_when_http_like_else_502(
    nc: NATS, prefix: str, unique: str, code: int, status: int
) -> None:
    name = f"svc-{unique}"
    async with echo_service(nc, name, prefix), serving(nc, prefix=prefix) as http:
        reply = await http.get(f"/{name}/fail?code={code}")
    assert reply.status_code == status
    assert reply.json() == {
        "error": "service_error",
        "message": "refused by the service",
        "service": name,
        "endpoint": "fail",
    }


async def test_a_crashing_handler_is_the_services_500_without_a_traceback(
    nc: NATS, prefix: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"svc-{unique}"
    async with echo_service(nc, name, prefix), serving(nc, prefix=prefix) as http:
        reply = await http.get(f"/{name}/crash")
    assert reply.status_code == 500
    # The service failed, and says how, as it does to any NATS caller: not the bridge.
    assert reply.json() == {
        "error": "service_error",
        "message": "ValueError: boom",
        "service": name,
        "endpoint": "crash",
    }
    assert "Traceback" not in reply.text and 'File "' not in reply.text
    assert not [r for r in caplog.records if r.name == "natsreg.bridge"]


async def test_no_instance_is_503_and_a_timeout_is_504(nc: NATS, prefix: str, unique: str) -> None:
    name = f"svc-{unique}"
    async with echo_service(nc, name, prefix), serving(nc, prefix=prefix, timeout_s=0.3) as http:
        missing = await http.get(f"/nobody-{unique}/echo")
        started = time.monotonic()
        late = await http.get(f"/{name}/slow?s=2")
        elapsed = time.monotonic() - started
    assert missing.status_code == 503
    assert missing.json()["error"] == "no_instance"
    assert missing.json()["service"] == f"nobody-{unique}"
    assert late.status_code == 504 and late.json()["error"] == "timeout"
    assert elapsed < 1.5


async def test_a_clients_deadline_header_shortens_the_timeout_but_never_extends_it(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"svc-{unique}"
    async with echo_service(nc, name, prefix):
        async with serving(nc, prefix=prefix, timeout_s=10) as http:
            started = time.monotonic()
            shortened = await http.get(f"/{name}/slow?s=2", headers={"x-request-timeout": "0.2"})
            shortened_s = time.monotonic() - started
            malformed = await http.get(f"/{name}/echo", headers={"x-request-timeout": "soon"})
            negative = await http.get(f"/{name}/echo", headers={"x-request-timeout": "-1"})
        async with serving(nc, prefix=prefix, timeout_s=0.2) as http:
            started = time.monotonic()
            capped = await http.get(f"/{name}/slow?s=2", headers={"x-request-timeout": "60"})
            capped_s = time.monotonic() - started
    assert shortened.status_code == 504 and shortened_s < 1.5
    assert capped.status_code == 504 and capped_s < 1.5
    assert malformed.status_code == 400 and negative.status_code == 400


async def test_an_unknown_route_is_404(nc: NATS, prefix: str, unique: str) -> None:
    async with serving(nc, prefix=prefix, default_routes=False) as http:
        no_default = await http.get(f"/svc-{unique}/echo")
        own = await http.get("/_natsreg/nothing")
    async with serving(nc, prefix=prefix) as http:
        root = await http.get("/")
        one_segment = await http.get(f"/svc-{unique}")
    for reply in (no_default, own, root, one_segment):
        assert reply.status_code == 404, reply.text
        assert reply.json()["error"] == "not_found"


async def test_a_body_at_the_limit_passes_and_one_byte_over_is_413(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"svc-{unique}"

    async def chunks(size: int) -> AsyncIterator[bytes]:
        for _ in range(size // 100):
            yield b"x" * 100
        yield b"x" * (size % 100)

    async with (
        echo_service(nc, name, prefix),
        serving(nc, prefix=prefix, max_body_bytes=1000) as http,
    ):
        at_limit = await http.post(f"/{name}/raw", content=b"a" * 1000)
        over = await http.post(f"/{name}/raw", content=b"a" * 1001)
        chunked_at_limit = await http.post(f"/{name}/raw", content=chunks(1000))
        chunked_over = await http.post(f"/{name}/raw", content=chunks(1001))
    assert at_limit.status_code == 200 and at_limit.content == b"a" * 1000
    assert chunked_at_limit.status_code == 200 and len(chunked_at_limit.content) == 1000
    assert over.status_code == 413 and over.json()["error"] == "body_too_large"
    assert chunked_over.status_code == 413


async def test_headers_over_the_limit_are_431(nc: NATS, prefix: str, unique: str) -> None:
    async with serving(nc, prefix=prefix, max_header_bytes=1024) as http:
        reply = await http.get(f"/svc-{unique}/echo", headers={"x-big": "b" * 1100})
        long_query = await http.get(f"/svc-{unique}/echo?q={'q' * 1100}")
    assert reply.status_code == 431 and reply.json()["error"] == "headers_too_large"
    assert long_query.status_code == 431


async def test_a_body_that_does_not_arrive_in_time_is_408(nc: NATS, prefix: str) -> None:
    async with bridge.run(nc, BridgeConfig(prefix=prefix, body_timeout_s=0.3), port=0) as running:
        status, _ = await raw_http(
            running.url,
            b"POST /svc/raw HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nhalf",
        )
    assert status == 408


async def test_requests_in_flight_per_client_are_bounded_with_429(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"svc-{unique}"
    async with (
        echo_service(nc, name, prefix),
        serving(nc, prefix=prefix, max_in_flight_per_client=2) as http,
    ):
        replies = await asyncio.gather(*(http.get(f"/{name}/slow?s=0.5") for _ in range(3)))
        after = await http.get(f"/{name}/echo")
    assert sorted(r.status_code for r in replies) == [200, 200, 429]
    assert after.status_code == 200


# -- hostile input goes nowhere --------------------------------------------------------------


HOSTILE_PATHS = [
    "/svc/*",
    "/svc/%2A",
    "/svc/>",
    "/svc/%3E",
    "/svc/echo/*",
    "/svc/echo/%3E",
    "/svc//echo",
    "/svc/echo/",
    "//svc/echo",
    "/svc/a%20b",
    "/svc/a%09b",
    "/svc/a%0D%0Ab",
    "/svc/a%0Ab",
    "/svc/a%00b",
    "/svc/a%7Fb",
    "/svc/a%C2%85b",
    "/svc/a%E2%80%A8b",
    "/svc/a.b",
    "/svc/..",
    "/svc/a%2Eb",
    "/%2E%2E/svc",
    "/$SYS/REQ/SERVER/PING",
    "/%24SYS/REQ/SERVER/PING",
    "/$JS/API/INFO",
    "/%24JS/API/INFO",
    "/$SRV/PING",
    "/$SRV/INFO/svc",
    "/$KV/bucket/key",
    "/_INBOX/abc/def",
    "/natsreg/registry/list",
    "/natsreg/announce/svc/id",
    "/natsreg/direct/id/echo",
    "/svc/" + "x" * 600,
]
HOSTILE_HEADERS = [
    b"X-Request-Id: a\x00b\r\n",
    b"X-Request-Id: a\rb\r\n",
    b"X-Request-Id: a\r\n b\r\n",  # obsolete line folding
    b"X-Request\x00-Id: a\r\n",
    b"X-Request-Id a\r\n",
]


async def test_hostile_paths_and_headers_are_400_and_never_reach_nats(
    quiet_nats: tuple[NATS, list[str]],
) -> None:
    nc, seen = quiet_nats
    async with bridge.run(nc, BridgeConfig(), port=0) as running:
        for path in HOSTILE_PATHS:
            status, body = await raw_http(
                running.url, f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
            )
            assert status == 400, (path, body)
        for header in HOSTILE_HEADERS:
            status, body = await raw_http(
                running.url, b"GET /svc/echo HTTP/1.1\r\nHost: localhost\r\n" + header + b"\r\n"
            )
            assert status == 400, (header, body)
        await nc.flush()
        await asyncio.sleep(0.1)
        assert seen == []
        # The spy works: a sound request through the same bridge is seen at once.
        status, _ = await raw_http(
            running.url,
            b"GET /svc/echo HTTP/1.1\r\nHost: localhost\r\nX-Request-Timeout: 1\r\n\r\n",
        )
    assert status == 504
    assert "svc.echo" in seen


async def test_cr_lf_or_nul_in_a_forwarded_header_is_refused_by_the_app_itself(
    quiet_nats: tuple[NATS, list[str]],
) -> None:
    # HTTP parsers refuse most of these first; the bridge must not depend on it when mounted
    # behind a more lenient server, so its ASGI app is called directly here.
    nc, seen = quiet_nats
    app = bridge.create_app(nc, BridgeConfig())
    for value in (b"a\r\nNats-Service-Error: x", b"a\nb", b"a\x00b"):
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/svc/echo",
            "raw_path": b"/svc/echo",
            "query_string": b"",
            "root_path": "",
            "client": ("127.0.0.1", 1),
            "headers": [(b"host", b"x"), (b"x-request-id", value)],
        }
        await app(scope, receive, send)
        assert sent[0]["status"] == 400
    await nc.flush()
    await asyncio.sleep(0.05)
    assert seen == []


async def test_hop_by_hop_headers_and_those_named_in_connection_are_not_forwarded(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"svc-{unique}"
    async with (
        echo_service(nc, name, prefix),
        bridge.run(nc, BridgeConfig(prefix=prefix), port=0) as running,
    ):
        status, body = await raw_http(
            running.url,
            (
                f"GET /{name}/echo HTTP/1.1\r\nHost: localhost\r\n"
                "Connection: keep-alive, x-request-id"
                "\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\n"
                "X-Request-Id: r-2\r\nAccept: text/plain\r\n\r\n"
            ).encode(),
        )
    assert status == 200
    forwarded = {k.lower() for k in httpx.Response(200, content=body).json()["headers"]}
    assert "accept" in forwarded
    assert not forwarded & {
        "connection",
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-request-id",
        "host",
    }
    with pytest.raises(ConfigError):
        BridgeConfig(forward_headers=("keep-alive",))


async def test_an_allow_list_hides_every_other_service(nc: NATS, prefix: str, unique: str) -> None:
    name = f"svc-{unique}"
    async with echo_service(nc, name, prefix), serving(nc, prefix=prefix, allow={name}) as http:
        allowed = await http.get(f"/{name}/which")
        hidden = await http.get(f"/other-{unique}/which")
    assert allowed.status_code == 200
    assert hidden.status_code == 404
    with pytest.raises(ConfigError):
        BridgeConfig(allow={"a"}, routes=(Route(path="/x", subject="b.x"),))


# -- routes and versions ---------------------------------------------------------------------


async def wait_for_instances(nc: NATS, prefix: str, name: str, count: int) -> None:
    client = natsreg.Client(nc, prefix=prefix)
    async with asyncio.timeout(5):
        while len((await client.instances(name)).instances) < count:
            await asyncio.sleep(0.05)


async def test_a_versioned_route_reaches_only_matching_instances(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"svc-{unique}"
    routes = (
        Route(path="/api/which", subject=f"{name}.which", version="^1.2"),
        Route(path="/api/old", subject=f"{name}.which", version="~1.1", methods={"GET"}),
        Route(path="/api/future", subject=f"{name}.which", version=">=2"),
        Route(path="/api/any", subject=f"{name}.which"),
    )
    async with (
        natsreg.Registry(nc, prefix=prefix, discover_jitter_s=0),
        echo_service(nc, name, prefix, version="1.1.0"),
        echo_service(nc, name, prefix, version="1.3.0"),
    ):
        await wait_for_instances(nc, prefix, name, 2)
        async with serving(nc, prefix=prefix, routes=routes) as http:
            new = [(await http.get("/api/which")).text for _ in range(8)]
            old = [(await http.get("/api/old")).text for _ in range(8)]
            anything = {(await http.get("/api/any")).text for _ in range(24)}
            future = await http.get("/api/future")
            wrong_method = await http.post("/api/old")
            sub_path = await http.get("/api/which/more")
    assert set(new) == {"1.3.0"}
    assert set(old) == {"1.1.0"}
    assert anything <= {"1.1.0", "1.3.0"}
    assert future.status_code == 503 and future.json()["error"] == "no_instance"
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET"
    assert sub_path.status_code == 404


async def test_the_registry_view_and_the_bridges_health_are_served(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"svc-{unique}"
    async with (
        natsreg.Registry(nc, prefix=prefix, discover_jitter_s=0),
        echo_service(nc, name, prefix),
    ):
        await wait_for_instances(nc, prefix, name, 1)
        async with serving(nc, prefix=prefix) as http:
            services = await http.get("/_natsreg/services")
            health = await http.get("/_natsreg/health")
    assert services.status_code == 200
    assert [i["name"] for i in services.json()["instances"]] == [name]
    assert health.status_code == 200 and health.json()["nats"] == "connected"


# -- auth and CORS ---------------------------------------------------------------------------


async def test_auth_refuses_missing_or_wrong_credentials_and_admits_the_right_ones(
    nc: NATS, prefix: str, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"svc-{unique}"
    monkeypatch.setenv("TEST_BRIDGE_TOKENS", "t0k3n-one, t0k3n-two")
    keys = tmp_path / "keys"
    keys.write_text("# one key a line\nk3y-alpha\n")
    routes = (
        Route(path="/open", subject=f"{name}.which", auth=Auth()),
        Route(
            path="/keyed",
            subject=f"{name}.which",
            auth=Auth(scheme="api-key", tokens_file=str(keys), header="X-Api-Key"),
        ),
    )
    default = Auth(scheme="bearer", tokens_env="TEST_BRIDGE_TOKENS")
    async with (
        echo_service(nc, name, prefix),
        serving(nc, prefix=prefix, auth=default, routes=routes) as http,
    ):
        missing = await http.get(f"/{name}/which")
        wrong = await http.get(f"/{name}/which", headers={"authorization": "Bearer t0k3n"})
        right = await http.get(f"/{name}/which", headers={"authorization": "Bearer t0k3n-two"})
        forwarded = await http.get(f"/{name}/echo", headers={"authorization": "Bearer t0k3n-one"})
        public = await http.get("/open")
        no_key = await http.get("/keyed", headers={"authorization": "Bearer t0k3n-one"})
        keyed = await http.get("/keyed", headers={"x-api-key": "k3y-alpha"})
        registry = await http.get("/_natsreg/services")
    assert missing.status_code == 401 and wrong.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert right.status_code == 200 and public.status_code == 200 and keyed.status_code == 200
    assert no_key.status_code == 401
    assert registry.status_code == 401
    assert "Authorization" not in forwarded.json()["headers"]
    async with echo_service(nc, name, prefix), serving(nc, prefix=prefix) as http:
        assert (await http.get(f"/{name}/which")).status_code == 200


def test_auth_has_no_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNSET_TOKENS", raising=False)
    with pytest.raises(ConfigError):
        Auth(scheme="bearer")
    with pytest.raises(ConfigError):
        Auth(scheme="bearer", tokens_env="UNSET_TOKENS")
    monkeypatch.setenv("EMPTY_TOKENS", " , ")
    with pytest.raises(ConfigError):
        Auth(scheme="api-key", tokens_env="EMPTY_TOKENS")


async def test_cors_answers_preflights_for_allowed_origins_only(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"svc-{unique}"
    cors = Cors(allow_origins=("https://app.example",), allow_methods=("GET", "POST"))
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    async with echo_service(nc, name, prefix), serving(nc, prefix=prefix, cors=cors) as http:
        allowed = await http.options(f"/{name}/echo", headers=preflight)
        refused = await http.options(
            f"/{name}/echo", headers={**preflight, "origin": "https://evil.example"}
        )
        simple = await http.get(f"/{name}/which", headers={"origin": "https://app.example"})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "access-control-allow-origin" not in refused.headers
    assert simple.headers["access-control-allow-origin"] == "https://app.example"


# -- configuration ---------------------------------------------------------------------------


def test_a_routes_file_holds_routes_allow_list_auth_and_cors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_ROUTE_TOKENS", "abc")
    path = tmp_path / "routes.toml"
    path.write_text("""
default_routes = false
allow = ["user-service", "billing"]

[auth]
scheme = "bearer"
tokens_env = "TEST_ROUTE_TOKENS"

[cors]
allow_origins = ["https://app.example"]

[[routes]]
path = "/api/users"
subject = "user-service.users"
methods = ["GET", "POST"]
version = "^1.2"
timeout_s = 2.5

[[routes]]
path = "/api/invoices"
subject = "billing.invoices"
auth = { scheme = "none" }
""")
    config = BridgeConfig.from_toml(path, timeout_s=3.0)
    assert config.default_routes is False
    assert config.allow == {"user-service", "billing"}
    assert config.auth.scheme == "bearer" and config.timeout_s == 3.0
    assert config.cors is not None and config.cors.allow_origins == ("https://app.example",)
    users, invoices = config.routes
    assert users.methods == {"GET", "POST"} and users.version == "^1.2"
    assert users.timeout_s == 2.5
    assert invoices.auth is not None and not invoices.auth.enabled


@pytest.mark.parametrize(
    "text",
    [
        "defualt_routes = false",
        '[[routes]]\npath = "/x"\nsubject = "a.b"\nverison = "^1"',
        '[[routes]]\npath = "/x"\nsubject = "$SYS.b"',
        '[[routes]]\npath = "/x"\nsubject = "a.*"',
        '[[routes]]\npath = "/x"\nsubject = "natsreg.registry.list"',
        '[[routes]]\npath = "/x"\nsubject = "a.b.c"\nversion = "^1"',
        '[[routes]]\npath = "/x"\nsubject = "a.b"\nversion = "one"',
        '[[routes]]\npath = "x"\nsubject = "a.b"',
        '[[routes]]\npath = "/x"\nsubject = "a.b"\nmethods = ["FETCH"]',
        '[[routes]]\npath = "/x"\nsubject = "a.b"\n[[routes]]\npath = "/x/"\nsubject = "a.c"',
        '[auth]\nscheme = "bearer"',
        "not toml at all [",
    ],
)
def test_a_routes_file_with_a_mistake_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        BridgeConfig.from_toml(path)


@pytest.mark.parametrize(
    "settings",
    [
        {"timeout_s": 0},
        {"max_body_bytes": -1},
        {"max_header_bytes": 10},
        {"max_in_flight_per_client": 0},
        {"prefix": "a.*"},
        {"allow": "svc"},
        {"timeout_header": "bad header"},
        {"body_timeout_s": float("nan")},
    ],
)
def test_bad_settings_are_refused_at_construction(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        BridgeConfig(**settings)


async def test_mounted_under_a_root_path_the_bridge_routes_what_follows_it(
    quiet_nats: tuple[NATS, list[str]],
) -> None:
    nc, seen = quiet_nats
    app = bridge.create_app(nc, BridgeConfig(timeout_s=1.0))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # Starlette's Mount keeps the full path and sets root_path to the mount point.
    await app(
        {
            "type": "http",
            "method": "GET",
            "path": "/gateway/svc/echo",
            "raw_path": b"/gateway/svc/echo",
            "root_path": "/gateway",
            "query_string": b"",
            "client": ("127.0.0.1", 1),
            "headers": [],
        },
        receive,
        send,
    )
    assert sent[0]["status"] == 504
    assert "svc.echo" in seen


def test_status_for_is_the_one_table() -> None:
    table: list[tuple[Exception, int]] = [
        (natsreg.NoInstanceError("x"), 503),
        (natsreg.RequestTimeoutError("x"), 504),
        (ServiceError("x", code=429), 429),
        (ServiceError("x", code=200), 502),
        (natsreg.NotConnectedError("x"), 503),
        (natsreg.RequestError("x"), 502),
        (CircuitOpenError("x", retry_at=0.0, retry_in_s=1.0), 503),
        (BulkheadFullError("x"), 503),
        (ConfigError("x"), 400),
        (RuntimeError("x"), 500),
    ]
    for error, status in table:
        assert bridge.status_for(error)[0] == status, error


def test_the_operations_guide_states_the_bridges_error_table() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    table = docs.split("### Status table", 1)[1].split("\n\n###", 1)[0]
    stated: dict[str, set[str]] = {}
    for status, name in re.findall(r"^\|[^|]*\|\s*([^|]+?)\s*\|\s*`(\w+)`\s*\|$", table, re.M):
        if status != "status":  # the head row
            stated.setdefault(name, set()).add(status)
    assert set(stated) == {*ERRORS, SERVICE_ERROR}
    assert {name: stated[name] for name in ERRORS} == {
        name: {str(kind.status)} for name, kind in ERRORS.items()
    }
    assert stated[SERVICE_ERROR] == {"that code", "502"}


def test_the_route_table_itself_refuses_every_hostile_path() -> None:
    # Lower layers (the client, nats-py) refuse some of these too; the bridge must not rely
    # on them, so its own resolver is checked alone.
    table = RouteTable()
    for path in HOSTILE_PATHS:
        decoded = urllib.parse.unquote(path, errors="strict")
        refusal = table.resolve(decoded)
        assert isinstance(refusal, Refusal) and refusal.status == 400, path
