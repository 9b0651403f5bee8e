"""Log lines as text or JSON, each naming the service instance and the trace it belongs to.

natsreg logs through the standard :mod:`logging` module, on loggers under ``natsreg``
(``natsreg.service``, ``natsreg.registry``, ``natsreg.bridge``, ``natsreg.cli``). A program
of its own gets the lines ``natsreg <command> --log-format json`` writes with::

    natsreg.logs.configure(format="json")

or adds the pieces to a logging setup it already has::

    handler.addFilter(natsreg.logs.ContextFilter())  # %(service)s, %(trace_id)s... in any format
    handler.setFormatter(natsreg.logs.JsonFormatter())

A line written by a service instance, or by anything a handler calls, names the service and
the instance; a line written while a traced request is handled or made names its trace and
span (W3C ids, lower-case hex).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

import msgspec

from . import _origin, _trace
from .errors import ConfigError

__all__ = ["ENV", "FORMATS", "ContextFilter", "JsonFormatter", "TextFormatter", "configure"]

#: The formats :func:`configure` and ``--log-format`` take.
FORMATS = ("text", "json")
#: The environment variable that chooses the format when none is given.
ENV = "NATSREG_LOG_FORMAT"

# The fields a line may carry besides time, level, logger and message, in their JSON order.
_CONTEXT = ("service", "instance", "trace_id", "span_id")

# Anything msgspec cannot encode (a caller's own object in ``fields``) is written as its repr.
_encode = msgspec.json.Encoder(enc_hook=repr).encode


class ContextFilter(logging.Filter):
    """Sets ``service``, ``instance``, ``trace_id`` and ``span_id`` on each record (None where
    the line has none), so any format string can name them: ``%(trace_id)s``.

    Add it to the handler, so it reads them in the task that writes the line (before a
    :class:`logging.handlers.QueueHandler` hands the record to another thread). A value the
    caller passed itself (``extra={"service": ...}``) is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        _stamp(record)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, RFC 3339, milliseconds), ``level`` (lower case),
    ``logger``, ``message``; then ``service``, ``instance``, ``trace_id`` and ``span_id``, each
    only when the line has one; ``exception`` (the traceback) and ``stack`` when logged with
    them; then ``fields``, the same on every line (``{"worker": "2"}``).
    """

    def __init__(self, fields: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self._fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        _stamp(record)
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _CONTEXT:
            value = getattr(record, name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        for name, value in self._fields.items():
            line.setdefault(name, value)
        return _encode(line).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [service=… instance=… trace_id=… span_id=…]: message``, the brackets
    naming only what the line has (and left out when it has nothing)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(natsreg_context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        _stamp(record)
        named = " ".join(
            f"{name}={value}" for name in _CONTEXT if (value := getattr(record, name)) is not None
        )
        record.natsreg_context = f" [{named}]" if named else ""
        return super().format(record)


def configure(
    format: str | None = None,
    *,
    level: int | str = logging.INFO,
    stream: IO[str] | None = None,
    fields: Mapping[str, object] | None = None,
) -> logging.Handler:
    """Write every logger's lines at ``level`` and above to ``stream`` (standard error) as
    ``format``: ``"text"`` or ``"json"`` (default: ``$NATSREG_LOG_FORMAT``, else text).

    Replaces the root logger's handlers, as ``logging.basicConfig(force=True)`` does;
    ``fields`` go on every JSON line. Returns the handler it installed.
    """
    chosen = format or os.environ.get(ENV) or "text"
    if chosen not in FORMATS:
        raise ConfigError(f"log format {chosen!r}: use 'text' or 'json'")
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter(fields) if chosen == "json" else TextFormatter())
    logging.basicConfig(handlers=[handler], level=level, force=True)
    return handler


def _stamp(record: logging.LogRecord) -> None:
    # Idempotent: the filter and the formatter both stamp, and what is set stays.
    fields = record.__dict__
    origin = _origin.current.get()
    ids = _trace.ids()
    values = (*(origin or (None, None)), *(ids or (None, None)))
    for name, value in zip(_CONTEXT, values, strict=True):
        fields.setdefault(name, value)
