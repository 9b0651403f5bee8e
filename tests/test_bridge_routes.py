"""The bridge's route table, without a server: which paths reach which subjects, which never do,
and which route tables are refused when the bridge is configured."""

from __future__ import annotations

import re

import pytest

from natsreg import ConfigError
from natsreg.bridge import Route
from natsreg.bridge._routes import MAX_SUBJECT_CHARS, Refusal, RouteTable, Target

pytestmark = pytest.mark.pure

BAD_PATH = Refusal(
    "bad_request",
    "the path holds a segment that cannot be a subject token (empty, '.', '*', "
    "'>', whitespace or control characters)",
    "",
    "",
)
LONG_PATH = Refusal("bad_request", "the path is longer than 512 characters", "", "")
LONG_SUBJECT = Refusal(
    "bad_request", "the path maps to a subject longer than 512 characters", "", ""
)
FORBIDDEN = Refusal("bad_request", "the path names a reserved subject", "", "")
NO_ROUTE = Refusal("not_found", "no route matches the path", "", "")


def exactly(message: str) -> str:
    """A ``match=`` pattern for the whole of ``message``, and nothing around it."""
    return f"^{re.escape(message)}$"


def default_target(subject: str) -> Target:
    """What the default mapping ``/<service>/<endpoint>[/...]`` resolves to."""
    service, endpoint = subject.split(".")[:2]
    return Target(subject, service, endpoint, None, subject)


def bad_name(service: str, endpoint: str) -> Refusal:
    message = "service and endpoint names hold letters, digits, '-' and '_' only"
    return Refusal("bad_request", message, service, endpoint)


# -- the default mapping: /<service>/<endpoint>[/...] ----------------------------------------


@pytest.mark.parametrize(
    ("path", "subject"),
    [
        ("/svc/echo", "svc.echo"),
        ("/user-service/get_user", "user-service.get_user"),
        ("/svc/echo/42", "svc.echo.42"),
        ("/svc/echo/a/b", "svc.echo.a.b"),
        # Only the service and the endpoint are names; what follows is any subject token.
        ("/svc/echo/a+b", "svc.echo.a+b"),
        ("/natsregx/echo", "natsregx.echo"),
        ("/svc/natsreg", "svc.natsreg"),
    ],
)
def test_a_valid_path_resolves_to_the_subject_its_segments_spell(path: str, subject: str) -> None:
    assert RouteTable().resolve(path) == default_target(subject)


def test_the_same_path_resolves_the_same_way_every_time() -> None:
    table = RouteTable()
    assert table.resolve("/svc/echo") == table.resolve("/svc/echo") == default_target("svc.echo")
    assert table.resolve("/svc/a.b") == table.resolve("/svc/a.b") == BAD_PATH


@pytest.mark.parametrize("path", ["/", "/svc"])
def test_a_path_that_names_no_endpoint_is_not_found(path: str) -> None:
    assert RouteTable().resolve(path) == NO_ROUTE


@pytest.mark.parametrize(
    "path",
    [
        "/svc/echo/a.b",
        "/svc/echo.x",
        "/svc.x/echo",
        "/svc/..",
        "/svc/echo/.",
    ],
)
def test_a_dot_inside_a_path_token_is_refused_and_never_splits_the_subject(path: str) -> None:
    # /svc/echo/a.b would otherwise call svc.echo.a.b: 'a' and 'b' are names of their own.
    assert RouteTable().resolve(path) == BAD_PATH


def test_a_dot_inside_a_token_under_a_route_is_refused() -> None:
    route = Route(path="/api", subject="gw.api")
    table = RouteTable([route])
    assert table.resolve("/api/a.b") == BAD_PATH
    assert table.resolve("/api/a") == Target("gw.api.a", "gw", "api", route, "gw.api.a")


@pytest.mark.parametrize(
    "path",
    [
        "svc/echo",
        "",
        "/svc/*",
        "/svc/>",
        "/svc/echo/*",
        "/svc/echo/>",
        "/svc//echo",
        "/svc/echo/",
        "//svc/echo",
        "/svc/a b",
        "/svc/a\tb",
        "/svc/a\r\nb",
        "/svc/a\x00b",
        "/svc/a\x7fb",
        "/svc/a\x85b",
        "/svc/a\u2028b",
    ],
)
def test_a_segment_that_cannot_be_a_subject_token_is_a_bad_request(path: str) -> None:
    assert RouteTable().resolve(path) == BAD_PATH


@pytest.mark.parametrize("char", ["\x9b", "\u200b", "\u202e"])
def test_a_segment_with_an_unprintable_character_is_refused_even_if_nats_would_take_it(
    char: str,
) -> None:
    # C1 controls and format characters are no NATS separator, but no subject should hold one.
    assert RouteTable().resolve(f"/svc/echo/a{char}b") == BAD_PATH


def test_a_hostile_segment_is_refused_even_under_a_route() -> None:
    table = RouteTable([Route(path="/api", subject="gw.api")])
    assert table.resolve("/api/*") == BAD_PATH
    assert table.resolve("/api/a\u200bb") == BAD_PATH


@pytest.mark.parametrize(
    ("path", "refusal"),
    [
        ("/svc/a+b", bad_name("svc", "a+b")),
        ("/a+b/echo", bad_name("a+b", "echo")),
        ("/svc/é", bad_name("svc", "é")),
    ],
)
def test_a_service_or_endpoint_that_is_no_name_is_refused_and_named(
    path: str, refusal: Refusal
) -> None:
    assert RouteTable().resolve(path) == refusal


@pytest.mark.parametrize(
    "path",
    [
        "/_INBOX/abc",
        "/_INBOX_alice/abc",
        "/$SYS/REQ/SERVER/PING",
        "/$JS/API/INFO",
        "/natsreg/registry/list",
        "/natsreg/x",
    ],
)
def test_a_path_that_spells_a_reserved_or_control_subject_is_refused(path: str) -> None:
    assert RouteTable().resolve(path) == FORBIDDEN


def test_the_control_subjects_refused_follow_the_configured_prefix() -> None:
    table = RouteTable(control_prefix="prod.reg")
    assert table.resolve("/prod/reg") == FORBIDDEN
    assert table.resolve("/prod/reg/list") == FORBIDDEN
    assert table.resolve("/prod/regx") == default_target("prod.regx")
    assert table.resolve("/natsreg/registry") == default_target("natsreg.registry")


def test_an_allow_list_leaves_every_other_service_unfound() -> None:
    table = RouteTable(allow=frozenset({"svc"}))
    assert table.resolve("/svc/echo") == default_target("svc.echo")
    assert table.resolve("/other/echo") == NO_ROUTE


def test_without_default_routes_only_configured_routes_resolve() -> None:
    route = Route(path="/api", subject="gw.api")
    table = RouteTable([route], default_routes=False)
    assert table.resolve("/svc/echo") == NO_ROUTE
    assert table.resolve("/api/x") == Target("gw.api.x", "gw", "api", route, "gw.api.x")


# -- length ----------------------------------------------------------------------------------


def test_a_path_of_the_longest_length_resolves_and_one_character_more_is_refused() -> None:
    table = RouteTable()
    longest = "/svc/" + "e" * (MAX_SUBJECT_CHARS - len("/svc/"))
    assert len(longest) == MAX_SUBJECT_CHARS == 512
    assert table.resolve(longest) == default_target(longest[1:].replace("/", "."))
    assert table.resolve(longest + "e") == LONG_PATH


def test_a_short_path_whose_subject_grows_too_long_under_a_route_is_refused() -> None:
    # The route's subject is 500 characters; the path itself stays short.
    route = Route(path="/x", subject="svc." + "a" * 496)
    table = RouteTable([route])
    fits = "/x/" + "b" * 11  # 500 + '.' + 11 = 512
    too_long = "/x/" + "b" * 12
    subject = route.subject + "." + "b" * 11
    assert table.resolve(fits) == Target(subject, "svc", "a" * 496, route, subject)
    assert table.resolve(too_long) == LONG_SUBJECT


# -- configured routes -----------------------------------------------------------------------


def test_a_route_sends_its_path_and_what_follows_to_its_subject() -> None:
    route = Route(path="/api/users", subject="user-service.users")
    table = RouteTable([route])
    assert table.resolve("/api/users") == Target(
        "user-service.users", "user-service", "users", route, "user-service.users"
    )
    assert table.resolve("/api/users/42/x") == Target(
        "user-service.users.42.x", "user-service", "users", route, "user-service.users.42.x"
    )
    # Not under the route: the default mapping answers.
    assert table.resolve("/api/usersx") == default_target("api.usersx")


@pytest.mark.parametrize(
    ("route_path", "path"),
    [("/api/users/", "/api/users/1"), ("/X/users", "/X/users/1"), ("/api/X", "/api/X/1")],
)
def test_a_route_path_is_matched_segment_by_segment_a_trailing_slash_aside(
    route_path: str, path: str
) -> None:
    route = Route(path=route_path, subject="user-service.users")
    assert RouteTable([route]).resolve(path) == Target(
        "user-service.users.1", "user-service", "users", route, "user-service.users.1"
    )


def test_a_route_to_a_one_token_subject_has_no_endpoint() -> None:
    route = Route(path="/ping", subject="health")
    assert RouteTable([route]).resolve("/ping") == Target("health", "health", "", route, "health")


@pytest.mark.parametrize("declared", ["short first", "long first"])
def test_the_longest_matching_route_wins_whatever_the_order_declared(declared: str) -> None:
    api = Route(path="/api", subject="gw.api")
    users = Route(path="/api/users", subject="users.list")
    table = RouteTable([api, users] if declared == "short first" else [users, api])
    assert table.resolve("/api/users/42") == Target(
        "users.list.42", "users", "list", users, "users.list.42"
    )
    assert table.resolve("/api/orders/7") == Target(
        "gw.api.orders.7", "gw", "api", api, "gw.api.orders.7"
    )
    assert table.resolve("/api") == Target("gw.api", "gw", "api", api, "gw.api")


def test_a_route_takes_a_path_the_default_mapping_would_refuse() -> None:
    route = Route(path="/_INBOX/x", subject="svc.echo")
    table = RouteTable([route])
    assert table.resolve("/_INBOX/x") == Target("svc.echo", "svc", "echo", route, "svc.echo")
    assert table.resolve("/_INBOX/y") == FORBIDDEN


def test_a_versioned_route_asks_the_client_for_its_constraint() -> None:
    route = Route(path="/api/which", subject="svc.which", version="^1.2")
    assert RouteTable([route]).resolve("/api/which") == Target(
        "svc.which", "svc", "which", route, "svc@^1.2.which"
    )


def test_a_versioned_route_has_no_sub_paths() -> None:
    route = Route(path="/api/which", subject="svc.which", version="^1.2")
    refusal = Refusal("not_found", "a versioned route has no sub-paths", "svc", "which")
    assert RouteTable([route]).resolve("/api/which/x") == refusal


def test_a_route_keeps_its_methods_in_upper_case() -> None:
    assert Route(path="/x", subject="a.b", methods=frozenset({"get", "Post"})).methods == {
        "GET",
        "POST",
    }
    assert Route(path="/x", subject="a.b").methods == frozenset()


@pytest.mark.parametrize("timeout_s", [None, 0.001, 3600])
def test_a_route_timeout_up_to_an_hour_is_accepted(timeout_s: float | None) -> None:
    assert Route(path="/x", subject="a.b", timeout_s=timeout_s).timeout_s == timeout_s


# -- route tables refused at configuration ---------------------------------------------------


@pytest.mark.parametrize("path", ["/_natsreg/services", "/_natsreg", "/_natsreg/"])
def test_a_route_under_the_bridges_own_paths_is_refused_at_config_time(path: str) -> None:
    with pytest.raises(
        ConfigError, match=exactly("route paths under /_natsreg/ are the bridge's own")
    ):
        Route(path=path, subject="svc.echo")


def test_a_route_may_hold_natsreg_below_its_first_segment() -> None:
    route = Route(path="/api/_natsreg", subject="svc.echo")
    assert RouteTable([route]).resolve("/api/_natsreg") == Target(
        "svc.echo", "svc", "echo", route, "svc.echo"
    )


@pytest.mark.parametrize("path", ["x", "", "api/x", None])
def test_a_route_path_must_start_with_a_slash(path: object) -> None:
    with pytest.raises(ConfigError, match=exactly(f"route path {path!r} must start with '/'")):
        Route(path=path, subject="a.b")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "//",
        "//x",
        "/x//",
        "/a//b",
        "/a b",
        "/a\tb",
        "/a\x00b",
        "/a\u200bb",
        "/a.b",
        "/a/*",
        "/>",
    ],
)
def test_a_route_path_no_request_path_could_reach_is_refused(path: str) -> None:
    # Request paths with an empty, unprintable, dotted or wildcard segment are refused before
    # routing, so a route spelled that way would be a dead row of the table.
    message = (
        f"route path {path!r} needs non-empty, printable segments without '.', '*', '>' or spaces"
    )
    with pytest.raises(ConfigError, match=exactly(message)):
        Route(path=path, subject="a.b")


@pytest.mark.parametrize(
    "subject", ["", "a.*", "a.>", "a..b", "a b", "$SYS.REQ", "$SRV.PING", "_INBOX.x", "_INBOX_u.x"]
)
def test_a_route_to_a_wildcard_or_reserved_subject_is_refused(subject: str) -> None:
    message = (
        f"route '/x': {subject!r} is not a subject a route may reach "
        "(literal tokens, no '$' or '_INBOX' subjects)"
    )
    with pytest.raises(ConfigError, match=exactly(message)):
        Route(path="/x", subject=subject)


def test_a_route_with_an_unknown_method_is_refused() -> None:
    with pytest.raises(ConfigError, match=exactly("route '/x': unknown methods ['FETCH']")):
        Route(path="/x", subject="a.b", methods=frozenset({"get", "fetch"}))


@pytest.mark.parametrize("subject", ["svc", "svc.which.x", "svc.a+b", "a+b.which"])
def test_a_versioned_route_must_reach_a_service_endpoint(subject: str) -> None:
    message = "route '/x': a versioned route's subject must be '<service>.<endpoint>'"
    with pytest.raises(ConfigError, match=exactly(message)):
        Route(path="/x", subject=subject, version="^1")


def test_a_versioned_route_with_no_constraint_is_refused() -> None:
    with pytest.raises(ConfigError, match="constraint"):
        Route(path="/x", subject="svc.which", version="")


@pytest.mark.parametrize("timeout_s", [0, -1, 3600.5])
def test_a_route_timeout_outside_an_hour_is_refused(timeout_s: float) -> None:
    with pytest.raises(ConfigError, match=exactly("route '/x': timeout_s must be in (0, 3600]")):
        Route(path="/x", subject="a.b", timeout_s=timeout_s)


def test_two_routes_on_the_same_path_are_refused() -> None:
    routes = [Route(path="/x", subject="a.b"), Route(path="/x/", subject="a.c")]
    with pytest.raises(ConfigError, match=exactly("two routes share the path '/x/'")):
        RouteTable(routes)


def test_a_route_to_a_service_the_allow_list_leaves_out_is_refused() -> None:
    message = "route '/x' reaches 'b', which the allow-list leaves out"
    with pytest.raises(ConfigError, match=exactly(message)):
        RouteTable([Route(path="/x", subject="b.x")], allow=frozenset({"a"}))
    route = Route(path="/x", subject="b.x")
    table = RouteTable([route], allow=frozenset({"b"}))
    assert table.resolve("/x") == Target("b.x", "b", "x", route, "b.x")


@pytest.mark.parametrize(
    ("prefix", "subject"),
    [
        ("natsreg", "natsreg.registry.list"),
        ("natsreg", "natsreg"),
        ("prod.reg", "prod.reg.announce.x"),
        ("prod.reg", "prod.reg"),
    ],
)
def test_a_route_to_natsregs_control_subjects_is_refused(prefix: str, subject: str) -> None:
    message = "route '/x' reaches natsreg's control subjects"
    with pytest.raises(ConfigError, match=exactly(message)):
        RouteTable([Route(path="/x", subject=subject)], control_prefix=prefix)


@pytest.mark.parametrize(
    ("prefix", "subject"),
    [("natsreg", "natsregx.list"), ("prod.reg", "prod.regx"), ("prod.reg", "natsreg.list")],
)
def test_a_route_beside_the_control_subjects_is_accepted(prefix: str, subject: str) -> None:
    route = Route(path="/x", subject=subject)
    target = RouteTable([route], control_prefix=prefix).resolve("/x")
    assert isinstance(target, Target) and target.subject == subject


def test_a_route_whose_own_subject_is_too_long_is_refused_at_config_time() -> None:
    Route(path="/x", subject="a." + "b" * (MAX_SUBJECT_CHARS - 2))
    too_long = "a." + "b" * (MAX_SUBJECT_CHARS - 1)
    message = f"route '/x': the subject is longer than {MAX_SUBJECT_CHARS} characters"
    with pytest.raises(ConfigError, match=exactly(message)):
        Route(path="/x", subject=too_long)


def test_a_refusal_takes_its_status_from_the_error_table_unless_it_has_its_own() -> None:
    assert Refusal("no_instance", "none").status == 503
    assert Refusal("not_found", "none").status == 404
    assert Refusal("service_error", "its own", code=418).status == 418
    with pytest.raises(ValueError, match="'no_such_error' is not in the bridge's error table"):
        Refusal("no_such_error", "a name the table does not have")
