"""``natsreg``: run the system, look at it, call it.

The CLI only parses arguments, connects, and hands over to the roles; every failure it
expects ends in one line on stderr and a non-zero exit, never a traceback.

Where things are: :func:`main` and the command table here; the parser in ``_args`` (the
serving commands' arguments in ``_serve_args``); connecting in ``_connect``; the serving
commands in ``_serve`` and ``_up``; ``auth`` in ``_auth``; the commands that ask and print
in ``_lookups``, which hands ``docs``, ``events`` and ``saga`` their own modules (``_docs``,
``_events``, ``_saga``), checks payloads with ``_schema`` and says what a name that found
nothing may have meant with ``_hints``; every line and table the CLI writes in ``_output``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from .. import logs
from ..errors import NatsregError
from ._args import _parser
from ._auth import _cmd_auth
from ._lookups import (
    _cmd_docs,
    _cmd_events,
    _cmd_info,
    _cmd_ls,
    _cmd_request,
    _cmd_saga,
    _cmd_watch,
)
from ._output import _CliError, _json_lines, _say, _use_json_lines
from ._serve import _cmd_bridge, _cmd_registry, _cmd_run
from ._up import _cmd_up

__all__ = ["main"]

EXIT_FAILURE = 1

# The CLI's one logger, whichever module writes: users filter on its name.
log = logging.getLogger("natsreg.cli")

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
        if not _json_lines():
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
        if getattr(args, "verbose", False) and exc.__cause__ is not None:
            # -v: where the one line below came from (the user's code, NATS), as a traceback.
            log.info("natsreg %s failed:", args.command, exc_info=exc.__cause__)
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
    _use_json_lines(log_format == "json")
    from .._supervisor import worker_number

    worker = worker_number()
    logs.configure(
        "json" if _json_lines() else "text",
        level=logging.INFO if verbose else logging.WARNING,
        fields={"worker": worker} if worker else None,
    )
    # The command's own lines for the user (_say) are shown without -v.
    log.setLevel(logging.INFO)
    if _json_lines():
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
