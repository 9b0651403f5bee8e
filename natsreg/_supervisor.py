"""Worker processes under a supervisor: ``natsreg run --workers N`` and ``bridge --workers N``.

A worker is the same ``natsreg`` command without ``--workers``, started with two variables:
``NATSREG_WORKER`` (its number, which a service puts in its metadata) and
``NATSREG_READY_FD`` (the end of a socket pair on which it writes one line once it
serves). The supervisor restarts a worker that dies, and replaces workers one at a time on
SIGHUP (or on a code change, with ``--reload``): the new one must say it is ready before the
old one is asked to drain, so no request finds nobody serving.
"""

from __future__ import annotations

import os

__all__ = ["READY_FD_ENV", "WORKER_ENV", "tell_ready", "worker_number"]

WORKER_ENV = "NATSREG_WORKER"
READY_FD_ENV = "NATSREG_READY_FD"
_READY = b"ready\n"


def worker_number() -> str | None:
    """This process' worker number, when a supervisor started it."""
    return os.environ.get(WORKER_ENV)


def tell_ready() -> None:
    """Tell the supervisor, if any, that this worker serves; later calls do nothing."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), _READY)
        os.close(int(fd))
    except (OSError, ValueError):
        pass  # no supervisor listens any more: it is stopping, and so will we
