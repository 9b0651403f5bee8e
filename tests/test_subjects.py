"""Subject rules, without a server: what may stand as a prefix, a reply subject, a token."""

from __future__ import annotations

import pytest

from natsreg import ConfigError, subjects

pytestmark = pytest.mark.pure


@pytest.mark.parametrize("prefix", ["natsreg", "prod.reg", "t-1_x"])
def test_a_literal_subject_is_a_prefix(prefix: str) -> None:
    assert subjects.check_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix", ["", "a..b", "a.", "a.*", "a.>", "a b", "a\r\nb", "$SYS", "_INBOX.x"]
)
def test_a_prefix_that_is_no_literal_subject_or_belongs_to_nats_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        subjects.check_prefix(prefix)


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
