"""The rows of the replicated table (storage/table.py, Storage.TableWrite): each
key encoded and parsed here, with the partition key that places it.

A row lives in partition `partition_of(partition key)` of the table topic
(internal_topics.TABLE_TOPIC). The partition key is what a reader knows: the
recipient id for a recipient's rows, the notification id for a notification's,
the audience name for an audience's. Keys are a kind byte, then fields
separated by NUL: recipient ids, names and channels never contain NUL
(validation.recipient_id refuses control characters). Times are 13-digit
decimal milliseconds so keys sort by time.

  C rid                               -> notifymesh.v1.Recipient (contact data)
  U rid                               -> PreferenceRow: enabled false = unsubscribed from all
  P rid category channel              -> PreferenceRow ("" category/channel: every)
  L rid category                      -> RateLimitRow: the recipient's override
  Q rid category                      -> RateCounter (Storage.RateAcquire)
  X rid                               -> erasure time (13 digits): the recipient was deleted
  V rid                               -> b"": the recipient has (or lately had) a device; one
                                         key the fan-out reads to decide the push channel
  V rid platform digest               -> notifymesh.v1.Device (digest: device_token_digest of its
                                         token; rows written before it named the token itself)
  D rid payload hash                  -> RateCounter of limit 1: the notification that had this
                                         template, category and data for the recipient within the
                                         notify topic's dedup window (sender/fanout.py)
  R rid accepted_ms nid               -> b"": the recipient's notifications by time
  N nid                               -> NotificationRecord
  E nid rid channel event_ms state    -> notifymesh.v1.SendEvent (a SEND_QUEUED one followed by a
                                         LogGroupTag when its task's events are in G rows)
  G nid channel group event_ms writer -> LoggedEvents: a write of the events of a channel task's
                                         recipients (group: the fan-out task's first recipient;
                                         writer: what made the write, unique to it)
  K nid                               -> FanoutCheckpoint
  I rid accepted_ms nid               -> notifymesh.v1.InboxItem: the recipient's in-app item
  J rid accepted_ms nid               -> notifymesh.v1.InboxItem: the same while not acknowledged
  W rid accepted_ms nid               -> b"": the same while unread
  A audience                          -> notifymesh.v1.Audience
  M audience rid                      -> b"": a member
  S p hour template category state node
                                      -> decimal count: the events of that hour (13-digit ms
                                         of its start) counted by the stats consumer `node`
                                         from partition p of the events topic
                                         (notifymesh/server/event_stats.py)
  Y p message id                      -> b"": that message of the events topic is counted
  (partition key of S and Y: stats_partition_key(p))
"""

import hashlib
import zlib
from typing import NamedTuple

SEP = b"\0"
_MS_DIGITS = 13

CONTACT, UNSUBSCRIBED, PREFERENCE, RATE_LIMIT, RATE_COUNTER, ERASED = b"C", b"U", b"P", b"L", b"Q", b"X"
RECIPIENT_NOTIFICATION, NOTIFICATION, EVENT, CHECKPOINT, LOGGED_EVENTS = b"R", b"N", b"E", b"K", b"G"
DUPLICATE = b"D"
DEVICE = b"V"
AUDIENCE, MEMBER = b"A", b"M"
STATS_COUNT, STATS_COUNTED = b"S", b"Y"


def partition_of(partition_key: str, partitions: int) -> int:
    """The table partition of every row placed by partition_key."""
    return zlib.crc32(partition_key.encode()) % partitions


def _key(kind: bytes, *fields: str) -> bytes:
    return kind + "\0".join(fields).encode()  # SEP between the fields' UTF-8


def _ms(ms: int) -> str:
    return f"{max(0, ms):0{_MS_DIGITS}d}"


def _fields(key: bytes) -> list[str]:
    return [f.decode() for f in key[1:].split(SEP)]


# -- recipients (partition key: recipient id) ------------------------------------------


def contact_key(recipient: str) -> bytes:
    return _key(CONTACT, recipient)


def unsubscribed_key(recipient: str) -> bytes:
    return _key(UNSUBSCRIBED, recipient)


def preference_key(recipient: str, category: str, channel: str) -> bytes:
    return _key(PREFERENCE, recipient, category, channel)


def preferences_prefix(recipient: str) -> bytes:
    return _key(PREFERENCE, recipient) + SEP


class PreferenceKey(NamedTuple):
    recipient: str
    category: str
    channel: str


def parse_preference_key(key: bytes) -> PreferenceKey:
    return PreferenceKey(*_fields(key))


def rate_limit_key(recipient: str, category: str) -> bytes:
    return _key(RATE_LIMIT, recipient, category)


def rate_limits_prefix(recipient: str) -> bytes:
    return _key(RATE_LIMIT, recipient) + SEP


def parse_rate_limit_key(key: bytes) -> tuple[str, str]:
    recipient, category = _fields(key)
    return recipient, category


def rate_counter_key(recipient: str, category: str) -> bytes:
    return _key(RATE_COUNTER, recipient, category)


def duplicate_key(recipient: str, payload_hash: str) -> bytes:
    return _key(DUPLICATE, recipient, payload_hash)


def erased_key(recipient: str) -> bytes:
    return _key(ERASED, recipient)


def recipient_rows_erased(recipient: str) -> list[bytes]:
    """The single rows a recipient's erasure removes (its preference, override and
    device rows are found by prefix: preferences_prefix, rate_limits_prefix, devices_prefix)."""
    return [contact_key(recipient), unsubscribed_key(recipient), has_devices_key(recipient)]


def has_devices_key(recipient: str) -> bytes:
    return _key(DEVICE, recipient)


# A push token is personal data, and table keys are stored in the clear (only values
# are sealed, sealing.py): a device row is keyed by a digest of its token, the token
# itself only in the sealed value. Unkeyed SHA-256 is enough: the providers' tokens
# are high-entropy (APNs 32 random bytes, FCM 100+ characters), so no one can find a
# token by hashing guesses. 32 hex digits (128 bits): no two of a recipient's at most
# 20 devices collide, at half the key length of the whole digest.
DEVICE_DIGEST_HEX = 32


def device_token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:DEVICE_DIGEST_HEX]


def device_key(recipient: str, platform: str, token: str) -> bytes:
    return _key(DEVICE, recipient, platform, device_token_digest(token))


def devices_prefix(recipient: str) -> bytes:
    """Every device row of the recipient (not has_devices_key, which has no SEP after the id)."""
    return _key(DEVICE, recipient) + SEP


def recipient_notification_key(recipient: str, accepted_ms: int, notification_id: str) -> bytes:
    return _key(RECIPIENT_NOTIFICATION, recipient, _ms(accepted_ms), notification_id)


def recipient_notifications_prefix(recipient: str) -> bytes:
    return _key(RECIPIENT_NOTIFICATION, recipient) + SEP


def recipient_notifications_from(recipient: str, ms: int) -> bytes:
    """A key below every one of the recipient's notifications accepted at or after ms."""
    return _key(RECIPIENT_NOTIFICATION, recipient, _ms(ms))


class RecipientNotificationKey(NamedTuple):
    recipient: str
    accepted_ms: int
    notification_id: str


def parse_recipient_notification_key(key: bytes) -> RecipientNotificationKey:
    recipient, ms, notification_id = _fields(key)
    return RecipientNotificationKey(recipient, int(ms), notification_id)


# -- in-app inbox (partition key: recipient id) ------------------------------------------

INBOX_ITEM, INBOX_UNACKED, INBOX_UNREAD = b"I", b"J", b"W"


def inbox_key(kind: bytes, recipient: str, accepted_ms: int, notification_id: str) -> bytes:
    """kind: INBOX_ITEM, INBOX_UNACKED or INBOX_UNREAD."""
    return _key(kind, recipient, _ms(accepted_ms), notification_id)


def inbox_prefix(kind: bytes, recipient: str) -> bytes:
    return _key(kind, recipient) + SEP


class InboxKey(NamedTuple):
    recipient: str
    accepted_ms: int
    notification_id: str


def parse_inbox_key(key: bytes) -> InboxKey:
    recipient, ms, notification_id = _fields(key)
    return InboxKey(recipient, int(ms), notification_id)


# -- notifications (partition key: notification id) ------------------------------------


def notification_key(notification_id: str) -> bytes:
    return _key(NOTIFICATION, notification_id)


def checkpoint_key(notification_id: str) -> bytes:
    return _key(CHECKPOINT, notification_id)


def event_key(notification_id: str, recipient: str, channel: str, event_ms: int, state: int) -> bytes:
    return _key(EVENT, notification_id, recipient, channel, _ms(event_ms), f"{state:02d}")


def events_prefix(notification_id: str, recipient: str | None = None) -> bytes:
    """Every event of the notification, or of one recipient of it."""
    if recipient is None:
        return _key(EVENT, notification_id) + SEP
    return _key(EVENT, notification_id, recipient) + SEP


class EventKey(NamedTuple):
    notification_id: str
    recipient: str
    channel: str
    event_ms: int
    state: int


def parse_event_key(key: bytes) -> EventKey:
    notification_id, recipient, channel, ms, state = _fields(key)
    return EventKey(notification_id, recipient, channel, int(ms), int(state))


def logged_events_key(notification_id: str, channel: str, group: str, event_ms: int, writer: str) -> bytes:
    return _key(LOGGED_EVENTS, notification_id, channel, group, _ms(event_ms), writer)


def logged_events_prefix(notification_id: str, channel: str, group: str) -> bytes:
    """Every write of the events of one task (and its parts)."""
    return _key(LOGGED_EVENTS, notification_id, channel, group) + SEP


# -- audiences (partition key: audience name) ------------------------------------------


def audience_key(audience: str) -> bytes:
    return _key(AUDIENCE, audience)


def member_key(audience: str, recipient: str) -> bytes:
    return _key(MEMBER, audience, recipient)


def members_prefix(audience: str) -> bytes:
    return _key(MEMBER, audience) + SEP


def parse_member_key(key: bytes) -> tuple[str, str]:
    audience, recipient = _fields(key)
    return audience, recipient


# -- event counts (partition key: stats_partition_key) -------------------------------


def stats_partition_key(events_partition: int) -> str:
    return f"stats/{events_partition}"


def stats_count_key(events_partition: int, hour_ms: int, template: str, category: str, state: int,
                    node: str) -> bytes:
    return _key(STATS_COUNT, str(events_partition), _ms(hour_ms), template, category, f"{state:02d}", node)


def stats_counts_from(events_partition: int, hour_ms: int) -> bytes:
    """A key below every count of events_partition from hour_ms on (a scan's start_after)."""
    return _key(STATS_COUNT, str(events_partition), _ms(hour_ms))


def stats_counts_prefix(events_partition: int) -> bytes:
    return _key(STATS_COUNT, str(events_partition)) + SEP


class StatsCountKey(NamedTuple):
    events_partition: int
    hour_ms: int
    template: str
    category: str
    state: int
    node: str


def parse_stats_count_key(key: bytes) -> StatsCountKey:
    partition, hour, template, category, state, node = _fields(key)
    return StatsCountKey(int(partition), int(hour), template, category, int(state), node)


def stats_counted_key(events_partition: int, message_id: str) -> bytes:
    return _key(STATS_COUNTED, str(events_partition), message_id)
