"""The topics and subscriptions the notification layer runs on, created by the
metadata service at start (idempotently). Public calls may not create, change or
delete names under RESERVED_PREFIX.

- TABLE_TOPIC: the replicated table (storage/table.py; rows in rows.py).
- NOTIFY_TOPIC: accepted Notify requests (NotificationJob), consumed by the
  fan-out (FANOUT_SUBSCRIPTION).
- channel_topic(channel, priority): recipients of a notification on one channel
  (ChannelTask, sender/channel_tasks.py), consumed by that channel's sender
  (channel_subscription), dead letters (a recipient's) in
  channel_dead_letter_topic(channel).
- EVENTS_TOPIC: every event of the notification log (notifymesh.v1.NotificationEvents),
  the one reserved topic public subscriptions may be made on (an analytics
  service's); EVENTS_STATS_SUBSCRIPTION: the mesh's own consumer, which keeps
  the counts of `notifymesh stats` (notifymesh/server/event_stats.py).
- AUDIT_TOPIC: the audit log (frontend/audit.py), kept AUDIT_RETAIN_S after it is
  read so `notifymesh audit tail` can go back; subscribable (by admin keys).
"""

from gen.notifymesh.v1 import notify_pb2

RESERVED_PREFIX = "notifymesh."
TABLE_TOPIC = "notifymesh.table"
NOTIFY_TOPIC = "notifymesh.notify"
FANOUT_SUBSCRIPTION = "notifymesh.notify.fanout"
NOTIFY_DEAD_LETTER_TOPIC = "notifymesh.notify.dead"
EVENTS_TOPIC = "notifymesh.events"
EVENTS_STATS_SUBSCRIPTION = "notifymesh.events.stats"
EVENTS_DEAD_LETTER_TOPIC = "notifymesh.events.dead"
AUDIT_TOPIC = "notifymesh.audit"
AUDIT_RETAIN_S = 7 * 24 * 3600
# Reserved topics on which public subscriptions may be created (and then consumed:
# the subscription's own name is public).
SUBSCRIBABLE_TOPICS = frozenset({EVENTS_TOPIC, AUDIT_TOPIC})

CHANNELS = (notify_pb2.EMAIL, notify_pb2.SMS, notify_pb2.WEBHOOK, notify_pb2.PUSH, notify_pb2.IN_APP)


# Every Channel's name, made once: the enum's Name() in Python, lowered, on each of a
# send's several calls was 2.9 % of a sender's samples (docs/benchmarks.md, 2026-12-01).
_CHANNEL_NAMES = {value: name.lower() for name, value in notify_pb2.Channel.items()}


def channel_name(channel: int) -> str:
    """"email", "sms", "webhook": the name in topics, rows, the log and the CLI;
    ValueError for a number no Channel has."""
    name = _CHANNEL_NAMES.get(channel)
    return name if name is not None else notify_pb2.Channel.Name(channel).lower()  # raises ValueError


def parse_channel(name: str) -> int:
    """The Channel of channel_name(); ValueError for anything else."""
    value = notify_pb2.Channel.Value(name.upper())
    if value == notify_pb2.CHANNEL_UNSPECIFIED:
        raise ValueError(name)
    return value


def channel_topic(channel: int, priority: int) -> str:
    suffix = ".high" if priority == notify_pb2.HIGH else ""
    return f"notifymesh.channel.{channel_name(channel)}{suffix}"


def channel_subscription(channel: int, priority: int) -> str:
    return channel_topic(channel, priority) + ".send"


def channel_dead_letter_topic(channel: int) -> str:
    return f"notifymesh.channel.{channel_name(channel)}.dead"


def is_reserved(name: str) -> bool:
    return name.startswith(RESERVED_PREFIX)
