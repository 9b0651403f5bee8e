"""Subject rules, without a server: what may stand as a prefix, a reply subject, a token."""

from __future__ import annotations

import pytest

from natsreg import ConfigError, subjects

pytestmark = pytest.mark.pure


@pytest.mark.parametrize("prefix", ["natsreg", "prod.reg", "t-1_x"])
def test_a_literal_subject_is_a_prefix(prefix: str) -> None:
    assert subjects.check_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix", ["", "a..b", "a.", "a.*", "a.>", "a b", "a\r\nb", "$SYS", "_INBOX.x", None, 42]
)
def test_a_prefix_that_is_no_literal_subject_or_belongs_to_nats_is_refused(prefix: object) -> None:
    with pytest.raises(ConfigError) as refused:
        subjects.check_prefix(prefix)  # type: ignore[arg-type]
    assert str(refused.value) == (
        f"prefix {prefix!r} is not a valid subject: use tokens of letters, digits, '-' and '_' "
        "separated by dots (e.g. 'natsreg' or 'prod.reg')"
    )


@pytest.mark.parametrize(
    ("subject", "is_inbox"),
    [
        ("_INBOX.abc.1", True),
        ("_INBOX_alice.x.2", True),
        ("_INBOX", False),
        ("_INBOX.", False),
        ("_INBOX..a", False),
        ("_INBOX.a.", False),
        ("_INBOX.*", False),
        ("_INBOX.>", False),
        ("_INBOX.a b", False),
        ("_INBOX_.a", False),
        ("_INBOXX.a", False),
        ("user.svc", False),
        ("natsreg.announce.svc.x", False),
        ("x_INBOX.a", False),
    ],
)
def test_only_an_inbox_may_stand_as_a_reply_subject(subject: str, is_inbox: bool) -> None:
    assert subjects.is_reply_subject(subject) is is_inbox


@pytest.mark.parametrize(
    ("parts", "subject"),
    [
        (("natsreg", "announce", "svc", "i1"), "natsreg.announce.svc.i1"),
        (("natsreg", "hb", "svc", "i1"), "natsreg.hb.svc.i1"),
        (("prod.reg", "bye", "svc", "i1"), "prod.reg.bye.svc.i1"),
        (("natsreg", "discover"), "natsreg.discover"),
        (("natsreg", "discover", "svc"), "natsreg.discover.svc"),
        (("natsreg", "events", "svc"), "natsreg.events.svc"),
        (("natsreg", "registry", "list"), "natsreg.registry.list"),
    ],
)
def test_a_control_subject_is_the_prefix_the_verb_then_each_token(
    parts: tuple[str, ...], subject: str
) -> None:
    assert subjects.control_subject(*parts) == subject


@pytest.mark.parametrize(
    ("prefix", "subject"),
    [("natsreg", "natsreg.direct.users.i1.get"), ("prod.reg", "prod.reg.direct.users.i1.get")],
)
def test_a_direct_subject_is_the_prefix_direct_then_service_instance_and_endpoint(
    prefix: str, subject: str
) -> None:
    assert subjects.direct_subject(prefix, "users", "i1", "get") == subject


@pytest.mark.parametrize(
    ("parts", "subject"),
    [
        (("PING",), "$SRV.PING"),
        (("INFO", "users"), "$SRV.INFO.users"),
        (("STATS", "users", "i1"), "$SRV.STATS.users.i1"),
    ],
)
def test_an_srv_subject_is_srv_the_verb_then_the_service_and_instance_given(
    parts: tuple[str, ...], subject: str
) -> None:
    assert subjects.srv_subject(*parts) == subject


def test_an_endpoint_subject_is_the_service_then_the_endpoint() -> None:
    assert subjects.endpoint_subject("users", "get") == "users.get"


@pytest.mark.parametrize("token", ["users", "user-service", "a_b", "yCCXlP4iJIayd9YTziyAil", "$x"])
def test_a_token_of_letters_digits_and_punctuation_is_valid(token: str) -> None:
    assert subjects.is_valid_token(token)


@pytest.mark.parametrize(
    "token", ["", "a.b", "*", "a*", ">", "a b", "a\tb", "a\r\nb", "a\x00", "a\x1f", "a\x7f"]
)
def test_a_token_with_a_separator_wildcard_whitespace_or_control_character_is_refused(
    token: str,
) -> None:
    assert not subjects.is_valid_token(token)


@pytest.mark.parametrize(
    ("subject", "reserved"),
    [("$SYS.x", True), ("$SRV.PING", True), ("_INBOX.a", True), ("svc.x", False), ("x$", False)],
)
def test_subjects_of_nats_itself_and_inboxes_are_reserved(subject: str, reserved: bool) -> None:
    assert subjects.is_reserved(subject) is reserved


@pytest.mark.parametrize(
    ("prefix", "bucket"),
    [("natsreg", "natsreg_sagas"), ("prod.reg", "prod_reg_sagas"), ("t-1_x", "t-1_x_sagas")],
)
def test_a_prefix_names_its_saga_bucket_with_dots_made_underscores(
    prefix: str, bucket: str
) -> None:
    assert subjects.saga_bucket(prefix) == bucket


@pytest.mark.parametrize("prefix", ["prod:reg", "é", "a/b", "a=b"])
def test_a_prefix_that_cannot_name_a_bucket_is_refused_for_sagas(prefix: str) -> None:
    assert subjects.check_prefix(prefix) == prefix
    with pytest.raises(ConfigError) as refused:
        subjects.saga_bucket(prefix)
    assert str(refused.value) == (
        f"prefix {prefix!r} cannot name a JetStream bucket: for sagas, use only letters, "
        "digits, '-', '_' and dots"
    )


def test_a_prefix_that_is_no_subject_is_refused_for_sagas_as_for_everything_else() -> None:
    with pytest.raises(ConfigError, match="is not a valid subject"):
        subjects.saga_bucket("a.*")
