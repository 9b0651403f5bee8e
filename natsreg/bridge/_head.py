"""Step 1 of the bridge's request path: the request head, read in one pass (:class:`HeadReader`)
into what the later steps need (:class:`Head`).
"""

from __future__ import annotations

import re

from .. import _trace
from ._config import BridgeConfig
from ._responses import Scope

__all__ = ["HEADER_BREAK", "Head", "HeadReader"]

# One line of a header: CR or LF would end it early in the NATS header block, NUL is refused
# by NATS itself; either is an injection attempt, never a real value.
HEADER_BREAK = re.compile(rb"[\r\n\x00]")


class Head:
    """What the bridge reads from a request head, in one pass (:meth:`HeadReader.read`)."""

    __slots__ = (
        "broken",
        "connection",
        "content_length",
        "credentials",
        "fetch_site",
        "forwarded",
        "host",
        "method",
        "origin",
        "path",
        "query",
        "raw_path",
        "size",
        "timeout",
        "traceparent",
        "tracestate",
    )

    def __init__(self) -> None:
        self.path = ""
        self.method = ""
        self.query = b""
        self.raw_path: bytes | None = None
        self.size = 0
        #: NATS header name → value, for the headers the bridge forwards.
        self.forwarded: dict[str, str] = {}
        #: A forwarded header holds CR, LF or NUL.
        self.broken = False
        self.credentials: dict[bytes, bytes] = {}
        self.timeout: bytes | None = None
        self.origin: bytes | None = None
        self.host: bytes | None = None
        self.fetch_site: bytes | None = None
        self.content_length: bytes | None = None
        self.connection: bytes | None = None
        #: The W3C trace headers (b"" when traceparent came twice: then it names no parent).
        self.traceparent: bytes | None = None
        self.tracestate: bytes | None = None

    def trace(self) -> _trace.TraceContext | None:
        """The trace the HTTP client's ``traceparent`` (and ``tracestate``) names, if valid."""
        if not self.traceparent:
            return None
        return _trace.parse(
            self.traceparent.decode("latin-1"),
            self.tracestate.decode("latin-1") if self.tracestate else None,
        )


class HeadReader:
    """Reads request heads for one bridge: which headers it forwards, which carry credentials,
    which one carries the caller's timeout."""

    def __init__(self, config: BridgeConfig) -> None:
        #: Header names as ASGI gives them (lower-case bytes) → the NATS header name to use.
        self.forward_names = {h.encode(): _canonical(h) for h in config.forward_headers}
        self._timeout_header = config.timeout_header.encode()
        auths = [config.auth, *(r.auth for r in config.routes if r.auth is not None)]
        self._credential_headers = frozenset(
            b"authorization" if a.scheme == "bearer" else a.header.encode()
            for a in auths
            if a.enabled
        )

    def read(self, scope: Scope) -> Head:
        """The request line, and one pass over the headers: their size, the ones to forward,
        and those the bridge itself reads."""
        head = Head()
        path: str = scope["path"]
        root = scope.get("root_path")
        if root and path.startswith(root):
            path = path[len(root) :]
        head.path = path
        head.method = scope["method"]
        head.query = query = scope["query_string"]
        head.raw_path = raw_path = scope.get("raw_path")
        size = len(raw_path or path) + len(query)
        forwarded = head.forwarded
        for name, value in scope["headers"]:
            size += len(name) + len(value)
            # Credentials are the bridge's to check and are never forwarded.
            if name in self._credential_headers:
                head.credentials[name] = value
                continue
            target_name = self.forward_names.get(name)
            if target_name is not None:
                if HEADER_BREAK.search(value):
                    head.broken = True
                # The trace headers are not passed on as they came: the next hop gets a
                # span id of its own (Bridge._forward).
                if name == b"traceparent":
                    head.traceparent = b"" if head.traceparent is not None else value
                elif name == b"tracestate":
                    state = head.tracestate
                    head.tracestate = value if state is None else state + b"," + value
                else:
                    forwarded[target_name] = value.decode("latin-1")
            elif name == self._timeout_header:
                head.timeout = value
            elif name == b"host":
                head.host = value
            elif name == b"origin":
                head.origin = value
            elif name == b"sec-fetch-site":
                head.fetch_site = value
            elif name == b"content-length":
                head.content_length = value
            elif name == b"connection":
                head.connection = value
            elif name == b"transfer-encoding":
                head.content_length = head.content_length or b"chunked"
        head.size = size
        return head


def _canonical(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))
