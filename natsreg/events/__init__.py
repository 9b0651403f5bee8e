"""Durable events on JetStream (docs/events.md).

    events = natsreg.Events(nc)
    await events.emit("user.created", UserCreated(id=7, email="a@b"), key="user-7")

    @svc.on_event("user.created")   # one instance of the service handles each event
    async def welcome(ev: natsreg.Event[UserCreated]) -> None:
        await send_mail(ev.body.email)   # returning acks; raising retries with backoff

The parts: ``_settings`` (names, partitions, defaults: the rules every side shares),
``_streams`` (creating streams and consumers), ``_emit`` (Events), ``_event`` (Event),
``_consume`` (an instance's handlers), ``_dead`` (reading and replaying dead letters).
"""

from ._emit import Emitted, Events
from ._event import Event, EventHandler
from ._settings import PARTITIONS, EventOptions, EventSettings, StreamSettings
from ._streams import EventsUnavailableError

__all__ = [
    "PARTITIONS",
    "Emitted",
    "Event",
    "EventHandler",
    "EventOptions",
    "EventSettings",
    "Events",
    "EventsUnavailableError",
    "StreamSettings",
]
