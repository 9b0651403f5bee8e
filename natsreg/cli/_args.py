"""The command line: the parser, the options every connecting command shares, and the
arguments of the commands that look things up (ls, info, request, watch, saga, events, auth).

The serving commands' arguments (up, run, registry, bridge) are in :mod:`._serve_args`.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import NoReturn, TypeAlias

from .. import __version__, logs, subjects
from ..client import STRATEGIES
from . import _docs
from ._output import _json_lines
from ._serve_args import _add_bridge, _add_registry, _add_run, _add_up

# The CLI's one logger, whichever module writes: users filter on its name.
log = logging.getLogger("natsreg.cli")


DEFAULT_URL = "nats://127.0.0.1:4222"
EXIT_USAGE = 2


# What add_subparsers returns; named once for the builders here and in _serve_args.
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one JSON line too under --log-format json
    (its subcommands' parsers are of the same class)."""

    def error(self, message: str) -> NoReturn:
        if _json_lines():
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
        _docs.add_parser,
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
    # One parser with the action as an argument, as events has: a nested parser would set
    # its own defaults over the options given before the action (saga --log-format json ls).
    saga = commands.add_parser(
        "saga",
        parents=[common],
        help="read sagas: their steps and history ('saga ls', 'saga show ID'; docs/sagas.md)",
        description="ls: the sagas written last, newest first; show ID: one saga's steps and "
        "history.",
    )
    saga.add_argument("action", choices=["ls", "show"])
    saga.add_argument("id", nargs="?", metavar="ID", help="show: the saga's id")
    saga.add_argument("--running", action="store_true", help="ls: only sagas still in progress")
    saga.add_argument(
        "--limit", type=int, default=20, help="ls: how many sagas to list (default: %(default)s)"
    )
    saga.add_argument("--json", action="store_true", help="print the stored states as JSON")


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
