"""A push secret's rotation with an overlap, in its parts: the signature header with
two v1 entries and a receiver's check of it, the sender signing with the previous
secret only until its expire time, and Get/List never showing it."""

import hashlib
import hmac

from frontend.service import _without_push_secret
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import webhooks
from notifymesh.clock import timestamp
from sender.push import live_previous_secret

BODY, NOW = b'{"message_id": "m1"}', 1_800_000_000


def _hex(secret: str, signed: bytes) -> str:
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def test_during_an_overlap_the_header_carries_the_new_signature_then_the_old():
    header = webhooks.sign("new", BODY, NOW, previous="old")
    signed = f"{NOW}.".encode() + BODY
    assert header == f"t={NOW},v1={_hex('new', signed)},v1={_hex('old', signed)}"
    assert webhooks.sign("new", BODY, NOW) == f"t={NOW},v1={_hex('new', signed)}"  # no previous: one v1
    both = webhooks.headers("new", BODY, NOW, previous="old")
    assert both[webhooks.HEADER] == header
    # The deprecated header is compared whole by its receivers: the current secret's alone.
    assert both[webhooks.LEGACY_HEADER] == "sha256=" + _hex("new", BODY)


def test_a_receiver_holding_either_secret_verifies_and_no_other():
    header = webhooks.sign("new", BODY, NOW, previous="old")
    assert webhooks.verify("new", header, BODY, now_s=NOW) and webhooks.verify("old", header, BODY, now_s=NOW)
    assert webhooks.verify("old", header.replace(",", ", "), BODY, now_s=NOW)  # spaces after commas
    assert not webhooks.verify("other", header, BODY, now_s=NOW)
    assert not webhooks.verify("old", header, BODY + b" ", now_s=NOW)
    assert not webhooks.verify("old", header, BODY, now_s=NOW + 301)  # replays still refused, with either
    assert not webhooks.verify("old", f"t={NOW - 100}," + header, BODY, now_s=NOW)  # two times: ambiguous
    assert not webhooks.verify("old", header.replace(f"t={NOW}", "t=\u00b2"), BODY, now_s=NOW)  # a digit, not ASCII


def _push(previous: str, expire_ms: int | None) -> pubsub_pb2.PushConfig:
    push = pubsub_pb2.PushConfig(endpoint="http://127.0.0.1:9/hook", secret="new", previous_secret=previous)
    if expire_ms is not None:
        push.previous_secret_expire_time.CopyFrom(timestamp(expire_ms))
    return push


def test_the_sender_signs_with_the_previous_secret_until_it_expires():
    push = _push("old", NOW * 1000 + 2000)
    assert live_previous_secret(push, NOW) == "old"
    assert live_previous_secret(push, NOW + 1.999) == "old"
    assert live_previous_secret(push, NOW + 2) == ""  # expired: the new secret alone
    assert live_previous_secret(_push("", None), NOW) == ""  # never rotated, or rotated with overlap 0
    assert live_previous_secret(_push("old", None), NOW) == ""  # no expiry: not live


def test_get_and_list_show_when_a_previous_secret_expires_never_the_secret():
    live = pubsub_pb2.Subscription(name="s-push", push_config=_push("old", 4_000_000_000_000))
    shown = _without_push_secret(live)
    assert (shown.push_config.secret, shown.push_config.previous_secret, shown.push_config.secret_set) == \
        ("", "", True)
    assert shown.push_config.previous_secret_expire_time.ToMilliseconds() == 4_000_000_000_000
    expired = _without_push_secret(pubsub_pb2.Subscription(name="s-push", push_config=_push("old", 1000)))
    assert expired.push_config.previous_secret == ""
    assert not expired.push_config.HasField("previous_secret_expire_time")  # past: nothing signs with it
