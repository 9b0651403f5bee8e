"""Requests and their replies over one inbox subscription of the client's own.

A drop-in for ``nc.request`` on the hot path: same arguments, same reply ``Msg``, same
exceptions (``nats.errors.TimeoutError``, ``nats.errors.NoRespondersError`` and whatever
``publish`` raises), which :func:`natsreg.errors.from_nats` translates as before.

Why not ``nc.request``: per call it reads random bytes from the OS (``secrets.token_hex``),
builds a NUID, and waits through ``asyncio.wait_for``; its reply then goes through the inbox
subscription's queue and task before the caller wakes. Here a token is a counter, and the reply
resolves the caller's future straight from the connection's read loop. Timeouts share one
``loop.call_at`` timer, armed for the earliest deadline: a timer per request (create, then
cancel when the reply comes) costs ~0.85 µs, and nearly every request is answered long before
its deadline. Measured in bench/RESULTS.md ("RPC").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..errors import NO_RESPONDERS_STATUS, STATUS_HEADER


class Abandoned(Exception):
    """The request's group was abandoned (:meth:`ReplyMux.abandon`) before its reply came."""


# Resolves the future of an abandoned request; never a real reply.
_ABANDONED = Msg(None, subject="")  # type: ignore[arg-type]


class _Dispatch:
    """Stands in for the future of nats-py's ``subscribe(..., future=...)``.

    nats-py hands a message for such a subscription to ``future.set_result`` directly from
    its read loop, after asking ``future.cancelled()``, and keeps the subscription after the
    first message unless ``max_msgs`` says otherwise. A callback subscription (what
    ``nc.request`` itself uses) would queue each reply for a task of its own instead: one more
    task switch per reply, ~1.5 µs of CPU on this machine. tests/test_client_mux.py pins this
    contract against the installed nats-py.

    Runs inside nats-py's read loop: it must never raise.
    """

    __slots__ = ("set_result",)

    def __init__(self, deliver: Callable[[Msg], None]) -> None:
        self.set_result = deliver

    def cancelled(self) -> bool:
        return False


class HeaderLines(str):
    """Header lines natsreg wrote itself, sent as the value of the first (the attempt's
    budget: ``5000\r\nNatsreg-Request-Id: ...\r\ntraceparent: ...``), so that nats-py
    writes them as they are, one header's work for all of them.

    nats-py's ``publish`` checks each header name and cleans each value with
    ``value.strip().translate(...)`` (CR and LF to spaces), which costs ~13k instructions for
    a ``traceparent`` and ~9k for a request id, on every request (bench/RESULTS.md,
    "Tracing"): ``str.translate`` raises and clears a KeyError for every distinct character
    not in its table. Both are no-ops here, and the value's line breaks reach the wire as the
    header lines they are. Safe by construction: only what natsreg formats itself goes in (a
    budget in digits, a request id of URL-safe characters and hex, a ``traceparent`` of hex
    and dashes from a context that natsreg parsed, drew or formatted), never a caller's
    header or a received ``tracestate``, which go as ordinary headers and are cleaned.
    tests/test_client_mux.py pins this behaviour of the installed nats-py.
    """

    __slots__ = ()

    def strip(self, chars: str | None = None) -> HeaderLines:
        return self

    def translate(self, table: object) -> HeaderLines:
        return self


class ReplyMux:
    """One ``<inbox>.*`` subscription for every request of one client.

    Subscribed on the first request, so that it can be created without a running loop;
    nats-py subscribes it again after a reconnect, like any other subscription. A reply that
    comes after its request gave up (timeout, cancellation) finds no waiter and is dropped.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._sub: Subscription | None = None
        self._prefix = ""
        self._tokens = itertools.count(1)
        # reply subject -> (the caller's future, its deadline on the loop's clock)
        self._waiting: dict[str, tuple[asyncio.Future[Msg | None], float]] = {}
        # Armed at or before every waiting deadline, so that none is missed.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        # group -> the reply subjects of its requests in flight (see abandon()).
        self._groups: dict[str, set[str]] = {}
        self._lock: asyncio.Lock | None = None
        #: Set by aclose(): the client sends with nc.request from then on.
        self.closed = False

    async def request(
        self,
        subject: str,
        payload: bytes,
        timeout_s: float,
        headers: dict[str, str] | None,
        group: str | None = None,
    ) -> Msg:
        """What ``nc.request(subject, payload, timeout=timeout_s, headers=headers)`` does.

        With ``group`` (an instance id), :meth:`abandon` of that group ends the wait at once
        with :class:`Abandoned`.
        """
        if self._sub is None or self._nc.is_closed:
            await self._subscribe()
        reply = self._prefix + str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg | None] = loop.create_future()
        deadline = loop.time() + timeout_s
        self._waiting[reply] = (future, deadline)
        if deadline < self._timer_at:
            self._arm(loop, deadline)
        members = None
        if group is not None:
            members = self._groups.get(group)
            if members is None:
                members = self._groups[group] = set()
            members.add(reply)
        try:
            await self._nc.publish(subject, payload, reply=reply, headers=headers)
            msg = await future
        finally:
            del self._waiting[reply]
            if members is not None:
                members.discard(reply)
                # abandon() may have dropped this set already, and a newer one taken its place.
                if not members and self._groups.get(group) is members:  # type: ignore[arg-type]
                    del self._groups[group]  # type: ignore[arg-type]
            # Resolved already unless publish raised or the caller was cancelled; aclose()
            # waits on these futures, so none may stay pending.
            future.cancel()
        if msg is None:
            raise nats.errors.TimeoutError
        if msg is _ABANDONED:
            raise Abandoned
        if msg.headers and msg.headers.get(STATUS_HEADER) == NO_RESPONDERS_STATUS:
            raise nats.errors.NoRespondersError
        return msg

    def abandon(self, group: str) -> int:
        """End the wait of every request in flight in ``group`` with :class:`Abandoned`;
        returns how many there were. A reply that comes later is dropped."""
        count = 0
        for reply in self._groups.pop(group, ()):
            waiting = self._waiting.get(reply)
            if waiting is not None and not waiting[0].done():
                waiting[0].set_result(_ABANDONED)
                count += 1
        return count

    def groups(self) -> int:
        """How many groups have requests in flight."""
        return len(self._groups)

    async def aclose(self) -> None:
        """Let the requests in flight end (each within its own timeout), then unsubscribe.
        Safe to call twice; later requests raise RuntimeError (the client stops using it)."""
        self.closed = True
        while self._waiting:
            await asyncio.wait([future for future, _ in self._waiting.values()])
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        sub, self._sub = self._sub, None
        if sub is not None and not self._nc.is_closed:
            # The connection may have closed or begun draining meanwhile: nothing is left.
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _subscribe(self) -> None:
        if self.closed:
            raise RuntimeError("this reply mux is closed")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._nc.is_closed:
                # Its subscriptions are gone; publish below raises the connection's error.
                # Should the same connection object be connected again, subscribe anew then.
                self._sub = None
                if not self._prefix:
                    self._prefix = self._nc.new_inbox() + "."
                return
            if self._sub is None:
                inbox = self._nc.new_inbox()
                self._sub = await self._nc.subscribe(inbox + ".*", future=_Dispatch(self._deliver))  # type: ignore[arg-type]
                self._prefix = inbox + "."

    def _deliver(self, msg: Msg) -> None:
        waiting = self._waiting.get(msg.subject)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(msg)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._expire, loop)
        self._timer_at = when

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._timer_at = None, math.inf
        now = loop.time()
        next_at = math.inf
        for future, deadline in self._waiting.values():
            if deadline <= now:
                if not future.done():
                    # A result, not an exception: a caller cancelled meanwhile would leave
                    # an exception unretrieved, and asyncio would log it.
                    future.set_result(None)
            elif deadline < next_at:
                next_at = deadline
        if next_at < math.inf:
            self._arm(loop, next_at)
