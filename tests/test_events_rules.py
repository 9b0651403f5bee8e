"""The rules of durable events every side shares, without a server: names, partitions, retry
delays, the settings' checks, what an announcement may list, and how a handler's annotation
chooses the body's type."""

from __future__ import annotations

import re
import zlib
from typing import Any

import msgspec
import pytest

import natsreg
from natsreg import ConfigError, subjects, wire
from natsreg.events import PARTITIONS, EventOptions, StreamSettings
from natsreg.events._consume import _header_text
from natsreg.events._event import body_type
from natsreg.events._settings import (
    consumer_name,
    dead_stream_name,
    partition_of,
    retry_delay_s,
    stream_name,
)

pytestmark = pytest.mark.pure


CRC32_OF_USER_7 = 0x9745E321  # the IEEE CRC-32 of b"user-7"


class UserCreated(msgspec.Struct):
    id: int


@pytest.mark.parametrize(
    "event_type", ["user.created", "a", "order-v2.paid_out", "a.b.c.d.e.f.g.h"]
)
def test_event_types_of_name_tokens_are_accepted(event_type: str) -> None:
    assert subjects.check_event_type(event_type) == event_type


@pytest.mark.parametrize(
    "event_type",
    [
        "",
        "user..created",
        "user.*",
        "user.>",
        "user created",
        ".user",
        "a~b",
        "a@b",
        "x" * 129,
        "a.b.c.d.e.f.g.h.i",
    ],
)
def test_event_types_that_would_break_a_subject_or_a_consumer_name_are_refused(
    event_type: str,
) -> None:
    with pytest.raises(ConfigError, match="event type"):
        subjects.check_event_type(event_type)


def test_subjects_and_names_say_whose_events_they_are() -> None:
    assert subjects.event_subject("p", "user.created", "3") == "p.ev.user.created.3"
    assert subjects.replay_subject("p", "mail", "user.created", "3") == "p.evr.mail.user.created.3"
    assert subjects.dead_subject("p", "mail", "user.created") == "p.evdead.mail.user.created"
    assert stream_name("prod.reg") == "prod_reg_events"
    assert dead_stream_name("natsreg") == "natsreg_dead"
    assert consumer_name("mail", "user.created") == "mail~user~created"
    assert consumer_name("mail", "user.created", 7) == "mail~user~created@7"
    # Distinct (service, type) pairs never share a consumer.
    assert consumer_name("a-b", "c") != consumer_name("a", "b.c")


def test_a_key_always_lands_in_the_same_partition_and_keys_spread() -> None:
    # CRC-32 (IEEE), as zlib, Go's hash/crc32 and JavaScript libraries compute it.
    assert zlib.crc32(b"user-7") == CRC32_OF_USER_7
    assert partition_of("user-7") == CRC32_OF_USER_7 % PARTITIONS
    assert partition_of("user-7") == partition_of("user-7")
    assert len({partition_of(f"user-{n}") for n in range(200)}) == PARTITIONS
    assert all(0 <= partition_of(None) < PARTITIONS for _ in range(50))


def test_retries_wait_longer_each_time_up_to_the_cap() -> None:
    options = EventOptions(retry_delay_s=0.5, max_retry_delay_s=3.0)
    assert [retry_delay_s(options, d) for d in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    # However many deliveries JetStream counts (it never stops), no overflow.
    assert retry_delay_s(options, 10**6) == 3.0


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"ordered": True, "broadcast": True}, "not both"),
        ({"max_deliveries": 0}, "max_deliveries"),
        ({"ack_wait_s": 0}, "ack_wait_s"),
        ({"max_in_flight": 0}, "max_in_flight"),
    ],
)
def test_handler_options_that_cannot_work_are_refused_at_declaration(
    options: dict[str, Any], words: str
) -> None:
    svc = natsreg.Service("mail", version="1.0.0")
    with pytest.raises(ConfigError, match=words):
        svc.on_event("user.created", **options)


def test_a_service_handles_each_event_type_once_with_an_async_function() -> None:
    svc = natsreg.Service("mail", version="1.0.0")

    @svc.on_event("user.created")
    async def welcome(ev: natsreg.Event[Any]) -> None:
        pass

    with pytest.raises(ConfigError, match="already handles"):
        svc.on_event("user.created")
    with pytest.raises(ConfigError, match="async"):
        svc.on_event("user.deleted")(lambda ev: None)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"replicas": 7}, "replicas"),
        ({"duplicate_window_s": 10.0, "max_age_s": 5.0}, "duplicate_window_s"),
    ],
)
def test_stream_settings_that_cannot_work_are_refused(settings: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        StreamSettings(**settings)


def test_the_annotation_chooses_the_body_type() -> None:
    async def typed(ev: natsreg.Event[UserCreated]) -> None:
        pass

    async def untyped(ev: natsreg.Event[Any]) -> None:
        pass

    async def bare(ev):  # type: ignore[no-untyped-def]
        pass

    assert body_type(typed) is UserCreated
    assert body_type(untyped) is None
    assert body_type(bare) is None


def _announce(events: list[wire.EventInterest]) -> wire.Announce:
    return wire.Announce(id="i1", name="mail", seq=1, version="1.0.0", events=events)


def test_an_announcement_lists_a_bounded_number_of_valid_event_types() -> None:
    wire.check(_announce([wire.EventInterest(type="user.created", ordered=True)]))
    too_many = [wire.EventInterest(type=f"t{n}") for n in range(wire.MAX_EVENT_INTERESTS + 1)]
    with pytest.raises(wire.Invalid) as many:
        wire.check(_announce(too_many))
    assert many.value.reason == "invalid_events"
    with pytest.raises(wire.Invalid) as bad:
        wire.check(_announce([wire.EventInterest(type="user.>")]))
    assert bad.value.reason == "invalid_events"


def test_an_announcement_lists_a_bounded_number_of_valid_emitted_event_types() -> None:
    most = [f"t{n}" for n in range(wire.MAX_EVENT_INTERESTS)]
    wire.check(wire.Announce(id="i1", name="mail", seq=1, version="1.0.0", emits=most))
    for emits in ([*most, "one.more"], ["user.>"]):
        with pytest.raises(wire.Invalid) as refused:
            wire.check(wire.Announce(id="i1", name="mail", seq=1, version="1.0.0", emits=emits))
        assert refused.value.reason == "invalid_events"


def test_a_service_declares_what_it_emits_as_a_list_of_event_types() -> None:
    svc = natsreg.Service("mail", version="1.0.0", emits=["user.created", "user.created"])
    assert svc.config.emits == ("user.created",)
    with pytest.raises(ConfigError, match=r"a list of event types, e.g. \['user.created'\]"):
        natsreg.Service("mail", version="1.0.0", emits="user.created")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"emits: .*event type"):
        natsreg.Service("mail", version="1.0.0", emits=["user.*"])


def test_a_dead_letters_error_is_one_bounded_line() -> None:
    text = _header_text("boom\r\nNats-Msg-Id: forged\x00" + "x" * 5000)
    assert "\r" not in text and "\n" not in text and "\x00" not in text
    assert len(text) == 1024
    assert _header_text("") == "error"


def test_event_types_up_to_the_length_limit_are_accepted_and_named_when_refused() -> None:
    longest = "a" * subjects.MAX_EVENT_TYPE_CHARS
    assert subjects.check_event_type(longest) == longest
    with pytest.raises(ConfigError) as too_long:
        subjects.check_event_type(longest + "b")
    # The message quotes the first 40 characters of what was refused, no more.
    assert repr("a" * 40) in str(too_long.value)
    with pytest.raises(ConfigError, match=re.escape("'user.>'")):
        subjects.check_event_type("user.>")


def test_the_registry_sums_the_event_types_of_a_services_instances() -> None:
    from natsreg.registry._view import View

    view = View(clock=lambda: 1000.0)

    def announced(instance_id: str, seq: int, *types: str) -> wire.Announce:
        interests = [wire.EventInterest(type=t) for t in types]
        return wire.Announce(
            id=instance_id, name="mail", version="1.0.0", seq=seq, events=interests
        )

    view.apply(announced("i1", 1, "user.deleted", "user.created"))
    view.apply(announced("i2", 1, "user.created", "order.paid"))
    (summary,) = view.summaries()
    assert summary.events == ["order.paid", "user.created", "user.deleted"]
    # An instance that starts consuming another type has changed, as for an endpoint.
    outcome = view.apply(announced("i1", 2, "user.created"))
    assert [c.kind for c in outcome.changes] == ["changed"]


def test_the_registry_sums_the_emitted_event_types_of_a_services_instances() -> None:
    from natsreg.registry._view import View

    view = View(clock=lambda: 1000.0)

    def announced(instance_id: str, seq: int, *types: str) -> wire.Announce:
        return wire.Announce(
            id=instance_id, name="mail", version="1.0.0", seq=seq, emits=list(types)
        )

    view.apply(announced("i1", 1, "user.deleted", "user.created"))
    view.apply(announced("i2", 1, "user.created", "order.paid"))
    view.apply(wire.Announce(id="j1", name="other", version="1.0.0", seq=1))
    mail, other = view.summaries()
    assert (mail.emits, other.emits) == (["order.paid", "user.created", "user.deleted"], [])
    assert mail.events == []
    # An instance that starts emitting another type has changed; the same one again has not.
    outcome = view.apply(announced("i1", 2, "user.created"))
    assert [c.kind for c in outcome.changes] == ["changed"]
    assert view.apply(announced("i1", 3, "user.created")).changes == []
