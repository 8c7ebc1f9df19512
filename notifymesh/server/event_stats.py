"""The counts behind `notifymesh stats`, kept by the mesh's own consumer of the
events topic (internal_topics.EVENTS_STATS_SUBSCRIPTION, run by the senders like
the other internal subscriptions) and read by the frontend's Analytics.GetStats:
never computed from the notification log.

Counts are table rows (rows.py `S`) per (events partition, hour, template,
category, state, consumer node), so each row has one writer: the sender that
owns that partition of the subscription, whose writes to a partition go one at a
time (a Coalescer per partition: read, add, write). Several nodes count one
partition only when its ownership moves; each keeps its own rows, the reader
adds them up, so no update is lost.

Duplicates: a message of the topic is counted once. Its `Y` row (events
partition, message id) is written in the same table write as the counts it adds
(one write to one table partition: one append, all or nothing), and a message
whose `Y` row exists is not counted again: a redelivery (a consumer that died
before its ack, a lease that ran out) adds nothing. Only the same message in the
hands of two nodes at once (during an ownership move) can count twice. An event
recorded twice by its writer (a retried record) is in the log twice too, and
counted twice. `Y` rows expire after COUNTED_TTL_MS, longer than the topic keeps
a message; counts after COUNT_RETENTION_MS.
"""

from collections import Counter
from typing import Callable, NamedTuple, Protocol

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import events_pb2, notify_pb2
from notifymesh.batching import Coalescer
from notifymesh.clock import now_ms, timestamp
from notifymesh.server import rows

HOUR_MS = 3_600_000
MAX_RANGE_MS = 31 * 24 * HOUR_MS  # GetStats reaches back this far at most
COUNT_RETENTION_MS = MAX_RANGE_MS + 2 * HOUR_MS  # a count row is kept this long after its hour
COUNTED_TTL_MS = 8 * 24 * HOUR_MS  # over the events topic's retention (7 days by default)
MESSAGES_PER_WRITE = 100  # messages counted in one read-add-write: its markers and counts stay one table call
# An idle partition's counts wait this long for the messages after them: at a few events
# a second each message was a table read, a write and an ack of its own (bench/notify.py
# --mode latency at 10/s: about 4 of each per one-recipient notification). Stats lag by as much.
COUNT_LINGER_S = 0.5
SCAN_ROWS = 1000

_FIELDS = {notify_pb2.SEND_QUEUED: "queued", notify_pb2.SEND_SENT: "sent", notify_pb2.SEND_DELIVERED: "delivered",
           notify_pb2.SEND_FAILED: "failed", notify_pb2.SEND_OPENED: "opened", notify_pb2.SEND_CLICKED: "clicked",
           notify_pb2.SEND_UNSUBSCRIBED: "unsubscribed", notify_pb2.SEND_DEAD_LETTERED: "dead_lettered",
           notify_pb2.SUPPRESSED_OPTED_OUT: "suppressed", notify_pb2.SUPPRESSED_RATE_LIMITED: "suppressed",
           notify_pb2.SUPPRESSED_DUPLICATE: "suppressed", notify_pb2.SUPPRESSED_NO_CONTACT: "suppressed"}


class Group(NamedTuple):
    """What one count row counts (within one events partition and node)."""
    hour_ms: int
    template: str
    category: str
    state: int


def counts(events: events_pb2.NotificationEvents) -> Counter:
    """Group -> events, for the states stats count (not SEND_RENDERED or SEND_DELAYED)."""
    found: Counter = Counter()
    for e in events.events:
        event = e.event
        if event.state in _FIELDS:
            # The hour from the seconds alone: the nanos never cross a second.
            found[Group(event.time.seconds // 3600 * HOUR_MS, e.template, e.category, event.state)] += 1
    return found


class StatsTable(Protocol):
    """The part of notifymesh.server.table.TableClient the counts use."""

    async def read(self, partition_key: str, keys: list[bytes]) -> list[bytes | None]: ...

    async def write(self, partition_key: str, ops: list[storage_pb2.TableOp]) -> None: ...

    async def scan(self, partition_key: str, prefix: bytes, start_after: bytes = b"", limit: int = 1000,
                   reverse: bool = False): ...  # -> table.Scanned(keys, values, more)


class Counted(NamedTuple):
    message_id: str
    counts: Counter


class EventCounter:
    """The consumer's side: adds each message's counts once."""

    def __init__(self, table: StatsTable, node: str, clock: Callable[[], int] = now_ms,
                 linger_s: float = COUNT_LINGER_S):
        self._table, self._node, self._clock = table, node, clock
        self._calls = Coalescer(self._add, max_items=MESSAGES_PER_WRITE, linger_s=linger_s)

    async def count(self, events_partition: int, message_id: str, events: events_pb2.NotificationEvents) -> None:
        """Durable when it returns (then the message may be acked)."""
        await self._calls.submit(events_partition, [Counted(message_id, counts(events))])

    async def _add(self, events_partition: int, batch: list[Counted]) -> None:
        partition_key = rows.stats_partition_key(events_partition)
        messages = {c.message_id: c.counts for c in batch}  # the same message twice in a batch: once
        markers = [rows.stats_counted_key(events_partition, mid) for mid in messages]
        groups = sorted({g for found in messages.values() for g in found})
        keys = [rows.stats_count_key(events_partition, g.hour_ms, g.template, g.category, g.state, self._node)
                for g in groups]
        values = await self._table.read(partition_key, markers + keys)
        seen, current = values[:len(markers)], values[len(markers):]
        added: Counter = Counter()
        fresh = []
        for marker, found, was in zip(markers, messages.values(), seen):
            if was is None:
                added.update(found)
                fresh.append(marker)
        if not fresh:
            return
        now = self._clock()
        ops = [storage_pb2.TableOp(key=key, value=str(int(value or b"0") + added[g]).encode(),
                                   expire_ms=g.hour_ms + COUNT_RETENTION_MS)
               for g, key, value in zip(groups, keys, current) if added[g]]
        ops += [storage_pb2.TableOp(key=marker, expire_ms=now + COUNTED_TTL_MS) for marker in fresh]
        await self._table.write(partition_key, ops)


class StatsReader:
    """The frontend's side: sums the count rows of a range of hours."""

    def __init__(self, table: StatsTable, clock: Callable[[], int] = now_ms):
        self._table, self._clock = table, clock

    async def stats(self, events_partitions: int, start_ms: int, template: str = "",
                    category: str = "") -> events_pb2.Stats:
        """The counts from start_ms's hour up to now, of one template and category
        ("": every one)."""
        start_hour = start_ms - start_ms % HOUR_MS
        totals: Counter = Counter()
        for partition in range(events_partitions):
            partition_key = rows.stats_partition_key(partition)
            prefix, start_after = rows.stats_counts_prefix(partition), rows.stats_counts_from(partition, start_hour)
            while True:
                scanned = await self._table.scan(partition_key, prefix, start_after, limit=SCAN_ROWS)
                for key, value in zip(scanned.keys, scanned.values):
                    parsed = rows.parse_stats_count_key(key)
                    if (not template or parsed.template == template) and \
                            (not category or parsed.category == category):
                        totals[_FIELDS[parsed.state]] += int(value)
                if not scanned.more or not scanned.keys:
                    break
                start_after = scanned.keys[-1]
        result = events_pb2.Stats(start_time=timestamp(start_hour), **totals)
        sent = result.sent
        result.delivery_rate = _rate(result.delivered, sent)
        result.open_rate = _rate(result.opened, sent)
        result.click_rate = _rate(result.clicked, sent)
        result.failure_rate = _rate(result.failed, sent + result.failed)
        return result


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0
