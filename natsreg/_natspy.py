"""What natsreg sets on every nats-py connection it is given (:func:`adopt`).

- nats-py's parser of received headers, replaced by natsreg's faster one (:mod:`._headers`).
- A PONG that comes after its flush gave up no longer stops the connection. nats-py 2.16's
  ``Client.flush(timeout)`` queues a future for its PING's PONG and, when the timeout fires or
  the caller is cancelled, cancels that future but leaves it queued. When the late PONG comes,
  ``_process_pong`` sets the result of the cancelled future; the InvalidStateError this raises
  ends the read loop for good, while the client still says it is connected: nothing reaches the
  process again, and nats-server cuts it off a write deadline later (a registry node under load
  whose PONG came after a 1 s flush timeout was lost so). natsreg's ``_process_pong`` takes the
  PONG's future off the queue as nats-py does, and sets its result only if nobody gave up on it.

Both are set only where the installed nats-py has what they replace.
"""

from __future__ import annotations

import functools

from nats.aio.client import Client as NATS

from . import _headers

__all__ = ["adopt"]


def adopt(nc: NATS) -> None:
    """Set natsreg's header parser and PONG handling on ``nc``; nothing else changes."""
    _headers.install(nc)
    if callable(getattr(nc, "_process_pong", None)) and isinstance(
        getattr(nc, "_pongs", None), list
    ):
        nc._process_pong = functools.partial(_process_pong, nc)  # type: ignore[method-assign]


async def _process_pong(nc: NATS) -> None:
    pongs = nc._pongs
    if pongs:
        future = pongs.pop(0)
        if not future.done():  # a flush that timed out or was cancelled gave up on it
            future.set_result(True)
        nc._pongs_received += 1
        nc._pings_outstanding = 0
