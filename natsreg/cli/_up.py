"""``natsreg up``: a nats-server when none listens (embedded, JetStream on), a registry node,
the HTTP bridge and any ``--with`` programs, all stopped together.

The first SIGINT, SIGTERM or SIGHUP stops them in order: the programs drain and say goodbye
while NATS and the registry node still run (so the registry takes the goodbyes and tells
its watchers), then the bridge, the registry node, and the embedded nats-server last. The
programs and the server run in sessions of their own: a terminal's Ctrl-C signals its whole
foreground process group, and only natsreg up should hear it, or the programs would be
stopping while natsreg up signals them again. A second signal stops everything at once.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote, urlsplit

import anyio
from anyio.abc import Process
from nats.aio.client import Client as NATS

from .. import logs
from .._server import NatsServer, ServerError, default_store_dir, is_listening
from .._supervisor import open_watched, terminate, why_exited
from .._tasks import background
from ..errors import ConfigError
from ..registry import Registry
from ._connect import _close, _connect, _delivered
from ._output import _CliError, _say
from ._serve import (
    _bridge_config,
    _check_http,
    _probe_urls,
    _registry,
    _say_dashboard,
    _serve_probes,
)

if TYPE_CHECKING:
    from ..bridge import BridgeConfig

_T = TypeVar("_T")

#: How long a program has to drain and exit after SIGTERM before it is killed.
_PROGRAM_STOP_S = 15.0
#: How long the registry node is given to take the goodbyes of the programs just stopped.
_GOODBYES_S = 1.0


async def _cmd_up(args: argparse.Namespace) -> int:
    bridge_config = None if args.no_bridge else _bridge_config(args)
    _check_http(args)
    stop = _Stop()
    # Taken before anything starts and kept to the end: a signal during start-up stops in
    # order too, and a second one is heard while the first one's stop is under way.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with background(functools.partial(stop.watch, signals)):
            await _serve(args, bridge_config, stop)
    return 0


async def _serve(args: argparse.Namespace, bridge_config: BridgeConfig | None, stop: _Stop) -> None:
    # The exit stack stops in the reverse of the start: programs, bridge, registry, server.
    async with AsyncExitStack() as stack:
        server = _start_server(args)
        steps = []
        if server is not None:
            stop.server = server
            await stack.enter_async_context(
                _stopped_after(server, f"nats-server {server.url} stopped")
            )
            steps.append("the nats-server")
        nc = await _connect(args, long_lived=True)
        stack.push_async_callback(_close, nc)
        registry = _registry(nc, args)
        node = await stack.enter_async_context(
            _stopped_after(registry, f"registry node {registry.node_id} stopped")
        )
        steps.insert(0, "the registry node")
        _say(f"registry node {node.node_id} is running")
        await _serve_probes(stack, args.http, node, "registry node")
        if bridge_config is not None:
            await _serve_bridge(stack, nc, args, bridge_config)
            steps.insert(0, "the HTTP bridge")
        programs = stop.programs = _Programs(_child_env(args), args.http)
        stack.push_async_callback(_stop_programs, programs, nc, node)
        if not stop.requested.is_set():
            await programs.start(args.programs)
        if programs.running:
            steps.insert(0, "the programs (they drain and say goodbye)")
        me = _invocation()
        _say(f"try: {me} ls   |   {me} request user-service.users '{{\"id\": 1}}'   |   {me} watch")
        _say("Ctrl-C stops everything")
        why = await _until_stopped(stop, programs)
        _say(f"{why}stopping {', then '.join(steps)}; Ctrl-C again stops at once")
    if server is None:
        _say(f"left the nats-server at {args.server} as it was (natsreg up did not start it)")


def _start_server(args: argparse.Namespace) -> NatsServer | None:
    """The embedded nats-server, or None when one already listens at ``--server``."""
    url = urlsplit(args.server)
    host, port = url.hostname or "127.0.0.1", url.port or 4222
    if is_listening(host, port):
        _say(
            f"using the nats-server at {args.server}, which natsreg up did not start: it "
            "keeps running after Ctrl-C here, and while it is down everything here is cut "
            "off from NATS"
        )
        return None
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise _CliError(
            f"nothing listens at {args.server}, and natsreg only starts a "
            "nats-server on this machine: use a 127.0.0.1 URL or start NATS"
        )
    store = Path(args.store_dir) if args.store_dir else default_store_dir()
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _CliError(
            f"cannot create the JetStream store {store}: {exc.strerror or exc}; pass --store-dir"
        ) from exc
    try:
        server = NatsServer(
            host=host, port=port, args=_embedded_auth(args), jetstream=True, store_dir=store
        )
    except ServerError as exc:
        raise _CliError(str(exc)) from exc
    _say(
        f"started nats-server {server.url} (embedded, JetStream in {store}; stops with natsreg up)"
    )
    return server


async def _serve_bridge(
    stack: AsyncExitStack, nc: NATS, args: argparse.Namespace, config: BridgeConfig
) -> None:
    from .. import bridge

    try:
        running = await stack.enter_async_context(
            _stopped_after(
                bridge.run(nc, config, host=args.host, port=args.port), "HTTP bridge stopped"
            )
        )
    except ConfigError as exc:
        raise _CliError(f"{exc}: pass another --port, or --no-bridge") from exc
    _say(
        f"HTTP bridge on {running.url}  (curl -d '{{\"id\": 1}}' {running.url}/user-service/users)"
    )
    _say(f"HTTP bridge: {_probe_urls(running.url + '/_natsreg')}")
    _say_dashboard(running.url, running.app.config)


@asynccontextmanager
async def _stopped_after(role: AbstractAsyncContextManager[_T], stopped: str) -> AsyncIterator[_T]:
    # Said once the role has stopped, and only when it stopped cleanly.
    async with role as value:
        yield value
    _say(stopped)


async def _until_stopped(stop: _Stop, programs: _Programs) -> str:
    """Wait for the first signal, or for a program to exit; then why, if a program exited."""
    why = ""
    async with anyio.create_task_group() as tg:

        async def signalled() -> None:
            await stop.requested.wait()
            tg.cancel_scope.cancel()

        async def exited() -> None:
            nonlocal why
            program = await programs.first_exit()
            why = f"{program.name} {why_exited(program.process.returncode or 0)}; "
            # A signal from now on is the second one: the stop is under way.
            stop.requested.set()
            tg.cancel_scope.cancel()

        tg.start_soon(signalled)
        tg.start_soon(exited)
    return why


async def _stop_programs(programs: _Programs, nc: NATS, node: Registry) -> None:
    pids = await programs.stop()
    # Each instance's goodbye reached NATS before its program exited; the registry node takes
    # it within moments, and must, before it stops, to publish the change ("down ...
    # goodbye") that natsreg watch and the dashboard show. Instances are matched by pid;
    # one that said no goodbye (a crash, NATS down) stays, and the wait ends with the time.
    if pids and await _delivered(nc):
        with anyio.move_on_after(_GOODBYES_S):
            # Polled: a node offers no notice of its changes but on NATS, which is slower.
            while any(i.pid in pids for i in node.snapshot().instances):  # noqa: ASYNC110
                await anyio.sleep(0.02)


class _Stop:
    """The first signal asks for the ordered stop; a second one stops everything at once."""

    def __init__(self) -> None:
        self.requested = anyio.Event()
        self.programs: _Programs | None = None
        self.server: NatsServer | None = None

    async def watch(self, signals: AsyncIterator[signal.Signals]) -> None:
        async for _ in signals:
            if not self.requested.is_set():
                self.requested.set()
            else:
                self._now()

    def _now(self) -> None:
        _say("stopping at once: the programs are killed, without saying goodbye", logging.WARNING)
        if self.programs is not None:
            self.programs.kill()
        if self.server is not None:
            self.server.stop(timeout_s=2.0)
        # The ordered stop may be waiting for a program or for the bridge's requests to
        # drain, which are what the user declined to wait for; nothing natsreg up started
        # runs any more, and its own connections end with the process.
        os._exit(130)


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


@dataclass(eq=False)
class _Program:
    command: str
    process: Process
    #: natsreg up's end of the socket pair a natsreg service watches (None for any other
    #: program): its closing, when natsreg up dies even by kill -9, stops the service.
    channel: socket.socket | None

    @property
    def name(self) -> str:
        return f"{self.command} (pid {self.process.pid})"


class _Programs:
    """The ``--with`` programs, each in a session of its own (see the module's docstring)."""

    def __init__(self, env: dict[str, str], http: str | None) -> None:
        self._env = env
        self._http = http
        self.running: list[_Program] = []

    async def start(self, commands: Sequence[str]) -> None:
        from .._load import is_target
        from .._probes import parse_listen

        for command in commands:
            argv = shlex.split(command)
            target = is_target(command)
            if target:
                argv = [sys.executable, "-m", "natsreg", "run", command]
                if self._http is not None:
                    # Each service its own free port on the same interface; it prints where.
                    host, _ = parse_listen(self._http)
                    argv += ["--http", f"[{host}]:0" if ":" in host else f"{host}:0"]
            elif argv and argv[0].endswith(".py"):
                argv.insert(0, sys.executable)
            ours = None
            try:
                if target:
                    process, ours = await open_watched(argv, self._env, stdin=None)
                else:
                    process = await anyio.open_process(
                        argv,
                        env=self._env,
                        stdin=None,
                        stdout=None,
                        stderr=None,
                        start_new_session=True,
                    )
            except OSError as exc:
                raise _CliError(f"cannot run {command!r}: {exc}") from exc
            self.running.append(_Program(command, process, ours))
            _say(f"started {command} (pid {process.pid})")

    async def first_exit(self) -> _Program:
        """The first program to exit (waits for ever when there are none)."""
        exited: list[_Program] = []
        async with anyio.create_task_group() as tg:

            async def wait(program: _Program) -> None:
                await program.process.wait()
                exited.append(program)
                tg.cancel_scope.cancel()

            for program in self.running:
                tg.start_soon(wait, program)
            if not self.running:
                await anyio.sleep_forever()
        return exited[0]

    async def stop(self) -> set[int]:
        """SIGTERM to each program (a natsreg service drains and says goodbye on it), and
        SIGKILL to any still running after ``_PROGRAM_STOP_S``; the pids of those stopped."""
        live = [p for p in self.running if p.process.returncode is None]
        async with anyio.create_task_group() as tg:
            for program in live:
                tg.start_soon(self._stopped, program)
        for program in self.running:
            if program.channel is not None:
                program.channel.close()
        return {program.process.pid for program in live}

    async def _stopped(self, program: _Program) -> None:
        def overdue() -> None:
            _say(
                f"{program.name} did not stop within {_PROGRAM_STOP_S:.0f} s of SIGTERM; "
                "killing it",
                logging.WARNING,
            )

        if await terminate(program.process, _PROGRAM_STOP_S, overdue):
            return
        returncode = program.process.returncode
        if program.channel is None and returncode in (0, -signal.SIGTERM):
            _say(f"{program.name} stopped")
        elif returncode:
            # A natsreg service says how it stopped itself; only a failure is said here.
            _say(f"{program.name} {why_exited(returncode)}")

    def kill(self) -> None:
        for program in self.running:
            if program.process.returncode is None:
                with suppress(ProcessLookupError):
                    program.process.kill()


def _invocation() -> str:
    """How to run natsreg from another terminal: by name where it is on PATH, else as this
    process was run (``.venv/bin/natsreg``, the README's way, is not on PATH)."""
    if shutil.which("natsreg") or Path(sys.argv[0]).name != "natsreg":
        return "natsreg"
    return shlex.quote(sys.argv[0])
