"""``natsreg up``: a nats-server when none listens (embedded, JetStream on), a registry node,
the HTTP bridge and any ``--with`` programs, all stopped together."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import quote, urlsplit

from .. import logs
from .._server import NatsServer, ServerError, default_store_dir, is_listening
from ..errors import ConfigError
from ._connect import _connect
from ._output import _CliError, _say
from ._serve import (
    _bridge_config,
    _check_http,
    _probe_urls,
    _registry,
    _say_dashboard,
    _serve_probes,
    _until_signal,
)


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
            from .. import bridge

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
    from .._load import is_target
    from .._probes import parse_listen

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
