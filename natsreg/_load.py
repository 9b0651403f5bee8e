"""``MODULE:ATTR`` to the :class:`natsreg.Service` it names, as ``natsreg run`` takes it.

Every way it can fail is one :class:`~natsreg.ConfigError` that says what to do, and a
mistake in the user's module names its file and line.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback

from .errors import ConfigError
from .service import Service

__all__ = ["is_target", "load_service"]

_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def is_target(text: str) -> bool:
    """Whether ``text`` reads as ``module:attr`` (and not as a command line)."""
    return _TARGET.fullmatch(text) is not None


def load_service(target: str) -> Service:
    """Import ``module`` from the current folder (as ``python -m`` would) and return its
    ``attr``, which must be a :class:`natsreg.Service`."""
    if not is_target(target):
        hint = target.removesuffix(".py").replace("/", ".")
        raise ConfigError(
            f"{target!r} is not MODULE:ATTR: write the module with dots and the Service's "
            f"name after a colon, e.g. {hint.partition(':')[0] or 'user_service'}:svc"
        )
    module_name, _, attr = target.partition(":")
    folder = os.getcwd()
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise ConfigError(
                f"no module {module_name!r} in {folder}: run natsreg from the folder that holds it"
            ) from None
        raise ConfigError(f"importing {module_name} failed: {_where(exc)}") from exc
    except SyntaxError as exc:
        raise ConfigError(
            f"importing {module_name} failed: {exc.msg} ({exc.filename}, line {exc.lineno})"
        ) from None
    except Exception as exc:
        raise ConfigError(f"importing {module_name} failed: {_where(exc)}") from exc
    found: object = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"{module_name} has no {attr!r}: name the natsreg.Service in it")
        found = getattr(found, part)
    if not isinstance(found, Service):
        raise ConfigError(f"{target} is a {type(found).__name__}, not a natsreg.Service")
    return found


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    place = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{place}"
