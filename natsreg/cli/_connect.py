"""Connecting to NATS: the options every connecting command takes become one connection,
and every way that can fail (an unreadable file, a bad certificate, no server) one line."""

from __future__ import annotations

import argparse
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats
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
