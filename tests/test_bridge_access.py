"""Who may call the bridge and from where: auth tokens, the challenge a refused client reads,
the Host names served, cross-site requests and CORS headers. Pure: no server, no NATS."""

from __future__ import annotations

from pathlib import Path

import pytest

from natsreg import ConfigError
from natsreg.bridge import Auth, BridgeConfig, Cors
from natsreg.bridge._access import NO_AUTH, CorsHeaders, Origins, challenge, credential

pytestmark = pytest.mark.pure

APP = b"https://app.example"
EVIL = b"https://evil.example"


def tokens_from_env(monkeypatch: pytest.MonkeyPatch, value: str, name: str = "TEST_TOKENS") -> str:
    monkeypatch.setenv(name, value)
    return name


def tokens_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tokens"
    path.write_text(text)
    return str(path)


def bearer(monkeypatch: pytest.MonkeyPatch, tokens: str = "s3cret-one,s3cret-two") -> Auth:
    return Auth(scheme="bearer", tokens_env=tokens_from_env(monkeypatch, tokens))


def api_key(monkeypatch: pytest.MonkeyPatch, header: str = "x-api-key") -> Auth:
    return Auth(scheme="api-key", tokens_env=tokens_from_env(monkeypatch, "k3y"), header=header)


def lets_in(auth: Auth, headers: dict[bytes, bytes]) -> bool:
    """What the bridge decides for a request with these (credential) headers."""
    return auth.accepts(credential(auth, headers))


def origins(*hosts: str, cors: Cors | None = None) -> Origins:
    """The checks of a bridge serving ``hosts`` (normalised as the config does)."""
    allowed = BridgeConfig(allowed_hosts=hosts).allowed_hosts
    return Origins(allowed, CorsHeaders(cors) if cors is not None else None)


# -- auth: configuration ---------------------------------------------------------------------


def test_no_auth_is_the_default_and_checks_no_credential() -> None:
    assert not Auth().enabled
    assert not NO_AUTH.enabled
    assert Auth().scheme == "none"


def test_tokens_given_with_scheme_none_are_refused_at_config_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"^auth: tokens given but scheme is 'none'$"):
        Auth(scheme="none", tokens_env=tokens_from_env(monkeypatch, "abc"))
    with pytest.raises(ConfigError, match=r"^auth: tokens given but scheme is 'none'$"):
        Auth(tokens_file=tokens_file(tmp_path, "abc\n"))


@pytest.mark.parametrize("scheme", ["Bearer", "basic", "API-KEY", ""])
def test_an_unknown_auth_scheme_is_refused(monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"^auth scheme '{scheme}': use 'none', 'bearer' or 'api-key'$"
    ):
        Auth(scheme=scheme, tokens_env=tokens_from_env(monkeypatch, "abc"))  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["bearer", "api-key"])
def test_a_scheme_with_no_token_is_refused_there_is_no_default_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, scheme: str
) -> None:
    message = (
        rf"^auth scheme '{scheme}' has no token: set tokens_env or tokens_file "
        r"\(there is no default secret\)$"
    )
    with pytest.raises(ConfigError, match=message):
        Auth(scheme=scheme)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        Auth(scheme=scheme, tokens_env=tokens_from_env(monkeypatch, " , \n ,"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        Auth(scheme=scheme, tokens_file=tokens_file(tmp_path, "# only a comment\n\n  \n"))  # type: ignore[arg-type]


def test_an_unset_tokens_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_UNSET_TOKENS", raising=False)
    with pytest.raises(
        ConfigError, match=r"^auth: environment variable 'TEST_UNSET_TOKENS' is not set$"
    ):
        Auth(scheme="bearer", tokens_env="TEST_UNSET_TOKENS")


def test_an_unreadable_tokens_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^auth: cannot read tokens_file: .*missing"):
        Auth(scheme="bearer", tokens_file=str(tmp_path / "missing"))


@pytest.mark.parametrize("token", ["two words", "tab\there", "bell\x07", "del\x7f"])
def test_a_token_with_whitespace_or_a_control_character_is_refused(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    with pytest.raises(
        ConfigError, match=r"^auth: a token may hold no whitespace or control character$"
    ):
        bearer(monkeypatch, f"good-token,{token}")


@pytest.mark.parametrize("header", ["x api key", "x-api-key:", "", "x-k\u00e9y"])
def test_an_api_key_header_that_is_not_a_header_name_is_refused(
    monkeypatch: pytest.MonkeyPatch, header: str
) -> None:
    with pytest.raises(ConfigError, match=r"^auth header .* is not a header name$"):
        api_key(monkeypatch, header)


# -- auth: who is let in ---------------------------------------------------------------------


def test_the_right_bearer_token_is_accepted_whatever_the_schemes_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = bearer(monkeypatch)
    assert auth.enabled
    assert lets_in(auth, {b"authorization": b"Bearer s3cret-one"})
    assert lets_in(auth, {b"authorization": b"bearer s3cret-two"})
    assert lets_in(auth, {b"authorization": b"BEARER  s3cret-two "})


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {b"authorization": b"Bearer s3cret"},
        {b"authorization": b"Bearer s3cret-one-more"},
        {b"authorization": b"Bearer "},
        {b"authorization": b"Bearer"},
        {b"authorization": b"Basic s3cret-one"},
        {b"authorization": b"s3cret-one"},
        {b"x-api-key": b"s3cret-one"},
    ],
)
def test_a_missing_or_wrong_bearer_token_is_refused_with_a_bearer_challenge(
    monkeypatch: pytest.MonkeyPatch, headers: dict[bytes, bytes]
) -> None:
    auth = bearer(monkeypatch)
    assert not lets_in(auth, headers)
    assert challenge(auth) == (b"www-authenticate", b'Bearer realm="natsreg"')


def test_the_right_api_key_is_accepted_in_its_header(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = api_key(monkeypatch)
    assert lets_in(auth, {b"x-api-key": b"k3y"})
    assert lets_in(auth, {b"x-api-key": b" k3y "})


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {b"x-api-key": b"k3"},
        {b"x-api-key": b""},
        {b"authorization": b"Bearer k3y"},
        {b"x-other-key": b"k3y"},
    ],
)
def test_a_missing_or_wrong_api_key_is_refused_with_a_challenge_naming_the_header(
    monkeypatch: pytest.MonkeyPatch, headers: dict[bytes, bytes]
) -> None:
    auth = api_key(monkeypatch)
    assert not lets_in(auth, headers)
    assert challenge(auth) == (b"www-authenticate", b'ApiKey header="x-api-key"')


def test_an_api_key_header_is_matched_in_lower_case(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = api_key(monkeypatch, "X-Team_Key.v2~")
    assert auth.header == "x-team_key.v2~"
    assert lets_in(auth, {b"x-team_key.v2~": b"k3y"})
    assert challenge(auth) == (b"www-authenticate", b'ApiKey header="x-team_key.v2~"')


def test_no_credential_at_all_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not bearer(monkeypatch).accepts(None)
    assert not Auth().accepts(None)


def test_tokens_are_split_on_commas_and_newlines_and_trimmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = bearer(monkeypatch, " alpha ,beta\ngamma,,\n")
    for token in (b"alpha", b"beta", b"gamma"):
        assert auth.accepts(token)
    for other in (b"", b" alpha ", b"alpha,beta", b"beta\ngamma"):
        assert not auth.accepts(other)


def test_a_tokens_file_holds_one_token_a_line_and_comments_are_no_tokens(
    tmp_path: Path,
) -> None:
    text = "#first-comment\n  #indented-comment\nalpha\n\n  beta  \ngam#ma\n"
    auth = Auth(scheme="api-key", tokens_file=tokens_file(tmp_path, text))
    for token in (b"alpha", b"beta", b"gam#ma"):
        assert auth.accepts(token)
    for comment in (b"#first-comment", b"#indented-comment", b"  #indented-comment", b""):
        assert not auth.accepts(comment)


def test_tokens_from_the_variable_and_the_file_are_both_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    auth = Auth(
        scheme="bearer",
        tokens_env=tokens_from_env(monkeypatch, "from-env"),
        tokens_file=tokens_file(tmp_path, "from-file\n"),
    )
    assert auth.accepts(b"from-env")
    assert auth.accepts(b"from-file")
    assert not auth.accepts(b"from-env,from-file")


# -- CORS: configuration ---------------------------------------------------------------------


def test_cors_any_origin_with_credentials_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"^cors: allow_credentials cannot be used with allow_origins '\*'$"
    ):
        Cors(allow_origins=(APP.decode(), "*"), allow_credentials=True)


def test_cors_credentials_for_named_origins_and_any_origin_without_them_are_allowed() -> None:
    Cors(allow_origins=(APP.decode(),), allow_credentials=True)
    Cors(allow_origins=("*",))


@pytest.mark.parametrize(
    "name", ["allow_origins", "allow_methods", "allow_headers", "expose_headers"]
)
@pytest.mark.parametrize("value", ["GET", ("GET", 1), [b"GET"]])
def test_cors_lists_must_be_lists_of_strings(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^cors\.{name} must be a list of strings$"):
        Cors(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["allow_origins", "allow_methods", "allow_headers", "expose_headers"]
)
def test_cors_lists_may_hold_no_control_character(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^cors\.{name}: no control characters$"):
        Cors(**{name: ("ok", "x\r\nset-cookie: a=b")})  # type: ignore[arg-type]


def test_cors_lists_given_as_lists_are_kept_as_tuples() -> None:
    cors = Cors(
        allow_origins=[APP.decode()],  # type: ignore[arg-type]
        allow_methods=["PUT"],  # type: ignore[arg-type]
        allow_headers=["x-a"],  # type: ignore[arg-type]
        expose_headers=["x-b"],  # type: ignore[arg-type]
    )
    assert (cors.allow_origins, cors.allow_methods, cors.allow_headers, cors.expose_headers) == (
        (APP.decode(),),
        ("PUT",),
        ("x-a",),
        ("x-b",),
    )


def test_cors_max_age_may_be_zero_but_not_negative() -> None:
    with pytest.raises(ConfigError, match=r"^cors\.max_age_s must be >= 0$"):
        Cors(max_age_s=-0.5)
    assert CorsHeaders(Cors(allow_origins=("*",), max_age_s=0)).preflight(APP)[-1] == (
        b"access-control-max-age",
        b"0",
    )


# -- CORS: the headers a browser reads -------------------------------------------------------


def test_an_allowed_origin_gets_its_cors_headers() -> None:
    headers = CorsHeaders(Cors(allow_origins=(APP.decode(), "https://other.example")))
    assert headers.allowed(APP)
    assert headers.for_origin(APP) == [
        (b"access-control-allow-origin", APP),
        (b"vary", b"origin"),
    ]


def test_a_disallowed_origin_gets_no_cors_header_and_no_preflight_answer() -> None:
    headers = CorsHeaders(Cors(allow_origins=(APP.decode(),), allow_credentials=True))
    for origin in (EVIL, b"null", APP + b"/", b"http://app.example", APP.upper()):
        assert not headers.allowed(origin)
        assert headers.for_origin(origin) == []
        assert headers.preflight(origin) == []


def test_any_origin_is_allowed_with_a_star_and_echoed_back() -> None:
    headers = CorsHeaders(Cors(allow_origins=("*",)))
    assert headers.allowed(EVIL)
    assert headers.for_origin(EVIL)[0] == (b"access-control-allow-origin", EVIL)
    assert headers.preflight(b"null")[0] == (b"access-control-allow-origin", b"null")


def test_no_origin_is_allowed_when_cors_names_none() -> None:
    assert not CorsHeaders(Cors()).allowed(APP)


def test_credentials_and_exposed_headers_are_announced_when_configured() -> None:
    cors = Cors(
        allow_origins=(APP.decode(),),
        allow_credentials=True,
        expose_headers=("x-request-id", "x-natsreg-instance"),
    )
    assert CorsHeaders(cors).for_origin(APP) == [
        (b"access-control-allow-origin", APP),
        (b"vary", b"origin"),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", b"x-request-id, x-natsreg-instance"),
    ]


def test_a_preflight_answer_lists_the_default_methods_headers_and_max_age() -> None:
    assert CorsHeaders(Cors(allow_origins=(APP.decode(),))).preflight(APP) == [
        (b"access-control-allow-origin", APP),
        (b"vary", b"origin"),
        (b"access-control-allow-methods", b"GET, POST"),
        (b"access-control-allow-headers", b"content-type, authorization"),
        (b"access-control-max-age", b"600"),
    ]


def test_a_preflight_answer_lists_the_configured_methods_headers_and_credentials() -> None:
    cors = Cors(
        allow_origins=(APP.decode(),),
        allow_methods=("PUT",),
        allow_headers=("x-a", "x-b", "x-c"),
        expose_headers=("x-request-id",),
        allow_credentials=True,
        max_age_s=90.9,
    )
    assert CorsHeaders(cors).preflight(APP) == [
        (b"access-control-allow-origin", APP),
        (b"vary", b"origin"),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-allow-methods", b"PUT"),
        (b"access-control-allow-headers", b"x-a, x-b, x-c"),
        (b"access-control-max-age", b"90"),
    ]


# -- Host names served -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        b"api.example",
        b"api.example:8080",
        b"API.Example",
        b"api.example.",
        b"api.example.:443",
        b"[::1]",
        b"[::1]:8080",
        b"127.0.0.1:1",
    ],
)
def test_a_listed_host_is_served_on_any_port_and_in_any_case(host: bytes) -> None:
    served = origins("api.example", "::1", "127.0.0.1")
    assert served.host_allowed(host) is True
    assert served.host_allowed(host) is True  # and the same again


@pytest.mark.parametrize(
    "host",
    [
        b"evil.example",
        b"api.example.evil.example",
        b"evil.example:80",
        b"xapi.example",
        b"api.examplex",
        b"API.EXAMPLEX",
        b"[::2]",
        b"[::1",
        b"::1",
        b"",
    ],
)
def test_a_host_not_listed_is_refused(host: bytes) -> None:
    served = origins("api.example", "::1")
    assert served.host_allowed(host) is False
    assert served.host_allowed(host) is False  # and the same again


def test_a_star_serves_any_host() -> None:
    served = origins("*")
    assert served.host_allowed(b"evil.example:80")
    assert served.host_allowed(b"")


def test_many_distinct_hosts_keep_their_verdicts() -> None:
    served = origins("api.example")
    for n in range(600):
        assert served.host_allowed(b"h%d.example" % n) is False
        assert served.host_allowed(b"api.example:%d" % n) is True


# -- cross-site requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        (b"http://api.example:8080", b"api.example:8080"),
        (b"https://api.example:8080", b"api.example:8080"),  # a proxy may end TLS
        (b"HTTP://API.Example:8080", b"api.example:8080"),
        (b"http://api.example", b"API.EXAMPLE"),
    ],
)
def test_a_request_from_the_bridges_own_origin_is_not_cross_site(
    origin: bytes, host: bytes
) -> None:
    checks = origins("api.example")
    assert not checks.cross_site(origin, host, None)
    assert not checks.cross_site(origin, host, b"same-origin")


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        (EVIL, b"api.example"),
        (b"null", b"api.example"),
        (b"http://api.example:8081", b"api.example:8080"),
        (b"http://api.example", b"api.example:8080"),
        (b"api.example", b"api.example"),
        (b"http://api.example", None),
    ],
)
def test_a_request_from_another_origin_is_cross_site(origin: bytes, host: bytes | None) -> None:
    assert origins("api.example").cross_site(origin, host, None)
    assert origins("api.example").cross_site(origin, host, b"same-site")


def test_sec_fetch_site_cross_site_is_refused_even_when_the_origin_looks_like_the_host() -> None:
    assert origins("api.example").cross_site(b"http://api.example", b"api.example", b"cross-site")


def test_an_origin_cors_allows_is_not_cross_site() -> None:
    checks = origins("api.example", cors=Cors(allow_origins=(APP.decode(),)))
    assert not checks.cross_site(APP, b"api.example", b"cross-site")
    assert not checks.cross_site(APP, None, None)
    assert checks.cross_site(EVIL, b"api.example", None)


def test_a_request_without_origin_is_cross_site_only_by_sec_fetch_site() -> None:
    checks = origins("api.example")
    assert checks.cross_site(None, b"api.example", b"cross-site")
    for fetch_site in (None, b"same-origin", b"same-site", b"none"):
        assert not checks.cross_site(None, b"api.example", fetch_site)


def test_a_request_without_origin_from_another_site_passes_only_if_cors_allows_any_origin() -> None:
    named = origins("api.example", cors=Cors(allow_origins=(APP.decode(),)))
    star = origins("api.example", cors=Cors(allow_origins=("*",)))
    assert named.cross_site(None, b"api.example", b"cross-site")
    assert not star.cross_site(None, b"api.example", b"cross-site")
    assert not star.cross_site(EVIL, b"api.example", b"cross-site")
