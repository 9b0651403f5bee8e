"""Where a request meets NATS: the client's reply inbox (:mod:`._mux`) and :class:`Reply`.

Every attempt of :meth:`natsreg.Client.request` and every plain request of the registry API
goes through :meth:`Transport.request`: NATS exceptions and ADR-32 error headers become
natsreg errors here, and nowhere else on the client's side.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS

from .. import _natspy, errors
from .._codec import Message
from ..errors import OutcomeUnknownError
from ._mux import Abandoned, ReplyMux


class Reply(Message):
    """A successful reply: ``data``, ``headers``, ``json()``, ``decode(Type)``, ``text()``."""

    __slots__ = ()


class Transport:
    """Sends requests on ``nc``; with ``mux`` (the client's), over the client's own reply
    inbox, else (the CLI's registry questions, a closed client) with ``nc.request``."""

    def __init__(self, nc: NATS, *, mux: bool = True) -> None:
        self.nc = nc
        _natspy.adopt(nc)  # headers parsed on receipt; a late PONG harmless
        self.mux = ReplyMux(nc)
        if not mux:
            self.mux.closed = True

    async def request(
        self,
        subject: str,
        data: bytes,
        timeout_s: float,
        headers: dict[str, str] | None,
        instance_id: str | None = None,
    ) -> Reply:
        """One request and its reply, or the natsreg error it amounts to. With
        ``instance_id``, the call ends at once with OutcomeUnknownError when :meth:`abandon`
        is called for that instance (the view learnt that it died)."""
        mux = self.mux
        try:
            if mux.closed:
                msg = await self.nc.request(subject, data, timeout=timeout_s, headers=headers)
            else:
                msg = await mux.request(subject, data, timeout_s, headers, instance_id)
        except Abandoned:
            raise OutcomeUnknownError(
                f"the instance serving {subject!r} went down before it answered: the call "
                "may or may not have run",
                subject=subject,
            ) from None
        except Exception as exc:
            raise errors.from_nats(exc, subject, timeout_s) from exc
        if msg.headers:
            error = errors.from_reply_headers(msg.headers, subject)
            if error is not None:
                raise error
        return Reply(subject, msg.data, msg.headers)

    def abandon(self, instance_id: str) -> None:
        """The instance died: whatever it was running for us will never be answered."""
        self.mux.abandon(instance_id)

    def busy(self) -> bool:
        """Whether a call to a chosen instance is in flight."""
        return self.mux.groups() > 0

    async def aclose(self) -> None:
        """Close the reply inbox after the calls in flight on it end; later requests use
        ``nc.request``."""
        await self.mux.aclose()
