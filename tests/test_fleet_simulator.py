"""bench/fleet.py, the simulator the scale benchmark uses: a registry node sees its virtual
instances as real ones (announce, heartbeats with their own sequence and interval, re-announce
when asked, goodbye on SIGTERM), and drops none of their messages."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import natsreg
from natsreg import subjects, wire
from tests.helpers import eventually, until_warm

FLEET = Path(__file__).resolve().parents[1] / "bench" / "fleet.py"


async def test_simulated_instances_are_what_a_registry_node_sees_of_real_ones(
    nc: NATS, nats_url: str, prefix: str
) -> None:
    heard: dict[str, list[wire.ControlMessage]] = {"announce": [], "bye": []}

    async def record(msg: Msg) -> None:
        heard[msg.subject.split(".")[1]].append(wire.decode_control(msg.data))

    for verb in heard:
        await nc.subscribe(subjects.control_subject(prefix, verb, ">"), cb=record)
    async with natsreg.Registry(nc, prefix=prefix) as registry:
        await until_warm(nc, prefix)
        command = [sys.executable, str(FLEET), "--url", nats_url, "--prefix", prefix]
        command += ["--instances", "20", "--services", "4", "--tag", "sim"]
        command += ["--heartbeat-s", "0.2", "--ramp", "0.1"]
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
            try:
                assert proc.stdout is not None and proc.stdout.readline() == "ready 20\n"

                async def listed() -> list[wire.InstanceView]:
                    reply = await nc.request(
                        subjects.control_subject(prefix, "registry", "list"), b""
                    )
                    return wire.decode_snapshot(reply.data).instances

                async def all_heartbeating() -> bool:
                    instances = await listed()
                    return len(instances) == 20 and all(i.seq >= 3 for i in instances)

                await eventually(all_heartbeating, what="20 instances heartbeating")
                instances = await listed()
                assert {i.id for i in instances} == {f"sim-{n}" for n in range(20)}
                assert {i.name for i in instances} == {f"svc-{n}" for n in range(4)}
                assert {i.heartbeat_s for i in instances} == {0.2}
                assert len(heard["announce"]) == 20

                # Asked by id, by service, then everyone: each asked instance once, with its
                # next sequence number.
                before = {i.id: i.seq for i in instances}
                for tokens, expected in (
                    (("svc-1", "sim-1"), {"sim-1"}),
                    (("svc-2",), {f"sim-{n}" for n in range(2, 20, 4)}),
                    ((), set(before)),
                ):
                    heard["announce"].clear()
                    body = wire.encode(wire.Discover(jitter_s=0.3))
                    await nc.publish(subjects.control_subject(prefix, "discover", *tokens), body)

                    async def all_asked(expected: set[str] = expected) -> bool:
                        return {m.id for m in heard["announce"]} >= expected

                    await eventually(all_asked, what=f"re-announced {sorted(expected)}")
                    assert sorted(m.id for m in heard["announce"]) == sorted(expected)
                    assert all(m.seq > before[m.id] for m in heard["announce"])

                proc.send_signal(signal.SIGTERM)
                assert proc.wait(10) == 0

                async def all_said_goodbye() -> bool:
                    return len(heard["bye"]) >= 20 and registry.stats().instances == 0

                await eventually(all_said_goodbye, what="every simulated instance gone")
                assert sorted(m.id for m in heard["bye"]) == sorted(before)
                # Nothing refused but what a real instance's messages may also be: a heartbeat
                # and the re-announce or goodbye written right after it travel on two
                # subscriptions, whose order a node does not keep, so the older one can be stale.
                assert set(registry.stats().dropped) <= {"stale"}
            finally:
                proc.kill()
