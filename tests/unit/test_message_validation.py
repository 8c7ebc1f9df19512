"""validation.message, the check of each published message: its limits are of UTF-8
bytes, at their edges with one-byte and four-byte characters."""

import pytest

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.server import validation
from notifymesh.server.config import Config

KEY, VALUE, IDEMPOTENCY = (validation.MAX_ATTRIBUTE_KEY_BYTES, validation.MAX_ATTRIBUTE_VALUE_BYTES,
                           validation.MAX_IDEMPOTENCY_KEY_BYTES)
WIDE = "\U0001F600"  # four bytes in UTF-8


def check(**fields) -> None:
    validation.message(3, pubsub_pb2.PubsubMessage(**fields), Config())


@pytest.mark.parametrize("fields", [
    {"data": b"x"},
    {"attributes": {"k": "v"}},
    {"data": b"x" * Config().max_message_bytes},
    {"data": b"x", "attributes": {"k" * KEY: "v" * VALUE}},
    {"data": b"x", "attributes": {WIDE * (KEY // 4): WIDE * (VALUE // 4)}},
    {"data": b"x", "idempotency_key": "i" * IDEMPOTENCY, "retry_key": WIDE * (IDEMPOTENCY // 4)},
])
def test_messages_within_the_limits_pass(fields):
    check(**fields)


@pytest.mark.parametrize("fields, error", [
    ({}, "message 3: has neither data nor attributes"),
    ({"data": b"x" * (Config().max_message_bytes + 1)}, "bytes of data"),
    ({"data": b"x", "attributes": {str(i): "v" for i in range(validation.MAX_ATTRIBUTES + 1)}}, "attributes; at most"),
    ({"data": b"x", "attributes": {"": "v"}}, "attribute key must be"),
    ({"data": b"x", "attributes": {"k" * (KEY + 1): "v"}}, "attribute key must be"),
    ({"data": b"x", "attributes": {"k" * (KEY - 3) + WIDE: "v"}}, "attribute key must be"),
    ({"attributes": {"k": "v" * (VALUE - 1) + WIDE}}, "value over"),
    ({"data": b"x", "attributes": {"notifymesh.traceparent": "00-x"}}, "is reserved"),
    ({"data": b"x", "idempotency_key": WIDE * (IDEMPOTENCY // 4 + 1)}, "idempotency key over"),
    ({"data": b"x", "retry_key": "r" * (IDEMPOTENCY + 1)}, "retry key over"),
    ({"data": b"x", "message_id": "m"}, "set by the server"),
])
def test_messages_over_a_limit_are_refused_naming_it(fields, error):
    with pytest.raises(errors.InvalidArgument, match=error):
        check(**fields)
