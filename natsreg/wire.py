"""Every message natsreg puts on the wire, as msgspec Structs encoded to JSON.

Rules that keep old and new peers talking (msgspec's schema evolution): every control message
carries ``schema``; a new field always gets a default; a field never changes type; unknown
fields are ignored on decode. Instance-to-registry messages form one tagged union
(:data:`ControlMessage`, tag field ``type``) so one decoder reads them all.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

from . import _schemas, subjects

__all__ = [
    "MALFORMED",
    "MAX_CONTROL_BYTES",
    "MAX_DESCRIPTION_CHARS",
    "MAX_DISCOVER_JITTER_S",
    "MAX_ENDPOINTS",
    "MAX_EVENT_INTERESTS",
    "MAX_HEARTBEAT_S",
    "MAX_METADATA_KEYS",
    "MAX_METADATA_KEY_CHARS",
    "MAX_METADATA_VALUE_CHARS",
    "MAX_PACE_BYTES",
    "MAX_PACE_S",
    "MAX_PACE_VALID_S",
    "MAX_SUBJECT_CHARS",
    "MAX_TOKEN_CHARS",
    "MIN_HEARTBEAT_S",
    "MIN_REANNOUNCE_S",
    "NAME_PATTERN",
    "PREFIX_METADATA_KEY",
    "SCHEMA_VERSION",
    "SEMVER_PATTERN",
    "SRV_PING_TYPE",
    "Announce",
    "ControlMessage",
    "DisconnectAdvisory",
    "Discover",
    "Endpoint",
    "Event",
    "EventInterest",
    "Goodbye",
    "Health",
    "Heartbeat",
    "InstanceView",
    "Invalid",
    "Load",
    "MassExpiry",
    "NodeStats",
    "Pace",
    "Schemas",
    "ServiceList",
    "ServiceSummary",
    "ShardPresence",
    "Snapshot",
    "SrvEndpointInfo",
    "SrvEndpointStats",
    "SrvInfo",
    "SrvPing",
    "SrvStats",
    "SyncChunk",
    "SyncRow",
    "SyncShape",
    "check",
    "check_emits",
    "check_metadata",
    "check_name",
    "check_sync_rows",
    "decode_control",
    "decode_disconnect",
    "decode_discover",
    "decode_event",
    "decode_node_stats",
    "decode_pace",
    "decode_service_list",
    "decode_shard_presence",
    "decode_snapshot",
    "decode_srv_info",
    "decode_srv_stats",
    "decode_sync_chunk",
    "encode",
    "heartbeat_interval_s",
    "instance_view",
    "kept_interval_s",
    "micro_instance_view",
    "silence_allowed_s",
    "sync_views",
]

SCHEMA_VERSION = 1

# Every Struct here is declared gc=False: none can hold a reference cycle, and a registry
# holding (or a client decoding) 50k instances otherwise spends most of its time in the cyclic
# garbage collector (measured: 600 ms against 90 ms to decode a 50k-instance view).

# An announcement carries the endpoints and metadata; 64 KiB leaves room for hundreds of
# endpoints while keeping a re-announce round of 50k instances within a few GB/s of nothing.
MAX_CONTROL_BYTES = 64 * 1024

# What a decoder may raise on hostile input: msgspec's own errors, and RecursionError for a
# document nested deeper than the C stack allows (a 60 KB unknown field can be).
MALFORMED: tuple[type[Exception], ...] = (
    msgspec.DecodeError,
    msgspec.ValidationError,
    RecursionError,
)

# The heartbeat intervals an instance may announce. Readers clamp what they hear into this
# range, so that an announcement cannot make an instance immortal (a huge interval) or cost
# a registry a message every millisecond (a tiny one).
MIN_HEARTBEAT_S = 0.05
MAX_HEARTBEAT_S = 60.0

# A registry node that reads NATS system events hears of a crash in milliseconds, so it may let
# the fleet heartbeat slower (a Pace message, docs/protocol.md "Paced heartbeats"). Whatever a
# pace message says, an instance keeps no interval above MAX_PACE_S and believes no lease for
# longer than MAX_PACE_VALID_S: a forged one slows its heartbeats that much, that long, at most.
MAX_PACE_S = 30.0
MAX_PACE_VALID_S = 120.0
# A pace message is a node id and two numbers.
MAX_PACE_BYTES = 1024

# An instance re-announces on request at most once per this interval, however many discover
# messages arrive; with the heartbeat interval it bounds how fast a genuine instance's sequence
# can grow, which is what lets readers refuse absurd sequence jumps (docs/protocol.md).
MIN_REANNOUNCE_S = 1.0
# An instance asked to re-announce waits a random delay of at most this long, whatever
# ``Discover.jitter_s`` says; and a node that asks a large fleet spreads it over at most this.
MAX_DISCOVER_JITTER_S = 30.0

# Consul's caps, which operators already know; they keep an announcement well under 64 KiB.
# Writers refuse to send more and readers drop what exceeds them (:func:`check`).
MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 512
MAX_DESCRIPTION_CHARS = 4096
# Endpoints in one announcement or $SRV.INFO reply. A bare endpoint takes about 100 bytes, so
# 256 of them fit MAX_CONTROL_BYTES with room for their metadata; real services have a
# handful, and the cap bounds what one message costs every reader that indexes endpoints.
MAX_ENDPOINTS = 256
# Event types one instance consumes (and, apart, emits), in its announcement: a handful in
# practice; the cap bounds what one announcement costs the registry's index of them.
MAX_EVENT_INTERESTS = 64
# Names and ids are subject tokens; this bounds them well under nats-server's 4 KB control line
# (a NUID is 22 characters); an endpoint subject may hold a few tokens.
MAX_TOKEN_CHARS = 256
MAX_SUBJECT_CHARS = 1024

# ADR-32's rules, as the NATS CLI's JSON schemas state them.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")
SEMVER_PATTERN = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)

# Set in a natsreg instance's $SRV metadata, so that registry nodes tell natsreg instances
# (which heartbeat) from plain ADR-32 services (which must be polled).
PREFIX_METADATA_KEY = "natsreg.prefix"

Health = Literal["passing", "warning", "critical"]


class Schemas(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """The JSON Schemas (draft 2020-12) of an endpoint's request and response bodies, each
    None where the endpoint does not declare a type, and ``{"truncated": true, ...}`` where it
    does but the schema was left out (over the caps of :mod:`natsreg._schemas`)."""

    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None

    def metadata(self) -> dict[str, str]:
        """These schemas as ADR-32 endpoint metadata (``request_schema``,
        ``response_schema``: JSON text)."""
        return _schemas.to_metadata(self.request, self.response)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> tuple[Schemas | None, dict[str, str]]:
        """The schemas ADR-32 endpoint metadata carries (None: it carries none), and the
        rest of the metadata; a schema over the caps becomes the truncated marker."""
        request, response, rest = _schemas.from_metadata(metadata)
        if request is None and response is None:
            return None, rest
        return cls(request=request, response=response), rest


class Endpoint(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """One endpoint of a service: where it listens and in which queue group."""

    name: str
    subject: str
    queue_group: str
    metadata: dict[str, str] = {}
    #: Declared by the service: running a request twice does no harm, so a caller may retry
    #: it after a timeout.
    idempotent: bool = False
    #: The body types of a typed endpoint; None for an untyped one.
    schemas: Schemas | None = None


class EventInterest(msgspec.Struct, gc=False, frozen=True, kw_only=True):
    """An event type an instance consumes (docs/events.md): balanced among the service's
    instances through a durable JetStream consumer, or ``broadcast`` to every instance."""

    type: str
    ordered: bool = False
    broadcast: bool = False


class Load(msgspec.Struct, gc=False, kw_only=True):
    """Light load figures carried by every heartbeat."""

    in_flight: int = 0
    served: int = 0
    errors: int = 0


class _InstanceMessage(msgspec.Struct, gc=False, tag_field="type", kw_only=True):
    # What every instance-to-registry message carries: who sends it, and where it stands in
    # that instance's sequence.
    schema: int = SCHEMA_VERSION
    id: str
    name: str
    seq: int


class Announce(_InstanceMessage, tag="announce", kw_only=True):
    """An instance's full description: sent on start, on change, and when asked."""

    version: str
    description: str = ""
    metadata: dict[str, str] = {}
    endpoints: list[Endpoint] = []
    host: str = ""
    pid: int = 0
    started: str = ""
    heartbeat_s: float = 1.0
    health: Health = "passing"
    load: Load = msgspec.field(default_factory=Load)
    #: The instance's NATS connection, "<server id>/<client id>", as the server's disconnect
    #: advisories name it; re-announced when it changes.
    conn: str = ""
    #: The event types it consumes.
    events: list[EventInterest] = []
    #: The event types it declares it emits.
    emits: list[str] = []
    #: The interval it keeps now, slower than ``heartbeat_s`` while a registry node paces
    #: the fleet; 0 (older instances): ``heartbeat_s``. See :func:`kept_interval_s`.
    pace_s: float = 0.0


class Heartbeat(_InstanceMessage, tag="heartbeat", kw_only=True):
    """A small periodic proof of life: health and load, nothing that rarely changes."""

    health: Health = "passing"
    load: Load = msgspec.field(default_factory=Load)
    #: The interval the next heartbeat comes within, as in :attr:`Announce.pace_s`.
    pace_s: float = 0.0


class Goodbye(_InstanceMessage, tag="goodbye", kw_only=True):
    """The instance is stopping: forget it now rather than at expiry."""


ControlMessage = Announce | Heartbeat | Goodbye


class Pace(msgspec.Struct, gc=False, kw_only=True):
    """A registry node that reads NATS system events vouches for the fleet's liveness:
    instances may heartbeat every ``heartbeat_s`` (at most :data:`MAX_PACE_S`) for
    ``valid_s`` from receipt (at most :data:`MAX_PACE_VALID_S`). ``valid_s`` 0 withdraws it.
    Sent on ``<prefix>.pace.<node>``, the node named in the subject and in ``node``."""

    schema: int = SCHEMA_VERSION
    node: str
    heartbeat_s: float = 0.0
    valid_s: float = 0.0


class Discover(msgspec.Struct, gc=False, kw_only=True):
    """Ask instances to re-announce, each after a random delay in ``[0, jitter_s]``."""

    schema: int = SCHEMA_VERSION
    jitter_s: float = 0.0


class InstanceView(msgspec.Struct, gc=False, kw_only=True):
    """One instance as a registry node sees it.

    ``kind`` is ``natsreg`` for instances that heartbeat, ``micro`` for plain ADR-32 services
    found through ``$SRV.INFO``. ``age_s`` is how long ago the node last heard from it.

    Its sequences are tuples: a registry node holds one view per instance for as long as it
    lives, and Python's collector walks every list at every full collection (three a view,
    150,000 at 50k instances), while it leaves a tuple of untracked values alone.
    """

    id: str
    name: str
    version: str
    kind: Literal["natsreg", "micro"] = "natsreg"
    seq: int = 0
    description: str = ""
    metadata: dict[str, str] = {}
    endpoints: tuple[Endpoint, ...] = ()
    host: str = ""
    pid: int = 0
    started: str = ""
    heartbeat_s: float = 0.0
    health: Health = "passing"
    load: Load = msgspec.field(default_factory=Load)
    age_s: float = 0.0
    conn: str = ""
    events: tuple[EventInterest, ...] = ()
    emits: tuple[str, ...] = ()
    #: The interval it last declared it keeps (:attr:`Announce.pace_s`; 0: ``heartbeat_s``).
    pace_s: float = 0.0


def instance_view(ann: Announce) -> InstanceView:
    """The view of an instance built from its announcement: the one place that says which
    announced fields a registry keeps (all but the message's own ``schema`` and ``type``), and
    that the interval it keeps is the clamped one (:func:`heartbeat_interval_s`)."""
    return InstanceView(
        id=ann.id,
        name=ann.name,
        version=ann.version,
        kind="natsreg",
        seq=ann.seq,
        description=ann.description,
        metadata=ann.metadata,
        endpoints=tuple(ann.endpoints),
        host=ann.host,
        pid=ann.pid,
        started=ann.started,
        heartbeat_s=heartbeat_interval_s(ann.heartbeat_s),
        health=ann.health,
        load=ann.load,
        conn=ann.conn,
        events=tuple(ann.events),
        emits=tuple(ann.emits),
        pace_s=ann.pace_s,
    )


def micro_instance_view(info: SrvInfo) -> InstanceView:
    """The view of a plain ADR-32 service built from its ``$SRV.INFO`` reply, whose optional
    fields (``null`` in ADR-32) become the view's empty defaults, and whose endpoints'
    ``request_schema`` / ``response_schema`` metadata become their :class:`Schemas`."""
    return InstanceView(
        id=info.id,
        name=info.name,
        version=info.version,
        kind="micro",
        description=info.description or "",
        metadata=info.metadata or {},
        endpoints=tuple(_micro_endpoint(e) for e in info.endpoints or ()),
    )


def _micro_endpoint(e: SrvEndpointInfo) -> Endpoint:
    schemas, metadata = Schemas.from_metadata(e.metadata or {})
    return Endpoint(
        name=e.name,
        subject=e.subject,
        queue_group=e.queue_group or "",
        metadata=metadata,
        schemas=schemas,
    )


class MassExpiry(msgspec.Struct, gc=False, kw_only=True):
    """Many instances went silent at once: a crash wave, or a network cut between them and
    this node. They were expired all the same (see docs/protocol.md, "Mass expiry")."""

    lost: int
    before: int
    since_s: float


class Snapshot(msgspec.Struct, gc=False, kw_only=True):
    """A registry node's answer to a query: the instances it knows, and how fresh that is."""

    schema: int = SCHEMA_VERSION
    node: str
    revision: int
    warming_up: bool = False
    instances: list[InstanceView] = []
    #: A large answer comes in chunks, each under the server's max_payload; all but the
    #: last say ``more``. ``part`` numbers them from 0 and ``total`` is the instance count of
    #: the whole answer, so a reader that must not act on part of a view (a registry node
    #: warming from a peer) can tell a lost chunk from the end.
    more: bool = False
    part: int = 0
    total: int = 0
    mass_expiry: MassExpiry | None = None
    #: While ``warming_up``: about how many seconds until the node is warm (a client that
    #: took this answer asks again then).
    warm_in_s: float = 0.0
    #: As in :class:`ServiceList`: services no holder answered for (sharded nodes only).
    unanswered: list[str] = []


class SyncShape(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """What many instances of a fleet share, sent once in a sync answer (:class:`SyncChunk`):
    an instance's description, every :class:`InstanceView` field but its own."""

    name: str
    version: str
    kind: Literal["natsreg", "micro"]
    description: str
    metadata: dict[str, str]
    endpoints: tuple[Endpoint, ...]
    heartbeat_s: float
    events: tuple[EventInterest, ...]
    emits: tuple[str, ...]


class SyncRow(msgspec.Struct, gc=False, array_like=True):
    """One instance in a sync answer: what is its own, and the index of its
    :class:`SyncShape` among the answer's shapes (counted over every chunk so far)."""

    id: str
    shape: int
    seq: int
    host: str
    pid: int
    started: str
    health: Health
    in_flight: int
    served: int
    errors: int
    age_s: float
    conn: str
    pace_s: float


class SyncChunk(msgspec.Struct, gc=False, kw_only=True):
    """One chunk of a registry node's whole view, as it gives it to a starting peer
    (docs/protocol.md, "Warming from a peer"): numbered from 0 (``part``), all but the last
    saying ``more``, each with the instance count of the whole answer (``total``), the shapes
    first used in this chunk (``shapes``, appended to those of the chunks before) and its
    instances (``rows``)."""

    schema: int = SCHEMA_VERSION
    node: str
    revision: int
    #: Never true from a node that answers as it should (only warm nodes take the question).
    warming_up: bool = False
    part: int = 0
    more: bool = False
    total: int = 0
    shapes: list[SyncShape]
    rows: list[SyncRow]


def sync_views(shapes: list[SyncShape], rows: list[SyncRow]) -> list[InstanceView]:
    """The instances a sync answer's ``rows`` stand for, each of its shape among ``shapes``
    (the caller has checked that each row's shape is one of them)."""
    # Each instance is its shape's instance with its own fields replaced: a third of the
    # cost of building it field by field (19 keywords), which a starting node pays 50k times.
    templates = [
        InstanceView(
            id="",
            name=shape.name,
            version=shape.version,
            kind=shape.kind,
            description=shape.description,
            metadata=shape.metadata,
            endpoints=shape.endpoints,
            heartbeat_s=shape.heartbeat_s,
            events=shape.events,
            emits=shape.emits,
        )
        for shape in shapes
    ]
    replace = msgspec.structs.replace
    return [
        replace(
            templates[row.shape],
            id=row.id,
            seq=row.seq,
            host=row.host,
            pid=row.pid,
            started=row.started,
            health=row.health,
            load=Load(in_flight=row.in_flight, served=row.served, errors=row.errors),
            age_s=row.age_s,
            conn=row.conn,
            pace_s=row.pace_s,
        )
        for row in rows
    ]


class ServiceSummary(msgspec.Struct, gc=False, kw_only=True):
    """One service at one version, summed over its instances: a line of ``natsreg ls``."""

    name: str
    version: str
    kind: Literal["natsreg", "micro"] = "natsreg"
    instances: int = 0
    #: Instances by health: passing, warning, critical.
    health: dict[str, int] = {}
    endpoints: list[str] = []
    #: Seconds since the node last heard from the most recent of them.
    last_heard_s: float = 0.0
    #: The event types its instances consume.
    events: list[str] = []
    #: The event types its instances declare they emit.
    emits: list[str] = []


class ServiceList(msgspec.Struct, gc=False, kw_only=True):
    """A registry node's summary of every service: small, whatever the size of the fleet."""

    schema: int = SCHEMA_VERSION
    node: str
    revision: int
    warming_up: bool = False
    services: list[ServiceSummary] = []
    mass_expiry: MassExpiry | None = None
    #: From sharded nodes (docs/protocol.md, "Sharding"): the services no node holding them
    #: answered for in time, so the answer may lack them (at most 100 named).
    unanswered: list[str] = []


class NodeStats(msgspec.Struct, gc=False, kw_only=True):
    """A registry node's own figures: cheap to ask for, whatever the size of the fleet."""

    schema: int = SCHEMA_VERSION
    node: str
    revision: int
    warming_up: bool = False
    uptime_s: float = 0.0
    instances: int = 0
    services: int = 0
    #: Messages dropped since start, by reason (docs/protocol.md, "Messages"): malformed,
    #: oversized, stale, seq_jump, subject_mismatch, capacity, invalid_<field>, and for
    #: queries reply_subject, query_overflow, query_expired; slow_consumer for what arrived
    #: while the node's queue was full, shed for the times it shed a subscription;
    #: invalid_age for a peer's snapshot.
    dropped: dict[str, int] = {}
    mass_expiry: MassExpiry | None = None
    #: The node's caps: instances of one service, and instances in all.
    max_per_service: int = 0
    max_instances: int = 0
    #: The heartbeat interval this node lets the fleet keep now (0: it vouches for none;
    #: docs/protocol.md, "Paced heartbeats").
    pace_s: float = 0.0
    #: Sharded nodes it counts, itself included (0: not sharded; docs/protocol.md, "Sharding").
    shard_nodes: int = 0


class ShardPresence(msgspec.Struct, gc=False, kw_only=True):
    """A sharded registry node saying it is up, on ``<prefix>.shard.<node>``: it counts
    among the nodes services are assigned to for ``valid_s`` (0: it is leaving now)."""

    schema: int = SCHEMA_VERSION
    node: str
    valid_s: float


class Event(msgspec.Struct, gc=False, kw_only=True):
    """One change in a registry node's view, published on ``<prefix>.events.<name>``."""

    schema: int = SCHEMA_VERSION
    node: str
    revision: int
    kind: Literal["up", "down", "changed", "health"]
    reason: str = ""
    instance: InstanceView
    #: The revision of the same node's previous event for the same service (0: none since
    #: the node started). A watcher of one service that holds another number there has
    #: missed an event, or was sent one the node never published: its view must be
    #: reconciled with a snapshot.
    prev_revision: int = 0


# ADR-32 ($SRV) replies. The same Structs decode other services' replies, which is why the
# optional fields admit null (nats.micro for Python sends ``description: null``); natsreg's own
# replies always fill them, as the NATS CLI's schemas require.


SRV_PING_TYPE = "io.nats.micro.v1.ping_response"


class SrvPing(msgspec.Struct, gc=False, kw_only=True):
    """Reply to ``$SRV.PING``."""

    type: str = SRV_PING_TYPE
    name: str
    id: str
    version: str
    metadata: dict[str, str] | None = None


class SrvEndpointInfo(msgspec.Struct, gc=False, kw_only=True):
    name: str
    subject: str
    queue_group: str | None = None
    metadata: dict[str, str] | None = None


class SrvInfo(msgspec.Struct, gc=False, kw_only=True):
    """Reply to ``$SRV.INFO``."""

    type: str = "io.nats.micro.v1.info_response"
    name: str
    id: str
    version: str
    description: str | None = None
    metadata: dict[str, str] | None = None
    endpoints: list[SrvEndpointInfo] | None = None


class SrvEndpointStats(msgspec.Struct, gc=False, kw_only=True):
    name: str
    subject: str
    queue_group: str
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_time: int = 0
    average_processing_time: int = 0


class SrvStats(msgspec.Struct, gc=False, kw_only=True):
    """Reply to ``$SRV.STATS``; times in nanoseconds as ADR-32 states."""

    type: str = "io.nats.micro.v1.stats_response"
    name: str
    id: str
    version: str
    metadata: dict[str, str] | None = None
    started: str
    endpoints: list[SrvEndpointStats] = []


class _AdvisoryServer(msgspec.Struct, gc=False):
    id: str


class _AdvisoryClient(msgspec.Struct, gc=False):
    id: int = 0


class DisconnectAdvisory(msgspec.Struct, gc=False):
    """The part natsreg reads of nats-server's ``io.nats.server.advisory.v1.client_disconnect``
    (published on ``$SYS.ACCOUNT.<account>.DISCONNECT``): which connection closed, and why."""

    server: _AdvisoryServer
    client: _AdvisoryClient
    reason: str = ""

    @property
    def conn(self) -> str:
        """The connection as instances announce it: ``<server id>/<client id>``."""
        return f"{self.server.id}/{self.client.id}"


def heartbeat_interval_s(announced_s: float) -> float:
    """The heartbeat interval a reader assumes for an instance that announced
    ``announced_s``: the value clamped to ``[MIN_HEARTBEAT_S, MAX_HEARTBEAT_S]``."""
    return min(max(announced_s, MIN_HEARTBEAT_S), MAX_HEARTBEAT_S)


def kept_interval_s(heartbeat_s: float, pace_s: float) -> float:
    """The interval a reader expects an instance's next heartbeat within: the slower of the
    interval it announced and the pace it last declared (0: none), clamped as
    :func:`heartbeat_interval_s` says. Expiry follows this; the sequence-jump bound follows
    ``heartbeat_s`` alone, the fastest the instance may go."""
    return heartbeat_interval_s(max(heartbeat_s, pace_s))


def silence_allowed_s(heartbeat_s: float, missed_heartbeats: float) -> float:
    """How long an instance may stay silent before it is expired: ``missed_heartbeats``
    intervals plus half of one, which absorbs scheduling jitter. Registry nodes and clients
    apply this same rule, to the clamped interval (:func:`heartbeat_interval_s`)."""
    return heartbeat_interval_s(heartbeat_s) * (missed_heartbeats + 0.5)


class Invalid(ValueError):
    """A message breaks one of the limits above. ``reason`` is the short name readers count
    drops under (``invalid_name``, ``invalid_metadata``...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def check_name(name: str, what: str = "name") -> None:
    """Raise :class:`Invalid` unless ``name`` is an ADR-32 name (letters, digits, ``-``,
    ``_``) of at most :data:`MAX_TOKEN_CHARS` characters."""
    if not isinstance(name, str) or not _is_name(name):
        raise Invalid(
            "invalid_name",
            f"{what} {str(name)[:40]!r} is not valid: use letters, "
            f"digits, '-' and '_' only (ADR-32), at most {MAX_TOKEN_CHARS}",
        )


# The checks on strings a fleet repeats (service names, versions, endpoints), remembered: a
# peer's snapshot of 50k instances shares a few hundred of each, and checking each anew made
# up most of a starting node's time to take it. Only what passed is remembered, at most
# _REMEMBERED of each, so hostile input costs no more than it did.
_REMEMBERED = 4096


@functools.lru_cache(maxsize=_REMEMBERED)
def _is_name(name: str) -> bool:
    return len(name) <= MAX_TOKEN_CHARS and NAME_PATTERN.match(name) is not None


@functools.lru_cache(maxsize=_REMEMBERED)
def _is_semver(version: str) -> bool:
    return SEMVER_PATTERN.match(version) is not None


def check_metadata(metadata: Mapping[str, str] | None, what: str = "metadata") -> None:
    """Raise :class:`Invalid` unless ``metadata`` keeps within the metadata caps."""
    if not metadata:
        return
    if len(metadata) > MAX_METADATA_KEYS:
        raise Invalid(
            "invalid_metadata",
            f"{what}: at most {MAX_METADATA_KEYS} metadata keys, got {len(metadata)}",
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise Invalid(
                "invalid_metadata", f"{what}: metadata keys and values must be strings ({key!r})"
            )
        if not key or len(key) > MAX_METADATA_KEY_CHARS:
            raise Invalid(
                "invalid_metadata",
                f"{what}: metadata key {key[:40]!r} must be 1-{MAX_METADATA_KEY_CHARS} characters",
            )
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise Invalid(
                "invalid_metadata",
                f"{what}: metadata value of {key[:40]!r} is over "
                f"{MAX_METADATA_VALUE_CHARS} characters",
            )


@functools.lru_cache(maxsize=_REMEMBERED)
def _check_endpoint(name: str, subject: str, queue_group: str | None) -> None:
    check_name(name, "endpoint name")
    # A literal subject outside NATS' own spaces: a caller publishes to it as announced.
    if (
        len(subject) > MAX_SUBJECT_CHARS
        or not subjects.is_valid_subject(subject)
        or subjects.is_reserved(subject)
    ):
        raise Invalid(
            "invalid_endpoints",
            f"endpoint {name!r}: {subject[:40]!r} is not a literal subject a caller may publish to",
        )
    if queue_group is not None and not subjects.is_valid_token(queue_group):
        raise Invalid(
            "invalid_endpoints", f"endpoint {name!r}: queue group {queue_group[:40]!r} is not valid"
        )


def check(message: Announce | Heartbeat | Goodbye | SrvInfo | InstanceView | SyncShape) -> None:
    """Raise :class:`Invalid` unless ``message`` keeps within every limit of this module.

    The one rule for what an instance may say: services check what they are about to send,
    registry nodes what they hear (an announcement, heartbeat or goodbye, a plain ADR-32
    service's ``$SRV.INFO`` reply, or an instance in a peer's snapshot, or the shape many
    instances of a peer's sync answer share), so that no message sent by anyone makes a reader
    hold more.
    """
    check_name(message.name, "service name")
    # A heartbeat first, the bulk of what a node hears: isinstance answers at once for the
    # exact class, while a miss against a msgspec Struct class costs ~200 ns.
    if isinstance(message, Heartbeat):
        _check_id(message.id)
        _check_finite(message.pace_s, "invalid_pace", "pace_s")
        return
    if not isinstance(message, SyncShape):
        _check_id(message.id)
    if isinstance(message, Announce | InstanceView):
        _check_finite(message.pace_s, "invalid_pace", "pace_s")
    if isinstance(message, Goodbye):
        return
    if not _is_semver(message.version):
        raise Invalid("invalid_version", f"version {message.version[:40]!r} is not SemVer")
    description = message.description or ""
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise Invalid(
            "invalid_description", f"description is over {MAX_DESCRIPTION_CHARS} characters"
        )
    check_metadata(message.metadata)
    endpoints = message.endpoints or ()
    if len(endpoints) > MAX_ENDPOINTS:
        raise Invalid(
            "invalid_endpoints", f"at most {MAX_ENDPOINTS} endpoints, got {len(endpoints)}"
        )
    heartbeats = isinstance(message, Announce) or (
        isinstance(message, InstanceView | SyncShape) and message.kind == "natsreg"
    )
    for e in endpoints:
        # natsreg endpoints always name their queue group; ADR-32 ones may leave it out.
        queue_group = e.queue_group if heartbeats else e.queue_group or None
        _check_endpoint(e.name, e.subject, queue_group)
        if isinstance(e, SrvEndpointInfo):
            # Schemas in ADR-32 metadata are over the value cap by nature; the view keeps
            # them parsed and within the schema caps (micro_instance_view), not as text.
            check_metadata(_schemas.other_metadata(e.metadata or {}), f"endpoint {e.name!r}")
        else:
            check_metadata(e.metadata, f"endpoint {e.name!r}")
            _check_schemas(e)
    if isinstance(message, SrvInfo):
        return
    _check_events([e.type for e in message.events], "event types")
    check_emits(message.emits)
    _check_finite(message.heartbeat_s, "invalid_heartbeat", "heartbeat_s")
    if isinstance(message, InstanceView):
        _check_finite(message.age_s, "invalid_age", "age_s")


def check_sync_rows(rows: list[SyncRow]) -> None:
    """Raise :class:`Invalid` unless each of a sync answer's ``rows`` keeps within the limits
    :func:`check` sets for an instance's own fields (their shapes are checked once, apart)."""
    # One pass over each field, in C where it can be: 50k rows a row at a time cost a
    # starting node more than decoding them.
    ids = [row.id for row in rows]
    if (
        max(map(len, ids), default=0) <= MAX_TOKEN_CHARS
        and all(map(subjects.is_valid_token, ids))
        and all(map(math.isfinite, [row.pace_s for row in rows]))
        and all(map(math.isfinite, [row.age_s for row in rows]))
    ):
        return
    for row in rows:  # one is wrong: which, and why
        _check_id(row.id)
        _check_finite(row.pace_s, "invalid_pace", "pace_s")
        _check_finite(row.age_s, "invalid_age", "age_s")


def _check_id(instance_id: str) -> None:
    if len(instance_id) > MAX_TOKEN_CHARS or not subjects.is_valid_token(instance_id):
        raise Invalid("invalid_id", f"instance id {instance_id[:40]!r} is not a valid token")


def _check_finite(value: float, reason: str, what: str) -> None:
    if not math.isfinite(value):
        raise Invalid(reason, f"{what} must be a finite number")


def _check_schemas(e: Endpoint) -> None:
    if e.schemas is None:
        return
    for schema in (e.schemas.request, e.schemas.response):
        why = None if schema is None else _schemas.problem(schema)
        if why is not None:
            raise Invalid("invalid_schemas", f"endpoint {e.name!r}: {why}")


def check_emits(types: Sequence[str]) -> None:
    """Raise :class:`Invalid` unless ``types`` is a bounded list of event types."""
    _check_events(types, "emitted event types")


def _check_events(types: Sequence[str], what: str) -> None:
    if len(types) > MAX_EVENT_INTERESTS:
        raise Invalid("invalid_events", f"at most {MAX_EVENT_INTERESTS} {what}, got {len(types)}")
    for event_type in types:
        try:
            subjects.check_event_type(event_type)
        except ValueError as exc:
            raise Invalid("invalid_events", str(exc)) from None


_encoder = msgspec.json.Encoder()
_control_decoder = msgspec.json.Decoder(ControlMessage)
_discover_decoder = msgspec.json.Decoder(Discover)
_snapshot_decoder = msgspec.json.Decoder(Snapshot)
_sync_chunk_decoder = msgspec.json.Decoder(SyncChunk)
_event_decoder = msgspec.json.Decoder(Event)
_srv_info_decoder = msgspec.json.Decoder(SrvInfo)
_srv_stats_decoder = msgspec.json.Decoder(SrvStats)
_node_stats_decoder = msgspec.json.Decoder(NodeStats)
_disconnect_decoder = msgspec.json.Decoder(DisconnectAdvisory)
_service_list_decoder = msgspec.json.Decoder(ServiceList)
_pace_decoder = msgspec.json.Decoder(Pace)
_shard_presence_decoder = msgspec.json.Decoder(ShardPresence)

encode = _encoder.encode
decode_control = _control_decoder.decode
decode_discover = _discover_decoder.decode
decode_snapshot = _snapshot_decoder.decode
decode_sync_chunk = _sync_chunk_decoder.decode
decode_event = _event_decoder.decode
decode_srv_info = _srv_info_decoder.decode
decode_srv_stats = _srv_stats_decoder.decode
decode_node_stats = _node_stats_decoder.decode
decode_disconnect = _disconnect_decoder.decode
decode_service_list = _service_list_decoder.decode
decode_pace = _pace_decoder.decode
decode_shard_presence = _shard_presence_decoder.decode
