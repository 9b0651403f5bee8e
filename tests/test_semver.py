"""Version constraints, checked against npm's documented meaning of each form."""

from __future__ import annotations

import pytest

from natsreg import ConfigError
from natsreg._semver import parse_constraint, parse_version

pytestmark = pytest.mark.pure


@pytest.mark.parametrize(
    ("constraint", "matching", "not_matching"),
    [
        ("1.2.3", ["1.2.3", "1.2.3+build.5"], ["1.2.4", "1.2.2", "1.2.3-rc.1"]),
        ("=1.2.3", ["1.2.3"], ["1.2.4"]),
        ("^1.2", ["1.2.0", "1.9.9", "1.2.7"], ["1.1.9", "2.0.0", "2.0.0-rc.1", "0.9.0"]),
        ("^1.2.3", ["1.2.3", "1.99.0"], ["1.2.2", "2.0.0"]),
        ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0", "0.2.2", "1.0.0"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4", "0.1.0"]),
        ("^0", ["0.0.1", "0.9.9"], ["1.0.0"]),
        ("~1.2", ["1.2.0", "1.2.99"], ["1.3.0", "1.1.9"]),
        ("~1.2.3", ["1.2.3", "1.2.9"], ["1.3.0", "1.2.2"]),
        ("~1", ["1.0.0", "1.9.0"], ["2.0.0"]),
        (">=1.0 <2", ["1.0.0", "1.99.99"], ["0.9.9", "2.0.0", "2.0.0-alpha"]),
        (">= 1.0 < 2", ["1.5.0"], ["2.0.0"]),
        (">1.2", ["1.3.0", "2.0.0"], ["1.2.9", "1.2.0"]),
        (">1.2.3", ["1.2.4"], ["1.2.3"]),
        ("<=1.2", ["1.2.9", "1.0.0"], ["1.3.0"]),
        ("<1.2", ["1.1.9"], ["1.2.0"]),
        ("1.x", ["1.0.0", "1.99.3"], ["2.0.0", "0.9.0"]),
        ("1.2.*", ["1.2.0", "1.2.5"], ["1.3.0"]),
        ("1.2", ["1.2.0", "1.2.5"], ["1.3.0"]),
        ("*", ["0.0.1", "9.9.9"], ["1.0.0-beta"]),
        ("1.x || >=3.1", ["1.4.0", "3.1.0", "4.0.0"], ["2.5.0", "3.0.9"]),
        (
            "^1.3.0-beta.2",
            ["1.3.0-beta.2", "1.3.0-beta.10", "1.3.0", "1.4.0"],
            ["1.3.0-beta.1", "1.4.0-beta.3", "2.0.0"],
        ),
    ],
)
def test_a_constraint_matches_what_npm_says_it_does(
    constraint: str, matching: list[str], not_matching: list[str]
) -> None:
    parsed = parse_constraint(constraint)
    for version in matching:
        assert parsed.matches(version), f"{constraint} should match {version}"
    for version in not_matching:
        assert not parsed.matches(version), f"{constraint} should not match {version}"


def test_versions_order_by_semver_precedence() -> None:
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.10.0",
    ]
    versions = [parse_version(v) for v in ordered]
    shuffled = versions[5:] + versions[:5]
    assert sorted(shuffled, key=lambda v: v.key()) == versions
    assert str(parse_version("1.0.0-rc.1+b7")) == "1.0.0-rc.1+b7"


def test_an_unparseable_version_never_matches() -> None:
    assert not parse_constraint("*").matches("not-a-version")


@pytest.mark.parametrize("text", ["", "  ", "^", "1.2.3.4", "abc", ">=1.0 ||", "^1.2-beta"])
def test_a_malformed_constraint_is_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_constraint(text)


def test_a_malformed_version_is_refused() -> None:
    with pytest.raises(ConfigError):
        parse_version("1.2")
