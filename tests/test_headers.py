"""natsreg's parser of received header lines (natsreg/_headers.py): what nats-py's own makes
of every input, and used by the connections natsreg is given."""

from __future__ import annotations

import random

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import natsreg
from natsreg import _headers
from natsreg._headers import parse_header_lines
from natsreg.client._mux import HeaderLines

nats_py_parse = NATS._parse_header_lines

TRICKY = [
    b"",
    b"\r\n",
    b"\r\n\r\n",
    b"A: 1",
    b"A: 1\r\nB: 2\r\n\r\n",
    b"A:1\r\nB:\t2 \r\nC:\r\nD:  \r\n",
    b"A: 1\r\nA: 2",  # the last one wins
    b"no colon here\r\nA: 1",
    b": empty name\r\n :x",
    b"  Spaced  : v\r\n\tTab: v",
    b"Has Space: v\r\nHas\x0bVT: v\r\nHas\x1cFS: v\r\n\x1cLead: v\r\nTrail\x1f: v",
    b"\xff\xfe: v\r\nN\xc3\xa9: v",  # a name that is not ASCII is skipped
    b"A: caf\xc3\xa9\r\nB: \xff\xfe bad utf-8",
    b"A: x: y: z\r\nB:: v",
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
    b"A: 1\nB: 2\rC: 3\r\nD: 4",  # a lone LF or CR is no line break
    b"X" * 100 + b": long name\r\n" + b"Y" * 64 + b": v",
]

pure = pytest.mark.pure


@pytest.fixture(autouse=True)
def no_names_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_headers, "_names", {})


@pure
@pytest.mark.parametrize("raw", TRICKY)
def test_every_tricky_block_parses_as_nats_py_parses_it(raw: bytes) -> None:
    for _ in range(2):  # the second time from the names remembered
        assert parse_header_lines(raw) == nats_py_parse(raw)


@pure
def test_random_blocks_parse_as_nats_py_parses_them() -> None:
    rng = random.Random(10)
    pieces = [b"\r\n", b":", b": ", b" ", b"\t", b"\x0b", b"\x1c", b"\xff", b"\xc3\xa9", b"a", b"Z"]
    pieces += [b"-", b"traceparent", b"Natsreg-Budget-Ms", b"0", b"\r", b"\n"]
    for _ in range(3000):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 24)))
        assert parse_header_lines(raw) == nats_py_parse(raw), raw


@pure
def test_names_remembered_are_bounded_and_the_rest_still_parse() -> None:
    # Any publisher chooses the names: a flood of new ones fills the memory only so far.
    for i in range(_headers._MAX_NAMES + 300):
        raw = f"Flood-{i}: {i}\r\n".encode()
        assert parse_header_lines(raw) == {f"Flood-{i}": str(i)}
    assert len(_headers._names) == _headers._MAX_NAMES
    long_name = b"L" * (_headers._MAX_NAME_BYTES + 1)
    assert parse_header_lines(long_name + b": v") == {long_name.decode(): "v"}
    assert long_name not in _headers._names


async def test_a_client_makes_its_connection_parse_headers_with_natsregs_parser(
    nc: NATS, unique: str
) -> None:
    # Pins what install() relies on: the installed nats-py parses a received message's
    # headers through the connection's own _parse_header_lines.
    natsreg.Client(nc)
    name = f"X-Seen-{unique}"[: _headers._MAX_NAME_BYTES]
    sub = await nc.subscribe(f"headers-{unique}")
    await nc.publish(f"headers-{unique}", b"", headers={name: HeaderLines("1\r\nBad Name: 2")})
    msg: Msg = await sub.next_msg(timeout=2)
    assert msg.headers == {name: "1"}
    assert _headers._names[name.encode()] == name  # read by natsreg's parser
