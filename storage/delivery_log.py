"""The delivery log and message status: every attempt at delivering a message,
by subscription, with its outcome (written by storage/delivery.py and
storage/dead_letters.py under keys.ShardKeys.delivery), and where a message is
now. The log outlives the message's payload for a while (collect).

It is replicated: the leader sends the records written since a follower's last
answer (written_since; keys.ShardKeys.written holds their keys in order, and
the records themselves bar those with an error), the
follower stores them under the same keys (store_replicated), and records the
identities of the messages it trims itself (keep_identities), as retention does
on the leader. Collection runs on every replica alike."""

from typing import NamedTuple

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms, timestamp, to_ms
from notifymesh.contracts import MessageId, Shard
from storage import keys
from storage.delivery import SubscriptionState
from storage.interfaces import LogStore, Records, SubscriptionStore
from storage.log import ShardLog
from storage.retention import COLLECT_CHUNK, keep_identities

INDEX_SKEW_MS = 600_000
# A record's tags and lengths in a ShardEntries (two fields, each under 16 KiB).
RECORD_FRAMING_BYTES = 6


class WrittenRecords(NamedTuple):
    """Delivery records for a follower: keys and their values (as stored), the
    position after them in the shard's written keys, and their bytes in a request."""
    keys: list[bytes]
    values: list[bytes]
    end: int
    size: int


class DeliveryLog:
    def __init__(self, logs: LogStore, subscriptions: SubscriptionStore, records: Records):
        self._logs, self._subscriptions, self._records = logs, subscriptions, records

    def message_status(self, shard: str, message_id: str) -> pubsub_pb2.MessageStatus:
        """Where the message is, for every subscription it was published for. Once
        every subscription is done with it, its payload is gone but its delivery log
        stays for a while (collect)."""
        log_ = self._subscriptions.restored(shard) if shard in self._logs.shards else None
        seq_value = self._records.get(keys.ShardKeys(shard).index(message_id))
        if log_ is None or seq_value is None:
            raise errors.NotFound(f"message {message_id!r} is unknown in {shard}, or its delivery log expired")
        seq = keys.parse_index_value(seq_value)
        topic, partition = Shard.parse(shard)
        status = pubsub_pb2.MessageStatus(topic=topic, partition=partition)
        attempts = self.attempts(shard, seq)
        entry = self._logs.entry(shard, seq) if seq >= log_.first else None
        if entry is None or not entry.HasField("message"):  # gone, or a stub (storage/retention.py)
            if not attempts:
                raise errors.NotFound(f"message {message_id!r} is no longer kept in {shard}, nor its delivery log")
            if (kept := self._identity(log_, seq)) is not None:
                status.message.MergeFrom(keys.parse_collected_value(kept))
            for name, tried in sorted(attempts.items()):
                dead = tried[-1].outcome == pubsub_pb2.DEAD_LETTER
                status.deliveries.add(subscription=name, attempts=tried, delivery_attempts=tried[-1].attempt,
                                      state=pubsub_pb2.DEAD_LETTERED if dead else pubsub_pb2.ACKNOWLEDGED)
            return status
        if entry.message.message_id != message_id:
            raise errors.NotFound(f"message {message_id!r} is not kept in {shard}")
        status.message.CopyFrom(entry.message)
        now = now_ms()
        for name in sorted(log_.subscriptions):
            state = log_.subscriptions[name]
            if state.created_ms > entry.append_ms:
                continue  # published before the subscription existed
            _delivery_status(status.deliveries.add(subscription=name, attempts=attempts.get(name, [])),
                             state, seq, now)
        return status

    def _identity(self, log_: ShardLog, seq: int) -> bytes | None:
        """The identity retention left of message seq (storage/retention.py): its own
        (a stub's), or in the chunk collected with it, the first chunk up to seq or after."""
        ring, layout = self._records.ring, log_.layout
        key = layout.collected(seq)
        if (value := self._records.get(key)) is not None:
            return keys.open_value(ring, key, value)
        for key, value in self._records.prefixed(layout.identities_prefix, layout.identities(seq)):
            return keys.parse_identities_value(keys.open_value(ring, key, value), keys.seq_of(key)).get(seq)
        return None

    def attempts(self, shard: str, seq: int) -> dict[str, list[pubsub_pb2.DeliveryAttempt]]:
        """The recorded attempts at delivering entry seq, by subscription, in attempt order."""
        attempts: dict[str, list[pubsub_pb2.DeliveryAttempt]] = {}
        for key, value in self._records.prefixed(keys.ShardKeys(shard).deliveries(seq)):
            tried = keys.parse_delivery(key, value, self._records.ring)
            record = pubsub_pb2.DeliveryAttempt(attempt=tried.attempt, delivery_time=timestamp(tried.delivered_ms),
                                                outcome=tried.outcome, error=tried.error)
            if tried.outcome_ms:
                record.outcome_time.CopyFrom(timestamp(tried.outcome_ms))
            attempts.setdefault(tried.subscription, []).append(record)
        return attempts

    def written_since(self, shard: str, position: int, limit: int, max_bytes: int) -> WrittenRecords:
        """The delivery records written since position (the oldest kept, if that is
        gone), up to limit and max_bytes in a ShardEntries: as kept in memory, or read
        back (those with an error; one deleted since is left out)."""
        layout = self._logs.shard(shard).layout
        start = max(position, layout.written_from)
        at = start - layout.written_from
        chosen, records = layout.written[at:at + limit], layout.written_records[at:at + limit]
        if None in records:
            read = iter(self._records.get_many([key for key, record in zip(chosen, records) if record is None]))
            records = [record if record is not None else next(read) for record in records]
        sent_keys, sent_values, size, end = [], [], 0, start
        for key, value in zip(chosen, records):
            if value is not None:
                if size + len(key) + len(value) + RECORD_FRAMING_BYTES > max_bytes:
                    break
                size += len(key) + len(value) + RECORD_FRAMING_BYTES
                sent_keys.append(key)
                sent_values.append(value)
            end += 1
        return WrittenRecords(sent_keys, sent_values, end, size)

    def store_replicated(self, shard: str, delivery_keys: list[bytes], values: list[bytes]) -> None:
        """A follower stores the leader's delivery records as they are (keys of this
        shard only)."""
        prefix = self._logs.shard(shard).layout.delivery_shard_prefix
        batch = self._records.batch()
        for key, value in zip(delivery_keys, values):
            if key.startswith(prefix):
                batch.put(key, value)
        if len(batch):
            self._records.write(batch)

    def keep_identities(self, shard: str, below: int) -> int:
        """Records the identity of each message below below (at most COLLECT_CHUNK of
        them, committed ones), as retention does before it deletes them; returns the
        seq up to which they are recorded (what the caller may trim)."""
        log_ = self._logs.shard(shard)
        below = min(below, log_.commit, log_.first + COLLECT_CHUNK)
        keep_identities(self._records, self._logs, log_, below)
        return below

    def collect(self, shard: str, older_than_ms: int) -> int:
        """Deletes the delivery records, identities and index keys of messages no
        longer kept and delivered before older_than_ms; returns how many records."""
        log_ = self._logs.shards.get(shard)
        if log_ is None:
            return 0
        layout = log_.layout
        batch = self._records.batch()
        end = layout.deliveries(log_.first)
        kept_from = log_.first  # the first collected message whose delivery records stay
        for key, _ in self._records.prefixed(layout.deliveries()):
            if key >= end:
                break
            if (delivery := keys.parse_delivery_key(key)).delivered_ms >= older_than_ms:
                kept_from = delivery.seq
                break  # records are in seq order, which is about delivery order
            batch.delete(key)
        deleted = len(batch)
        batch.delete_range(layout.collected_prefix, layout.collected(kept_from))
        batch.delete_range(layout.identities_prefix, layout.identities(kept_from))  # chunks wholly below it
        # Ids begin with their publish time (the margin covers frontends' clock skew).
        batch.delete_range(layout.index_prefix, layout.index(MessageId.lowest_at(older_than_ms - INDEX_SKEW_MS)))
        self._records.write(batch)
        return deleted


def _delivery_status(delivery: pubsub_pb2.SubscriptionDelivery, state: SubscriptionState, seq: int,
                     now: int) -> None:
    """Fills in where entry seq is for the subscription: dead-lettered, in flight or
    waiting for a retry, not yet delivered, or acknowledged."""
    lease, dead = state.leases.get(seq), state.dead_letters.get(seq)
    if dead is not None:
        delivery.state, delivery.delivery_attempts = pubsub_pb2.DEAD_LETTERED, dead.delivery_attempts
    elif lease is not None:
        waiting = lease.last_error or lease.deadline_ms <= now  # for a retry
        delivery.state = pubsub_pb2.PENDING if waiting else pubsub_pb2.DELIVERED
        delivery.delivery_attempts = lease.attempt
        if lease.attempt and not any(a.attempt == lease.attempt and to_ms(a.delivery_time) == lease.delivered_ms
                                     for a in delivery.attempts):  # the attempt under way
            delivery.attempts.add(attempt=lease.attempt, delivery_time=timestamp(lease.delivered_ms),
                                  outcome=pubsub_pb2.EXPIRED if waiting else pubsub_pb2.IN_FLIGHT)
    elif seq >= state.cursor:
        delivery.state = pubsub_pb2.PENDING
    else:
        delivery.state = pubsub_pb2.ACKNOWLEDGED
        delivery.delivery_attempts = max((a.attempt for a in delivery.attempts), default=0)
