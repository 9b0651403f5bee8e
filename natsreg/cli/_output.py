"""What the CLI writes: its lines for the user, its answers as JSON or tables, and the one
error it expects (:class:`_CliError`, said in one line).

Under ``--log-format json`` every line is one JSON value; main() switches that on once, through
:func:`_use_json_lines`, and everything here asks :func:`_json_lines` at the time it writes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime
from typing import IO, TYPE_CHECKING

import msgspec

from .. import wire
from . import _schema

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


# The CLI's one logger, whichever module writes: users filter on its name.
log = logging.getLogger("natsreg.cli")


class _CliError(Exception):
    """A failure the user can act on: printed as one line, exit code 1."""


# Whether every line this command writes is JSON (--log-format json); set by main(). Read
# through _json_lines() only, so that no module holds a copy taken before main() set it.
_json = False


def _use_json_lines(on: bool) -> None:
    global _json
    _json = on


def _json_lines() -> bool:
    return _json


def _say(text: str, level: int = logging.INFO) -> None:
    """One line for the user on stderr: ``natsreg: text``, or a log record (logger
    natsreg.cli, shown whatever -v says) under --log-format json."""
    if _json_lines():
        log.log(level, "%s", text)
        return
    # A worker's lines are told apart from its supervisor's and its siblings'.
    worker = os.environ.get("NATSREG_WORKER")
    # One write, newline included: natsreg up and its programs share a stderr, and print()'s
    # separate write of the newline lets another process' line land between the two.
    sys.stderr.write(f"natsreg{f'[{worker}]' if worker else ''}: {text}\n")
    sys.stderr.flush()


def _print_data(value: object, file: IO[str] | None = None) -> None:
    """A command's answer as JSON: indented, or on one line under --log-format json."""
    encoded = msgspec.json.encode(value)
    print(
        (encoded if _json_lines() else msgspec.json.format(encoded, indent=2)).decode(), file=file
    )


def _print_reply(data: bytes) -> None:
    with suppress(msgspec.DecodeError, UnicodeDecodeError):
        if data.strip():
            print(msgspec.json.format(data, indent=0 if _json_lines() else 2).decode())
            return
    if _json_lines():
        # A reply that is not JSON (or is empty) becomes a JSON string: the line still parses.
        print(msgspec.json.encode(data.decode(errors="replace")).decode())
    else:
        sys.stdout.buffer.write(data + b"\n")


def _age(seconds: float) -> str:
    return f"{seconds:.1f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def _table(*columns: str) -> Table:
    from rich.table import Table  # rich loads in ~50 ms; only the commands that print tables pay

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column)
    return table


def _console() -> Console:
    from rich.console import Console

    # Piped output is for grep and less: full rows, no wrapping at 80 columns.
    return Console(width=None if sys.stdout.isatty() else 200)


_HEALTH_STYLE = {"passing": "green", "warning": "yellow", "critical": "red"}


def _warming(node: str) -> str:
    # Warm nodes answer first (docs/protocol.md, "Warm-up"): this one answered because none is
    # warm yet.
    return (
        f"no registry node is warm yet: node {node} is still hearing every instance "
        "re-announce, so its answer may be incomplete; ask again in a second"
    )


def _print_services(listing: wire.ServiceList) -> None:
    console = _console()
    if listing.warming_up:
        console.print(f"[yellow]{_warming(listing.node)}[/]")
    if listing.mass_expiry is not None:
        mass = listing.mass_expiry
        console.print(
            f"[red]mass expiry: {mass.lost} of {mass.before} instances went silent at once "
            f"{mass.since_s:.0f}s ago (a crash wave, or a network cut); they were removed, "
            "and this clears when capacity is back[/]"
        )
    if not listing.services:
        if not listing.warming_up:
            console.print("no services are registered")
        return
    table = _table(
        "SERVICE", "VERSION", "KIND", "INSTANCES", "HEALTH", "ENDPOINTS", "LAST HEARTBEAT"
    )
    for s in listing.services:
        health = " ".join(
            f"[{style}]{s.health[h]} {h}[/]"
            for h, style in _HEALTH_STYLE.items()
            if s.health.get(h)
        )
        last = "-" if s.kind == "micro" else _age(s.last_heard_s)
        table.add_row(
            s.name, s.version, s.kind, str(s.instances), health, ", ".join(s.endpoints), last
        )
    console.print(table)


def _print_info(service: str, snapshot: wire.Snapshot, stats: list[wire.SrvStats]) -> None:
    console = _console()
    first = snapshot.instances[0]
    console.print(f"[bold]{service}[/]  {first.description}")
    instances = _table(
        "INSTANCE",
        "VERSION",
        "HEALTH",
        "HOST",
        "PID",
        "IN FLIGHT",
        "SERVED",
        "ERRORS",
        "LAST HEARTBEAT",
        "METADATA",
    )
    # The heartbeat's figures are up to a heartbeat old; the stats just asked for are not,
    # and the endpoint table below sums them: both tables then tell of the same moment.
    live = {
        reply.id: (
            sum(e.num_requests for e in reply.endpoints),
            sum(e.num_errors for e in reply.endpoints),
        )
        for reply in stats
    }
    for i in sorted(snapshot.instances, key=lambda i: (i.version, i.id)):
        meta = ", ".join(f"{k}={v}" for k, v in sorted(i.metadata.items()))
        served, errors = live.get(i.id, (i.load.served, i.load.errors))
        instances.add_row(
            i.id,
            i.version,
            f"[{_HEALTH_STYLE[i.health]}]{i.health}[/]",
            i.host,
            str(i.pid or "-"),
            str(i.load.in_flight),
            str(served),
            str(errors),
            "-" if i.kind == "micro" else _age(i.age_s),
            meta,
        )
    console.print(instances)
    endpoints = _table(
        "ENDPOINT", "SUBJECT", "QUEUE GROUP", "REQUESTS", "ERRORS", "AVG", "LAST ERROR"
    )
    totals: dict[str, list[int]] = {}
    last_errors: dict[str, str] = {}
    for reply in stats:
        for stat in reply.endpoints:
            total = totals.setdefault(stat.name, [0, 0, 0])
            total[0] += stat.num_requests
            total[1] += stat.num_errors
            total[2] += stat.processing_time
            if stat.last_error:
                last_errors[stat.name] = stat.last_error
    seen = set()
    for e in [*first.endpoints, *(e for i in snapshot.instances for e in i.endpoints)]:
        if e.name in seen:
            continue
        seen.add(e.name)
        requests, errors, time_ns = totals.get(e.name, [0, 0, 0])
        avg = f"{time_ns / requests / 1e6:.2f} ms" if requests else "-"
        endpoints.add_row(
            e.name,
            e.subject,
            e.queue_group,
            str(requests),
            str(errors),
            avg,
            last_errors.get(e.name, ""),
        )
    console.print(endpoints)
    _print_schemas(console, snapshot.instances)
    _print_consumed_events(console, snapshot.instances)


def _print_schemas(console: Console, instances: Sequence[wire.InstanceView]) -> None:
    """Each typed endpoint's request and response schema, one line each (one row per
    endpoint and distinct schemas: versions may differ)."""
    rows: dict[tuple[str, str, str], None] = {}
    for i in instances:
        for e in i.endpoints:
            if e.schemas is not None:
                request = _schema.render(e.schemas.request)
                rows[(e.name, request, _schema.render(e.schemas.response))] = None
    if not rows:
        return
    table = _table("ENDPOINT", "REQUEST", "RESPONSE")
    for row in sorted(rows):
        table.add_row(*row)
    console.print(table)


def _print_consumed_events(console: Console, instances: Sequence[wire.InstanceView]) -> None:
    """The event types the instances consume, and how, and those they emit (docs/events.md)."""
    modes: dict[str, str] = {}
    for i in instances:
        for interest in i.events:
            modes[interest.type] = (
                "broadcast" if interest.broadcast else "ordered" if interest.ordered else "balanced"
            )
    if modes:
        consumed = _table("CONSUMES EVENT", "MODE")
        for event_type, mode in sorted(modes.items()):
            consumed.add_row(event_type, mode)
        console.print(consumed)
    emitted = sorted({t for i in instances for t in i.emits})
    if emitted:
        table = _table("EMITS EVENT")
        for event_type in emitted:
            table.add_row(event_type)
        console.print(table)


def _print_event(event: wire.Event) -> None:
    i = event.instance
    when = datetime.now().strftime("%H:%M:%S")
    detail = {"up": "", "down": f"({event.reason})", "changed": "", "health": f"-> {i.health}"}[
        event.kind
    ]
    print(f"{when} {event.kind:<7} {i.name}@{i.version} {i.id} {detail}".rstrip(), flush=True)
