"""An example natsreg service: a tiny user directory, declared as an app object.

Serve it with a NATS server reachable at $NATS_URL (default nats://127.0.0.1:4222), from the
folder that holds examples/:

    natsreg up --with examples.user_service:svc     # NATS, a registry node and this service
    natsreg run examples.user_service:svc           # only this service, on a running NATS
    natsreg run examples.user_service:svc --workers 2   # two processes, two instances
    natsreg request user-service.users '{"id": 1}'  # from another terminal
"""

import time

import msgspec

import natsreg


# Requests and replies can be msgspec Structs: natsreg encodes them as JSON on the wire, so
# any NATS client in any language can call this service.
class UserQuery(msgspec.Struct):
    id: int


class User(msgspec.Struct):
    id: int
    name: str


# The declaration: nothing connects or runs at import time. `natsreg run` imports this
# module, connects, announces the instance to every registry node, serves until Ctrl-C or
# SIGTERM, then stops taking requests, finishes those in flight and says goodbye.
svc = natsreg.Service(
    "user-service",
    version="1.2.0",
    description="Users by id",
    metadata={"zone": "a"},
)


# Runs in each process before it announces: open what the handlers share (a database pool,
# say) and keep it in ctx.state, which handlers read as req.state.
@svc.on_start
async def open_directory(ctx: natsreg.service.Context) -> None:
    ctx.state.users = {1: User(1, "alice"), 2: User(2, "bob")}


# Runs around every handler, in the order declared: here, a log line per slow request.
@svc.middleware
async def log_slow(req: natsreg.Request, call_next: natsreg.service.Handler) -> object:
    started = time.perf_counter()
    try:
        return await call_next(req)
    finally:
        if (elapsed := time.perf_counter() - started) > 0.1:
            print(f"{req.subject} took {elapsed * 1000:.0f} ms")


# Served on the subject "user-service.users", in the queue group "user-service": run two
# instances and NATS spreads the requests over both. A read is safe to run twice, so it is
# declared idempotent: a caller may retry it on another instance after a timeout.
# The annotations make it a typed endpoint: natsreg decodes each payload into a UserQuery
# before the handler runs (a bad one, like {"id": "x"}, gets a 400 error naming the field,
# and the handler never sees it), and announces both JSON Schemas, which `natsreg info`
# shows and `natsreg request` checks a payload against before sending it.
@svc.endpoint("users", idempotent=True)
async def users(req: natsreg.Request[UserQuery]) -> User:
    # req.body is the payload, already a UserQuery.
    user = req.state.users.get(req.body.id)
    if user is None:
        # A ServiceError reaches the caller with its code (ADR-32 error headers).
        raise natsreg.ServiceError(f"no user {req.body.id}", code=404)
    return user
