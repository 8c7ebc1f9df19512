"""Recipients' fields are checked and normalized before they are stored."""

import pytest

from gen.notifymesh.v1 import notify_pb2
from notifymesh import errors
from notifymesh.server import validation


def test_recipient_ids_are_1_to_255_bytes_without_control_characters():
    assert validation.recipient_id("alice") == "alice"
    assert validation.recipient_id("é" * 127) == "é" * 127  # 254 bytes
    for bad in ("", "é" * 128, "a\0b", "tab\there", "del\x7f", "c1\x85"):
        with pytest.raises(errors.InvalidArgument, match="recipient id"):
            validation.recipient_id(bad)


def test_email_is_checked_without_dns_and_normalized():
    assert validation.email("Alice@Example.COM") == "Alice@example.com"
    assert validation.email("bob@nonexistent-domain-for-tests.example") == "bob@nonexistent-domain-for-tests.example"
    for bad in ("alice", "a@b", "a@@example.com", "a b@example.com"):
        with pytest.raises(errors.InvalidArgument, match="invalid email"):
            validation.email(bad)


def test_phone_is_e164_checked_with_libphonenumber():
    assert validation.phone("+14155550100") == "+14155550100"
    assert validation.phone("+1 (415) 555-0100") == "+14155550100"
    with pytest.raises(errors.InvalidArgument, match="E.164"):
        validation.phone("4155550100")  # no country code
    with pytest.raises(errors.InvalidArgument, match="not a valid number"):
        validation.phone("+1415555")
    with pytest.raises(errors.InvalidArgument, match="invalid phone"):
        validation.phone("call me")


def test_locale_timezone_url_and_attributes():
    for good in ("en", "de-CH", "zh-Hant-TW"):
        assert validation.locale(good) == good
    for bad in ("e", "en_US", "english!", "en-" + "x" * 40):
        with pytest.raises(errors.InvalidArgument, match="locale"):
            validation.locale(bad)
    assert validation.timezone("Europe/Berlin") == "Europe/Berlin"
    for bad in ("Mars/Olympus", "../etc/passwd", "Europe/"):
        with pytest.raises(errors.InvalidArgument, match="timezone"):
            validation.timezone(bad)
    assert validation.http_url("https://example.com/hook") == "https://example.com/hook"
    for bad in ("ftp://example.com", "https://", "example.com/hook", "https://x/" + "a" * 3000):
        with pytest.raises(errors.InvalidArgument, match="webhook_url"):
            validation.http_url(bad)
    validation.attributes({f"k{i}": "v" for i in range(100)})
    with pytest.raises(errors.InvalidArgument, match="at most 100"):
        validation.attributes({f"k{i}": "v" for i in range(101)})
    with pytest.raises(errors.InvalidArgument, match="over 1024 bytes"):
        validation.attributes({"k": "v" * 1025})
    with pytest.raises(errors.InvalidArgument, match="key must be"):
        validation.attributes({"": "v"})


def test_a_recipient_is_checked_whole_and_comes_back_normalized():
    given = notify_pb2.Recipient(id="alice", email="Alice@Example.COM", phone="+1 415 555 0100", locale="en",
                                 timezone="America/Los_Angeles", attributes={"plan": "pro"})
    given.update_time.FromMilliseconds(5)
    checked = validation.recipient(given)
    assert (checked.email, checked.phone, checked.attributes["plan"]) == ("Alice@example.com", "+14155550100", "pro")
    assert not checked.HasField("update_time")  # the server's to set
    assert given.email == "Alice@Example.COM"  # a copy
    with pytest.raises(errors.InvalidArgument, match="invalid phone"):
        validation.recipient(notify_pb2.Recipient(id="bob", phone="12"))
