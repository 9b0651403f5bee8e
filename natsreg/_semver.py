"""SemVer versions and version constraints, as npm and Cargo users write them.

    constraint = parse_constraint("^1.2")
    constraint.matches(parse_version("1.4.0"))   # True
    constraint.matches(parse_version("2.0.0"))   # False

Supported forms, combinable with spaces (all must hold) and ``||`` (either side may hold):
exact ``1.2.3`` (or ``=1.2.3``), caret ``^1.2``, tilde ``~1.2``, comparisons ``>=1.0 <2``,
and wildcards ``1.x``, ``1.2.*``, ``*``. Missing parts count as wildcards: ``1.2`` is ``1.2.x``.

Pre-releases follow npm's rule: ``1.3.0-beta.1`` satisfies a constraint only when one of its
comparators names a pre-release of the same ``1.3.0``, so ``^1.2`` never picks a beta by chance.
Pure functions, no I/O: the client picks instances by version with it (``svc@^1.2.endpoint``),
and the bridge reads the constraints of its routes with it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

from . import wire
from .errors import ConfigError

__all__ = ["Constraint", "Version", "parse_constraint", "parse_version"]


@dataclass(frozen=True, slots=True, order=False)
class Version:
    """A parsed SemVer 2.0 version; build metadata is kept but never compared."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...] = ()
    build: str = ""

    def key(self) -> tuple[int, int, int, bool, tuple[tuple[bool, int | str], ...]]:
        """A sort key in SemVer precedence: a release sorts after its pre-releases."""
        # False sorts before True: a pre-release before its release, and numeric identifiers
        # before alphanumeric ones (SemVer §11.4.3).
        pre = tuple((isinstance(p, str), p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, not self.prerelease, pre)

    def __lt__(self, other: Version) -> bool:
        return self.key() < other.key()

    def __le__(self, other: Version) -> bool:
        return self.key() <= other.key()

    def __gt__(self, other: Version) -> bool:
        return self.key() > other.key()

    def __ge__(self, other: Version) -> bool:
        return self.key() >= other.key()

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(str(p) for p in self.prerelease)
        return text + (f"+{self.build}" if self.build else "")


@functools.lru_cache(maxsize=1024)
def parse_version(text: str) -> Version:
    """Parse a full SemVer version (``1.2.3``, ``1.2.3-rc.1+build``); ConfigError if invalid."""
    match = wire.SEMVER_PATTERN.match(text)
    if match is None:
        raise ConfigError(f"{text!r} is not a SemVer version (e.g. '1.2.3')")
    major, minor, patch, pre, build = match.groups()
    prerelease = tuple(int(p) if p.isdigit() else p for p in pre.split(".")) if pre else ()
    return Version(int(major), int(minor), int(patch), prerelease, build or "")


# One comparator: an optional operator, then a version whose missing or wildcard parts are x.
_COMPARATOR = re.compile(
    r"^(?P<op>\^|~|>=|<=|>|<|=)?\s*v?"
    r"(?P<major>\d+|[xX*])(?:\.(?P<minor>\d+|[xX*]))?(?:\.(?P<patch>\d+|[xX*]))?"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
_PRERELEASE_NAMED = re.compile(r"(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)-")
# An operator may be written apart from its version (">= 1.0"); glue them before splitting.
_LOOSE_OPERATOR = re.compile(r"(\^|~|>=|<=|>|<|=)\s+")


@dataclass(frozen=True, slots=True)
class _Bound:
    op: Literal[">=", ">", "<", "<="]
    version: Version

    def holds(self, v: Version) -> bool:
        match self.op:
            case ">=":
                return v >= self.version
            case ">":
                return v > self.version
            case "<":
                return v < self.version
            case "<=":
                return v <= self.version


def _zero_pre(major: int, minor: int, patch: int) -> Version:
    # The lowest version of a release line, pre-releases included: '<2.0.0-0' keeps 2.0.0-beta
    # out of '<2', the way npm writes its upper bounds.
    return Version(major, minor, patch, (0,))


_LOWEST = _zero_pre(0, 0, 0)
# What '<*' and '>*' stand for: '*' is every version, so they are none.
_NOTHING = (_Bound("<", _LOWEST),)


def _comparator(text: str) -> tuple[_Bound, ...]:
    """The bounds one comparator stands for."""
    m = _COMPARATOR.match(text)
    if m is None:
        raise ConfigError(f"{text!r} is not a version constraint")
    op = m["op"] or "="
    parts = [
        int(p) if p is not None and p.isdigit() else None
        for p in (m["major"], m["minor"], m["patch"])
    ]
    # A wildcard makes every later part a wildcard: '1.x.3' is '1.x'.
    for i, part in enumerate(parts):
        if part is None:
            parts[i + 1 :] = [None] * (len(parts) - i - 1)
            break
    major, minor, patch = parts
    pre = tuple(int(p) if p.isdigit() else p for p in m["pre"].split(".")) if m["pre"] else ()
    if pre and patch is None:
        raise ConfigError(f"{text!r}: a pre-release needs a full version")
    if major is None:
        return _NOTHING if op in ("<", ">") else ()
    full = Version(major, minor or 0, patch or 0, pre)
    next_major = _zero_pre(major + 1, 0, 0)
    next_minor = next_major if minor is None else _zero_pre(major, minor + 1, 0)
    # Where the versions a partial '1' or '1.2' stands for end; None for a full version.
    past = None if patch is not None else next_minor

    match op:
        case "=":
            return (_Bound(">=", full), _Bound("<=", full) if past is None else _Bound("<", past))
        case "^":
            # The left-most non-zero part may not change: ^1.2 → <2, ^0.2 → <0.3, ^0.0.3 → <0.0.4.
            if major > 0 or minor is None:
                return (_Bound(">=", full), _Bound("<", next_major))
            if minor > 0 or patch is None:
                return (_Bound(">=", full), _Bound("<", next_minor))
            return (_Bound(">=", full), _Bound("<", _zero_pre(0, 0, patch + 1)))
        case "~":
            return (_Bound(">=", full), _Bound("<", next_minor))
        case ">=":
            return (_Bound(">=", full),)
        case "<":
            # '<1.2' is below every 1.2.0, its pre-releases too; '<1.2.3-rc.1' is exact.
            return (_Bound("<", full if patch is not None else _zero_pre(*_triple(full))),)
        case ">":
            # npm: '>1.2' is '>=1.3.0', the release itself, so it admits no 1.3.0 pre-release.
            return (_Bound(">", full) if past is None else _Bound(">=", Version(*_triple(past))),)
        case _:  # "<="
            return (_Bound("<=", full) if past is None else _Bound("<", past),)


def _triple(v: Version) -> tuple[int, int, int]:
    return (v.major, v.minor, v.patch)


@dataclass(frozen=True, slots=True)
class _Set:
    bounds: tuple[_Bound, ...]
    # Releases whose pre-releases this set admits (npm's rule; see the module docstring).
    pre_releases: frozenset[tuple[int, int, int]]

    def matches(self, v: Version) -> bool:
        if v.prerelease and _triple(v) not in self.pre_releases:
            return False
        return all(b.holds(v) for b in self.bounds)


@dataclass(frozen=True, slots=True)
class Constraint:
    """A parsed version constraint; :meth:`matches` says whether a version satisfies it."""

    text: str
    _sets: tuple[_Set, ...]

    def matches(self, version: Version | str) -> bool:
        """Whether ``version`` satisfies the constraint; an unparseable string never does."""
        if isinstance(version, str):
            try:
                version = parse_version(version)
            except ConfigError:
                return False
        return any(s.matches(version) for s in self._sets)

    def __str__(self) -> str:
        return self.text


@functools.lru_cache(maxsize=256)
def parse_constraint(text: str) -> Constraint:
    """Parse a constraint such as ``^1.2``, ``~1.2.3``, ``>=1.0 <2``, ``1.x``, ``1.2.3``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("a version constraint may not be empty")
    sets = []
    for alternative in text.split("||"):
        words = _LOOSE_OPERATOR.sub(r"\1", alternative.strip()).split()
        if not words:
            raise ConfigError(f"{text!r}: empty alternative around '||'")
        bounds: list[_Bound] = []
        pre: set[tuple[int, int, int]] = set()
        for word in words:
            bounds.extend(_comparator(word))
            named = _PRERELEASE_NAMED.search(word)
            if named:
                pre.add((int(named["major"]), int(named["minor"]), int(named["patch"])))
        sets.append(_Set(tuple(bounds), frozenset(pre)))
    return Constraint(text, tuple(sets))
