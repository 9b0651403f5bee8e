"""Version constraints, checked against npm's documented meaning of each form."""

from __future__ import annotations

import re

import pytest

from natsreg import ConfigError
from natsreg._semver import parse_constraint, parse_version

pytestmark = pytest.mark.pure


def assert_matches(constraint: str, matching: list[str], not_matching: list[str]) -> None:
    parsed = parse_constraint(constraint)
    for version in matching:
        assert parsed.matches(version), f"{constraint} should match {version}"
    for version in not_matching:
        assert not parsed.matches(version), f"{constraint} should not match {version}"


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
    assert_matches(constraint, matching, not_matching)


def test_less_than_a_full_version_does_not_match_that_version() -> None:
    assert_matches("<1.2.3", ["1.2.2", "0.9.9"], ["1.2.3", "1.2.4"])


@pytest.mark.parametrize(
    ("constraint", "matching", "not_matching"),
    [
        ("~1.0", ["1.0.0", "1.0.9"], ["1.1.5", "1.1.0", "0.9.9"]),
        ("~1.0.0", ["1.0.0", "1.0.9"], ["1.1.5"]),
        ("~0.2.3", ["0.2.3", "0.2.9"], ["0.3.0", "0.2.2"]),
        ("~0", ["0.0.0", "0.9.9"], ["1.0.0"]),
    ],
)
def test_a_tilde_allows_patch_changes_only_unless_it_names_no_minor(
    constraint: str, matching: list[str], not_matching: list[str]
) -> None:
    assert_matches(constraint, matching, not_matching)


@pytest.mark.parametrize(
    ("constraint", "matching", "not_matching"),
    [
        ("^0.1.3", ["0.1.3", "0.1.9"], ["0.1.2", "0.2.0"]),
        ("^0.0", ["0.0.0", "0.0.9"], ["0.1.0"]),
        ("^0.0.0", ["0.0.0"], ["0.0.1"]),
        ("^1.0.0", ["1.0.0", "1.9.9"], ["2.0.0", "0.9.9"]),
    ],
)
def test_a_caret_keeps_the_left_most_non_zero_part(
    constraint: str, matching: list[str], not_matching: list[str]
) -> None:
    assert_matches(constraint, matching, not_matching)


@pytest.mark.parametrize(
    ("constraint", "matching", "not_matching"),
    [
        ("1", ["1.0.0", "1.9.9"], ["0.9.9", "2.0.0"]),
        ("=1.0", ["1.0.0", "1.0.9"], ["1.1.0", "0.9.9"]),
        ("1.2.0", ["1.2.0"], ["1.2.1", "1.1.9"]),
        (">1", ["2.0.0"], ["1.9.9", "1.0.0"]),
        (">1.2.3", ["1.2.4"], ["1.2.3"]),
        (">=1", ["1.0.0", "2.0.0"], ["0.9.9"]),
        (">=1.2", ["1.2.0"], ["1.1.9"]),
        (">=1.2.3", ["1.2.3"], ["1.2.2"]),
        ("<=1", ["1.9.9", "0.0.0"], ["2.0.0"]),
        ("<=1.2.3", ["1.2.3"], ["1.2.4"]),
        ("<1", ["0.9.9"], ["1.0.0"]),
        ("<1.0", ["0.9.9"], ["1.0.0"]),
    ],
)
def test_a_partial_version_stands_for_its_whole_range_under_every_operator(
    constraint: str, matching: list[str], not_matching: list[str]
) -> None:
    assert_matches(constraint, matching, not_matching)


@pytest.mark.parametrize("constraint", ["*", "x", "X", "=*", ">=x", "<=*", "^*", "~X", "x.2.3"])
def test_a_wildcard_major_matches_every_release_unless_compared_strictly(constraint: str) -> None:
    assert_matches(constraint, ["0.0.0", "0.0.1", "1.2.3", "99.0.0"], [])


@pytest.mark.parametrize("constraint", ["1.X", "1.*", "1.x.3", "1.X.X"])
def test_a_wildcard_makes_every_later_part_a_wildcard(constraint: str) -> None:
    assert_matches(constraint, ["1.0.0", "1.9.9"], ["0.9.9", "2.0.0"])


@pytest.mark.parametrize("constraint", ["<*", ">*", ">x", "<X.2"])
def test_greater_or_less_than_any_version_matches_nothing(constraint: str) -> None:
    assert_matches(constraint, [], ["0.0.0", "0.0.1", "1.2.3", "99.0.0"])


@pytest.mark.parametrize(
    ("constraint", "stop"),
    [
        ("^1.2", "2.0.0"),
        ("^0.2", "0.3.0"),
        ("^0.0.3", "0.0.4"),
        ("~1.2", "1.3.0"),
        ("1", "2.0.0"),
        ("1.2", "1.3.0"),
        ("<=1", "2.0.0"),
        ("<=1.2", "1.3.0"),
        ("<1.2", "1.2.0"),
    ],
)
def test_an_upper_bound_keeps_out_every_pre_release_of_the_release_it_stops_at(
    constraint: str, stop: str
) -> None:
    # The second comparator names a pre-release of the stop, so the set admits its
    # pre-releases: only the upper bound can keep them out.
    admitting = f"<={stop}-rc.1"
    assert parse_constraint(admitting).matches(f"{stop}-0")
    assert_matches(f"{constraint} {admitting}", [], [f"{stop}-0", f"{stop}-alpha", stop])


def test_less_than_a_release_matches_its_pre_releases_where_they_are_named() -> None:
    assert_matches(
        ">=1.2.3-rc.1 <1.2.3", ["1.2.3-rc.1", "1.2.3-rc.2"], ["1.2.3", "1.2.3-rc.0", "1.2.2"]
    )


@pytest.mark.parametrize("text", ["1.2.3", "0.0.0", "1.0.0-rc.1", "1.0.0+b7", "1.0.0-rc.1+b7"])
def test_a_version_prints_as_written(text: str) -> None:
    assert str(parse_version(text)) == text


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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "a version constraint may not be empty"),
        ("  ", "a version constraint may not be empty"),
        ("^", "'^' is not a version constraint"),
        ("1.2.3.4", "'1.2.3.4' is not a version constraint"),
        ("abc", "'abc' is not a version constraint"),
        (">=1.0 ||", "'>=1.0 ||': empty alternative around '||'"),
        ("^1.2-beta", "'^1.2-beta': a pre-release needs a full version"),
        ("1.x.3-rc.1", "'1.x.3-rc.1': a pre-release needs a full version"),
    ],
)
def test_a_malformed_constraint_is_refused_with_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_constraint(text)


def test_a_malformed_version_is_refused() -> None:
    with pytest.raises(ConfigError, match=re.escape("'1.2' is not a SemVer version")):
        parse_version("1.2")


@pytest.mark.parametrize(
    ("constraint", "version"),
    [(">1.2 <=1.3.0-rc.1", "1.3.0-rc.1"), (">1 <=2.0.0-rc.1", "2.0.0-rc.1")],
)
def test_greater_than_a_partial_version_starts_at_the_next_release_not_its_pre_releases(
    constraint: str, version: str
) -> None:
    # npm reads '>1.2' as '>=1.3.0': even a comparator naming 1.3.0-rc.1 cannot let it in.
    assert not parse_constraint(constraint).matches(version)
    assert parse_constraint(constraint.split()[0]).matches(version.split("-")[0])
