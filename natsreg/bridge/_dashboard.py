"""The dashboard's files (``/_natsreg/ui``): one page, its script and its style sheet, shipped
in the package (``natsreg/bridge/ui/``) so that it works offline, with no CDN.

The files hold no data, and are the same in every copy of natsreg: a browser loads them with
no credentials (it cannot send a bearer token or an API key while navigating), and the
script then asks for everything it shows on ``/_natsreg/events``, behind the bridge's auth.
"""

from __future__ import annotations

import functools
import html
from importlib import resources

__all__ = ["asset"]

_PREFIX = "/_natsreg/ui"
_TYPES = {
    "html": b"text/html; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "css": b"text/css; charset=utf-8",
}
#: The page may load only its own script and style sheet and talk only to this bridge.
_SECURITY = (
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
)
_FILES = frozenset({"dashboard.js", "dashboard.css"})


def asset(path: str, root: str = "") -> tuple[bytes, bytes, tuple[tuple[bytes, bytes], ...]] | None:
    """The body, content type and headers of the dashboard file at ``path`` (under
    ``/_natsreg/ui``) of a bridge mounted at ``root``; None if there is none. Every page path
    is the same page, which reads its path to tell what to show: ``/_natsreg/ui`` the
    overview, ``/_natsreg/ui/service/<name>`` a service."""
    if path in (_PREFIX, _PREFIX + "/") or path.startswith(_PREFIX + "/service/"):
        # The page names its script and style sheet by absolute path, under the mount point.
        page = _read("index.html").replace(b"{root}", html.escape(root).encode())
        return page, _TYPES["html"], _SECURITY
    name = path.removeprefix(_PREFIX + "/")
    if name not in _FILES:
        return None
    return _read(name), _TYPES[name.rsplit(".", 1)[1]], _SECURITY


@functools.cache
def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("ui", name).read_bytes()
