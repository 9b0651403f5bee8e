"""The commands that ask and print: ls, info, docs, request, watch, events and saga. Each
connects, asks the registry (or a service, or JetStream) and prints the answer with
:mod:`._output`."""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from collections.abc import Sequence

import anyio
import msgspec
from nats.aio.client import Client as NATS

from .. import _trace, subjects
from .._gather import gather_stats
from ..client import Client
from ..client._registry_api import RegistryApi
from ..client._target import parse_target
from ..errors import (
    ConfigError,
    NoInstanceError,
    RequestTimeoutError,
    ServiceError,
    no_reply,
)
from . import _docs, _hints, _saga, _schema
from ._connect import _with_connection
from ._output import (
    _age,
    _CliError,
    _console,
    _json_lines,
    _print_data,
    _print_event,
    _print_info,
    _print_reply,
    _print_services,
    _say,
    _table,
    _warming,
)
from ._serve import _until_signal


async def _cmd_ls(args: argparse.Namespace) -> int:
    async def run(nc: NATS) -> int:
        registry = RegistryApi(nc, prefix=args.prefix)
        if args.json or _json_lines():
            _print_data(await registry.instances())
        else:
            _print_services(await registry.services())
        return 0

    return await _with_connection(args, run)


async def _cmd_info(args: argparse.Namespace) -> int:
    if not subjects.is_valid_token(args.service):
        raise _CliError(f"{args.service!r} is not a valid service name")

    async def run(nc: NATS) -> int:
        snapshot = await RegistryApi(nc, prefix=args.prefix).instances(args.service)
        if not snapshot.instances:
            if snapshot.warming_up:
                raise _CliError(_warming(snapshot.node))
            known = await _hints.known_services(nc, args.prefix)
            raise _CliError(f"{_hints.unknown_service(args.service, known)}: {_hints.LS}")
        stats = await gather_stats(nc, args.service, 0.3)
        if args.json or _json_lines():
            _print_data(
                {
                    "instances": snapshot.instances,
                    "stats": stats,
                    "node": snapshot.node,
                    "warming_up": snapshot.warming_up,
                }
            )
        else:
            if snapshot.warming_up:
                _console().print(f"[yellow]{_warming(snapshot.node)}[/]")
            _print_info(args.service, snapshot, stats)
        return 0

    return await _with_connection(args, run)


async def _cmd_docs(args: argparse.Namespace) -> int:
    async def run(nc: NATS) -> int:
        document, snapshot = await _docs.asyncapi_document(nc, args.prefix, [args.server])
        if snapshot.warming_up:
            _say(_warming(snapshot.node), logging.WARNING)
        if _json_lines() and args.output is None:
            _print_data(document)  # every line JSON, the document's one too
            return 0
        try:
            _docs.write(document, args.output, args.format)
        except OSError as exc:
            raise _CliError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
        if args.output is not None:
            _say(f"wrote {args.output}: {len(document['operations'])} operations")
        return 0

    return await _with_connection(args, run)


def _parse_payload(args: argparse.Namespace) -> bytes:
    text = sys.stdin.read() if args.payload == "-" else args.payload
    if args.raw or not text:
        return text.encode()
    try:
        return msgspec.json.encode(msgspec.json.decode(text))
    except msgspec.DecodeError as exc:
        raise _CliError(
            f"the payload is not valid JSON ({exc}); quote it like "
            "'{\"id\": 1}', or pass --raw to send it as it is"
        ) from exc


def _parse_headers(pairs: Sequence[str]) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        key, sep, value = pair.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or any(c in pair for c in "\r\n\0"):
            raise _CliError(f"header {pair!r} is not 'Name: value' on one line")
        headers[key] = value
    return headers


async def _cmd_request(args: argparse.Namespace) -> int:
    payload = _parse_payload(args)
    headers = _parse_headers(args.header)
    if args.timeout <= 0:
        raise _CliError("--timeout must be greater than 0")

    select = {}
    for pair in args.select:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _CliError(f"--select {pair!r} is not KEY=VALUE")
        select[key] = value
    if not any(name.lower() == "traceparent" for name in headers):
        # A trace of its own, as an HTTP client's request would start: the lines the service
        # writes about it and this command's error line name the same trace id.
        _trace.current.set(_trace.TraceContext(secrets.token_hex(16), secrets.token_hex(8)))

    async def run(nc: NATS) -> int:
        client = Client(nc, prefix=args.prefix)
        try:
            if not (args.raw or args.no_validate):
                await _check_payload(client, args.subject, payload, select)
            reply = await client.request(
                args.subject,
                payload,
                timeout_s=args.timeout,
                headers=headers or None,
                select=select or None,
                strategy=args.strategy,
                key=args.key,
            )
        except ServiceError as exc:
            raise _CliError(
                f"{args.subject} replied with error {exc.code}: {exc.description}"
            ) from exc
        except NoInstanceError as exc:
            known = await _hints.known_services(nc, args.prefix)
            hint = _hints.unserved(args.subject, parse_target(args.subject), known)
            raise _CliError(hint or str(exc)) from exc
        except RequestTimeoutError as exc:
            # The library's words, with the option that gives a call more time here.
            target = parse_target(args.subject)
            within = f"within {args.timeout:g} s"
            error = no_reply(
                args.subject,
                target.service,
                within,
                subject=target.subject,
                more_time="raise --timeout",
            )
            raise _CliError(str(error)) from exc
        finally:
            if args.stats:
                _print_data(client.stats(), file=sys.stderr)
            await client.aclose()
        _print_reply(reply.data)
        return 0

    return await _with_connection(args, run)


async def _check_payload(
    client: Client, subject: str, payload: bytes, select: dict[str, str]
) -> None:
    """Refuse (one line, nothing sent) a payload that matches the request schema of no
    instance the call may reach; a service without schemas is not asked about."""
    try:
        target = parse_target(subject)
    except ConfigError:
        return  # the request itself says what is wrong with the subject
    if target.service is None:
        return
    schemas = _schema.request_schemas(await client.view(target.service), target, select)
    if not schemas:
        return
    try:
        problem = _schema.payload_problem(msgspec.json.decode(payload or b"null"), schemas)
    except ValueError as exc:
        _say(f"{subject}'s request schema cannot be used ({exc}); sending without checking")
        return
    if problem is not None and not payload:
        raise _CliError(_schema.payload_needed(subject, schemas))
    if problem is not None:
        raise _CliError(
            f"{problem} (against {subject}'s request schema; nothing was sent: fix the "
            "payload, or pass --no-validate to send it anyway)"
        )


async def _cmd_events(args: argparse.Namespace) -> int:
    from . import _events

    async def run(nc: NATS) -> int:
        json_out = args.json or _json_lines()
        return await _events.run(nc, args, json_out=json_out, out=sys.stdout)

    return await _with_connection(args, run)


async def _cmd_watch(args: argparse.Namespace) -> int:
    async def run(nc: NATS) -> int:
        registry = RegistryApi(nc, prefix=args.prefix)
        known = await _hints.known_services(nc, args.prefix) if args.service else None
        if known is not None and args.service not in known:
            # A typo would otherwise be watched in silence for ever; the service may also
            # start later, so the watch goes on. Said under --json too: it goes to stderr.
            _say(
                f"{_hints.unknown_service(args.service, known)}: watching for it on "
                f"{args.server} anyway; Ctrl-C stops",
                logging.WARNING,
            )
        elif not args.json:
            _say(f"watching {args.service or 'all services'} on {args.server}; Ctrl-C stops")
        async with anyio.create_task_group() as tg:

            async def stream() -> None:
                async for event in registry.watch(args.service):
                    if args.json or _json_lines():
                        print(msgspec.json.encode(event).decode(), flush=True)
                    else:
                        _print_event(event)

            async def stop_on_signal() -> None:
                await _until_signal()
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            tg.start_soon(stop_on_signal)
        return 0

    return await _with_connection(args, run, long_lived=True)


async def _cmd_saga(args: argparse.Namespace) -> int:
    if args.action == "show" and args.id is None:
        raise _CliError("natsreg saga show needs the saga's id (natsreg saga ls lists them)")
    if args.action == "ls" and args.id is not None:
        raise _CliError("natsreg saga ls takes no saga id (natsreg saga show ID shows one)")
    if args.limit < 1:
        raise _CliError(f"--limit must be at least 1, got {args.limit}")

    async def run(nc: NATS) -> int:
        if args.action == "show":
            state = await _saga.read_saga(nc, args.prefix, args.id)
            if args.json or _json_lines():
                _print_data(state)
            else:
                _saga.render_saga(state, _console(), _table)
            return 0
        states = await _saga.read_sagas(nc, args.prefix, running=args.running, limit=args.limit)
        if args.json or _json_lines():
            _print_data(states)
        else:
            _saga.render_sagas(states, _console(), _table, _age, running=args.running)
        return 0

    return await _with_connection(args, run)
