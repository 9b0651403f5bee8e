"""Prometheus metrics of every natsreg role running in this process.

Each role (a service instance, a client, a registry node, the HTTP bridge) adds a collector to
:data:`REGISTRY` while it runs. A collector reads natsreg's own counters when it is scraped, so
the request path pays nothing for the exposition format.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ._collector import NatsregCollector
from ._probes import serve

__all__ = ["CONTENT_TYPE", "REGISTRY", "exposition", "serve"]

#: The registry natsreg's collectors join; pass it to your own exporter to merge the two.
REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(NatsregCollector())
#: The content type of :func:`exposition`'s text.
CONTENT_TYPE = CONTENT_TYPE_LATEST


def exposition() -> bytes:
    """Every natsreg metric of this process in the Prometheus text format."""
    return generate_latest(REGISTRY)
