"""Who may publish and subscribe to what: the NATS permissions of each natsreg role.

natsreg believes the bus's own identity (docs/security.md): every control subject names the
service it speaks for, so nats-server's per-subject permissions can confine each user to its
own name. This module is the one place that says which subjects each role needs; the
``natsreg auth`` command turns it into a nats-server configuration (static users, or JWT
accounts).

Roles:

- ``service NAME``: announces, heartbeats and says goodbye as NAME only; serves NAME's
  endpoints in the queue group NAME only (no plain subscription that would see every
  request) and NAME's direct subjects; answers ``$SRV`` discovery; replies to what it
  received. It may also call other services (``calls``).
- ``caller`` of some services: sends requests to their endpoints, asks the registry, and
  follows their view (events, heartbeats, goodbyes). Never announces anything.
- ``registry``: hears every instance, answers queries in the registry queue group (those
  asked of warm nodes, and while it warms up those asked of warming ones) and the roll call
  of nodes, and is the only role that may publish events, discover requests and the heartbeat
  pace (``<prefix>.pace.<node>``). It is also
  the only role that may ask a peer for its whole view (``<prefix>.sync.<node>``) and the only
  one that hears that request, so a starting node's snapshot can come from a registry node
  only: its inbox is its own, and only a user that received the request may answer there.
- ``bridge``: a caller (of every service, or of those named).
- ``coordinator`` of some services: a caller of them that also runs sagas (docs/sagas.md): it
  may create, read and write the sagas' bucket (``<prefix>_sagas``) through JetStream's API,
  and nothing of any other stream. It may not delete or purge the bucket.
- ``operator``: the CLI (``ls``, ``info``, ``watch``, ``request``, ``registry nodes``): a
  caller of every service that may also ask every instance for its ADR-32 stats and every
  registry node for its own.

A ``service`` or ``caller`` with ``events=True`` uses durable events (docs/events.md): it may
emit any event type and create the event streams; a service may also create and pull from the
stream's consumers, acknowledge what it pulled, dead-letter as itself only
(``<prefix>.evdead.<name>.>``) and hear broadcast events. Every other role may neither emit
nor forge a dead letter or a replay.

Each user gets its own inbox prefix (``_INBOX_<user>``) and may subscribe only there, so no
user reads another's replies; it must connect with that prefix (nats-py
``inbox_prefix=``, ``natsreg --inbox-prefix``). Replies go out through nats-server's
``allow_responses``: a user may publish to a reply subject only of a request it received.

The limits (docs/security.md): instances of one service share its permissions and trust each
other; an endpoint served on a custom subject (``endpoint(subject=...)``) must be added by
hand; a caller of a service may read that service's announcements' contents through events.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from . import subjects
from .errors import ConfigError
from .events._settings import dead_stream_name, stream_name

__all__ = [
    "ALL_SERVICES",
    "REGISTRY_MAX_RESPONSES",
    "Permissions",
    "Role",
    "RoleKind",
    "inbox_prefix",
    "permissions",
]

RoleKind = Literal["service", "caller", "registry", "bridge", "operator", "coordinator"]

#: In ``calls``: every service (a bridge or operator that reaches the whole fleet).
ALL_SERVICES = "*"

_USER = re.compile(r"^[A-Za-z0-9_-]+$")

#: Messages a registry node may send in answer to one query: a snapshot larger than the
#: server's max_payload goes out in chunks (1,024 chunks of 1 MB is far beyond any fleet
#: natsreg is measured at); every other role answers once.
REGISTRY_MAX_RESPONSES = 1024


@dataclass(frozen=True, kw_only=True)
class Role:
    """One NATS user and what it is for.

    ``user`` names the NATS user (and its inbox); ``name`` is the service a ``service``
    speaks for; ``calls`` lists the services it may call (``ALL_SERVICES`` for all);
    ``events``: it uses durable events (a ``service`` or ``caller`` only).
    """

    kind: RoleKind
    user: str
    name: str = ""
    calls: tuple[str, ...] = ()
    events: bool = False

    def __post_init__(self) -> None:
        if not _USER.match(self.user):
            raise ConfigError(f"user {self.user!r}: use letters, digits, '-' and '_' only")
        if self.kind == "service" and not subjects.is_valid_token(self.name):
            raise ConfigError(f"service role {self.user!r} needs a valid service name")
        if self.kind not in ("service", "caller", "registry", "bridge", "operator", "coordinator"):
            raise ConfigError(f"unknown role {self.kind!r}")
        if self.kind == "coordinator" and (not self.calls or ALL_SERVICES in self.calls):
            # A caller of every service is denied all of $JS, which sagas need.
            raise ConfigError(f"coordinator {self.user!r}: name the services its sagas call")
        for callee in self.calls:
            if callee != ALL_SERVICES and not _USER.match(callee):
                raise ConfigError(f"{self.user!r} calls {callee!r}, which is no service name")
        object.__setattr__(self, "calls", tuple(self.calls))
        if self.events and self.kind not in ("service", "caller"):
            raise ConfigError(f"{self.user!r}: only services and callers use events")


@dataclass(frozen=True)
class Permissions:
    """A user's permissions in nats-server's terms.

    ``subscribe`` entries may hold a queue group after a space (``"svc.> svc"``): the user
    may then subscribe to that subject only in that queue group.
    """

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    #: Publish to the reply subject of a request received (nats-server ``allow_responses``).
    allow_responses: bool = True
    #: The inbox prefix the user must connect with.
    inbox: str = ""
    #: Publish explicitly denied even where an allow entry would match.
    deny_publish: tuple[str, ...] = field(default=())
    #: How many messages may answer one request received (nats-server ``allow_responses``
    #: ``max``): a registry answers a large query in several chunks.
    max_responses: int = 1


def inbox_prefix(user: str) -> str:
    """The inbox prefix of ``user``: the only place it may receive replies."""
    return f"_INBOX_{user}"


def permissions(
    role: Role, prefix: str = subjects.DEFAULT_PREFIX, *, users: Iterable[str] = ()
) -> Permissions:
    """The permissions ``role`` needs, on control prefix ``prefix``.

    ``users`` names the other users of the same config: a caller of every service publishes
    on ``*.>``, which also matches their inboxes (``_INBOX_<user>.…``), so each is denied by
    name (a NATS wildcard cannot match part of a token).
    """
    subjects.check_prefix(prefix)
    inbox = inbox_prefix(role.user)
    pub: list[str] = []
    sub: list[str] = [f"{inbox}.>"]
    deny: list[str] = []

    def control(verb: str, *tokens: str) -> str:
        return subjects.control_subject(prefix, verb, *tokens)

    match role.kind:
        case "service":
            name = role.name
            pub += [control(verb, name, "*") for verb in ("announce", "hb", "bye")]
            sub += [
                # Endpoints in the service's own queue group only: a plain subscription
                # would see every request and race the real instances for replies.
                f"{subjects.endpoint_subject(name, '>')} {name}",
                control("direct", name, ">"),
                control("discover"),
                control("discover", name),
                control("discover", name, "*"),
                # The heartbeat pace registry nodes allow (docs/protocol.md).
                control("pace", "*"),
                *_srv_subjects(name),
            ]
        case "registry":
            pub += [
                control("events", ">"),
                control("discover"),
                control("discover", ">"),
                # Plain ADR-32 services: pinged, and a new one asked its INFO by name and id.
                subjects.srv_subject("PING"),
                subjects.srv_subject("INFO"),
                subjects.srv_subject("INFO", "*", "*"),
            ]
            # A starting node asks a warm peer for its view, naming itself; a node that reads
            # system events lets the fleet heartbeat slower, naming itself.
            pub.append(control("sync", ">"))
            pub.append(control("pace", "*"))
            sub += [control(verb, ">") for verb in ("announce", "hb", "bye")]
            # Queries in the registry queue group: once warm, and while warming up; and the
            # view asked for by starting peers.
            sub += [
                f"{control(verb, '>')} {subjects.REGISTRY_QUEUE}"
                for verb in ("registry", "warming")
            ]
            sub.append(f"{control('sync', '*')} {subjects.REGISTRY_QUEUE}")
            sub.append(control("nodes"))
            # Sharded nodes (docs/protocol.md, "Sharding"): presence, and the parts of a
            # question one of them gathers from the others, each subject naming its node.
            pub += [control("shard", "*"), control("part", ">")]
            sub += [control("shard", "*"), control("part", ">")]
        case "coordinator":
            pub += _saga_subjects(subjects.saga_bucket(prefix))
        case "operator":
            pub += [subjects.srv_subject(verb, ">") for verb in ("PING", "INFO", "STATS")]
            pub += [subjects.srv_subject(verb) for verb in ("PING", "INFO", "STATS")]
            sub.append(control("events", ">"))
            pub.append(control("nodes"))
        case _:
            pass
    if role.events:
        _event_grants(role, prefix, pub, sub)
    calls = role.calls
    if role.kind in ("bridge", "operator") and not calls:
        calls = (ALL_SERVICES,)
    if calls or role.kind in ("caller", "bridge", "operator", "coordinator"):
        pub += [control("registry", ">"), control("warming", ">")]
    for callee in calls:
        pub += [subjects.endpoint_subject(callee, ">"), control("direct", callee, ">")]
        # What a client's view of the callee listens to (natsreg.Client).
        sub += [control("events", callee), control("hb", callee, "*"), control("bye", callee, "*")]
    if ALL_SERVICES in calls:
        if role.kind == "service":
            # Its "*.>" would match its own announce subject too, and a deny that keeps it
            # from speaking for others would keep it from speaking for itself.
            raise ConfigError(
                f"service {role.name!r} may not call every service: name the services it calls"
            )
        # "*.>" also matches natsreg's control subjects, NATS' reserved ones and other users'
        # inboxes: a caller of every service must still speak for no one and forge no reply.
        # (Replies to requests it received still go out: allow_responses is checked apart.)
        deny += [
            control(verb, ">")
            for verb in (
                *("announce", "hb", "bye", "events", "discover", "sync", "pace"),
                *("ev", "evr", "evdead"),
            )
        ]
        deny.append(control("discover"))
        deny += ["$SYS.>", "$JS.>", "$KV.>", "$O.>", "_INBOX.>"]
        if role.kind != "operator":
            deny.append(subjects.srv_subject(">"))
        deny += [f"{inbox_prefix(user)}.>" for user in users if user != role.user]
    return Permissions(
        publish=tuple(_unique(pub)),
        subscribe=tuple(_unique(sub)),
        allow_responses=role.kind in ("service", "registry"),
        inbox=inbox,
        deny_publish=tuple(_unique(deny)),
        max_responses=REGISTRY_MAX_RESPONSES if role.kind == "registry" else 1,
    )


def _event_grants(role: Role, prefix: str, pub: list[str], sub: list[str]) -> None:
    # JetStream's API subjects name the stream and the consumer, each as one token, and a
    # consumer's name cannot hold the service as a token of its own: a service with events
    # may pull from any consumer of the events stream (docs/security.md, Limits).
    events, dead = stream_name(prefix), dead_stream_name(prefix)
    pub.append(subjects.control_subject(prefix, "ev", ">"))
    for stream in (events, dead):
        pub += [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.CREATE.{stream}"]
    if role.kind != "service":
        return
    pub += [
        f"$JS.API.CONSUMER.INFO.{events}.*",
        f"$JS.API.CONSUMER.CREATE.{events}.*",
        f"$JS.API.CONSUMER.MSG.NEXT.{events}.*",
        # Acknowledgements, progress and retries of what it pulled.
        f"$JS.ACK.{events}.>",
        subjects.control_subject(prefix, "evdead", role.name, ">"),
    ]
    sub.append(subjects.control_subject(prefix, "ev", ">"))


def _saga_subjects(bucket: str) -> Sequence[str]:
    # What nats-py's key-value API sends for one bucket: its stream's info and creation, a
    # key's read (direct or through the stream), a write (a publish JetStream acknowledges),
    # and the ordered consumer that lists the bucket (created, asked for its info, and told
    # by flow-control replies that its messages arrived). Replies come to the user's inbox.
    stream = f"KV_{bucket}"
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
        f"$KV.{bucket}.>",
    ]


def _srv_subjects(name: str) -> Sequence[str]:
    # $SRV.<verb>, $SRV.<verb>.<name> and $SRV.<verb>.<name>.<id>, as ADR-32 asks.
    return [
        s
        for verb in ("PING", "INFO", "STATS")
        for s in (
            subjects.srv_subject(verb),
            subjects.srv_subject(verb, name),
            subjects.srv_subject(verb, name, "*"),
        )
    ]


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
