"""How a registry node answers queries: one task, a bounded queue, answers cached per revision.

Anyone may send a query, and a ``list`` of a large fleet costs megabytes, so: a query waits
in a queue of at most :data:`MAX_QUEUED`; whole-view ``list`` queries wait in their own queue,
served only when no small query (``services``, ``stats``, one service or instance) waits, so
a flood of them cannot hold up ``natsreg ls``; a query the node can no longer help (its budget
ran out while it waited) is dropped unanswered; the same question at the same revision is
encoded once (a starting node's request for the whole view, ``<prefix>.sync.<node>``, is queued
with ``list`` and cached as it is, in its own compact encoding); and
answers go only to inboxes (``subjects.is_reply_subject``), never to a subject a requester
names to have the node publish there for it (reflection).
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .. import _figures, subjects, wire
from ..errors import BUDGET_HEADER, CODE_HEADER, ERROR_HEADER
from . import _gathered
from ._log import log, unsubscribe_all

if TYPE_CHECKING:
    from . import Registry


#: Queries waiting for the serving task, in each of the two queues (small, and whole-view
#: ``list``); beyond this a query is dropped (``query_overflow``).
#: At 30 full ``list`` answers a second this is several seconds of work, more than any
#: default budget, so a longer queue would only hold queries that expire anyway.
MAX_QUEUED = 256
#: The budget of a query that carries no ``Natsreg-Budget-Ms`` header: the CLI's own timeout.
DEFAULT_BUDGET_S = 2.0
#: A cached answer is reused for at most this long even at the same revision, so that the
#: ``age_s`` it reports is never older than this.
CACHE_S = 1.0
#: Distinct questions cached (``service.<name>`` and ``instance.<id>`` are many).
CACHE_ENTRIES = 64
#: Questions a sharded node gathers from its peers at once (each waits on the network, not
#: on this node); beyond this a question is dropped (``query_overflow``).
MAX_GATHERS = 16

_Key = tuple[str, ...]
#: The questions answered with the whole view, in many messages: queued apart (``_large``).
_WHOLE_VIEW = (("registry", "list"), ("sync",))
#: The ``query`` label of each question a node answers (anything else: ``unknown``).
QUERY_KINDS = ("list", "services", "service", "instance", "stats", "nodes", "sync", "unknown")
_Subscribe = Callable[[str, Callable[[Msg], Awaitable[None]], str], Awaitable[Subscription]]


class Queries:
    """The query side of ``registry``: :meth:`start` subscribes, :meth:`follow` takes or
    leaves the questions for warm nodes, :meth:`on_query` enqueues, :meth:`serve` answers;
    :meth:`close` when done. ``subscribe(subject, cb, queue)`` is the node's own."""

    def __init__(
        self,
        nc: NATS,
        registry: Registry,
        dropped: Counter[str],
        subscribe: _Subscribe,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nc = nc
        self._registry = registry
        self._dropped = dropped
        self._subscribe = subscribe
        self._clock = clock
        self._always: list[Subscription] = []
        # <prefix>.registry.> and <prefix>.sync.*, while warm (follow).
        self._warm: list[Subscription] = []
        # (expires at, query): small ones first, whole-view lists when none waits.
        self._small: deque[tuple[float, Msg]] = deque()
        self._large: deque[tuple[float, Msg]] = deque()
        self._wake = anyio.Event()
        self._closed = False
        # (question, revision, warming up, mass alert) -> (encoded at, encoded chunks)
        self._cache: OrderedDict[tuple[object, ...], tuple[float, list[bytes]]] = OrderedDict()
        #: Answers encoded (not served from the cache), for tests and benches.
        self.encoded = 0
        self._part_prefix = subjects.control_subject(registry.prefix, "part") + "."
        self._gathers: anyio.abc.TaskGroup | None = None
        self._gathering = 0
        #: How long answering took, by the kind of question (Prometheus).
        self.recording = _figures.enabled()
        self.latency = {kind: _figures.Latency() for kind in QUERY_KINDS}

    async def start(self) -> None:
        """Subscribe to what every node answers, warm or not."""
        prefix = self._registry.prefix
        self._always = [
            await self._subscribe(
                subjects.control_subject(prefix, "warming", ">"),
                self.on_query,
                subjects.REGISTRY_QUEUE,
            ),
            # Every node answers "who are you": no queue group, so each is heard.
            await self._subscribe(subjects.control_subject(prefix, "nodes"), self.on_query, ""),
        ]
        if self._registry.shard is not None:
            # Every sharded node gives its part of a question a peer gathers (_gathered.py).
            self._always.append(
                await self._subscribe(
                    subjects.control_subject(prefix, "part", "*", ">"), self.on_query, ""
                )
            )

    async def follow(self, warm: bool) -> None:
        """Take the questions for warm nodes while ``warm``, and only then.

        A node that may know less than a warm peer must not be the one that answers: it
        takes queries on <prefix>.registry.> only while warm. It always answers them on
        <prefix>.warming.>, where callers turn only when no node answers on the former
        (RegistryApi); from a warming node, such answers say warming_up. (A warm node
        answers there too: a caller that found no warm node an instant before its question
        reached one on its way to <prefix>.warming.> still gets an answer.) Likewise only a
        warm node gives its view to a starting one (<prefix>.sync.<node>).
        """
        if not warm and self._warm:
            subs, self._warm = self._warm, []
            await unsubscribe_all(subs)
        elif warm and not self._warm:
            prefix = self._registry.prefix
            # A sharded node takes the questions about one service only for those it
            # answers for (Shard), and gives no whole view to a starting peer.
            verbs: tuple[tuple[str, ...], ...] = (("registry", ">"), ("sync", "*"))
            if self._registry.shard is not None:
                verbs = tuple(("registry", v) for v in ("list", "services", "stats"))
                verbs += (("registry", "instance", "*"),)
            self._warm = [
                await self._subscribe(
                    subjects.control_subject(prefix, *verb), self.on_query, subjects.REGISTRY_QUEUE
                )
                for verb in verbs
            ]
            log.info("registry node %s is warm: answering queries", self._registry.node_id)

    async def close(self) -> None:
        """Stop taking queries: unsubscribed, and those still arriving are ignored."""
        self._closed = True
        self._small.clear()
        self._large.clear()
        subs, self._always, self._warm = [*self._always, *self._warm], [], []
        await unsubscribe_all(subs)

    async def on_query(self, msg: Msg) -> None:
        """The NATS callback: check the reply subject and enqueue, never more."""
        if not msg.reply:
            return
        if not subjects.is_reply_subject(msg.reply):
            self._dropped["reply_subject"] += 1
            return
        if self._closed or self._asked_by_me(msg.subject):
            return
        queue = self._large if self._question(msg.subject) in _WHOLE_VIEW else self._small
        if len(queue) >= MAX_QUEUED:
            self._dropped["query_overflow"] += 1
            return
        queue.append((self._clock() + _budget_s(msg), msg))
        self._wake.set()

    async def serve(self) -> None:
        """Answer queued queries one at a time, forever (those a sharded node gathers, in
        tasks of their own: their wait for peers holds up nobody)."""
        async with anyio.create_task_group() as self._gathers:
            await self._serve_queued()

    async def _serve_queued(self) -> None:
        while True:
            if not (self._small or self._large):
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            if self._small:
                await self._serve_one(*self._small.popleft())
            else:
                await self._serve_one(*self._large.popleft(), interleave=True)

    async def _serve_one(self, expires_at: float, msg: Msg, *, interleave: bool = False) -> None:
        if self._clock() >= expires_at:
            self._dropped["query_expired"] += 1
            return
        if not self.recording:
            await self._answer_one(msg, interleave)
            return
        started = time.perf_counter()
        try:
            await self._answer_one(msg, interleave)
        finally:
            tokens = self._question(msg.subject)
            kind = tokens[1] if len(tokens) > 1 and tokens[0] == "registry" else tokens[0]
            latency = self.latency.get(kind) or self.latency["unknown"]
            latency.observe(time.perf_counter() - started)

    async def _answer_one(self, msg: Msg, interleave: bool) -> None:
        shard = self._registry.shard
        if shard is not None and not msg.subject.startswith(self._part_prefix):
            question = self._question(msg.subject)
            if _gathered.gathers(question, shard) and self._gathers is not None:
                if self._gathering >= MAX_GATHERS:
                    self._dropped["query_overflow"] += 1
                    return
                self._gathering += 1
                self._gathers.start_soon(self._answer_gathered, msg, question)
                return
        chunks = self._answer(msg.subject)
        if chunks is None:
            await self._publish(
                msg,
                b"",
                {ERROR_HEADER: f"unknown registry query {msg.subject[:200]!r}", CODE_HEADER: "400"},
            )
            return
        for n, chunk in enumerate(chunks):
            if n and interleave:
                # A whole view is many messages, each a moment to encode and send: let NATS
                # hand over new queries, and answer the small ones in between.
                await anyio.lowlevel.checkpoint()
                while self._small:
                    await self._serve_one(*self._small.popleft())
            if not await self._publish(msg, chunk):
                return

    async def _answer_gathered(self, msg: Msg, question: _Key) -> None:
        assert self._registry.shard is not None
        try:
            answer = await _gathered.answer(
                self._nc, self._registry, self._registry.shard, question
            )
            if isinstance(answer, wire.ServiceList):
                await self._publish(msg, wire.encode(answer))
                return
            for chunk in _chunks(answer, self._nc.max_payload):
                if not await self._publish(msg, chunk):
                    return
                await anyio.lowlevel.checkpoint()
        finally:
            self._gathering -= 1

    def _asked_by_me(self, subject: str) -> bool:
        # A sharded node's own gathering question: it has its part already (_gathered.py).
        return subject.startswith(f"{self._part_prefix}{self._registry.node_id}.")

    async def _publish(self, msg: Msg, data: bytes, headers: dict[str, str] | None = None) -> bool:
        try:
            await self._nc.publish(msg.reply, data, headers=headers)
        except nats.errors.Error as exc:
            # Disconnected or closing: this answer is lost, the node is not.
            self._dropped["query_unsent"] += 1
            log.debug("could not answer %s: %s", msg.subject, exc)
            return False
        return True

    def _answer(self, subject: str) -> Iterable[bytes] | None:
        """The answer's messages, from the cache or encoded as they are taken (and then
        cached); None for a question the node does not know."""
        registry = self._registry
        tokens = self._question(subject)
        match tokens:
            case ("registry", "stats") | ("nodes",):
                return [wire.encode(registry.stats())]  # small, and counters move: not cached
            case ("registry", "list") | ("registry", "services") | ("sync",):
                pass
            case ("registry", "service" | "instance", _):
                pass
            case _:
                return None
        if registry.warming_up:
            # Its answers tell how long warm-up has left, and warm-up is short: not cached.
            return self._encode(tokens)
        key = (tokens, *registry.answer_version())
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < CACHE_S:
            return cached[1]
        return self._encode_and_keep(key, tokens, now)

    def _question(self, subject: str) -> _Key:
        # <prefix>.registry.<verb>[.<argument>], asked of warm nodes; the same question on
        # <prefix>.warming.… is asked of warming ones (follow), and
        # <prefix>.nodes of every node. <prefix>.sync.<node> is a starting node asking a warm
        # one for its whole view (registry/_sync.py): ("sync",).
        # <prefix>.part.<node>.<verb>... is a sharded peer asking for this node's own part.
        tokens = tuple(subject[len(self._registry.prefix) + 1 :].split("."))
        if tokens[0] == "sync":
            return ("sync",)
        if tokens[0] == "part":
            return ("registry", *tokens[2:])
        return ("registry", *tokens[1:]) if tokens[0] == "warming" else tokens

    def _encode_and_keep(
        self, key: tuple[object, ...], tokens: _Key, now: float
    ) -> Iterator[bytes]:
        self.encoded += 1
        chunks = []
        for chunk in self._encode(tokens):
            chunks.append(chunk)
            yield chunk
        # Older revisions are never asked for again: keep only the newest answers.
        self._cache[key] = (now, chunks)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)

    def _encode(self, tokens: _Key) -> Iterator[bytes]:
        registry = self._registry
        match tokens:
            case ("registry", "list"):
                snapshot = registry.snapshot()
            case ("registry", "service", name):
                snapshot = registry.snapshot(name=name)
            case ("registry", "instance", instance_id):
                snapshot = registry.snapshot(instance_id=instance_id)
            case ("sync",):
                yield from registry.sync_answer(self._nc.max_payload)
                return
            case _:
                yield wire.encode(registry.service_list())
                return
        yield from _chunks(snapshot, self._nc.max_payload)


def _budget_s(msg: Msg) -> float:
    raw = msg.headers.get(BUDGET_HEADER) if msg.headers else None
    if raw is None:
        return DEFAULT_BUDGET_S
    try:
        budget_s = int(raw) / 1000
    except ValueError:
        return DEFAULT_BUDGET_S
    return budget_s if math.isfinite(budget_s) and budget_s >= 0 else DEFAULT_BUDGET_S


def _chunks(snapshot: wire.Snapshot, max_bytes: int) -> Iterator[bytes]:
    """``snapshot`` encoded as one or more messages of at most ``max_bytes`` each, numbered
    from 0 (``part``), each saying how many instances the whole answer holds (``total``)."""
    instances = snapshot.instances
    total = len(instances)
    size, start, number = 512, 0, 0
    while True:
        part = instances[start : start + size]
        more = start + size < total
        payload = wire.encode(
            msgspec.structs.replace(snapshot, instances=part, more=more, part=number, total=total)
        )
        if len(payload) > max_bytes and size > 1:
            size //= 2
            continue
        yield payload
        if not more:
            return
        start += size
        number += 1
