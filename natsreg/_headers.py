"""nats-py's parser of received header lines, with each header name read once, not per message.

Every request a service receives carries natsreg's headers (its budget and request id, and
inside a trace a ``traceparent``), and nats-py parses them in Python on receipt
(``Client._parse_header_lines``): for each line it decodes the name and then tests each of its
characters for whitespace in a generator, about 10k instructions a line, the most of what a
``traceparent`` costs a responder (bench/RESULTS.md, "Tracing"). Header names repeat from one
message to the next, so :func:`parse_header_lines` remembers what it made of each name (the
key, or that the line is skipped) and does the rest exactly as nats-py does: the same dict for
every input, which tests/test_headers.py checks against the installed nats-py's own parser.

:func:`install` sets it on one connection, which then parses every message it receives with
it (the lookup is ``self._parse_header_lines``). The names remembered are bounded in number
and length: any publisher can send names of its choosing, and those past the bound are read
the slow way, as before.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS

__all__ = ["install", "parse_header_lines"]

_CRLF = b"\r\n"
# Enough for every name a deployment uses; a name is at most this long to be remembered.
_MAX_NAMES = 512
_MAX_NAME_BYTES = 64
# name as received (before the colon) -> its key, or None for a line nats-py skips.
_names: dict[bytes, str | None] = {}
_UNKNOWN = object()


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """What ``nats.aio.client.Client._parse_header_lines(raw)`` returns, in fewer steps."""
    out: dict[str, str] = {}
    names = _names
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:  # an empty line too
            continue
        key = names.get(name, _UNKNOWN)
        if key is _UNKNOWN:
            key = _key(name)
        if key is not None:
            out[key] = value.strip().decode("utf-8", "replace")  # type: ignore[index]
    return out


def _key(name: bytes) -> str | None:
    # nats-py's rule: an ASCII name, stripped, with no whitespace inside.
    try:
        key: str | None = name.strip().decode("ascii")
    except UnicodeDecodeError:
        key = None
    else:
        if any(c.isspace() for c in key):  # type: ignore[union-attr]
            key = None
    if len(_names) < _MAX_NAMES and len(name) <= _MAX_NAME_BYTES:
        _names[name] = key
    return key


def install(nc: NATS) -> None:
    """Make ``nc`` parse received headers with :func:`parse_header_lines`; nothing else
    about it changes. Does nothing on a nats-py that has no such parser to replace."""
    if callable(getattr(nc, "_parse_header_lines", None)):
        nc._parse_header_lines = parse_header_lines  # type: ignore[method-assign]
