"""What a name that found nothing may have meant: ``natsreg request`` to a subject nothing
serves, ``natsreg info`` or ``watch`` of a service no one runs. The registry's list of
services says whether the service exists, which endpoints it serves, and what is close to a
typo; without a registry there is nothing to compare with, and the plain error stands.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from nats.aio.client import Client as NATS

from ..client._registry_api import RegistryApi
from ..client._target import Target
from ..errors import NatsregError

__all__ = ["LS", "known_services", "unknown_service", "unserved"]

# What to try when no hint can be more precise.
LS = "'natsreg ls' lists what is running"


async def known_services(nc: NATS, prefix: str) -> dict[str, list[str]] | None:
    """Each service a registry node knows, with its endpoints (over all its versions), or
    None when no registry node answers."""
    try:
        listing = await RegistryApi(nc, prefix=prefix).services(timeout_s=1.0)
    except NatsregError:
        return None
    known: dict[str, list[str]] = {}
    for summary in listing.services:
        endpoints = known.setdefault(summary.name, [])
        endpoints.extend(e for e in summary.endpoints if e not in endpoints)
    return known


def unserved(asked: str, target: Target, known: dict[str, list[str]] | None) -> str | None:
    """Why ``natsreg request`` found nobody serving ``asked``, when the registry can say
    more than "no instance serves it" (None: it cannot, or the endpoint does exist)."""
    if known is None or target.constraint is not None:
        return None
    if target.service is None:
        if "." in asked:
            return None  # a plain NATS subject: not natsreg's to second-guess
        # A service's name alone ('user-service'): the endpoint is missing.
        if asked in known:
            return (
                f"{asked!r} is a service, not an endpoint: a request's subject is "
                f"SERVICE.ENDPOINT; {_serves(asked, known[asked])}"
            )
        example = next(iter(_subjects(known)), "user-service.users")
        return (
            f"nothing serves {asked!r}: a request's subject is SERVICE.ENDPOINT "
            f"(e.g. {example!r}){_close(asked, known)}"
        )
    service, endpoint = target.service, target.endpoint
    if service in known:
        if endpoint in known[service]:
            return None  # known, yet nobody answered: the request's own error says so
        # Beside a single endpoint, "did you mean" would only repeat it.
        close = (
            _close(asked, _subjects({service: known[service]})) if len(known[service]) > 1 else ""
        )
        return f"{service} has no endpoint {endpoint!r}{close}; {_serves(service, known[service])}"
    return f"no service {service!r} is known{_close(asked, _subjects(known))}: {LS}"


def unknown_service(service: str, known: dict[str, list[str]] | None) -> str:
    """That ``service`` is not running now, and the closest name that is."""
    close = _close(service, known or ())
    return f"no service {service!r} is known now{close}"


def _serves(service: str, endpoints: list[str]) -> str:
    if not endpoints:
        return f"{service} serves no endpoint now"
    return f"it serves {', '.join(_subjects({service: endpoints}))}"


def _subjects(known: dict[str, list[str]]) -> list[str]:
    return [f"{service}.{e}" for service, endpoints in known.items() for e in endpoints]


def _close(word: str, candidates: Iterable[str]) -> str:
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {found[0]!r}?)" if found else ""
