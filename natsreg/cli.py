"""``natsreg``: run the system, look at it, call it.

The CLI only parses arguments, connects, and hands over to the roles; every failure it
expects ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import logging
import os
import secrets
import shlex
import signal
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, suppress
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeAlias
from urllib.parse import quote, urlsplit

import anyio
import msgspec
import nats
from nats.aio.client import Client as NATS

from . import __version__, _docs_cli, _origin, _saga_cli, _schema_cli, _trace, logs, subjects, wire
from ._gather import gather_stats
from ._server import NatsServer, ServerError, default_store_dir, is_listening
from .client import STRATEGIES, Client
from .client._registry_api import RegistryApi
from .client._target import parse_target
from .errors import ConfigError, NatsregError, ServiceError
from .registry import Registry
from .registry._view import MAX_INSTANCES

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from ._probes import Probed
    from .bridge import BridgeConfig
    from .permissions import Role

__all__ = ["main"]

DEFAULT_URL = "nats://127.0.0.1:4222"
EXIT_FAILURE = 1
EXIT_USAGE = 2

log = logging.getLogger("natsreg.cli")

# Whether every line this command writes is JSON (--log-format json); set by main().
_json_lines = False


class _CliError(Exception):
    """A failure the user can act on: printed as one line, exit code 1."""


# -- arguments ---------------------------------------------------------------------------------


# What add_subparsers returns; named once for the builders below.
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one JSON line too under --log-format json
    (its subcommands' parsers are of the same class)."""

    def error(self, message: str) -> NoReturn:
        if _json_lines:
            log.error("%s: %s (see %s --help)", self.prog, message, self.prog)
            self.exit(EXIT_USAGE)
        super().error(message)


def _parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser: argparse.ArgumentParser = _Parser(
        prog="natsreg", description="Service discovery and RPC for microservices on NATS."
    )
    parser.add_argument("--version", action="version", version=f"natsreg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_up,
        _add_run,
        _add_registry,
        _add_bridge,
        _add_lookups,
        _add_request,
        _add_watch,
        _docs_cli.add_parser,
        _add_events,
        _add_saga,
    ):
        add(commands, common)
    _add_auth(commands)
    return parser


def _common_options() -> argparse.ArgumentParser:
    """The options every command that connects to NATS takes."""
    common = argparse.ArgumentParser(add_help=False)
    conn = common.add_argument_group("connection")
    conn.add_argument(
        "-s",
        "--server",
        default=os.environ.get("NATS_URL", DEFAULT_URL),
        help="NATS URL (default: $NATS_URL or %(default)s)",
    )
    conn.add_argument(
        "--prefix",
        default=os.environ.get("NATSREG_PREFIX", subjects.DEFAULT_PREFIX),
        help="subject prefix of natsreg's control traffic (default: %(default)s)",
    )
    conn.add_argument("--token", default=os.environ.get("NATS_TOKEN"), help="auth token")
    conn.add_argument("--user", default=os.environ.get("NATS_USER"), help="user name")
    conn.add_argument("--password", default=os.environ.get("NATS_PASSWORD"), help="password")
    conn.add_argument("--creds", default=os.environ.get("NATS_CREDS"), help="credentials file")
    conn.add_argument(
        "--inbox-prefix",
        default=os.environ.get("NATS_INBOX_PREFIX"),
        metavar="PREFIX",
        help="where replies come back (default: "
        "$NATS_INBOX_PREFIX or _INBOX); with 'natsreg auth' permissions, "
        "_INBOX_<user>",
    )
    conn.add_argument("--tls-ca", help="CA certificate file to verify the server")
    conn.add_argument("--tls-cert", help="client certificate file")
    conn.add_argument("--tls-key", help="client key file")
    _log_options(common)
    return common


def _log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=os.environ.get(logs.ENV, "text"),
        help="json: every line this command writes is one JSON value, its log lines "
        f"objects with time, level, logger, message... (default: ${logs.ENV} or text)",
    )


def _add_up(commands: _Commands, common: argparse.ArgumentParser) -> None:
    up = commands.add_parser(
        "up",
        parents=[common],
        help="run NATS (embedded if none is reachable), a registry and the HTTP bridge",
        description="Start a nats-server when nothing listens at --server (a local URL), a "
        "registry node, the HTTP bridge, and any --with programs; Ctrl-C stops "
        "them all.",
    )
    up.add_argument(
        "--with",
        dest="programs",
        action="append",
        default=[],
        metavar="CMD",
        help="also run CMD with NATS_URL set: MODULE:ATTR runs 'natsreg run MODULE:ATTR', "
        "a .py file runs with this Python; repeatable",
    )
    up.add_argument("--no-bridge", action="store_true", help="do not serve the HTTP bridge")
    up.add_argument(
        "--store-dir",
        default=os.environ.get("NATSREG_STORE_DIR"),
        metavar="DIR",
        help="where the embedded nats-server keeps JetStream's files, the durable events "
        "(default: $NATSREG_STORE_DIR, else $XDG_STATE_HOME/natsreg/jetstream or "
        "~/.local/state/natsreg/jetstream)",
    )
    _http_option(
        up, "the registry node (and --with MODULE:ATTR services, on free ports)", "127.0.0.1:0"
    )
    _registry_options(up)
    _bridge_options(up)


def _add_run(commands: _Commands, common: argparse.ArgumentParser) -> None:
    run = commands.add_parser(
        "run",
        parents=[common],
        help="serve a natsreg.Service: natsreg run MODULE:ATTR",
        description="Import MODULE from the current folder, announce the natsreg.Service "
        "named ATTR and serve it until SIGINT or SIGTERM, then drain and say goodbye.",
    )
    run.add_argument("target", metavar="MODULE:ATTR", help="e.g. user_service:svc")
    _worker_options(run)
    _http_option(run, "the service (worker N of --workers: PORT + N - 1)")
    run.add_argument(
        "--no-uvloop",
        action="store_true",
        help="run on asyncio's own event loop even where uvloop is installed",
    )
    run.add_argument(
        "--reload",
        action="store_true",
        help="replace the workers when a .py file under the current folder changes (development)",
    )


def _http_option(parser: argparse.ArgumentParser, what: str, default: str | None = None) -> None:
    parser.add_argument(
        "--http",
        default=default,
        metavar="HOST:PORT",
        help=f"serve /metrics, /healthz and /readyz for {what} here (':PORT': every "
        "interface; port 0: a free one, printed)" + (f" (default: {default})" if default else ""),
    )


def _worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N processes under a supervisor that restarts any that dies; "
        "SIGHUP replaces them one by one (default: 1)",
    )


def _add_registry(commands: _Commands, common: argparse.ArgumentParser) -> None:
    registry = commands.add_parser(
        "registry",
        parents=[common],
        help="run a registry node ('registry nodes': list the running ones)",
    )
    registry.add_argument(
        "action",
        nargs="?",
        choices=["nodes"],
        help="'nodes': list the registry nodes on --prefix and whether each is warm, "
        "instead of running one",
    )
    _registry_options(registry)
    registry.add_argument(
        "--shard",
        action="store_true",
        help="hold only this node's share of the services, split with the other --shard "
        "nodes on the prefix (each service on 2 of them); for fleets one node cannot hold",
    )
    _http_option(registry, "the node")
    registry.add_argument(
        "--system-server",
        default=os.environ.get("NATSREG_SYSTEM_URL"),
        metavar="URL",
        help="a NATS URL with system-account credentials (nats://user:pass@host:port): "
        "read disconnect advisories, so a crashed instance is removed at once",
    )
    registry.add_argument(
        "--system-creds", metavar="FILE", help="credentials file for --system-server"
    )


def _add_bridge(commands: _Commands, common: argparse.ArgumentParser) -> None:
    bridge = commands.add_parser(
        "bridge",
        parents=[common],
        help="serve HTTP clients: /<service>/<endpoint> -> NATS",
        description="An HTTP bridge: POST /user-service/users sends a request to "
        "user-service.users. See docs/operations.md for routes, limits and auth.",
    )
    _bridge_options(bridge)
    _worker_options(bridge)


def _add_lookups(commands: _Commands, common: argparse.ArgumentParser) -> None:
    ls = commands.add_parser("ls", parents=[common], help="list services and their instances")
    ls.add_argument("--json", action="store_true", help="print the registry's answer as JSON")

    info = commands.add_parser(
        "info", parents=[common], help="one service: instances, endpoints, metadata, stats"
    )
    info.add_argument("service")
    info.add_argument("--json", action="store_true", help="print JSON")


def _add_request(commands: _Commands, common: argparse.ArgumentParser) -> None:
    request = commands.add_parser(
        "request",
        parents=[common],
        help="send a request and print the reply",
        description="Send PAYLOAD (JSON, unless --raw) to SUBJECT and print the reply.",
    )
    request.add_argument(
        "subject",
        help="e.g. user-service.users, or with a version constraint: 'user-service@^1.2.users'",
    )
    request.add_argument(
        "payload", nargs="?", default="", help="JSON payload; '-' reads standard input"
    )
    request.add_argument("--timeout", type=float, default=5.0, help="seconds (default: 5)")
    request.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="K:V",
        help="a header to send; repeatable",
    )
    request.add_argument(
        "--raw", action="store_true", help="send the payload as it is (not checked)"
    )
    request.add_argument(
        "--no-validate",
        action="store_true",
        help="send even if the payload does not match the endpoint's request schema",
    )
    request.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="K=V",
        help="only instances whose metadata has K=V; repeatable",
    )
    request.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="auto",
        help="how to choose an instance (default: %(default)s)",
    )
    request.add_argument("--key", help="the key of --strategy sticky")
    request.add_argument(
        "--stats",
        action="store_true",
        help="print the client's stats (instances, breakers) to stderr",
    )


def _add_watch(commands: _Commands, common: argparse.ArgumentParser) -> None:
    watch = commands.add_parser("watch", parents=[common], help="stream registry changes")
    watch.add_argument("service", nargs="?", help="only this service")
    watch.add_argument("--json", action="store_true", help="one JSON event per line")


def _add_saga(commands: _Commands, common: argparse.ArgumentParser) -> None:
    saga = commands.add_parser("saga", help="read sagas: their steps and history (docs/sagas.md)")
    actions = saga.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", parents=[common], help="one saga's steps and history")
    show.add_argument("id", help="the saga's id")
    show.add_argument("--json", action="store_true", help="print the stored state as JSON")
    ls = actions.add_parser("ls", parents=[common], help="the sagas written last")
    ls.add_argument("--running", action="store_true", help="only sagas still in progress")
    ls.add_argument(
        "--limit", type=int, default=20, help="how many sagas to list (default: %(default)s)"
    )
    ls.add_argument("--json", action="store_true", help="print the stored states as JSON")


def _add_events(commands: _Commands, common: argparse.ArgumentParser) -> None:
    events = commands.add_parser(
        "events",
        parents=[common],
        help="durable events: types, lag, dead letters ('events ls', 'events dead TYPE')",
        description="ls: every event type with its consuming services, their lag and dead "
        "letters; dead TYPE: the events a service failed on at every delivery, with the last "
        "error; replay TYPE --dead: send them through again (to the service that failed only).",
    )
    events.add_argument("action", choices=["ls", "dead", "replay"])
    events.add_argument("type", nargs="?", metavar="TYPE", help="an event type: user.created")
    events.add_argument(
        "--dead", action="store_true", help="replay: the dead letters (required, to be explicit)"
    )
    events.add_argument("--service", help="dead, replay: only this service's dead letters")
    events.add_argument(
        "--limit",
        type=int,
        default=100,
        help="dead, replay: at most this many, oldest first (default: %(default)s; max 10000)",
    )
    events.add_argument("--json", action="store_true", help="print JSON")


def _add_auth(commands: _Commands) -> None:
    auth = commands.add_parser(
        "auth",
        help="generate nats-server users and permissions for natsreg roles",
        description="Generate the nats-server authorization for natsreg roles: each service "
        "may speak only for its own name and serve only its own endpoints, a "
        "caller may only call (docs/security.md). USER:SVC,SVC names a user and "
        "the services it calls.",
    )
    auth.add_argument(
        "--registry",
        action="append",
        default=[],
        metavar="USER",
        help="a registry node's user; repeatable",
    )
    auth.add_argument(
        "--bridge",
        action="append",
        default=[],
        metavar="USER[:SVC,...]",
        help="an HTTP bridge's user (calls every service unless listed)",
    )
    auth.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="USER",
        help="a CLI user: ls, info, watch, request to every service",
    )
    auth.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="NAME[:SVC,...]",
        help="a service (its user has its name) and the services it calls",
    )
    auth.add_argument(
        "--caller",
        action="append",
        default=[],
        metavar="USER:SVC[,SVC...]",
        help="a program that calls these services",
    )
    auth.add_argument(
        "--coordinator",
        action="append",
        default=[],
        metavar="USER:SVC[,SVC...]",
        help="a program that runs sagas calling these services (docs/sagas.md)",
    )
    auth.add_argument(
        "--events",
        action="store_true",
        help="the --service and --caller users also emit durable events, and the services "
        "consume them (docs/events.md)",
    )
    auth.add_argument(
        "--prefix",
        default=os.environ.get("NATSREG_PREFIX", subjects.DEFAULT_PREFIX),
        help="subject prefix of natsreg's control traffic (default: %(default)s)",
    )
    auth.add_argument(
        "--format",
        choices=("static", "jwt"),
        default="static",
        help="static: an authorization block with users and passwords; jwt: "
        "decentralized JWT accounts (default: %(default)s)",
    )
    auth.add_argument(
        "--out",
        metavar="DIR",
        help="write the config and one <user>.env per user here (mode 0600); "
        "without it, print everything",
    )
    _log_options(auth)


def _bridge_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("HTTP bridge")
    group.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    group.add_argument("--port", type=int, default=8080, help="listen port (default: 8080)")
    group.add_argument("--routes", metavar="FILE", help="route table, auth and CORS (TOML)")
    group.add_argument(
        "--timeout", type=float, default=5.0, help="longest NATS request, seconds (default: 5)"
    )
    group.add_argument(
        "--max-body",
        type=int,
        default=1024 * 1024 - 16 * 1024,
        metavar="BYTES",
        help="largest request body (default: 1 MiB - 16 KiB)",
    )
    group.add_argument(
        "--max-header",
        type=int,
        default=16 * 1024,
        metavar="BYTES",
        help="largest request head (default: 16 KiB)",
    )
    group.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time to send a request body before 408 (default: 10)",
    )
    group.add_argument(
        "--max-in-flight-per-client",
        type=int,
        default=256,
        metavar="N",
        help="concurrent requests from one client address (default: 256)",
    )
    group.add_argument(
        "--allowed-host",
        dest="allowed_hosts",
        action="append",
        metavar="NAME",
        help="a Host name to serve, any port; repeatable; '*' serves any, for a "
        "bridge behind a proxy that checks Host (default: localhost, "
        "127.0.0.1, [::1])",
    )
    group.add_argument(
        "--insecure-public",
        action="store_true",
        help="serve a non-loopback --host without auth (only behind something that checks callers)",
    )
    group.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time to send a request head before the connection is closed (default: 10)",
    )
    group.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        metavar="N",
        help="open connections in all, also kept under the file limit (default: 1000)",
    )
    group.add_argument(
        "--max-connections-per-client",
        type=int,
        default=256,
        metavar="N",
        help="open connections from one client address (default: 256)",
    )


def _registry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--missed-heartbeats",
        type=float,
        default=2.0,
        help="expire an instance after this many silent intervals (default: 2)",
    )
    parser.add_argument(
        "--micro-poll",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often to ping plain ADR-32 services; one silent for 3 polls is gone (default: 1)",
    )
    parser.add_argument(
        "--max-instances",
        type=int,
        default=MAX_INSTANCES,
        metavar="N",
        help="instances this node holds in all; new ones beyond are refused "
        f"and counted (default: {MAX_INSTANCES})",
    )


# -- connecting --------------------------------------------------------------------------------


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    # Each file is opened here, before connecting, so that a missing or unreadable one is
    # named in one line rather than ending in a traceback or in "cannot reach NATS".
    if args.tls_key and not args.tls_cert:
        raise _CliError("--tls-key needs --tls-cert (the certificate the key belongs to)")
    if not (args.tls_ca or args.tls_cert):
        return None
    for option, path in (
        ("--tls-ca", args.tls_ca),
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
    ):
        _check_readable(option, path)
    try:
        context = ssl.create_default_context(cafile=args.tls_ca)
    except ssl.SSLError as exc:
        raise _CliError(
            f"--tls-ca {args.tls_ca} holds no usable CA certificate ({exc.reason or exc})"
        ) from exc
    if args.tls_cert:
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except ssl.SSLError as exc:
            key = f" and --tls-key {args.tls_key}" if args.tls_key else ""
            raise _CliError(
                f"--tls-cert {args.tls_cert}{key}: not a PEM certificate and its "
                f"private key ({exc.reason or exc})"
            ) from exc
    return context


def _check_readable(option: str, path: str | None) -> None:
    if path is None:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise _CliError(f"cannot read {option} {path}: {exc.strerror or exc}") from exc


async def _connect(args: argparse.Namespace, *, long_lived: bool) -> NATS:
    connected = False
    last_error: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        # Before the first connection, the one clear line below says it all.
        last_error[:] = [exc]
        log.log(logging.WARNING if connected else logging.DEBUG, "NATS: %s", exc)

    options: dict[str, Any] = {
        "servers": [args.server],
        "name": f"natsreg-{args.command}",
        "connect_timeout": 2,
        "error_cb": on_error,
        # nats-py reads 0 as "retry for ever"; 1 with a short wait fails within a second.
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.2,
    }
    # nats-py reads the creds file only while connecting, and its error reads as if the
    # server were unreachable.
    _check_readable("--creds", args.creds)
    for key, value in (
        ("token", args.token),
        ("user", args.user),
        ("password", args.password),
        ("user_credentials", args.creds),
        ("inbox_prefix", args.inbox_prefix),
        ("tls", _tls(args)),
    ):
        if value is not None:
            options[key] = value
    try:
        nc = await nats.connect(**options)
    except Exception as exc:
        raise _CliError(
            f"cannot reach NATS at {args.server} ({_reason((last_error or [exc])[0])}): "
            "start one with "
            "'natsreg up', or pass --server / set NATS_URL"
        ) from exc
    connected = True
    if long_lived:
        # Once connected, a long-lived process rides out any outage: reconnect for ever.
        nc.options["max_reconnect_attempts"] = -1
        nc.options["reconnect_time_wait"] = 1.0
    return nc


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.removeprefix("nats: ")


async def _with_connection(
    args: argparse.Namespace, run: Callable[[NATS], Awaitable[int]], *, long_lived: bool = False
) -> int:
    nc = await _connect(args, long_lived=long_lived)
    try:
        return await run(nc)
    finally:
        try:
            await nc.close()
        except Exception as exc:
            log.debug("close: %s", exc)


# -- commands ----------------------------------------------------------------------------------


async def _cmd_registry(args: argparse.Namespace) -> int:
    if args.action == "nodes":
        return await _cmd_registry_nodes(args)
    _check_http(args)

    async def run(nc: NATS) -> int:
        async with AsyncExitStack() as stack:
            system_nc = None
            if args.system_server:
                # Its own credentials only: those in the URL, or --system-creds.
                system_args = argparse.Namespace(
                    **{
                        **vars(args),
                        "server": args.system_server,
                        "creds": args.system_creds,
                        "token": None,
                        "user": None,
                        "password": None,
                    }
                )
                system_nc = await _connect(system_args, long_lived=True)
                stack.push_async_callback(system_nc.close)
            node = await stack.enter_async_context(_registry(nc, args, system_nc))
            events = "; disconnect advisories on" if system_nc else ""
            _say(
                f"registry node {node.node_id} on {args.server} (prefix {args.prefix!r}"
                f"{events}); Ctrl-C stops it"
            )
            await _serve_probes(stack, args.http, node, "registry node")
            await _until_signal()
        return 0

    return await _with_connection(args, run, long_lived=True)


async def _cmd_registry_nodes(args: argparse.Namespace) -> int:
    async def run(nc: NATS) -> int:
        nodes = await RegistryApi(nc, prefix=args.prefix).nodes()
        if not nodes:
            raise _CliError(
                f"no registry node answers on prefix {args.prefix!r}: start one with "
                "'natsreg registry' (or 'natsreg up')"
            )
        if _json_lines:
            _print_data(nodes)
            return 0
        table = _table("NODE", "STATE", "UP", "INSTANCES", "SERVICES", "REVISION")
        for node in nodes:
            state = "[yellow]warming up[/]" if node.warming_up else "[green]warm[/]"
            table.add_row(
                node.node,
                state,
                f"{node.uptime_s:.1f}s",
                str(node.instances),
                str(node.services),
                str(node.revision),
            )
        _console().print(table)
        return 0

    return await _with_connection(args, run)


def _check_http(args: argparse.Namespace) -> None:
    # Before connecting: a bad address is one line, not a started node that then fails.
    if args.http is not None:
        from ._probes import parse_listen

        parse_listen(args.http, "--http")


async def _serve_probes(stack: AsyncExitStack, listen: str | None, role: Probed, what: str) -> None:
    if listen is None:
        return
    from ._probes import serve

    probes = await stack.enter_async_context(serve(listen, role))
    _say(f"{what}: {_probe_urls(probes.url)}")


def _say_dashboard(url: str, config: BridgeConfig) -> None:
    if config.expose_registry:
        _say(f"dashboard on {url}/_natsreg/ui")


def _probe_urls(base: str) -> str:
    return f"{base}/metrics, {base}/healthz, {base}/readyz"


def _registry(nc: NATS, args: argparse.Namespace, system_nc: NATS | None = None) -> Registry:
    return Registry(
        nc,
        prefix=args.prefix,
        missed_heartbeats=args.missed_heartbeats,
        micro_poll_s=args.micro_poll,
        system_nc=system_nc,
        max_instances=args.max_instances,
        shard=getattr(args, "shard", False),
    )


def _bridge_config(args: argparse.Namespace) -> BridgeConfig:
    from .bridge import BridgeConfig  # uvicorn loads only for the commands that serve HTTP

    settings = {
        "prefix": args.prefix,
        "timeout_s": args.timeout,
        "max_body_bytes": args.max_body,
        "max_header_bytes": args.max_header,
        "body_timeout_s": args.body_timeout,
        "max_in_flight_per_client": args.max_in_flight_per_client,
        "insecure_public": args.insecure_public,
        "header_timeout_s": args.header_timeout,
        "max_connections": args.max_connections,
        "max_connections_per_client": args.max_connections_per_client,
    }
    if args.allowed_hosts:
        settings["allowed_hosts"] = tuple(args.allowed_hosts)
    try:
        config = (
            BridgeConfig.from_toml(args.routes, **settings)
            if args.routes
            else BridgeConfig(**settings)
        )
    except OSError as exc:
        raise _CliError(f"cannot read the route table {args.routes}: {exc.strerror}") from exc
    # Checked here as well as when serving, so that natsreg up refuses before starting NATS.
    config.check_listen(args.host)
    return config


async def _cmd_bridge(args: argparse.Namespace) -> int:
    from . import bridge
    from ._supervisor import tell_ready, worker_number

    config = _bridge_config(args)
    if _supervising(args):
        return await _supervise(args, config.drain_timeout_s, None)

    def ready(running: bridge.RunningBridge) -> None:
        _say(f"HTTP bridge on {running.url}")
        _say(f"HTTP bridge: {_probe_urls(running.url + '/_natsreg')}")
        _say_dashboard(running.url, config)
        tell_ready()

    async def run(nc: NATS) -> int:
        await _unless_orphaned(
            lambda: bridge.serve(
                nc,
                config,
                host=args.host,
                port=args.port,
                ready=ready,
                # Workers share the port; the kernel spreads the connections over them.
                reuse_port=worker_number() is not None,
            )
        )
        return 0

    return await _with_connection(args, run, long_lived=True)


async def _cmd_run(args: argparse.Namespace) -> int:
    from ._load import load_service
    from ._supervisor import tell_ready, worker_number
    from .service import announce

    service = load_service(args.target)
    _check_http(args)
    if _supervising(args):
        watch = Path.cwd() if args.reload else None
        return await _supervise(args, service.config.drain_timeout_s, watch)
    overrides: dict[str, Any] = {}
    if args.prefix != subjects.DEFAULT_PREFIX:
        overrides["prefix"] = args.prefix
    worker = worker_number()
    if worker is not None:
        # Which worker an instance is, for 'natsreg info' and for selectors.
        overrides["metadata"] = {**service.config.metadata, "worker": worker}
    if args.http is not None:
        overrides["http"] = args.http
    on_uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    loop = "uvloop" if on_uvloop else "asyncio"

    async def run(nc: NATS) -> int:
        async with announce(nc, service, **overrides) as instance:
            await instance.ready()
            c = instance.config
            # The instance's lines as much as the command's: named like them.
            speaking = functools.partial(_origin.bound, c.name, instance.id)
            with speaking():
                _say(
                    f"{c.name} {c.version} serving as {instance.id}"
                    f"{f' (worker {worker})' if worker else ''} on {args.server}, {loop}; "
                    "Ctrl-C stops it"
                )
                if instance.probes is not None:
                    _say(f"{c.name}: {_probe_urls(instance.probes.url)}")
            tell_ready()
            await _unless_orphaned(_until_signal)
        with speaking():
            _say(f"{service.name}: drained and said goodbye")
        return 0

    return await _with_connection(args, run, long_lived=True)


async def _unless_orphaned(serve: Callable[[], Awaitable[object]]) -> None:
    """``serve()``, stopped early (and so drained) if this worker's supervisor dies."""
    from ._supervisor import until_orphaned

    async with anyio.create_task_group() as tg:

        async def orphaned() -> None:
            await until_orphaned()
            _say("the supervisor is gone; stopping")
            tg.cancel_scope.cancel()

        tg.start_soon(orphaned)
        await serve()
        tg.cancel_scope.cancel()


def _supervising(args: argparse.Namespace) -> bool:
    """Whether this process supervises workers (and is not one of them)."""
    from ._supervisor import worker_number

    if args.workers < 1:
        raise _CliError("--workers must be at least 1")
    # A worker runs the supervisor's own command line: its variable tells it apart.
    wanted = args.workers > 1 or getattr(args, "reload", False)
    return wanted and worker_number() is None


async def _supervise(args: argparse.Namespace, drain_timeout_s: float, watch: Path | None) -> int:
    from ._supervisor import Supervisor

    command = [sys.executable, "-m", "natsreg", *args.argv]
    supervisor = Supervisor(
        command, args.workers, drain_timeout_s=drain_timeout_s, say=_say, watch=watch
    )
    return await supervisor.run()


async def _cmd_up(args: argparse.Namespace) -> int:
    bridge_config = None if args.no_bridge else _bridge_config(args)
    _check_http(args)
    url = urlsplit(args.server)
    host, port = url.hostname or "127.0.0.1", url.port or 4222
    async with AsyncExitStack() as stack:
        if is_listening(host, port):
            _say(f"using the nats-server at {args.server}")
        elif host in ("127.0.0.1", "localhost", "::1"):
            store = Path(args.store_dir) if args.store_dir else default_store_dir()
            try:
                store.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _CliError(
                    f"cannot create the JetStream store {store}: {exc.strerror or exc}; "
                    "pass --store-dir"
                ) from exc
            try:
                server = NatsServer(
                    host=host,
                    port=port,
                    args=_embedded_auth(args),
                    jetstream=True,
                    store_dir=store,
                )
            except ServerError as exc:
                raise _CliError(str(exc)) from exc
            stack.callback(server.stop)
            _say(
                f"started nats-server {server.url} (embedded, JetStream in {store}; "
                "stops with natsreg up)"
            )
        else:
            raise _CliError(
                f"nothing listens at {args.server}, and natsreg only starts a "
                "nats-server on this machine: use a 127.0.0.1 URL or start NATS"
            )
        nc = await _connect(args, long_lived=True)
        stack.push_async_callback(nc.close)
        node = await stack.enter_async_context(_registry(nc, args))
        _say(f"registry node {node.node_id} is running")
        await _serve_probes(stack, args.http, node, "registry node")
        if not args.no_bridge:
            from . import bridge

            try:
                running = await stack.enter_async_context(
                    bridge.run(nc, bridge_config, host=args.host, port=args.port)
                )
            except ConfigError as exc:
                raise _CliError(f"{exc}: pass another --port, or --no-bridge") from exc
            _say(
                f"HTTP bridge on {running.url}  (curl -d '{{\"id\": 1}}' "
                f"{running.url}/user-service/users)"
            )
            _say(f"HTTP bridge: {_probe_urls(running.url + '/_natsreg')}")
            _say_dashboard(running.url, running.app.config)
        children = _start_programs(args.programs, _child_env(args), stack, args.http)
        _say(
            "try: natsreg ls   |   natsreg request user-service.users '{\"id\": 1}'"
            "   |   natsreg watch"
        )
        _say("Ctrl-C stops everything")
        await _until_signal(children)
    return 0


def _embedded_auth(args: argparse.Namespace) -> tuple[str, ...]:
    # The embedded server checks what natsreg up was asked to connect with: starting it open
    # while the user believes a token guards it would be worse than refusing.
    if args.creds:
        raise _CliError(
            "--creds needs a nats-server with an operator and accounts, which "
            "natsreg up cannot set up: start that nats-server yourself (see "
            "'natsreg auth --format jwt'), or use --token or --user/--password"
        )
    if args.token and args.user:
        raise _CliError("pass --token or --user/--password, not both")
    if args.user and not args.password:
        raise _CliError("--user needs --password for the embedded nats-server")
    if args.password and not args.user:
        raise _CliError("--password needs --user")
    if args.token:
        return ("--auth", args.token)
    if args.user:
        return ("--user", args.user, "--pass", args.password)
    return ()


def _child_env(args: argparse.Namespace) -> dict[str, str]:
    # --with programs get natsreg up's credentials in the variables natsreg's CLI reads, and
    # in NATS_URL for programs that read only it (as the examples do) when they can stand in
    # a URL as they are: nats-py does not %-decode a URL's user and password.
    env = {
        **os.environ,
        "NATS_URL": args.server,
        "NATSREG_PREFIX": args.prefix,
        logs.ENV: args.log_format,
    }
    secrets = {"NATS_TOKEN": args.token, "NATS_USER": args.user, "NATS_PASSWORD": args.password}
    env.update({key: value for key, value in secrets.items() if value})
    if args.token:
        userinfo = args.token
    elif args.user and args.password:
        userinfo = f"{args.user}:{args.password}"
    else:
        return env
    url = urlsplit(args.server)
    if not url.username and all(part == quote(part, safe="") for part in userinfo.split(":", 1)):
        env["NATS_URL"] = url._replace(netloc=f"{userinfo}@{url.netloc}").geturl()
    return env


def _start_programs(
    programs: Sequence[str], env: dict[str, str], stack: AsyncExitStack, http: str | None
) -> list[subprocess.Popen[bytes]]:
    children = []
    from ._load import is_target
    from ._probes import parse_listen

    for program in programs:
        argv = shlex.split(program)
        if is_target(program):
            argv = [sys.executable, "-m", "natsreg", "run", program]
            if http is not None:
                # Each service its own free port on the same interface; it prints where.
                host, _ = parse_listen(http)
                argv += ["--http", f"[{host}]:0" if ":" in host else f"{host}:0"]
        elif argv and argv[0].endswith(".py"):
            argv.insert(0, sys.executable)
        try:
            child = subprocess.Popen(argv, env=env)
        except OSError as exc:
            raise _CliError(f"cannot run {program!r}: {exc}") from exc
        stack.callback(_stop_child, child)
        children.append(child)
        _say(f"started {program} (pid {child.pid})")
    return children


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    # SIGTERM first: a natsreg service drains and says goodbye on it.
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


async def _until_signal(children: Sequence[subprocess.Popen[bytes]] = ()) -> None:
    async with anyio.create_task_group() as tg:

        async def watch_children() -> None:
            while True:
                await anyio.sleep(0.5)
                for child in children:
                    if child.poll() is not None:
                        _say(f"pid {child.pid} exited with {child.returncode}; stopping")
                        tg.cancel_scope.cancel()
                        return

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    _say("stopping")
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch_signals)
        if children:
            tg.start_soon(watch_children)


def _roles(args: argparse.Namespace) -> list[Role]:
    from .permissions import ALL_SERVICES, Role

    def split(spec: str, option: str) -> tuple[str, tuple[str, ...]]:
        user, _, calls = spec.partition(":")
        callees = tuple(c for c in calls.split(",") if c)
        if not user or (calls and not callees):
            raise _CliError(f"{option} {spec!r}: write USER or USER:SVC,SVC")
        return user, callees

    roles = [Role(kind="registry", user=user) for user in args.registry]
    for spec in args.bridge:
        user, calls = split(spec, "--bridge")
        roles.append(Role(kind="bridge", user=user, calls=calls or (ALL_SERVICES,)))
    roles += [Role(kind="operator", user=user, calls=(ALL_SERVICES,)) for user in args.operator]
    for spec in args.service:
        name, calls = split(spec, "--service")
        roles.append(Role(kind="service", user=name, name=name, calls=calls, events=args.events))
    for spec in args.caller:
        user, calls = split(spec, "--caller")
        if not calls:
            raise _CliError(f"--caller {spec!r}: name the services it calls (USER:SVC,SVC)")
        roles.append(Role(kind="caller", user=user, calls=calls, events=args.events))
    for spec in args.coordinator:
        user, calls = split(spec, "--coordinator")
        if not calls:
            raise _CliError(f"--coordinator {spec!r}: name the services its sagas call")
        roles.append(Role(kind="coordinator", user=user, calls=calls))
    if not roles:
        raise _CliError(
            "no roles: pass --registry, --bridge, --operator, --service, --caller or --coordinator"
        )
    return roles


async def _cmd_auth(args: argparse.Namespace) -> int:

    from . import _authconfig

    try:
        roles = _roles(args)
        if args.format == "jwt":
            from ._jwt import render_jwt

            if args.out is None:
                raise _CliError("--format jwt writes a config and creds files: pass --out DIR")
            setup = render_jwt(roles, args.prefix, Path(args.out))
            _say(
                f"wrote {setup.config} (nats-server -c), {len(setup.creds)} creds files "
                f"(--creds / NATS_CREDS; each user also needs --inbox-prefix _INBOX_<user>) "
                f"and {setup.system_creds} for server events; new keys each run"
            )
            return 0
        rendered = _authconfig.render_static(roles, args.prefix)
        if args.out is None and _json_lines:
            envs = {
                s.role.user: _authconfig.env_file(s, args.prefix).splitlines()[1:]
                for s in rendered.users
            }
            users = {user: dict(line.split("=", 1) for line in env) for user, env in envs.items()}
            _print_data({"config": rendered.config, "users": users})
            return 0
        if args.out is None:
            print(rendered.config)
            print(
                "# Credentials, shown once: each user's environment "
                "(natsreg reads NATS_USER, NATS_PASSWORD, NATS_INBOX_PREFIX, NATSREG_PREFIX)."
            )
            for secret in rendered.users:
                print("#   " + " ".join(_authconfig.env_file(secret, args.prefix).splitlines()[1:]))
            return 0
        paths = _authconfig.write_static(rendered, args.prefix, Path(args.out))
    except OSError as exc:
        raise _CliError(f"cannot write to {args.out}: {exc.strerror}") from exc
    _say(
        f"wrote {paths[0]} (include it in nats-server.conf) and {len(paths) - 1} env files "
        "with each user's password (mode 0600; shown nowhere else)"
    )
    return 0


async def _cmd_ls(args: argparse.Namespace) -> int:
    async def run(nc: NATS) -> int:
        registry = RegistryApi(nc, prefix=args.prefix)
        if args.json or _json_lines:
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
            raise _CliError(
                f"no instance of {args.service!r} is known: 'natsreg ls' lists what is running"
            )
        stats = await gather_stats(nc, args.service, 0.3)
        if args.json or _json_lines:
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
        document, snapshot = await _docs_cli.asyncapi_document(nc, args.prefix, [args.server])
        if snapshot.warming_up:
            _say(_warming(snapshot.node), logging.WARNING)
        if _json_lines and args.output is None:
            _print_data(document)  # every line JSON, the document's one too
            return 0
        try:
            _docs_cli.write(document, args.output, args.format)
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
    schemas = _schema_cli.request_schemas(await client.view(target.service), target, select)
    if not schemas:
        return
    try:
        problem = _schema_cli.payload_problem(msgspec.json.decode(payload or b"null"), schemas)
    except ValueError as exc:
        _say(f"{subject}'s request schema cannot be used ({exc}); sending without checking")
        return
    if problem is not None:
        raise _CliError(
            f"{problem} (against {subject}'s request schema; nothing was sent: fix the "
            "payload, or pass --no-validate to send it anyway)"
        )


async def _cmd_events(args: argparse.Namespace) -> int:
    from . import _events_cli

    async def run(nc: NATS) -> int:
        json_out = args.json or _json_lines
        return await _events_cli.run(nc, args, json_out=json_out, out=sys.stdout)

    return await _with_connection(args, run)


async def _cmd_watch(args: argparse.Namespace) -> int:
    async def run(nc: NATS) -> int:
        registry = RegistryApi(nc, prefix=args.prefix)
        if not args.json:
            _say(f"watching {args.service or 'all services'} on {args.server}; Ctrl-C stops")
        async with anyio.create_task_group() as tg:

            async def stream() -> None:
                async for event in registry.watch(args.service):
                    if args.json or _json_lines:
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
    async def run(nc: NATS) -> int:
        if args.action == "show":
            state = await _saga_cli.read_saga(nc, args.prefix, args.id)
            if args.json or _json_lines:
                _print_data(state)
            else:
                _saga_cli.render_saga(state, _console(), _table)
            return 0
        if args.limit < 1:
            raise _CliError(f"--limit must be at least 1, got {args.limit}")
        states = await _saga_cli.read_sagas(nc, args.prefix, running=args.running, limit=args.limit)
        if args.json or _json_lines:
            _print_data(states)
        else:
            _saga_cli.render_sagas(states, _console(), _table, _age)
        return 0

    return await _with_connection(args, run)


# -- output ------------------------------------------------------------------------------------


def _say(text: str, level: int = logging.INFO) -> None:
    """One line for the user on stderr: ``natsreg: text``, or a log record (logger
    natsreg.cli, shown whatever -v says) under --log-format json."""
    if _json_lines:
        log.log(level, "%s", text)
        return
    # A worker's lines are told apart from its supervisor's and its siblings'.
    worker = os.environ.get("NATSREG_WORKER")
    print(f"natsreg{f'[{worker}]' if worker else ''}: {text}", file=sys.stderr, flush=True)


def _print_data(value: object, file: IO[str] | None = None) -> None:
    """A command's answer as JSON: indented, or on one line under --log-format json."""
    encoded = msgspec.json.encode(value)
    print((encoded if _json_lines else msgspec.json.format(encoded, indent=2)).decode(), file=file)


def _print_reply(data: bytes) -> None:
    with suppress(msgspec.DecodeError, UnicodeDecodeError):
        if data.strip():
            print(msgspec.json.format(data, indent=0 if _json_lines else 2).decode())
            return
    if _json_lines:
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
    for i in sorted(snapshot.instances, key=lambda i: (i.version, i.id)):
        meta = ", ".join(f"{k}={v}" for k, v in sorted(i.metadata.items()))
        instances.add_row(
            i.id,
            i.version,
            f"[{_HEALTH_STYLE[i.health]}]{i.health}[/]",
            i.host,
            str(i.pid or "-"),
            str(i.load.in_flight),
            str(i.load.served),
            str(i.load.errors),
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
    for e in first.endpoints + [e for i in snapshot.instances for e in i.endpoints]:
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
                request = _schema_cli.render(e.schemas.request)
                rows[(e.name, request, _schema_cli.render(e.schemas.response))] = None
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


# -- entry point -------------------------------------------------------------------------------

_COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "up": _cmd_up,
    "run": _cmd_run,
    "registry": _cmd_registry,
    "bridge": _cmd_bridge,
    "ls": _cmd_ls,
    "info": _cmd_info,
    "request": _cmd_request,
    "watch": _cmd_watch,
    "docs": _cmd_docs,
    "events": _cmd_events,
    "saga": _cmd_saga,
    "auth": _cmd_auth,
}


def main(argv: Sequence[str] | None = None) -> int:
    # Workers run this same command line (natsreg/_supervisor.py).
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logs(_requested_format(argv), verbose=False)
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if args.log_format not in logs.FORMATS:
        # Only the environment can get here: argparse checks the flag's own choices.
        parser.error(f"{logs.ENV}={args.log_format!r}: use text or json")
    _setup_logs(args.log_format, verbose=args.verbose)
    try:
        # The commands that serve run on uvloop where it is installed: the bridge's figures
        # assume it, and a service answers faster on it (bench/RESULTS.md).
        use_uvloop = (
            args.command in ("bridge", "up", "run")
            and not getattr(args, "no_uvloop", False)
            and bool(importlib.util.find_spec("uvloop"))
        )
        return anyio.run(_run, args, backend_options={"use_uvloop": use_uvloop})
    except KeyboardInterrupt:
        return 130
    except Exception:
        if not _json_lines:
            raise
        # A bug: its traceback still goes out, inside one JSON line.
        log.exception("natsreg %s failed", args.command)
        return EXIT_FAILURE


async def _run(args: argparse.Namespace) -> int:
    # The error is said inside the command's task, so that its line names the trace the
    # command started (natsreg request), if any.
    try:
        return await _COMMANDS[args.command](args)
    except (_CliError, NatsregError) as exc:
        _say(str(exc), logging.ERROR)
        return EXIT_FAILURE


def _requested_format(argv: Sequence[str]) -> str:
    # Read before argparse, so that argparse's own errors honour --log-format json.
    for at, arg in enumerate(argv):
        if arg == "--log-format" and at + 1 < len(argv):
            return argv[at + 1]
        if arg.startswith("--log-format="):
            return arg.partition("=")[2]
    return os.environ.get(logs.ENV, "text")


def _setup_logs(log_format: str, *, verbose: bool) -> None:
    global _json_lines
    _json_lines = log_format == "json"
    from ._supervisor import worker_number

    worker = worker_number()
    logs.configure(
        "json" if _json_lines else "text",
        level=logging.INFO if verbose else logging.WARNING,
        fields={"worker": worker} if worker else None,
    )
    # The command's own lines for the user (_say) are shown without -v.
    log.setLevel(logging.INFO)
    if _json_lines:
        # What Python itself would write as text: a warning, an exception raised where no
        # one can catch it (a destructor, a callback).
        logging.captureWarnings(True)
        sys.unraisablehook = _log_unraisable


def _log_unraisable(unraisable: Any) -> None:
    error = unraisable.exc_value
    log.error(
        "%s: %r",
        unraisable.err_msg or "Exception ignored in",
        unraisable.object,
        exc_info=(type(error), error, unraisable.exc_traceback) if error else None,
    )
