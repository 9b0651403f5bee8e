"""At most once: what a service remembers of recent calls, so that a repeat of a request id
is answered from memory instead of running the handler a second time.

A natsreg client sends the same ``Natsreg-Request-Id`` on every attempt of one call. A repeat
reaches the instance that already has the call when a forged or lost reply made the caller
try again, or when both a queue-group and a direct attempt arrive. The service then:

- answers a repeat of a finished call with the first reply (same data, same error headers);
- lets a repeat of a running call wait for that run, and answers both reply subjects;
- runs a call again only once the remembered window has passed.

Pure: no I/O and no clock of its own; the service passes its monotonic ``now``. The rules
and their bounds are described in docs/protocol.md, "At most once".
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable

from ..errors import ServiceError, error_headers

__all__ = [
    "JOINED",
    "MARGIN_S",
    "MAX_BYTES",
    "MAX_ENTRIES",
    "MAX_ID_CHARS",
    "MAX_REPLY_BYTES",
    "MAX_WAITERS",
    "MAX_WINDOW_S",
    "NO_BUDGET_WINDOW_S",
    "Memory",
    "is_valid_id",
    "remember_until",
]

#: Longest request id taken; a NUID is 22 characters, a UUID 36.
MAX_ID_CHARS = 64
#: Added to the call's budget: the budget starts when a request reaches the service, and a
#: later attempt of the same call may be delayed more than the first on its way here (nats-py's
#: buffer, a busy event loop, a route between servers). Those are milliseconds; one second is
#: generous and keeps an entry short-lived.
MARGIN_S = 1.0
#: Window of a request that carries an id but no budget (a hand-made request): twice the
#: natsreg client's default timeout.
NO_BUDGET_WINDOW_S = 10.0
#: Longest window, whatever budget a request claims, so that an entry always goes stale.
MAX_WINDOW_S = 600.0
#: Finished calls remembered at once. About 360 bytes each without the reply (about 6 MB in
#: all); at 2k calls a second (one busy instance, bench/rpc.py) that is 8 s of calls, longer
#: than the default window of 5 s + margin. Past it the oldest entry is forgotten and counted
#: (``evicted``): the retries that matter (after a forged or lost reply) come within
#: milliseconds of the first attempt, long before that.
MAX_ENTRIES = 16_384
#: Bytes of remembered replies (data and headers) at once. Past it the oldest replies are
#: dropped but their ids kept, so a repeat is refused (409) rather than run again.
MAX_BYTES = 16 * 1024 * 1024
#: A larger reply is not kept at all (its id is): 64 such replies fill MAX_BYTES.
MAX_REPLY_BYTES = 256 * 1024
#: Repeats that may wait for one running call; more are refused at once (409). A natsreg
#: client makes 3 attempts by default.
MAX_WAITERS = 16
#: How often expired entries are swept out (lookups check expiry themselves).
SWEEP_S = 0.25

# Printable ASCII without space: safe to echo in a header value and in a log line.
_ID = re.compile(rf"[!-~]{{1,{MAX_ID_CHARS}}}")

Reply = tuple[bytes, "dict[str, str] | None"]

#: :meth:`Memory.begin`'s answer when the request joined a call that is still running (told
#: apart by identity: it is no reply to send).
JOINED: Reply = (b"", None)


def is_valid_id(value: str) -> bool:
    """Whether ``value`` may stand as a request id: 1–64 printable ASCII characters, no
    space. Anything else is treated as if no id had been sent."""
    return _ID.fullmatch(value) is not None


def remember_until(deadline: float | None, now: float) -> float:
    """When a call that finished at ``now`` is forgotten: at the caller's ``deadline`` (the
    budget as the service received it) plus :data:`MARGIN_S`, or :data:`NO_BUDGET_WINDOW_S`
    after ``now`` without a budget; never later than :data:`MAX_WINDOW_S` after ``now``."""
    until = (now + NO_BUDGET_WINDOW_S if deadline is None else deadline) + MARGIN_S
    return min(until, now + MAX_WINDOW_S)


# A finished call: (expires at, data, headers, size of the reply). data and headers are None
# once the reply is not kept (too large, or dropped for room); the id still is. A tuple, not an
# object: the garbage collector stops tracking a tuple of plain values, and a full memory is
# 16k entries it would otherwise walk again and again (measured: half the cost of a call).
_Done = tuple[float, "bytes | None", "dict[str, str] | None", int]


def _already_ran(request_id: str, size: int) -> Reply:
    error = ServiceError(
        f"request {request_id} already ran on this instance; its reply ({size} bytes) was "
        "too large to keep, so it cannot be sent again, and the call is not run again",
        code=409,
    )
    return b"", error_headers(error)


def _already_running(request_id: str) -> Reply:
    error = ServiceError(
        f"request {request_id} is already running on this instance and has "
        f"{MAX_WAITERS} repeats waiting; not run again",
        code=409,
    )
    return b"", error_headers(error)


class Memory:
    """Recent calls of one service instance, keyed by ``(endpoint, request id)``.

    The service calls :meth:`begin` when a request with an id arrives and :meth:`finish`
    when its handler is done; :meth:`abandon` when it refused the request without running it.
    """

    def __init__(
        self,
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        max_waiters: int = MAX_WAITERS,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_reply_bytes = min(max_reply_bytes, max_bytes)
        self.max_waiters = max_waiters
        # key -> reply subjects of the repeats waiting for the run.
        self._running: dict[Hashable, list[str]] = {}
        # Finished calls in the order they finished, which is the order they are forgotten.
        # OrderedDicts, not dicts: a dict emptied from the front leaves dead slots that every
        # look at its first item scans again (measured: 10 us per call at the entry bound).
        self._done: OrderedDict[Hashable, _Done] = OrderedDict()
        # The calls of _done whose reply is still kept, oldest first, with its size: what to
        # drop for room.
        self._kept: OrderedDict[Hashable, int] = OrderedDict()
        self._bytes = 0
        self._next_sweep = 0.0
        #: Repeats answered from memory, repeats that joined a running call, replies too large
        #: to keep, replies dropped for room, ids forgotten before their time for room, and
        #: repeats refused because too many already wait.
        self.replayed = 0
        self.joined = 0
        self.not_kept = 0
        self.dropped_replies = 0
        self.evicted = 0
        self.refused = 0

    def begin(self, key: tuple[str, str], reply: str | None, now: float) -> Reply | None:
        """A request with id ``key[1]`` arrived for endpoint ``key[0]``.

        None: it is new, now marked running, and the caller runs it. :data:`JOINED`: the
        same call is running and ``reply`` will get its reply from :meth:`finish`. Otherwise
        ``(data, headers)``, the reply to send now without running anything.
        """
        waiters = self._running.get(key)
        if waiters is not None:
            if reply:
                if len(waiters) >= self.max_waiters:
                    self.refused += 1
                    return _already_running(key[1])
                waiters.append(reply)
            self.joined += 1
            return JOINED
        done = self._done.get(key)
        if done is not None and done[0] > now:
            self.replayed += 1
            if done[1] is None:
                return _already_ran(key[1], done[3])
            return done[1], done[2]
        self._running[key] = []
        return None

    def abandon(self, key: tuple[str, str]) -> None:
        """The call was refused before it ran (overload): nothing to remember."""
        self._running.pop(key, None)

    def finish(
        self,
        key: tuple[str, str],
        data: bytes,
        headers: dict[str, str] | None,
        *,
        remember: bool,
        expires_at: float,
        now: float,
    ) -> list[str]:
        """The run of ``key`` ended with ``(data, headers)``; returns the reply subjects of
        the repeats that waited for it. ``remember`` is False when the reply says a repeat is
        safe (nothing ran, or the service marked the error retryable): the id is forgotten.
        """
        waiters = self._running.pop(key, None) or []
        if now >= self._next_sweep:
            self._sweep(now)
        if not remember or expires_at <= now:
            return waiters
        if self._done.pop(key, None) is not None:
            self._forget(key)
        size = len(data)
        if headers:
            size += sum(len(k) + len(v) for k, v in headers.items())
        if size > self.max_reply_bytes:
            self._done[key] = (expires_at, None, None, size)
            self.not_kept += 1
        else:
            self._done[key] = (expires_at, data, headers, size)
            if size:
                self._kept[key] = size
                self._bytes += size
                while self._bytes > self.max_bytes:
                    self._drop_oldest_reply()
        if len(self._done) > self.max_entries:
            self._forget(self._done.popitem(last=False)[0])
            self.evicted += 1
        return waiters

    def stats(self) -> dict[str, int]:
        """Figures for operators: sizes now, and the counters since start."""
        return {
            "running": len(self._running),
            "remembered": len(self._done),
            "bytes": self._bytes,
            "replayed": self.replayed,
            "joined": self.joined,
            "not_kept": self.not_kept,
            "dropped_replies": self.dropped_replies,
            "evicted": self.evicted,
            "refused": self.refused,
        }

    def _sweep(self, now: float) -> None:
        # Entries leave in the order they finished; one with a longer window stops the sweep
        # for a while, which only delays freeing (lookups check expiry, and MAX_ENTRIES holds).
        self._next_sweep = now + SWEEP_S
        done = self._done
        while done:
            key = next(iter(done))
            if done[key][0] > now:
                return
            del done[key]
            self._forget(key)

    def _forget(self, key: Hashable) -> None:
        size = self._kept.pop(key, None)
        if size is not None:
            self._bytes -= size

    def _drop_oldest_reply(self) -> None:
        key, size = self._kept.popitem(last=False)
        self._bytes -= size
        # Assigning an existing key keeps its place in the order.
        expires_at, _, _, _ = self._done[key]
        self._done[key] = (expires_at, None, None, size)
        self.dropped_replies += 1
