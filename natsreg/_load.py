"""``MODULE:ATTR`` to the :class:`natsreg.Service` it names, as ``natsreg run`` takes it.

Every way it can fail is one :class:`~natsreg.ConfigError` that says what to do, and a
mistake in the user's module names its file and line.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigError
from .service import Service

__all__ = ["hook_failure", "is_target", "load_service", "where"]

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
        raise ConfigError(f"importing {module_name} failed: {where(exc)}") from exc
    except SyntaxError as exc:
        place = _shown(exc.filename) if exc.filename else "?"
        raise ConfigError(
            f"importing {module_name} failed: {exc.msg} ({place}, line {exc.lineno})"
        ) from None
    except Exception as exc:
        raise ConfigError(f"importing {module_name} failed: {where(exc)}") from exc
    found: object = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"{module_name} has no {attr!r}: name the natsreg.Service in it")
        found = getattr(found, part)
    if not isinstance(found, Service):
        raise ConfigError(f"{target} is a {type(found).__name__}, not a natsreg.Service")
    return found


def hook_failure(service: Service, exc: BaseException) -> str | None:
    """``exc`` in one line if one of ``service``'s ``on_start`` or ``on_stop`` hooks raised
    it (``on_start hook open_db failed: NameError: ... (user_service.py, line 19)``), else
    None."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # raised inside a task group
    hooks = {
        **{_code(hook): f"on_stop hook {_name(hook)}" for hook in service.stop_hooks},
        **{_code(hook): f"on_start hook {_name(hook)}" for hook in service.start_hooks},
    }
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if frame.f_code in hooks:
            return f"{hooks[frame.f_code]} failed: {where(exc)}"
    return None


def _code(hook: Callable[..., object]) -> object:
    return getattr(inspect.unwrap(hook), "__code__", None)


def _name(hook: Callable[..., object]) -> str:
    return getattr(hook, "__name__", repr(hook))


def where(exc: BaseException) -> str:
    """``exc`` in one line, ``NameError: ... (user_service.py, line 19)``: the place named is
    the innermost frame of the user's own code, not natsreg's (where a ConfigError is raised)
    nor a library's, so that it points at the line to fix."""
    frames = traceback.extract_tb(exc.__traceback__)
    theirs = [f for f in frames if not _is_natsreg(f.filename)]
    own = [f for f in theirs if not _is_library(f.filename)]
    chosen = own or theirs or frames
    place = f" ({_shown(chosen[-1].filename)}, line {chosen[-1].lineno})" if chosen else ""
    return f"{type(exc).__name__}: {exc}{place}"


_NATSREG = Path(__file__).resolve().parent
_LIBRARIES = tuple(
    {
        Path(sysconfig.get_path(key)).resolve()
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
    }
)


def _is_natsreg(filename: str) -> bool:
    return Path(filename).resolve().is_relative_to(_NATSREG)


def _is_library(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return True
    path = Path(filename).resolve()
    return any(path.is_relative_to(folder) for folder in _LIBRARIES)


def _shown(filename: str) -> str:
    # Relative to the folder natsreg runs in (where the user's module is), else as it is.
    path = Path(filename)
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return filename
