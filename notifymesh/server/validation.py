"""Checks of client input, shared by the frontend (which sees every request)
and the metadata service (which owns the records). Each raises InvalidArgument
with a message that says what is wrong and what is allowed."""

import re
import zoneinfo
from urllib.parse import urlsplit

import email_validator
import phonenumbers

from notifymesh.contracts import AckId
from notifymesh.errors import InvalidArgument
from notifymesh.server.config import Config
from notifymesh.server.internal_topics import RESERVED_PREFIX, SUBSCRIBABLE_TOPICS, is_reserved
from notifymesh.server.tracing import RESERVED as TRACE_ATTRIBUTES

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


def not_reserved(kind: str, *names: str) -> None:
    """INVALID_ARGUMENT for a public change of an internal topic or subscription, or
    public traffic on one (publishing to it, consuming, acking, seeking): only
    notifymesh's own services touch those; reading their state stays public."""
    for value in names:
        if is_reserved(value):
            raise InvalidArgument(f"{kind} name {value[:80]!r} is reserved: names starting with "
                                  f"{RESERVED_PREFIX!r} belong to notifymesh itself")


def subscribable(topic: str) -> None:
    """not_reserved for the topic of a public subscription, but for the reserved
    topics made to be subscribed to (internal_topics.SUBSCRIBABLE_TOPICS: the events)."""
    if topic not in SUBSCRIBABLE_TOPICS:
        not_reserved("topic", topic)


def ack_ids_not_reserved(ack_ids) -> None:
    """not_reserved for acks merged across subscriptions (each ack id names its own,
    contracts.AckId "partition:seq:subscription"): a guessed ack id must not ack an
    internal subscription's message. Only an id that contains the prefix is parsed."""
    marker = ":" + RESERVED_PREFIX
    for ack_id in ack_ids:
        if marker in ack_id:
            not_reserved("subscription", AckId.parse(ack_id).subscription)


def batch(count: int, config: Config, what: str = "messages") -> None:
    if count == 0:
        raise InvalidArgument(f"no {what} in the request")
    if count > config.max_batch_messages:
        raise InvalidArgument(f"{count} {what} in one request; at most {config.max_batch_messages}")


def message(index: int, msg, config: Config) -> None:
    """msg is a notifymesh.v1.PubsubMessage."""
    # Each field read once (a read of a protobuf field makes a new object: the data's
    # bytes are copied), the attributes walked only when there are any, and a key
    # encoded only when its length in characters could put it over the byte limit (a
    # character is at most 4 bytes): 0.73 against 1.22-1.26 us a message (measured).
    data_bytes, attributes = len(msg.data), msg.attributes
    if data_bytes > config.max_message_bytes:
        raise InvalidArgument(f"message {index}: {data_bytes} bytes of data; at most {config.max_message_bytes}")
    if attributes:
        if len(attributes) > MAX_ATTRIBUTES:
            raise InvalidArgument(f"message {index}: {len(attributes)} attributes; at most {MAX_ATTRIBUTES}")
        for key, value in attributes.items():
            if key in TRACE_ATTRIBUTES:  # the trace context is the mesh's to write (tracing.stamp)
                raise InvalidArgument(f"message {index}: attribute {key!r} is reserved")
            if not key or _over(key, MAX_ATTRIBUTE_KEY_BYTES):
                raise InvalidArgument(f"message {index}: attribute key must be 1 to {MAX_ATTRIBUTE_KEY_BYTES} bytes")
            if _over(value, MAX_ATTRIBUTE_VALUE_BYTES):
                raise InvalidArgument(
                    f"message {index}: attribute {key!r} value over {MAX_ATTRIBUTE_VALUE_BYTES} bytes")
    elif not data_bytes:
        raise InvalidArgument(f"message {index}: has neither data nor attributes")
    if _over(msg.idempotency_key, MAX_IDEMPOTENCY_KEY_BYTES):
        raise InvalidArgument(f"message {index}: idempotency key over {MAX_IDEMPOTENCY_KEY_BYTES} bytes")
    if _over(msg.retry_key, MAX_IDEMPOTENCY_KEY_BYTES):
        raise InvalidArgument(f"message {index}: retry key over {MAX_IDEMPOTENCY_KEY_BYTES} bytes")
    if msg.message_id or msg.HasField("publish_time"):
        raise InvalidArgument(f"message {index}: message_id and publish_time are set by the server")


def _over(text: str, max_bytes: int) -> bool:
    """Whether text's UTF-8 is over max_bytes (encoded only when it could be)."""
    return len(text) * 4 > max_bytes and len(text.encode()) > max_bytes


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


# -- the notification layer: recipients ------------------------------------------------

MAX_RECIPIENT_ID_BYTES = 255
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
LOCALE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
MAX_LOCALE_CHARS = 35
MAX_URL_CHARS = 2048
MAX_DESCRIPTION_BYTES = 1024


def recipient_id(value: str, what: str = "recipient id") -> str:
    """The caller's user id: 1 to 255 bytes of UTF-8 without control characters (row
    keys separate their fields with NUL)."""
    size = len(value.encode())
    if not 1 <= size <= MAX_RECIPIENT_ID_BYTES:
        raise InvalidArgument(f"{what} {value[:40]!r}: {size} bytes; 1 to {MAX_RECIPIENT_ID_BYTES} bytes of UTF-8")
    if CONTROL.search(value):
        raise InvalidArgument(f"{what} {value[:40]!r} holds a control character")
    return value


def email(value: str) -> str:
    """The address normalized (email-validator's syntax check; no DNS lookup)."""
    try:
        return email_validator.validate_email(value, check_deliverability=False).normalized
    except email_validator.EmailNotValidError as e:
        raise InvalidArgument(f"invalid email {value[:80]!r}: {e}") from None


def phone(value: str) -> str:
    """The number in E.164 ("+14155550100"), checked with libphonenumber."""
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as e:
        raise InvalidArgument(f"invalid phone {value[:40]!r}: {e.args[0] if e.args else e}; "
                              "give it in E.164, e.g. +14155550100") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidArgument(f"invalid phone {value[:40]!r}: not a valid number for its country code")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def locale(value: str) -> str:
    if len(value) > MAX_LOCALE_CHARS or not LOCALE.fullmatch(value):
        raise InvalidArgument(f"invalid locale {value[:40]!r}: a BCP 47 tag such as en, de-CH or zh-Hant-TW")
    return value


def timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(f"invalid timezone {value[:60]!r}: an IANA name such as Europe/Berlin") from None
    return value


def attributes(values, what: str = "attributes") -> None:
    """Bounded like message attributes."""
    if len(values) > MAX_ATTRIBUTES:
        raise InvalidArgument(f"{len(values)} {what}; at most {MAX_ATTRIBUTES}")
    for key, value in values.items():
        if not key or len(key.encode()) > MAX_ATTRIBUTE_KEY_BYTES:
            raise InvalidArgument(f"{what}: a key must be 1 to {MAX_ATTRIBUTE_KEY_BYTES} bytes")
        if len(value.encode()) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise InvalidArgument(f"{what}: the value of {key[:40]!r} is over {MAX_ATTRIBUTE_VALUE_BYTES} bytes")


def http_url(value: str, what: str = "webhook_url") -> str:
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if len(value) > MAX_URL_CHARS or parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(f"invalid {what} {value[:80]!r}: an http or https URL of at most "
                              f"{MAX_URL_CHARS} characters")
    return value


def description(value: str) -> str:
    if len(value.encode()) > MAX_DESCRIPTION_BYTES:
        raise InvalidArgument(f"description over {MAX_DESCRIPTION_BYTES} bytes")
    return value


def recipient(record):
    """A notifymesh.v1.Recipient checked, with its email and phone normalized (a copy)."""
    checked = type(record)()
    checked.CopyFrom(record)
    recipient_id(record.id)
    if record.email:
        checked.email = email(record.email)
    if record.phone:
        checked.phone = phone(record.phone)
    if record.locale:
        locale(record.locale)
    if record.timezone:
        timezone(record.timezone)
    attributes(record.attributes)
    if record.webhook_url:
        http_url(record.webhook_url)
    checked.ClearField("update_time")
    return checked


def not_json(constant: str):
    """json.loads' parse_constant: NaN and Infinity parse in Python but are not JSON,
    so other languages' parsers (a webhook receiver's, a client's) refuse them."""
    raise ValueError(f"{constant} is not a JSON value")
