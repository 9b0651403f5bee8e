"""OpenTelemetry spans for calls and handlers, when ``natsreg[otel]`` is installed and a
tracer provider is configured (``opentelemetry.trace.set_tracer_provider``); else nothing.

Spans follow OpenTelemetry's semantic conventions for messaging: a CLIENT span ``request
<subject>`` around each :meth:`natsreg.Client.request` (retries included), a SERVER span
``process <subject>`` around each handler, ``messaging.system`` ``nats``, the subject as
``messaging.destination.name``, and on failure the error code as ``error.type`` with the
span's status ERROR. The W3C context of these spans is what travels in the headers
(:mod:`natsreg._trace`), so a trace crosses natsreg hops and any other OpenTelemetry-traced
code alike.

A provider is configured through OpenTelemetry's API, so until something imports that API
there is none: natsreg loads OpenTelemetry (and :mod:`natsreg._otelcalls`, which makes the
spans) only then, and a process that traces nothing does not pay for importing it (~50 ms of
every start of the CLI).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from ._otelcalls import client_span, end, server_span

__all__ = ["client_span", "end", "server_span", "tracer"]

_modules = sys.modules
_api: ModuleType | None = None  # OpenTelemetry's, once something has imported it
_provider: object = None
_tracer: Tracer | None = None


def tracer() -> Tracer | None:
    """natsreg's tracer from the configured global provider; None if there is none (or
    OpenTelemetry is not installed). For the SDK's provider, a
    :class:`natsreg._otelspans.Recorder` for its tracer.

    Runs on every request: it reads the API's module global rather than calling
    ``get_tracer_provider()``, which looks the environment up each time (about 1 µs).
    """
    global _api, _provider, _tracer
    if _api is None:
        _api = _modules.get("opentelemetry.trace")
        if _api is None:
            return None
    provider = getattr(_api, "_TRACER_PROVIDER", None)
    if provider is _provider:
        return _tracer
    from ._otelcalls import tracer_for

    _provider = provider
    _tracer = None if provider is None else tracer_for(provider)
    return _tracer


def __getattr__(name: str) -> Any:
    # client_span, server_span and end: from natsreg._otelcalls, loaded once a tracer is in use
    # (only then are they called), and kept here for the calls after.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import _otelcalls

    value = getattr(_otelcalls, name)
    globals()[name] = value
    return value


if "OTEL_PYTHON_TRACER_PROVIDER" in os.environ:
    # A provider named in the environment is loaded on the first get_tracer_provider().
    try:
        from opentelemetry import trace
    except ImportError:
        pass
    else:
        trace.get_tracer_provider()
