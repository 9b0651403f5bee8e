"""Durable events under the permissions ``natsreg auth --events`` generates, on a real
nats-server with JetStream: the roles that use events work, and what would forge an event, a
dead letter or a replay is refused by NATS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

import natsreg
from natsreg import _authconfig, subjects
from natsreg.permissions import ALL_SERVICES, Role, permissions
from natsreg.testing import NatsServer
from tests.helpers import eventually

PREFIX = "natsreg"
ROLES = [
    Role(kind="service", user="mail", name="mail", events=True),
    Role(kind="service", user="billing", name="billing"),
    Role(kind="caller", user="shop", calls=("mail",), events=True),
    Role(kind="bridge", user="web", calls=(ALL_SERVICES,)),
    Role(kind="operator", user="ops", calls=(ALL_SERVICES,)),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, Any]]:
    folder = tmp_path_factory.mktemp("auth")
    rendered = _authconfig.render_static(ROLES, PREFIX)
    _authconfig.write_static(rendered, PREFIX, folder)
    config = folder / "nats.conf"
    config.write_text(
        f"jetstream {{ store_dir: {folder / 'js'} }}\ninclude {_authconfig.CONFIG_FILE}\n"
    )
    with NatsServer(args=("-c", str(config))) as running:
        yield running, {s.role.user: s for s in rendered.users}


class Login:
    def __init__(self) -> None:
        self.violations: list[str] = []
        self.nc: NATS

    async def refused(self, subject: str) -> None:
        await self.nc.flush()
        await eventually(
            lambda: any(f'"{subject.lower()}"' in v for v in self.violations),
            what=f"a permissions violation on {subject}",
        )


async def login(server: tuple[NatsServer, Any], user: str) -> Login:
    running, users = server
    result = Login()

    async def on_error(exc: Exception) -> None:
        result.violations.append(str(exc))

    result.nc = await nats.connect(
        running.url,
        user=user,
        password=users[user].password,
        inbox_prefix=users[user].inbox,
        error_cb=on_error,
    )
    return result


@pytest.fixture
async def logins(server: tuple[NatsServer, Any]) -> AsyncIterator[dict[str, Login]]:
    users = {role.user: await login(server, role.user) for role in ROLES}
    yield users
    for user in users.values():
        await user.nc.close()


async def test_services_and_callers_with_events_emit_handle_and_dead_letter_as_themselves(
    logins: dict[str, Login],
) -> None:
    handled: list[int] = []
    mail = logins["mail"]
    async with natsreg.announce(mail.nc, "mail", version="1.0.0", prefix=PREFIX) as svc:

        @svc.on_event("user.created", max_deliveries=1)
        async def welcome(ev: natsreg.Event[dict[str, Any]]) -> None:
            if ev.body.get("poison"):
                raise RuntimeError("poison")
            handled.append(ev.body["n"])

        await svc.ready()
        shop = natsreg.Events(logins["shop"].nc, prefix=PREFIX)
        for n in range(5):
            await shop.emit("user.created", {"n": n}, key=str(n))
        await shop.emit("user.created", {"poison": True})
        await eventually(lambda: sorted(handled) == list(range(5)), what="handled")
        # Counted once the dead letters' stream confirmed it stored the event.
        await eventually(
            lambda: svc.event_counts()["user.created"]["dead"] == 1, what="dead-lettered"
        )
    assert not mail.violations and not logins["shop"].violations


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        # A service without events may not emit; no one may dead-letter as another service,
        # and a caller of every service (whose "*.>" matches them) may not forge an event,
        # a dead letter or a replay.
        ("billing", "natsreg.ev.user.created.0"),
        ("mail", "natsreg.evdead.billing.user.created"),
        ("shop", "natsreg.evdead.mail.user.created"),
        ("web", "natsreg.ev.user.created.0"),
        ("ops", "natsreg.evr.mail.user.created.0"),
        ("ops", "natsreg.evdead.mail.user.created"),
    ],
)
async def test_forging_events_dead_letters_or_replays_is_refused(
    logins: dict[str, Login], user: str, subject: str
) -> None:
    await logins[user].nc.publish(subject, b"{}")
    await logins[user].refused(subject)


@pytest.mark.pure
def test_only_a_service_with_events_may_pull_and_dead_letter_as_itself() -> None:
    mail = permissions(ROLES[0], PREFIX)
    assert "$JS.API.CONSUMER.MSG.NEXT.natsreg_events.*" in mail.publish
    assert subjects.dead_subject(PREFIX, "mail", ">") in mail.publish
    assert not any("evdead" in s and "mail" not in s for s in mail.publish)
    shop = permissions(ROLES[2], PREFIX)
    assert "natsreg.ev.>" in shop.publish
    assert not any("CONSUMER" in s or "evdead" in s for s in shop.publish)
    billing = permissions(ROLES[1], PREFIX)
    assert not any("$JS" in s or ".ev." in s for s in billing.publish)
    with pytest.raises(natsreg.ConfigError, match="only services and callers"):
        Role(kind="bridge", user="web", events=True)
