"""``natsreg events ls | dead TYPE | replay TYPE --dead``: what the CLI shows of durable events
and does with dead letters. _args parses the arguments and _lookups connects; this module does
the rest.
"""

from __future__ import annotations

import argparse
import base64
import logging
from typing import IO, Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from .. import subjects
from ..client._registry_api import RegistryApi
from ..errors import ConfigError, RequestError
from ..events._dead import MAX_LIMIT, DeadLetter, TypeFigures, dead_letters, overview, replay
from ..events._streams import unavailable
from ._output import _console, _say, _table

__all__ = ["run"]


async def run(nc: NATS, args: argparse.Namespace, *, json_out: bool, out: IO[str]) -> int:
    """Run ``natsreg events <action>`` on ``nc``; the exit code."""
    try:
        return await _run(nc, args, json_out=json_out, out=out)
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        # No JetStream, no quorum, no permission: one line that says so, not a traceback.
        raise unavailable(exc) from exc


async def _run(nc: NATS, args: argparse.Namespace, *, json_out: bool, out: IO[str]) -> int:
    js = nc.jetstream(timeout=5.0)
    if args.action == "ls":
        if args.type is not None:
            raise ConfigError("natsreg events ls takes no event type (natsreg events dead TYPE)")
        try:
            figures = await overview(js, args.prefix)
        except NotFoundError:
            figures = []
        emitters = await _emitters(nc, args.prefix)
        known = {f.event_type for f in figures}
        figures += [TypeFigures(t) for t in emitters if t not in known]
        figures.sort(key=lambda f: f.event_type)
        _emit(
            json_out,
            out,
            [_figures_json(f, emitters) for f in figures],
            lambda: _print_figures(figures, emitters),
        )
        return 0
    if args.type is None:
        raise ConfigError(f"natsreg events {args.action} needs an event type, e.g. user.created")
    subjects.check_event_type(args.type)
    if args.service is not None and not subjects.is_valid_token(args.service):
        raise ConfigError(f"--service {args.service!r} is not a service name")
    if not 1 <= args.limit <= MAX_LIMIT:
        raise ConfigError(f"--limit must be between 1 and {MAX_LIMIT}")
    try:
        letters = await dead_letters(
            js, args.prefix, args.type, service=args.service, limit=args.limit
        )
    except NotFoundError:
        letters = []
    if args.action == "dead":
        _emit(json_out, out, [_letter_json(x) for x in letters], lambda: _print_letters(letters))
        return 0
    if not args.dead:
        raise ConfigError(
            "natsreg events replay sends dead letters through again: pass --dead "
            "(natsreg events dead TYPE lists them first)"
        )
    count = await replay(js, args.prefix, letters)
    if json_out:
        print(msgspec.json.encode({"replayed": count}).decode(), file=out)
    else:
        print(f"replayed {count} dead {args.type} event(s)", file=out)
    return 0


async def _emitters(nc: NATS, prefix: str) -> dict[str, list[str]]:
    """The services that declare they emit each event type, as the registry knows them
    (``emits=`` in their announcement); empty, with a warning, when no registry answers."""
    try:
        listing = await RegistryApi(nc, prefix=prefix).services()
    except RequestError as exc:
        _say(f"emitting services unknown: {exc}", logging.WARNING)
        return {}
    found: dict[str, set[str]] = {}
    for service in listing.services:
        for event_type in service.emits:
            found.setdefault(event_type, set()).add(service.name)
    return {t: sorted(names) for t, names in found.items()}


def _emit(json_out: bool, out: IO[str], value: Any, table: Any) -> None:
    if json_out:
        print(msgspec.json.encode(value).decode(), file=out)
    else:
        table()


def _figures_json(figures: TypeFigures, emitters: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "type": figures.event_type,
        "stored": figures.stored,
        "emitters": emitters.get(figures.event_type, []),
        "consumers": [
            {
                "service": c.service,
                "mode": c.mode,
                "pending": c.pending,
                "ack_pending": c.ack_pending,
                "dead": c.dead,
            }
            for c in figures.services.values()
        ],
    }


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    body: Any
    try:
        body = msgspec.json.decode(letter.data) if letter.data else None
    except msgspec.DecodeError:
        body = {"base64": base64.b64encode(letter.data).decode()}
    return {
        "seq": letter.seq,
        "service": letter.service,
        "type": letter.event_type,
        "event_id": letter.event_id,
        "deliveries": letter.deliveries,
        "error": letter.error,
        "body": body,
    }


def _print_figures(figures: list[TypeFigures], emitters: dict[str, list[str]]) -> None:
    console = _console()
    if not figures:
        console.print("no events yet (natsreg.Events(nc).emit(...) stores the first)")
        return
    table = _table("TYPE", "STORED", "EMITTED BY", "SERVICE", "MODE", "LAG", "UNACKED", "DEAD")
    for f in figures:
        emitted_by = ", ".join(emitters.get(f.event_type, [])) or "-"
        if not f.services:
            table.add_row(f.event_type, str(f.stored), emitted_by, "-", "-", "-", "-", "-")
        for c in f.services.values():
            dead = f"[red]{c.dead}[/]" if c.dead else "0"
            table.add_row(
                f.event_type,
                str(f.stored),
                emitted_by,
                c.service,
                c.mode,
                str(c.pending + c.ack_pending),
                str(c.ack_pending),
                dead,
            )
    console.print(table)


def _print_letters(letters: list[DeadLetter]) -> None:
    from rich.markup import escape

    console = _console()
    if not letters:
        console.print("no dead letters")
        return
    table = _table("SEQ", "SERVICE", "EVENT ID", "DELIVERIES", "LAST ERROR", "BODY")
    for x in letters:
        # What a failing event and its handler's error say is shown, never read as markup.
        body = escape(x.data[:80].decode(errors="replace"))
        error = escape(x.error)
        table.add_row(str(x.seq), x.service, str(x.event_id), str(x.deliveries), error, body)
    console.print(table)
