"""``natsreg run --workers N``: real worker processes under a supervisor, real signals."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
from nats.aio.client import Client as NATS

import natsreg
from tests.helpers import eventually
from tests.run_helpers import Lines, exited, instances, natsreg_run, write_app


async def test_workers_are_instances_and_one_killed_is_restarted_then_sigterm_drains_all(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    name = f"workers-{unique}"
    write_app(tmp_path, "app", name)
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        with natsreg_run(tmp_path, cli_env, "app:svc", "--workers", "3", "--prefix", prefix) as p:
            out = Lines(p)
            await eventually(lambda: len(instances(registry, name)) == 3, 30, "3 instances")
            views = instances(registry, name)
            # Each worker is its own process and says which worker it is.
            assert sorted(v.metadata["worker"] for v in views) == ["1", "2", "3"]
            assert len({v.pid for v in views}) == 3 and p.pid not in {v.pid for v in views}

            victim = next(v for v in views if v.metadata["worker"] == "2")
            os.kill(victim.pid, signal.SIGKILL)
            await eventually(lambda: out.said("was killed by SIGKILL"), 10, "the reason")
            await eventually(
                lambda: (
                    len(instances(registry, name)) == 3
                    and victim.id not in {v.id for v in instances(registry, name)}
                ),
                30,
                "worker 2 restarted",
            )
            restarted = next(v for v in instances(registry, name) if v.metadata["worker"] == "2")
            assert restarted.pid != victim.pid

            goodbyes = registry.expiries["goodbye"]
            p.send_signal(signal.SIGTERM)
            await anyio.to_thread.run_sync(p.wait, 20)
            # Every worker said goodbye: the registry forgot them for that, not on expiry.
            await eventually(lambda: not instances(registry, name), 5, "all gone")
            assert registry.expiries["goodbye"] - goodbyes == 3, registry.expiries
    assert p.returncode == 0, out.text()
    assert out.said("every worker stopped") and "Traceback" not in out.text()


async def test_sighup_replaces_the_workers_under_load_and_no_request_fails(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    name = f"roll-{unique}"
    write_app(tmp_path, "app", name)
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        with natsreg_run(tmp_path, cli_env, "app:svc", "--workers", "2", "--prefix", prefix) as p:
            out = Lines(p)
            await eventually(lambda: len(instances(registry, name)) == 2, 30, "2 instances")
            before = {v.id for v in instances(registry, name)}
            client = natsreg.Client(nc, prefix=prefix, timeout_s=5.0)
            failures: list[str] = []
            served = {"whoami": 0, "charge": 0}
            fewest = [2]
            done = anyio.Event()

            async def caller(endpoint: str) -> None:
                # Bounded: until the roll is over, and never more than 20 s or 5000 calls.
                deadline = time.monotonic() + 20
                for call in range(5000):
                    if done.is_set() or time.monotonic() > deadline:
                        return
                    try:
                        await client.request(f"{name}.{endpoint}", {"n": call})
                        served[endpoint] += 1
                    except natsreg.NatsregError as exc:
                        failures.append(f"{endpoint}: {exc!r}")

            async def watch() -> None:
                while not done.is_set():
                    fewest[0] = min(fewest[0], len(instances(registry, name)))
                    await anyio.sleep(0.01)

            async with anyio.create_task_group() as tg:
                for endpoint in ("whoami", "charge", "whoami", "charge"):
                    tg.start_soon(caller, endpoint)
                tg.start_soon(watch)
                await anyio.sleep(0.3)
                p.send_signal(signal.SIGHUP)
                await eventually(lambda: out.said("every worker replaced"), 40, "the roll")
                await anyio.sleep(0.3)
                done.set()
            await client.aclose()
            after = {v.id for v in instances(registry, name)}
    assert failures == [], failures
    assert served["whoami"] > 50 and served["charge"] > 50, served
    # New instances replaced both old ones, and the registry never saw fewer than two.
    assert len(after) == 2 and not after & before
    assert fewest[0] >= 2, "a worker drained before its replacement was serving"


async def test_a_worker_that_keeps_failing_is_reported_as_a_crash_loop_then_recovers(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    name = f"loop-{unique}"
    write_app(tmp_path, "app", name)
    with (tmp_path / "app.py").open("a") as source:
        source.write(
            "\n@svc.on_start\nasync def check(ctx):\n"
            "    if os.path.exists('broken'):\n        raise RuntimeError('the disk is gone')\n"
        )
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        with natsreg_run(tmp_path, cli_env, "app:svc", "--workers", "2", "--prefix", prefix) as p:
            out = Lines(p)
            await eventually(lambda: len(instances(registry, name)) == 2, 30, "2 instances")
            (tmp_path / "broken").touch()
            os.kill(instances(registry, name)[0].pid, signal.SIGKILL)
            await eventually(lambda: out.said("is crash-looping"), 40, "the crash loop")
            assert out.said("RuntimeError: the disk is gone"), out.text()
            (tmp_path / "broken").unlink()
            await eventually(lambda: out.said("is serving again"), 40, "recovery")
            await eventually(lambda: len(instances(registry, name)) == 2, 10, "2 instances")


def test_workers_that_cannot_start_stop_the_supervisor_with_exit_1(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    write_app(tmp_path, "app", "never")
    with (tmp_path / "app.py").open("a") as source:
        source.write("\n@svc.on_start\nasync def fail(ctx):\n    raise RuntimeError('no db')\n")
    with natsreg_run(tmp_path, cli_env, "app:svc", "--workers", "2") as p:
        out = Lines(p)
        assert p.wait(60) == 1
        time.sleep(0.1)
    assert out.said("before it was ready") and out.said("not every worker started"), out.text()


async def test_a_supervisor_killed_with_9_leaves_no_worker_serving(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    name = f"orphan-{unique}"
    write_app(tmp_path, "app", name)
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        with natsreg_run(tmp_path, cli_env, "app:svc", "--workers", "2", "--prefix", prefix) as p:
            out = Lines(p)
            await eventually(lambda: len(instances(registry, name)) == 2, 30, "2 instances")
            pids = [v.pid for v in instances(registry, name)]
            os.kill(p.pid, signal.SIGKILL)
            # The workers notice, drain and say goodbye: gone before any heartbeat expiry.
            await eventually(lambda: not instances(registry, name), 10, "the workers gone")
            await eventually(lambda: out.said("the supervisor is gone"), 5, "the reason")
    await eventually(lambda: all(exited(pid) for pid in pids), 10, "the workers exited")


async def test_reload_serves_the_edited_code_and_keeps_the_old_one_on_a_syntax_error(
    nc: NATS, prefix: str, unique: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    name = f"reload-{unique}"
    write_app(tmp_path, "app", name, version="1.0.0")
    async with (
        natsreg.Registry(nc, prefix=prefix) as registry,
        natsreg.Client(nc, prefix=prefix) as client,
    ):

        async def code() -> str:
            reply = await client.request(f"{name}.whoami", {}, strategy="queue")
            return str(reply.json()["code"])

        with natsreg_run(tmp_path, cli_env, "app:svc", "--reload", "--prefix", prefix) as p:
            out = Lines(p)
            await eventually(lambda: len(instances(registry, name)) == 1, 30, "the instance")
            assert await code() == "1.0.0"
            await eventually(lambda: out.said("watching"), 5, "the watch")

            write_app(tmp_path, "app", name, version="1.0.1")
            await eventually(lambda: out.said("every worker replaced"), 30, "the reload")
            assert await code() == "1.0.1"

            (tmp_path / "app.py").write_text("def broken(:\n")
            await eventually(lambda: out.said("the old workers keep serving"), 30, "refusal")
            assert out.said("importing app failed: invalid syntax"), out.text()
            assert out.said("app.py, line 1"), out.text()
            assert await code() == "1.0.1"
            assert len(instances(registry, name)) == 1
