"""Structured logs: natsreg.logs' formats, the instance and trace each line names, and
``--log-format json`` on every command, where each line either stream carries parses."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

import natsreg
import natsreg.logs
from natsreg import _origin, _trace
from natsreg.testing import NatsServer
from tests.helpers import eventually
from tests.run_helpers import Lines
from tests.test_cli import free_port

TRACE = _trace.TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")


def record(message: str = "hello", exc_info: Any = None, extra: Any = None) -> logging.LogRecord:
    return logging.getLogger("tests.logs").makeRecord(
        "tests.logs", logging.WARNING, __file__, 1, message, (), exc_info, extra=extra
    )


# -- the formats (no server) -------------------------------------------------------------------


@pytest.mark.pure
def test_a_json_line_names_the_instance_and_trace_it_was_written_for() -> None:
    token = _trace.current.set(TRACE)
    try:
        with _origin.bound("user-service", "inst-1"):
            line = json.loads(natsreg.logs.JsonFormatter().format(record("two\nlines")))
    finally:
        _trace.current.reset(token)
    assert line.pop("time").endswith("Z")
    assert line == {
        "level": "warning",
        "logger": "tests.logs",
        "message": "two\nlines",
        "service": "user-service",
        "instance": "inst-1",
        "trace_id": TRACE.trace_id,
        "span_id": TRACE.span_id,
    }


@pytest.mark.pure
def test_a_json_line_leaves_out_what_it_has_not_and_carries_its_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("failed", exc_info=sys.exc_info())
    line = json.loads(natsreg.logs.JsonFormatter(fields={"worker": "2"}).format(failed))
    assert set(line) == {"time", "level", "logger", "message", "exception", "worker"}
    assert "ValueError: boom" in line["exception"] and line["worker"] == "2"
    stamped = datetime.fromisoformat(line["time"])
    assert abs(stamped.timestamp() - time.time()) < 60


@pytest.mark.pure
def test_the_filter_keeps_what_the_caller_passed_and_fills_the_rest() -> None:
    mine = record(extra={"service": "mine"})
    with _origin.bound("user-service", "inst-1"):
        assert natsreg.logs.ContextFilter().filter(mine)
    assert (mine.service, mine.instance, mine.trace_id) == ("mine", "inst-1", None)  # type: ignore[attr-defined]


@pytest.mark.pure
def test_a_text_line_brackets_only_what_it_has() -> None:
    text = natsreg.logs.TextFormatter()
    assert text.format(record()).endswith(" WARNING tests.logs: hello")
    with _origin.bound("user-service", "inst-1"):
        named = text.format(record())
    assert named.endswith(" tests.logs [service=user-service instance=inst-1]: hello")


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.pure
@pytest.mark.usefixtures("root_logging")
def test_configure_takes_the_format_from_the_environment_and_refuses_an_unknown_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setenv(natsreg.logs.ENV, "json")
    natsreg.logs.configure(stream=stream)
    with _origin.bound("s", "i"):
        logging.getLogger("tests.logs").info("configured")
    assert json.loads(stream.getvalue())["service"] == "s"
    with pytest.raises(natsreg.ConfigError, match="'text' or 'json'"):
        natsreg.logs.configure("xml")


@pytest.mark.pure
def test_under_json_the_cli_writes_pythons_own_last_words_as_json_too() -> None:
    program = """
import gc, warnings
from natsreg import cli
cli._setup_logs("json", verbose=False)
class Broken:
    def __del__(self):
        raise RuntimeError("raised in a destructor")
Broken()
gc.collect()
warnings.warn("careful")
"""
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30
    )
    unraisable, warning = assert_json_lines("python", result.stderr)
    assert "RuntimeError: raised in a destructor" in unraisable["exception"]
    assert "UserWarning: careful" in warning["message"]


# -- the instance each line names (a real server) ----------------------------------------------


@pytest.fixture
def json_lines(root_logging: None) -> Callable[[], list[dict[str, Any]]]:
    """Every log line of this process from now on, as natsreg.logs.configure writes it."""
    stream = io.StringIO()
    natsreg.logs.configure("json", stream=stream)
    return lambda: [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_each_instance_names_itself_on_its_lines_and_on_no_one_elses(
    nc: NATS, prefix: str, unique: str, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    app = logging.getLogger("tests.app")
    client = natsreg.Client(nc, prefix=prefix)

    def unhealthy() -> str:
        raise RuntimeError("disk gone")

    async with (
        natsreg.announce(nc, f"front-{unique}", version="1.0.0", prefix=prefix) as front,
        natsreg.announce(
            nc, f"leaf-{unique}", version="1.0.0", prefix=prefix, health=unhealthy
        ) as leaf,
    ):

        @leaf.endpoint("work")
        async def work(req: natsreg.Request) -> str:
            app.warning("in leaf")
            raise ValueError("leaf failed")

        @front.endpoint("call")
        async def call(req: natsreg.Request) -> str:
            app.warning("in front, before")
            with suppress(natsreg.ServiceError):
                await client.request(f"leaf-{unique}.work", b"")
            app.warning("in front, after")
            return "ok"

        await front.ready()
        await leaf.ready()
        app.warning("in the block")
        await client.request(f"front-{unique}.call", b"")
        # The health check runs with the heartbeats, in the instance's own task.
        await eventually(
            lambda: any("health check failed" in line["message"] for line in json_lines()),
            what="a heartbeat's health check",
        )
    await client.aclose()
    front_is = {"service": f"front-{unique}", "instance": front.id}
    leaf_is = {"service": f"leaf-{unique}", "instance": leaf.id}

    def named(line: dict[str, Any]) -> dict[str, Any]:
        return {key: line[key] for key in ("service", "instance") if key in line}

    by_message = {line["message"]: named(line) for line in json_lines()}
    assert by_message["in front, before"] == by_message["in front, after"] == front_is
    assert by_message["in leaf"] == leaf_is
    assert by_message[f"leaf-{unique}.work: handler failed"] == leaf_is
    assert by_message[f"leaf-{unique}: health check failed; reporting critical"] == leaf_is
    assert by_message["in the block"] == {}


# -- every command under --log-format json (real processes) ------------------------------------

APP = """
import logging
import natsreg

svc = natsreg.Service({name!r}, version="1.0.0")

@svc.endpoint("echo")
async def echo(req):
    logging.getLogger("app").warning("echoing")
    return req.json()

@svc.endpoint("text")
async def text(req):
    return b"plain\\ntext"

@svc.endpoint("fail")
async def fail(req):
    raise RuntimeError("boom\\nsecond line")
"""


class Output:
    """A process' stdout and stderr, read by threads as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._out, self._err = Lines(proc, proc.stdout), Lines(proc)
        self.stdout, self.stderr = self._out.lines, self._err.lines

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout_s: float = 30) -> int:
        os.killpg(self.proc.pid, sig)
        code = self.proc.wait(timeout_s)
        self._out.join(5)
        self._err.join(5)
        return code

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stderr]


def natsreg_json(*args: str) -> list[str]:
    """``natsreg COMMAND --log-format json ...``: the flag right after the command's name,
    before an action of its own (``saga --log-format json ls``), where each must take it."""
    return [sys.executable, "-m", "natsreg", *args[:1], "--log-format", "json", *args[1:]]


@contextmanager
def started(folder: Path, env: dict[str, str], *args: str) -> Iterator[Output]:
    with subprocess.Popen(
        natsreg_json(*args),
        cwd=folder,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    ) as proc:
        output = Output(proc)
        try:
            yield output
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def command(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        natsreg_json(*args),
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_json_lines(what: str, *texts: str | list[str]) -> list[Any]:
    """Every line of ``texts`` parses as JSON; returns them parsed."""
    parsed = []
    for text in texts:
        for line in text if isinstance(text, list) else text.splitlines():
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"{what}: a line that is not JSON: {line!r}") from None
    return parsed


def said(output: Output, words: str) -> bool:
    return any(words in line for line in output.stderr)


def listed(folder: Path, env: dict[str, str], count: int) -> bool:
    """Whether ``natsreg ls --log-format json`` lists ``count`` instances."""
    result = command(folder, env, "ls")
    return result.returncode == 0 and len(json.loads(result.stdout)["instances"]) == count


async def a_saga_and_an_event(js: NATS, prefix: str, unique: str) -> str:
    """One saga run to its end and one durable event stored on ``js``; the saga's id."""
    shop = f"shop-{unique}"
    async with natsreg.announce(js, shop, version="1.0.0", prefix=prefix) as svc:

        @svc.endpoint("reserve")
        async def reserve(req: natsreg.Request) -> dict[str, bool]:
            return {"reserved": True}

        await js.flush()
        saga = natsreg.Saga("order", steps=[natsreg.Step(f"{shop}.reserve")])
        result = await saga.run(natsreg.Client(js, prefix=prefix), {"order": 1})
    await natsreg.Events(js, prefix=prefix).emit("order.placed", {"order": 1})
    return result.id


async def test_every_line_of_every_command_parses_as_json(
    tmp_path: Path,
    prefix: str,
    unique: str,
    cli_env: dict[str, str],
    js: NATS,
    js_server: NatsServer,
) -> None:
    name = f"logged-{unique}"
    (tmp_path / "app.py").write_text(APP.format(name=name))
    env = {**cli_env, "NATSREG_PREFIX": prefix}
    # Sagas and durable events live in JetStream, which the other commands' server has not.
    js_env = {**env, "NATS_URL": js_server.url}
    saga_id = await a_saga_and_an_event(js, prefix, unique)
    port = free_port()
    with (
        started(tmp_path, env, "registry", "-v") as registry,
        started(tmp_path, env, "watch") as watch,
        started(tmp_path, env, "run", "app:svc", "--workers", "2") as run,
        started(tmp_path, env, "bridge", "--port", str(port)) as bridge,
    ):
        await eventually(lambda: listed(tmp_path, env, 2), timeout_s=30, what="both workers")
        await eventually(lambda: said(bridge, "HTTP bridge on"), timeout_s=15, what="bridge")
        async with httpx.AsyncClient() as http:
            reply = await http.post(f"http://127.0.0.1:{port}/{name}/echo", json={"via": "http"})
        assert reply.json() == {"via": "http"}

        results = {
            "ls": command(tmp_path, env, "ls"),
            "info": command(tmp_path, env, "info", name),
            "registry nodes": command(tmp_path, env, "registry", "nodes"),
            "request": command(tmp_path, env, "request", f"{name}.echo", '{"a": [1, 2]}'),
            "request text": command(tmp_path, env, "request", f"{name}.text"),
            "request fail": command(tmp_path, env, "request", f"{name}.fail", "--stats"),
            "auth": command(tmp_path, env, "auth", "--registry", "reg", "--service", "a"),
            "docs": command(tmp_path, env, "docs", "asyncapi"),
            "events": command(tmp_path, js_env, "events", "ls"),
            "saga ls": command(tmp_path, js_env, "saga", "ls"),
            "saga show": command(tmp_path, js_env, "saga", "show", saga_id),
            "saga show missing": command(tmp_path, js_env, "saga", "show", f"no-{unique}"),
            "usage error": command(tmp_path, env, "ls", "--no-such-flag"),
        }
        for what, result in results.items():
            assert_json_lines(what, result.stdout, result.stderr)
        assert json.loads(results["request"].stdout) == {"a": [1, 2]}
        assert json.loads(results["request text"].stdout) == "plain\ntext"
        assert json.loads(results["info"].stdout)["instances"][0]["name"] == name
        assert json.loads(results["registry nodes"].stdout)[0]["warming_up"] is False
        assert "authorization" in json.loads(results["auth"].stdout)["config"]
        assert f"{name}.echo" in json.loads(results["docs"].stdout)["channels"]
        assert [e["type"] for e in json.loads(results["events"].stdout)] == ["order.placed"]
        assert [s["id"] for s in json.loads(results["saga ls"].stdout)] == [saga_id]
        shown = json.loads(results["saga show"].stdout)
        assert (shown["id"], shown["status"]) == (saga_id, "completed")
        (missing,) = assert_json_lines("saga show missing", results["saga show missing"].stderr)
        assert results["saga show missing"].returncode == 1
        assert missing["level"] == "error" and f"no saga 'no-{unique}'" in missing["message"]
        failed = results["request fail"]
        stats, error = assert_json_lines("request fail", failed.stderr)
        assert failed.returncode == 1 and error["level"] == "error" and "boom" in error["message"]
        assert len(error["trace_id"]) == 32, "the error names the trace of the request it is about"
        assert "level" not in stats, "--stats is data, not a log record"
        usage = json.loads(results["usage error"].stderr)
        assert results["usage error"].returncode == 2 and "--no-such-flag" in usage["message"]

        assert run.stop() == 0

        def downs() -> int:
            return sum(
                event["kind"] == "down" for event in assert_json_lines("watch", watch.stdout)
            )

        await eventually(lambda: downs() == 2, what="both workers' goodbyes")
        for output in (watch, registry, bridge):
            assert output.stop() == 0

    for what, output in (
        ("run", run),
        ("watch", watch),
        ("registry", registry),
        ("bridge", bridge),
    ):
        assert_json_lines(what, output.stdout, output.stderr)
    assert {event["kind"] for event in assert_json_lines("watch", watch.stdout)} >= {"up", "down"}
    # A line about a request names the instance that handled it, and the worker it runs in.
    instances = {e["instance"]["id"] for e in assert_json_lines("watch", watch.stdout)}
    records = run.records()
    handled = [r for r in records if r["message"] in ("echoing", f"{name}.fail: handler failed")]
    assert len(handled) == 3, records
    for line in handled:
        assert line["service"] == name and line["instance"] in instances and line["worker"]
    assert "RuntimeError: boom" in next(r for r in handled if "exception" in r)["exception"]
    for words in ("serving as", "drained and said goodbye"):
        lines = [r for r in records if words in r["message"]]
        assert {(r["logger"], r["service"], r["instance"]) for r in lines} == {
            ("natsreg.cli", name, instance) for instance in instances
        }, words
    assert not any("exception" in r for r in records if r not in handled), records
    # -v: what the node does, in JSON too.
    assert any(r["level"] == "info" and "is warm" in r["message"] for r in registry.records())


def test_up_and_the_programs_it_starts_write_json_lines(tmp_path: Path, unique: str) -> None:
    name = f"up-{unique}"
    (tmp_path / "app.py").write_text(APP.format(name=name))
    env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{free_port()}", "PYTHONUNBUFFERED": "1"}
    with started(tmp_path, env, "up", "--port", str(free_port()), "--with", "app:svc") as up:
        deadline = time.monotonic() + 30
        while not listed(tmp_path, env, 1):
            assert time.monotonic() < deadline, up.stderr
            time.sleep(0.1)
        assert command(tmp_path, env, "request", f"{name}.fail").returncode == 1
        assert up.stop() == 0
    records = assert_json_lines("up", up.stdout, up.stderr)
    # The service's own lines come from the `natsreg run` that up started: JSON too.
    assert any(r.get("service") == name for r in records), records
    assert any("nats-server" in r["message"] for r in records)


async def test_a_handlers_lines_carry_the_trace_id_the_http_client_sent(
    tmp_path: Path, prefix: str, unique: str, cli_env: dict[str, str]
) -> None:
    name = f"traced-{unique}"
    (tmp_path / "app.py").write_text(APP.format(name=name))
    env = {**cli_env, "NATSREG_PREFIX": prefix}
    port = free_port()
    with (
        started(tmp_path, env, "run", "app:svc") as run,
        started(tmp_path, env, "bridge", "--port", str(port)) as bridge,
    ):
        await eventually(lambda: said(run, "serving as"), timeout_s=15, what="the service")
        await eventually(lambda: said(bridge, "HTTP bridge on"), timeout_s=15, what="bridge")
        async with httpx.AsyncClient() as http:
            reply = await http.post(
                f"http://127.0.0.1:{port}/{name}/fail",
                headers={"traceparent": f"00-{TRACE.trace_id}-{TRACE.span_id}-01"},
            )
        assert reply.status_code == 500
        # natsreg request starts a trace of its own, and names it on its error line.
        (error,) = assert_json_lines(
            "request", command(tmp_path, env, "request", f"{name}.fail").stderr
        )

        def failed() -> list[dict[str, Any]]:
            return [r for r in run.records() if r["message"] == f"{name}.fail: handler failed"]

        await eventually(lambda: len(failed()) == 2, what="both failures logged")
    assert {line["service"] for line in failed()} == {name}
    assert {line.get("trace_id") for line in failed()} == {TRACE.trace_id, error["trace_id"]}
    # Each hop has a span of its own: the bridge's and the service's are not the client's.
    assert all(len(line["span_id"]) == 16 for line in failed())
    assert TRACE.span_id not in {line["span_id"] for line in failed()}
