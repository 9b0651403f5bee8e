"""The commands that serve until a signal: ``natsreg registry`` (and ``registry nodes``),
``natsreg bridge`` and ``natsreg run``, with their workers under a supervisor, and the helpers
``natsreg up`` shares with them (the registry and bridge settings, probes, waiting for Ctrl-C)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from nats.aio.client import Client as NATS

from .. import _origin, subjects
from ..client._registry_api import RegistryApi
from ..registry import Registry
from ..registry._pace import check_pace
from ._connect import _connect, _delivered, _with_connection
from ._output import _CliError, _console, _json_lines, _print_data, _say, _table

if TYPE_CHECKING:
    from .._probes import Probed
    from ..bridge import BridgeConfig


async def _cmd_registry(args: argparse.Namespace) -> int:
    if args.action == "nodes":
        return await _cmd_registry_nodes(args)
    _check_http(args)
    check_pace(args.pace)  # before connecting: a bad value is one line

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
            node = await stack.enter_async_context(_registry(nc, args, system_nc, args.pace))
            events = "; disconnect advisories on" if system_nc else ""
            if system_nc and args.pace:
                events += f", heartbeat pace {args.pace:g} s"
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
        if _json_lines():
            _print_data(nodes)
            return 0
        table = _table("NODE", "STATE", "UP", "INSTANCES", "SERVICES", "REVISION", "PACE")
        for node in nodes:
            state = "[yellow]warming up[/]" if node.warming_up else "[green]warm[/]"
            table.add_row(
                node.node,
                state,
                f"{node.uptime_s:.1f}s",
                str(node.instances),
                str(node.services),
                str(node.revision),
                f"{node.pace_s:g}s" if node.pace_s else "-",
            )
        _console().print(table)
        return 0

    return await _with_connection(args, run)


def _check_http(args: argparse.Namespace) -> None:
    # Before connecting: a bad address is one line, not a started node that then fails.
    if args.http is not None:
        from .._probes import parse_listen

        parse_listen(args.http, "--http")


async def _serve_probes(stack: AsyncExitStack, listen: str | None, role: Probed, what: str) -> None:
    if listen is None:
        return
    from .._probes import serve

    probes = await stack.enter_async_context(serve(listen, role))
    _say(f"{what}: {_probe_urls(probes.url)}")


def _say_dashboard(url: str, config: BridgeConfig) -> None:
    if config.expose_registry:
        _say(f"dashboard on {url}/_natsreg/ui")


def _probe_urls(base: str) -> str:
    return f"{base}/metrics, {base}/healthz, {base}/readyz"


def _registry(
    nc: NATS, args: argparse.Namespace, system_nc: NATS | None = None, pace_s: float = 0.0
) -> Registry:
    return Registry(
        nc,
        prefix=args.prefix,
        missed_heartbeats=args.missed_heartbeats,
        micro_poll_s=args.micro_poll,
        system_nc=system_nc,
        pace_s=pace_s,
        max_instances=args.max_instances,
        shard=getattr(args, "shard", False),
    )


def _bridge_config(args: argparse.Namespace) -> BridgeConfig:
    from ..bridge import BridgeConfig  # uvicorn loads only for the commands that serve HTTP

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
    from .. import bridge
    from .._supervisor import tell_ready, worker_number

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
    from .._load import hook_failure, load_service
    from .._supervisor import tell_ready, worker_number
    from ..service import announce

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
            if await _delivered(nc):
                _say(f"{service.name}: drained and said goodbye")
            else:
                _say(
                    f"{service.name}: stopped, but could not say goodbye: NATS at "
                    f"{args.server} is unreachable (registries drop this instance when its "
                    "heartbeats stop)",
                    logging.WARNING,
                )
        return 0

    try:
        return await _with_connection(args, run, long_lived=True)
    except Exception as exc:
        failure = hook_failure(service, exc)
        if failure is None:
            raise
        raise _CliError(failure) from exc


async def _unless_orphaned(serve: Callable[[], Awaitable[object]]) -> None:
    """``serve()``, stopped early (and so drained) if this worker's supervisor dies."""
    from .._supervisor import until_orphaned

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
    from .._supervisor import worker_number

    if args.workers < 1:
        raise _CliError("--workers must be at least 1")
    # A worker runs the supervisor's own command line: its variable tells it apart.
    wanted = args.workers > 1 or getattr(args, "reload", False)
    return wanted and worker_number() is None


async def _supervise(args: argparse.Namespace, drain_timeout_s: float, watch: Path | None) -> int:
    from .._supervisor import Supervisor

    command = [sys.executable, "-m", "natsreg", *args.argv]
    supervisor = Supervisor(
        command, args.workers, drain_timeout_s=drain_timeout_s, say=_say, watch=watch
    )
    return await supervisor.run()


async def _until_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            _say("stopping")
            return
