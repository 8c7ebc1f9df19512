"""Checks of client input, shared by the frontend (which sees every request)
and the metadata service (which owns the records). Each raises InvalidArgument
with a message that says what is wrong and what is allowed."""

import re

from notifymesh.errors import InvalidArgument
from notifymesh.server.config import Config

NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{2,254}")
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_IDEMPOTENCY_KEY_BYTES = 256
MAX_REASON_BYTES = 1024


def name(kind: str, value: str) -> str:
    if not NAME.fullmatch(value):
        raise InvalidArgument(
            f"invalid {kind} name {value!r}: 3 to 255 characters, a letter first, "
            "then letters, digits, '.', '_' or '-'")
    return value


def batch(count: int, config: Config, what: str = "messages") -> None:
    if count == 0:
        raise InvalidArgument(f"no {what} in the request")
    if count > config.max_batch_messages:
        raise InvalidArgument(f"{count} {what} in one request; at most {config.max_batch_messages}")


def message(index: int, msg, config: Config) -> None:
    """msg is a notifymesh.v1.PubsubMessage."""
    if len(msg.data) > config.max_message_bytes:
        raise InvalidArgument(
            f"message {index}: {len(msg.data)} bytes of data; at most {config.max_message_bytes}")
    if not msg.data and not msg.attributes:
        raise InvalidArgument(f"message {index}: has neither data nor attributes")
    if len(msg.attributes) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"message {index}: {len(msg.attributes)} attributes; at most {MAX_ATTRIBUTES}")
    for key, value in msg.attributes.items():
        if not key or len(key.encode()) > MAX_ATTRIBUTE_KEY_BYTES:
            raise InvalidArgument(f"message {index}: attribute key must be 1 to {MAX_ATTRIBUTE_KEY_BYTES} bytes")
        if len(value.encode()) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise InvalidArgument(
                f"message {index}: attribute {key!r} value over {MAX_ATTRIBUTE_VALUE_BYTES} bytes")
    if len(msg.idempotency_key.encode()) > MAX_IDEMPOTENCY_KEY_BYTES:
        raise InvalidArgument(f"message {index}: idempotency key over {MAX_IDEMPOTENCY_KEY_BYTES} bytes")
    if len(msg.retry_key.encode()) > MAX_IDEMPOTENCY_KEY_BYTES:
        raise InvalidArgument(f"message {index}: retry key over {MAX_IDEMPOTENCY_KEY_BYTES} bytes")
    if msg.message_id or msg.HasField("publish_time"):
        raise InvalidArgument(f"message {index}: message_id and publish_time are set by the server")


def dedup_attributes(names, by_payload: bool) -> None:
    """Topic.dedup_attributes: distinct attribute keys, only with dedup_by_payload."""
    if names and not by_payload:
        raise InvalidArgument("dedup attributes name what a payload hash covers: they need dedup_by_payload")
    if len(names) > MAX_ATTRIBUTES or len(set(names)) != len(names):
        raise InvalidArgument(f"dedup attributes must be distinct, at most {MAX_ATTRIBUTES}")
    for name in names:
        if not name or len(name.encode()) > MAX_ATTRIBUTE_KEY_BYTES:
            raise InvalidArgument(f"dedup attribute {name[:40]!r}: an attribute key is 1 to "
                                  f"{MAX_ATTRIBUTE_KEY_BYTES} bytes")


def seconds_between(what: str, seconds: float, low: float, high: float) -> float:
    if not low <= seconds <= high:
        raise InvalidArgument(f"{what} {seconds:g}s out of range: {low:g}s to {high:g}s")
    return seconds


def page_size(size: int, default: int, most: int) -> int:
    """A List call's page size (0: the default), the same rule for every listing."""
    if not 0 <= size <= most:
        raise InvalidArgument(f"page_size {size} out of range: 1 to {most} (0: {default})")
    return size or default


def count_between(what: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidArgument(f"{what} {value} out of range: {low} to {high}")
    return value


def reason(text: str) -> str:
    if len(text.encode()) > MAX_REASON_BYTES:
        raise InvalidArgument(f"reason over {MAX_REASON_BYTES} bytes")
    return text
