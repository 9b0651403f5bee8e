"""Every subject natsreg uses, built in one place.

Control traffic lives under a configurable prefix (``natsreg`` by default), so that several
environments can share one NATS account::

    <prefix>.announce.<name>.<id>    full info: on start, on change, on request
    <prefix>.hb.<name>.<id>          heartbeat: health and load, every heartbeat interval
    <prefix>.bye.<name>.<id>         goodbye: the instance is stopping
    <prefix>.discover[.<name>[.<id>]]  ask instances to re-announce
    <prefix>.events.<name>           registry changes, one event per change
    <prefix>.registry.<verb>         registry queries (list, service, instance), request-reply
    <prefix>.warming.<verb>          the same, answered by nodes still warming up (asked when
                                     no warm node answers on <prefix>.registry)
    <prefix>.nodes                   every registry node answers with its own state
    <prefix>.direct.<name>.<id>.<endpoint>  one instance's endpoint, for direct addressing
    <prefix>.ev.<type>.<partition>   a durable event (JetStream; docs/events.md)
    <prefix>.evr.<service>.<type>.<partition>  a dead event replayed to one service
    <prefix>.evdead.<service>.<type>  an event a service failed on every delivery

Sagas are kept in the JetStream key-value bucket ``<prefix>_sagas`` (:func:`saga_bucket`), whose
subjects are JetStream's own (``$KV.<bucket>.<saga id>``, ``$JS.API.…KV_<bucket>``).

Every subject an instance publishes or serves on names the service it speaks for, so that NATS
permissions can confine a service's credentials to its own name (docs/security.md), and every
reader checks the subject against the message body.

Endpoints themselves are served on plain subjects (``<service>.<endpoint>``) in the queue
group ``<service>``; the ADR-32 ``$SRV`` subjects are built by :func:`srv_subject`.
"""

from __future__ import annotations

import functools
import re

from .errors import ConfigError

__all__ = [
    "DEFAULT_PREFIX",
    "REGISTRY_QUEUE",
    "SYS_DISCONNECT",
    "check_event_type",
    "check_prefix",
    "control_subject",
    "dead_subject",
    "direct_subject",
    "endpoint_subject",
    "event_subject",
    "is_reply_subject",
    "is_reserved",
    "is_valid_subject",
    "is_valid_token",
    "replay_subject",
    "saga_bucket",
    "srv_subject",
]

DEFAULT_PREFIX = "natsreg"
REGISTRY_QUEUE = "natsreg-registry"
# nats-server's advisory for every closed client connection, in every account; readable by
# a system-account user.
SYS_DISCONNECT = "$SYS.ACCOUNT.*.DISCONNECT"

# A token may not hold the separator, the wildcards or whitespace (NATS protocol rule); we also
# refuse control characters, which would end the protocol line early.
_BAD_TOKEN = re.compile(r"[.*>\s\x00-\x1f\x7f]")
# An inbox: "_INBOX" or "_INBOX_<user>", then one or more tokens _BAD_TOKEN would accept. One
# regex, because a service checks the reply subject of every request it answers (a check per
# token cost 2.5 µs a request; this, under 1 µs).
# JetStream stream and bucket names: no dots, no wildcards, nothing a file name could not hold.
_BUCKET = re.compile(r"[A-Za-z0-9_-]+")
_REPLY = re.compile(r"_INBOX(?:_[^.*>\s\x00-\x1f\x7f]+)?(?:\.[^.*>\s\x00-\x1f\x7f]+)+")


def is_valid_token(token: str) -> bool:
    """Whether ``token`` can stand as one token of a subject, with no wildcard meaning."""
    return bool(token) and _BAD_TOKEN.search(token) is None


def is_valid_subject(subject: str) -> bool:
    """Whether ``subject`` is a literal subject: non-empty tokens, no wildcards."""
    return bool(subject) and all(is_valid_token(t) for t in subject.split("."))


def is_reserved(subject: str) -> bool:
    """Whether ``subject`` belongs to NATS itself (``$SYS``, ``$JS``, ``$SRV``...) or to
    request-reply plumbing (``_INBOX``...), never to a service endpoint."""
    return subject.startswith(("$", "_INBOX"))


def check_prefix(prefix: str) -> str:
    """``prefix`` if it can stand before natsreg's control subjects; ConfigError otherwise.
    Every role that takes a prefix checks it here."""
    if not isinstance(prefix, str) or not is_valid_subject(prefix) or is_reserved(prefix):
        raise ConfigError(
            f"prefix {prefix!r} is not a valid subject: use tokens of letters, "
            "digits, '-' and '_' separated by dots (e.g. 'natsreg' or 'prod.reg')"
        )
    return prefix


def is_reply_subject(subject: str) -> bool:
    """Whether ``subject`` may stand as the reply subject of a request natsreg answers: an
    inbox (``_INBOX.…``, or a per-user ``_INBOX_<user>.…`` as docs/security.md sets up).

    Anything else is refused: a request whose reply names a service's endpoint or a control
    subject would make the answerer publish there on the requester's behalf (reflection).
    """
    return _REPLY.fullmatch(subject) is not None


def control_subject(prefix: str, verb: str, *tokens: str) -> str:
    """``<prefix>.<verb>[.<token>...]``: the one function that formats a control subject."""
    return ".".join((prefix, verb, *tokens))


def endpoint_subject(service: str, endpoint: str) -> str:
    """The default, load-balanced subject of an endpoint: ``<service>.<endpoint>``."""
    return f"{service}.{endpoint}"


def direct_subject(prefix: str, service: str, instance_id: str, endpoint: str) -> str:
    """The subject on which only one instance serves ``endpoint``. It names the service, so a
    permission on ``<prefix>.direct.<service>.>`` lets only that service's users serve it."""
    return control_subject(prefix, "direct", service, instance_id, endpoint)


def srv_subject(verb: str, name: str | None = None, instance_id: str | None = None) -> str:
    """An ADR-32 discovery subject: ``$SRV.<verb>[.<name>[.<id>]]``."""
    tokens = [t for t in (name, instance_id) if t is not None]
    return ".".join(("$SRV", verb, *tokens))


# An event type is one or more name tokens ("user.created"): it stands inside subjects and,
# dots turned into '~', inside JetStream consumer names, which may hold no dot.
_EVENT_TYPE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+){0,7}")
MAX_EVENT_TYPE_CHARS = 128


def check_event_type(event_type: str) -> str:
    """``event_type`` if it can name events (``user.created``); ConfigError otherwise."""
    if not isinstance(event_type, str) or not _is_event_type(event_type):
        raise ConfigError(
            f"event type {str(event_type)[:40]!r} is not valid: use up to 8 tokens of letters, "
            f"digits, '-' and '_' separated by dots (e.g. 'user.created'), at most "
            f"{MAX_EVENT_TYPE_CHARS} characters"
        )
    return event_type


# Checked on every emit, and a program emits a handful of types: the answers are remembered,
# at most 1024 of them, so made-up types cost a bounded memory and no more time than before.
@functools.lru_cache(maxsize=1024)
def _is_event_type(event_type: str) -> bool:
    return len(event_type) <= MAX_EVENT_TYPE_CHARS and _EVENT_TYPE.fullmatch(event_type) is not None


def event_subject(prefix: str, event_type: str, partition: str) -> str:
    """Where events of ``event_type`` are stored: ``<prefix>.ev.<type>.<partition>``.
    ``partition`` is a number, or ``*`` for a consumer of every partition."""
    return control_subject(prefix, "ev", event_type, partition)


def replay_subject(prefix: str, service: str, event_type: str, partition: str) -> str:
    """Where a dead event is sent through again for ``service`` alone."""
    return control_subject(prefix, "evr", service, event_type, partition)


def dead_subject(prefix: str, service: str, event_type: str) -> str:
    """Where the events ``service`` failed on every delivery are kept (``*`` for any)."""
    return control_subject(prefix, "evdead", service, event_type)


def saga_bucket(prefix: str) -> str:
    """The key-value bucket that keeps the sagas of ``prefix`` (``natsreg`` →
    ``natsreg_sagas``, ``prod.reg`` → ``prod_reg_sagas``); ConfigError for a prefix that
    cannot name a bucket."""
    bucket = f"{check_prefix(prefix).replace('.', '_')}_sagas"
    if _BUCKET.fullmatch(bucket) is None:
        raise ConfigError(
            f"prefix {prefix!r} cannot name a JetStream bucket: for sagas, use only letters, "
            "digits, '-', '_' and dots"
        )
    return bucket
