"""``natsreg up`` stopping: a terminal's Ctrl-C (SIGINT to the whole process group), a second
Ctrl-C, and a nats-server it did not start going away under it. Real processes, real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import anyio
import nats
from nats.aio.msg import Msg

from natsreg import subjects, wire
from natsreg._server import free_port, is_listening
from natsreg.testing import NatsServer
from tests.helpers import eventually
from tests.run_helpers import Lines, exited

ROOT = Path(__file__).parents[1]
SERVICE = "examples.user_service:svc"


@contextmanager
def natsreg_up(
    env: dict[str, str], *args: str, command: Sequence[str] = (sys.executable, "-m", "natsreg")
) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """``natsreg up ARGS`` from the repository's folder, in a process group of its own as in
    a terminal; its stderr (and its programs') read as it comes."""
    with subprocess.Popen(
        [*command, "up", *args],
        cwd=ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as up:
        out = Lines(up)
        try:
            yield up, out
        finally:
            if up.poll() is None:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()


def started_pid(out: Lines, program: str) -> int:
    match = re.search(rf"started {re.escape(program)} \(pid (\d+)\)", out.text())
    assert match, out.text()
    return int(match.group(1))


async def test_ctrl_c_to_the_process_group_lets_the_service_say_goodbye_before_nats_stops() -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    env = {**os.environ, "NATS_URL": url}
    events: list[wire.Event] = []
    with natsreg_up(env, "--port", str(free_port()), "--with", SERVICE) as (up, out):
        await eventually(lambda: out.said("serving as"), 30, "the service")
        service_pid = started_pid(out, SERVICE)

        async def heard(msg: Msg) -> None:
            events.append(wire.decode_event(msg.data))

        async def cut_off(exc: Exception) -> None:
            pass  # the embedded server stops, as it should

        # What natsreg watch hears: the registry node's changes, on the embedded server.
        watcher = await nats.connect(url, allow_reconnect=False, error_cb=cut_off)
        await watcher.subscribe(
            subjects.control_subject(subjects.DEFAULT_PREFIX, "events", ">"), cb=heard
        )
        await watcher.flush()
        # As a terminal's Ctrl-C does: natsreg up and the service it started, at once.
        os.killpg(up.pid, signal.SIGINT)
        returncode = await anyio.to_thread.run_sync(up.wait, 40)
        await watcher.close()
    out.join(5)
    said = out.text()
    assert returncode == 0, said
    # The goodbye reached the registry node while NATS ran, and it told its watchers.
    assert [(e.kind, e.reason, e.instance.name) for e in events] == [
        ("down", "goodbye", "user-service")
    ], said
    # Then the rest, in order, each said once and whole (not two lines run together).
    order = ["drained and said goodbye", "HTTP bridge stopped", "registry node", "nats-server"]
    stops = said[said.index("Ctrl-C again stops at once") :]
    assert [stops.index(line) for line in order] == sorted(stops.index(line) for line in order)
    assert f"nats-server {url} stopped" in stops, said
    assert all(line.count("natsreg: ") <= 1 for line in out.lines), said
    assert "Traceback" not in said and "unexpected EOF" not in said, said
    assert not is_listening("127.0.0.1", port), "the embedded nats-server was left running"
    await eventually(lambda: exited(service_pid), 5, "the service gone")


async def test_a_second_ctrl_c_kills_a_program_that_will_not_stop_and_stops_at_once(
    tmp_path: Path,
) -> None:
    stubborn = tmp_path / "stubborn.py"
    stubborn.write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('stubborn: running', file=sys.stderr, flush=True)\n"
        "while True:\n    time.sleep(1)\n"
    )
    port = free_port()
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{port}"}
    with natsreg_up(env, "--no-bridge", "--with", str(stubborn)) as (up, out):
        await eventually(lambda: out.said("stubborn: running"), 30, "the program")
        pid = started_pid(out, str(stubborn))
        os.killpg(up.pid, signal.SIGINT)
        await eventually(lambda: out.said("Ctrl-C again stops at once"), 10, "the ordered stop")
        os.killpg(up.pid, signal.SIGINT)
        returncode = await anyio.to_thread.run_sync(up.wait, 10)
    assert returncode == 130, out.text()
    assert out.said("stopping at once"), out.text()
    assert not is_listening("127.0.0.1", port), "the embedded nats-server was left running"
    await eventually(lambda: exited(pid), 5, "the program killed")


async def test_ctrl_c_after_the_nats_server_up_did_not_start_went_away_stops_cleanly() -> None:
    with NatsServer(port=free_port()) as server:
        env = {**os.environ, "NATS_URL": server.url}
        with natsreg_up(env, "--no-bridge", "--with", SERVICE) as (up, out):
            await eventually(lambda: out.said("serving as"), 30, "the service")
            assert out.said("which natsreg up did not start"), out.text()
            server.stop()
            await eventually(lambda: out.said("lost NATS"), 10, "the loss said")
            # A few reconnects fail meanwhile (one a second): none is a line of its own.
            await anyio.sleep(3)
            os.killpg(up.pid, signal.SIGINT)
            returncode = await anyio.to_thread.run_sync(up.wait, 30)
    out.join(5)
    said = out.text()
    assert returncode == 0, said
    assert "Traceback" not in said, said
    # The goodbye could not be sent, and the service does not claim it was.
    assert "said goodbye" not in said, said
    assert out.said("user-service: stopped, but could not say goodbye"), said
    # The loss is one line for natsreg up and one for the service, not one per reconnect.
    assert sum("lost NATS" in line for line in out.lines) == 2, said
    assert "Connection refused" not in said, said
    assert out.said("left the nats-server at"), said


async def test_the_commands_up_suggests_run_as_typed_where_natsreg_is_not_on_path() -> None:
    # The README runs .venv/bin/natsreg, which is not on PATH: "try: natsreg ls" would fail.
    script = Path(sys.executable).with_name("natsreg")
    env = {**os.environ, "PATH": "/usr/bin:/bin", "NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    with natsreg_up(env, "--no-bridge", command=[str(script)]) as (up, out):
        await eventually(lambda: out.said("Ctrl-C stops everything"), 30, "up to start")
        os.killpg(up.pid, signal.SIGINT)
        returncode = await anyio.to_thread.run_sync(up.wait, 40)
    assert returncode == 0, out.text()
    assert f"try: {script} ls   |   {script} request user-service.users" in out.text()
