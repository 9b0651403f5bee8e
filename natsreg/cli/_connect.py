"""Connecting to NATS: the options every connecting command takes become one connection,
and every way that can fail (an unreadable file, a bad certificate, no server) one line."""

from __future__ import annotations

import argparse
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import anyio
from nats import errors
from nats.aio.client import Client as NATS

from ._output import _CliError

# The CLI's one logger, whichever module writes: users filter on its name.
log = logging.getLogger("natsreg.cli")


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
    outage = _Outage(args.server)

    async def on_error(exc: Exception) -> None:
        last_error[:] = [exc]
        if not connected:
            # Before the first connection, the one clear line below says it all.
            log.debug("NATS: %s", exc)
        elif outage.since is not None or _is_loss(exc):
            outage.failed(_reason(exc))
        else:
            log.warning("NATS: %s", exc)

    async def on_reconnected() -> None:
        outage.back()

    options: dict[str, Any] = {
        "servers": [args.server],
        "name": f"natsreg-{args.command}",
        "connect_timeout": 2,
        "error_cb": on_error,
        "reconnected_cb": on_reconnected,
        # nats-py reads 0 as "retry for ever"; 1 with a short wait fails within a second.
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.2,
    }
    # nats-py reads the creds file only while connecting, and its error reads as if the
    # server were unreachable.
    _check_readable("--creds", args.creds)
    _check_url(args.server)
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
        nc = await _dial(args.server, options)
    except _CliError:
        raise
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


def _is_loss(exc: Exception) -> bool:
    # The connection broke (end of stream, stale, a socket error); nats-py's own timeouts are
    # OSErrors too, but a slow flush is no outage.
    return isinstance(exc, errors.StaleConnectionError) or (
        isinstance(exc, OSError) and not isinstance(exc, errors.Error)
    )


#: How often a command cut off from NATS says again that it still is.
_REMIND_S = 60.0


class _Outage:
    """What a connected command says while NATS is unreachable: a line when the connection
    is lost, a reminder every minute, a line when it is back. nats-py reports every failed
    reconnect (once a second): a line each would bury every other line, for ever."""

    def __init__(self, server: str) -> None:
        self._server = server
        #: Monotonic time the outage began, None while connected.
        self.since: float | None = None
        self._since_clock = ""
        self._reminded = 0.0

    def failed(self, why: str) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since, self._reminded = now, now
            self._since_clock = datetime.now().strftime("%H:%M:%S")
            log.warning(
                "lost NATS at %s (%s); reconnecting until it is back: is the nats-server running?",
                self._server,
                why,
            )
        elif now - self._reminded >= _REMIND_S:
            self._reminded = now
            log.warning(
                "NATS at %s unreachable since %s (%s, %s); still reconnecting",
                self._server,
                self._since_clock,
                _duration(now - self.since),
                why,
            )

    def back(self) -> None:
        if self.since is not None:
            log.warning(
                "NATS at %s is back after %s",
                self._server,
                _duration(time.monotonic() - self.since),
            )
        self.since = None


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


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
        await _close(nc)


async def _delivered(nc: NATS) -> bool:
    """Whether everything published on ``nc`` so far has reached the server: connected, and
    a ping answered. While nats-py reconnects it buffers what is published, and its flush()
    then returns without a round trip, so connected is checked first."""
    if not nc.is_connected:
        return False
    try:
        await nc.flush(timeout=2)
    except Exception as exc:
        log.debug("flush: %s", exc)
        return False
    return nc.is_connected


async def _close(nc: NATS) -> None:
    """Close ``nc`` whatever its state: cut off from NATS, nats-py's close can fail on the
    broken transport, which matters to no one once the command is done."""
    try:
        await nc.close()
    except Exception as exc:
        log.debug("close: %s", exc)


#: What nats-py dials: NATS' own protocol, bare or in TLS or a WebSocket.
_SCHEMES = ("nats", "tls", "ws", "wss")


def _check_url(server: str) -> None:
    # nats-py reads http://host:4222 as a host named "http" ("Name or service not known").
    for url in server.split(","):
        scheme, sep, rest = url.strip().partition("://")
        if sep and scheme.lower() not in _SCHEMES:
            raise _CliError(
                f"{url.strip()!r} is not a NATS URL: use nats://{rest} (or tls://, ws://, "
                "wss://) in --server / NATS_URL; NATS speaks its own protocol, not "
                f"{scheme}"
            )


#: How long a connection may go without a NATS greeting before natsreg looks at what
#: answers: a nats-server sends its INFO line as soon as it accepts a connection.
_PATIENCE_S = 0.5


async def _dial(server: str, options: dict[str, Any]) -> NATS:
    """``nats.connect(**options)``, given up at once if what listens at ``server`` is not
    a NATS server (an HTTP server on that port), which nats-py would wait on silently, twice
    its connect timeout, and then call unreachable."""
    nc = NATS()
    verdict: list[str] = []
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:

        async def diagnose() -> None:
            await anyio.sleep(_PATIENCE_S)
            problem = await _not_nats(server)
            if problem is not None:
                verdict.append(problem)
                tg.cancel_scope.cancel()

        tg.start_soon(diagnose)
        try:
            await nc.connect(**options)
        except Exception as exc:
            failure = exc
        tg.cancel_scope.cancel()
    if not verdict and failure is not None and not isinstance(failure, OSError):
        # Failed before the patience ran out, on what it was sent (a banner that is no
        # INFO line): refused, unreachable or timed out (OSErrors) need no second look.
        problem = await _not_nats(server)
        verdict.extend([problem] if problem else [])
    if verdict:
        await _close(nc)
        raise _CliError(
            f"not a NATS server at {server}: {verdict[0]}; pass the NATS server's address "
            "(port 4222 by default) with --server / NATS_URL, or start one with 'natsreg up'"
        )
    if failure is not None:
        raise failure
    return nc


async def _not_nats(server: str) -> str | None:
    """What shows that the first address in ``server`` is no NATS server, or None: it sent
    the NATS greeting, or cannot be reached at all (nats-py says why)."""
    first = server.split(",")[0].strip()
    url = urlsplit(first if "://" in first else f"nats://{first}")
    if url.scheme not in ("nats", "tls"):
        return None  # a WebSocket speaks HTTP first
    try:
        port = url.port or 4222
        with anyio.fail_after(1.0):
            stream = await anyio.connect_tcp(url.hostname or "127.0.0.1", port)
    except (OSError, ValueError, TimeoutError):
        return None
    async with stream:
        try:
            with anyio.fail_after(_PATIENCE_S):
                greeting = await stream.receive(64)
        except TimeoutError:
            return "it accepted the connection but sent no NATS greeting"
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return "it closed the connection without a NATS greeting"
    if greeting.startswith(b"INFO"):
        return None
    return f"it answered {greeting[:32].decode(errors='replace')!r}, not a NATS greeting"
