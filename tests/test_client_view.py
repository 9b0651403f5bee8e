"""The first call to a service while the registry is slow to answer, on a real nats-server."""

from __future__ import annotations

import asyncio
import subprocess
import textwrap
import time
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import natsreg
from natsreg import subjects
from tests.conftest import PYTHON


async def ignore(msg: Msg) -> None:
    pass


async def echo(msg: Msg) -> None:
    await msg.respond(msg.data)


async def test_a_short_budget_is_not_spent_waiting_for_the_registry(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"short-{unique}"
    # A registry node that hears the question and never answers, and a plain responder.
    await nc.subscribe(subjects.control_subject(prefix, "registry", "service", name), cb=ignore)
    await nc.subscribe(f"{name}.echo", cb=echo)
    client = natsreg.Client(nc, prefix=prefix, view_wait_s=0.5)
    started = time.monotonic()
    reply = await client.request(f"{name}.echo", b"sent", timeout_s=0.1)
    assert reply.data == b"sent"
    assert time.monotonic() - started < 0.1
    await client.aclose()


async def test_the_view_wait_still_waits_for_a_registry_that_answers_in_time(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"view-{unique}"
    async with (
        natsreg.Registry(nc, prefix=prefix),
        natsreg.announce(nc, name, version="1.0.0", prefix=prefix) as svc,
    ):

        @svc.endpoint("echo")
        async def echo_endpoint(req: natsreg.Request) -> bytes:
            return req.data

        await svc.ready()
        async with natsreg.Client(nc, prefix=prefix) as client:
            # Known to the registry: the first call already goes to the instance directly.
            await client.request(f"{name}.echo", b"", timeout_s=2.0)
            assert client.stats()["instances"][svc.id]["calls"] == 1


SHUTDOWN = textwrap.dedent("""
    import asyncio, sys
    import nats
    import natsreg
    from natsreg import subjects

    async def ignore(msg):
        pass

    async def echo(msg):
        await msg.respond(msg.data)

    async def main(url, prefix, name):
        nc = await nats.connect(url)
        other = await nats.connect(url)
        await other.subscribe(subjects.control_subject(prefix, "registry", "service", name),
                              cb=ignore)
        await other.subscribe(name + ".echo", cb=echo)
        await other.flush()
        client = natsreg.Client(nc, prefix=prefix)
        print((await client.request(name + ".echo", b"hi", timeout_s=1.0)).text(), flush=True)
        await nc.close()  # the view's bootstrap still waits for the registry
        await other.close()

    asyncio.run(main(*sys.argv[1:]))
""")


async def test_closing_the_connection_while_the_view_bootstraps_leaks_no_exception(
    nats_url: str, prefix: str, unique: str, tmp_path: Path
) -> None:
    # asyncio.run() in a process of its own: what it logs at shutdown is the point.
    proc = await asyncio.to_thread(
        subprocess.run,
        [PYTHON, "-c", SHUTDOWN, nats_url, prefix, f"closing-{unique}"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "hi\n", "")


async def test_aclose_during_the_first_call_sends_it_on_the_queue_group(
    nc: NATS, prefix: str, unique: str
) -> None:
    name = f"aclose-{unique}"
    await nc.subscribe(subjects.control_subject(prefix, "registry", "service", name), cb=ignore)
    await nc.subscribe(f"{name}.echo", cb=echo)
    client = natsreg.Client(nc, prefix=prefix, view_wait_s=0.5)
    call = asyncio.ensure_future(client.request(f"{name}.echo", b"queued", timeout_s=5.0))
    await asyncio.sleep(0.05)
    await client.aclose()  # cancels the bootstrap the call is waiting for
    assert (await call).data == b"queued"
