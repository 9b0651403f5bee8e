"""The arguments of the serving commands: up, run, registry and bridge, and the option
groups they share (the registry's, the HTTP bridge's, --http and --workers)."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from ..registry import DEFAULT_PACE_S
from ..registry._view import MAX_INSTANCES

if TYPE_CHECKING:
    from ._args import _Commands


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
    registry.add_argument(
        "--pace",
        type=float,
        default=DEFAULT_PACE_S,
        metavar="SECONDS",
        help="with --system-server, let instances heartbeat this seldom while disconnect "
        f"advisories flow; 0: every instance keeps its own interval (default: {DEFAULT_PACE_S:g})",
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
