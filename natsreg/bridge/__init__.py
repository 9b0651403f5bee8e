"""The HTTP bridge: any HTTP client calls any natsreg service, through one NATS connection.

    config = BridgeConfig.from_toml("routes.toml", timeout_s=5.0)
    async with natsreg.bridge.run(nc, config, host="127.0.0.1", port=8080) as running:
        ...                                   # serving on running.url until the block ends

    app = natsreg.bridge.create_app(nc, config)   # or mount the ASGI app in your own

``/<service>/<endpoint>[/<more>]`` goes to the subject ``<service>.<endpoint>[.<more>]``; a
route table maps other paths, with method filters, auth and a version constraint. The body
travels unchanged, the method, path, query string and chosen headers as NATS headers
(:data:`METHOD_HEADER`, :data:`PATH_HEADER`, :data:`QUERY_HEADER`), and the reply's body and
``Content-Type`` come back unchanged. Failures map to HTTP statuses in one table,
:func:`status_for`. A path that is not a literal subject never reaches NATS.

Its parts: ``_access`` (auth, Host names, CORS), ``_routes`` (path → subject, refusals), ``_config``
(BridgeConfig, the routes file), ``_app`` (the ASGI request path), ``_head`` (reading a request
head), ``_own`` (the bridge's resources under ``/_natsreg/``), ``_responses`` (the status table,
writing responses), ``_server`` (uvicorn).
"""

from ._access import Auth, Cors
from ._app import METHOD_HEADER, PATH_HEADER, QUERY_HEADER, Bridge, create_app, status_for
from ._config import BridgeConfig
from ._routes import Route
from ._server import RunningBridge, run, serve

__all__ = [
    "METHOD_HEADER",
    "PATH_HEADER",
    "QUERY_HEADER",
    "Auth",
    "Bridge",
    "BridgeConfig",
    "Cors",
    "Route",
    "RunningBridge",
    "create_app",
    "run",
    "serve",
    "status_for",
]
