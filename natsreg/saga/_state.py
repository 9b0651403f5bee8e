"""A saga's state as it is kept in the key-value bucket, and the pure rules over it.

One entry per saga, under the saga's id: what the saga was asked to do (its payload and its
steps), where it stands (each step's status, the replies kept so far), who coordinates it and
how long its lease is, and its history. Every write replaces the whole entry, conditional on
the revision read last (compare-and-set), so two coordinators never both advance one saga.

Anyone who may write to the bucket can put anything there: :func:`decode` refuses an entry
that is not a saga this code wrote (wrong shape, wrong key, out of bounds), and the bounds
below keep an entry well under NATS' 1 MB message limit whatever the steps answer.

Pure: no I/O, no clock of its own. Wall time comes in as ``now`` and is only ever shown to
people; a lease is timed on the reader's monotonic clock (:class:`LeaseWatch`), so clocks that
disagree between machines do not matter.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from ..errors import ConfigError

__all__ = [
    "MAX_ERROR_CHARS",
    "MAX_HISTORY",
    "MAX_LEASE_S",
    "MAX_PAYLOAD_BYTES",
    "MAX_REPLY_BYTES",
    "MAX_STATE_BYTES",
    "MAX_STEPS",
    "MIN_LEASE_S",
    "SCHEMA_VERSION",
    "TERMINAL",
    "HistoryEntry",
    "LeaseWatch",
    "SagaState",
    "StepState",
    "begin",
    "check_id",
    "check_name",
    "decode",
    "encode",
    "is_valid_id",
    "next_action",
    "note",
    "settle",
    "stored_reply",
]

SCHEMA_VERSION = 1
#: Steps in one saga. With MAX_REPLY_BYTES each, the replies fill at most 512 KiB.
MAX_STEPS = 32
#: A step's reply is kept (and passed to the later steps) up to this size; a larger one is
#: kept as ``{"truncated": <its size in bytes>}``: store big results elsewhere and return a
#: reference to them.
MAX_REPLY_BYTES = 16 * 1024
#: The payload a saga is started with.
MAX_PAYLOAD_BYTES = 64 * 1024
#: Entries in a saga's history; past it the oldest (after the first) are dropped and counted.
MAX_HISTORY = 256
#: An error kept in the state or the history is cut to this length.
MAX_ERROR_CHARS = 500
#: A lease read from the bucket is kept within these bounds, so that a forged entry cannot
#: make a resumer wait for ever (or take over a live coordinator's saga at once).
MIN_LEASE_S = 0.1
MAX_LEASE_S = 300.0
#: Coordinator ids and other names kept in the state.
MAX_NAME_CHARS = 128

# A saga id is a KV key and a header value: letters, digits, '-' and '_' only (no '.', which
# KV keys allow but which would read as a token separator in the bucket's subjects).
_ID = re.compile(r"[A-Za-z0-9_-]{1,48}")

SagaStatus = Literal["running", "compensating", "completed", "compensated", "failed-compensation"]
StepStatus = Literal["pending", "started", "succeeded", "failed", "compensated", "dead"]
#: The statuses a saga ends in: nothing more will be done to it.
TERMINAL: frozenset[str] = frozenset({"completed", "compensated", "failed-compensation"})


def is_valid_id(value: str) -> bool:
    """Whether ``value`` may stand as a saga id (1-48 letters, digits, '-' or '_')."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_id(value: str) -> str:
    """``value`` if it is a valid saga id; ConfigError saying what one looks like otherwise."""
    if not is_valid_id(value):
        raise ConfigError(
            f"saga id {value!r} is not valid: use 1-48 letters, digits, '-' or '_' "
            "(e.g. 'order-42')"
        )
    return value


def check_name(value: str, what: str = "saga name") -> str:
    """``value`` if it may name a saga (the same rule as an id)."""
    if not is_valid_id(value):
        raise ConfigError(f"{what} {value!r} is not valid: use 1-48 letters, digits, '-' or '_'")
    return value


class StepState(msgspec.Struct, kw_only=True):
    """One step as the saga sees it. ``uncertain``: the step failed in a way that leaves its
    effect unknown (a timeout, its instance gone mid-call), so its own compensation runs
    too."""

    subject: str
    compensate: str | None = None
    status: StepStatus = "pending"
    error: str = ""
    uncertain: bool = False
    #: Compensation attempts made so far.
    attempts: int = 0


class HistoryEntry(msgspec.Struct, kw_only=True):
    """One line of a saga's history: when (wall time, for people), who, what, which step."""

    at: float
    coordinator: str
    event: str
    step: int = -1
    detail: str = ""


class SagaState(msgspec.Struct, kw_only=True):
    """Everything known about one saga: the value of its entry in the bucket."""

    schema: int = SCHEMA_VERSION
    id: str
    name: str
    status: SagaStatus = "running"
    payload: msgspec.Raw = msgspec.Raw(b"null")
    steps: list[StepState]
    coordinator: str
    #: The coordinator renews its lease at least this often by writing the entry again
    #: (``beat`` + 1); a resumer that sees no new revision for this long may take over.
    lease_s: float
    beat: int = 0
    #: The reply of each step that succeeded, by its subject (what later steps receive).
    replies: dict[str, msgspec.Raw] = {}
    #: Why the saga is compensating (the failed step's error).
    error: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    history: list[HistoryEntry] = []
    history_dropped: int = 0

    @property
    def done(self) -> bool:
        """Whether the saga has ended (completed, compensated or failed compensation)."""
        return self.status in TERMINAL


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SagaState)


def encode(state: SagaState) -> bytes:
    """The entry's value."""
    return _encoder.encode(state)


def decode(key: str, value: bytes | None) -> SagaState | None:
    """The saga stored under ``key``, or None when the value is no saga this code would have
    written (garbage, a forged or foreign entry, another schema): such an entry is skipped,
    never acted on."""
    if not value or len(value) > MAX_STATE_BYTES:
        return None
    try:
        state = _decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if (
        state.schema != SCHEMA_VERSION
        or state.id != key
        or not is_valid_id(state.id)
        or not is_valid_id(state.name)
        or not 0 < len(state.steps) <= MAX_STEPS
        or len(state.replies) > len(state.steps)
        or len(state.coordinator) > MAX_NAME_CHARS
        or len(state.history) > MAX_HISTORY
        or not MIN_LEASE_S <= state.lease_s <= MAX_LEASE_S
    ):
        return None
    return state


#: Bounds of one entry: payload, replies, history of bounded lines, and room for the rest
#: (about 830 KiB, under NATS' default max_payload of 1 MB).
MAX_STATE_BYTES = (
    MAX_PAYLOAD_BYTES
    + MAX_STEPS * (MAX_REPLY_BYTES + 2 * MAX_ERROR_CHARS + 1024)
    + MAX_HISTORY * (MAX_ERROR_CHARS + MAX_NAME_CHARS + 128)
    + 4096
)


def stored_reply(data: bytes) -> msgspec.Raw:
    """What is kept of a step's reply: the JSON it is, a string when it is not JSON, and
    ``{"truncated": size}`` past MAX_REPLY_BYTES."""
    if len(data) > MAX_REPLY_BYTES:
        return msgspec.Raw(_encoder.encode({"truncated": len(data)}))
    if not data.strip():
        return msgspec.Raw(b"null")
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError:
        text = data.decode(errors="replace")
        return msgspec.Raw(_encoder.encode(text))
    return msgspec.Raw(data)


def note(state: SagaState, now: float, event: str, *, step: int = -1, detail: str = "") -> None:
    """Add a line to ``state``'s history (as its current coordinator), keeping it bounded:
    the first line (who started the saga) stays, the oldest after it go first."""
    state.history.append(
        HistoryEntry(
            at=now,
            coordinator=state.coordinator,
            event=event,
            step=step,
            detail=detail[:MAX_ERROR_CHARS],
        )
    )
    state.updated_at = now
    excess = len(state.history) - MAX_HISTORY
    if excess > 0:
        del state.history[1 : 1 + excess]
        state.history_dropped += excess


Action = Literal["step", "compensate", "completed", "compensated", "failed-compensation"]


def next_action(state: SagaState) -> tuple[Action, int] | None:
    """What the coordinator does next, and to which step (-1: the saga as a whole); None
    once the saga has ended.

    Forward, the first step not yet succeeded runs, including one marked ``started`` (the
    coordinator that started it may have died before recording its reply: at least once).
    Backward, the latest step that may have taken effect and has a compensation is undone.
    """
    if state.status == "running":
        for index, step in enumerate(state.steps):
            if step.status in ("pending", "started"):
                return "step", index
        return "completed", -1
    if state.status == "compensating":
        for index in range(len(state.steps) - 1, -1, -1):
            step = state.steps[index]
            took_effect = step.status == "succeeded" or (step.status == "failed" and step.uncertain)
            if step.compensate is not None and took_effect:
                return "compensate", index
        if any(step.status == "dead" for step in state.steps):
            return "failed-compensation", -1
        return "compensated", -1
    return None


def begin(state: SagaState, index: int, now: float) -> None:
    """Mark step ``index`` started. Written before the step is called, so that whoever finds
    a step started knows it may have run."""
    step = state.steps[index]
    again = step.status == "started"
    step.status = "started"
    detail = "again: the coordinator before may have run it" if again else step.subject
    note(state, now, "step-started", step=index, detail=detail)


def settle(state: SagaState, now: float) -> int | None:
    """Record, in the same write as the change just made, what follows from it when that
    needs no call: the next step started (its index is returned), or the saga's end. One
    write per step instead of two."""
    match next_action(state):
        case ("step", index):
            begin(state, index, now)
            return index
        case ("completed" | "compensated" | "failed-compensation" as end, _):
            state.status = end
            note(state, now, end)
    return None


class LeaseWatch:
    """Which sagas' coordinators have gone silent, timed on the reader's monotonic clock.

    A live coordinator writes its saga's entry at least every ``lease_s`` (its renewals bump
    the revision). A saga whose revision a reader has seen unchanged for ``lease_s`` of the
    reader's own time has no live coordinator, whatever the machines' wall clocks say.
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, float]] = {}

    def expired(self, saga_id: str, revision: int, lease_s: float, now: float) -> bool:
        """Record ``revision`` as seen at ``now``; whether it has stood still for the lease."""
        seen = self._seen.get(saga_id)
        if seen is None or seen[0] != revision:
            self._seen[saga_id] = (revision, now)
            return False
        return now - seen[1] >= min(max(lease_s, MIN_LEASE_S), MAX_LEASE_S)
