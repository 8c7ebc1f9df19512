"""De-duplication of appends: a message repeated within its topic's window (by
idempotency key, or by a hash of its payload) or retried (by message id) is
stored once, and the repeat answered with the original's id. The log's write
path records each entry's dedup key (storage/log.py ShardLogs._write: per
message, so inline there); this module reads them and collects the expired."""

import collections
import hashlib
from typing import NamedTuple

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.clock import now_ms, timestamp
from notifymesh.contracts import MessageId, Shard
from storage import keys, wire
from storage.interfaces import LogStore, Records
from storage.log import Entries, ShardLog

RETRY_SCAN_ENTRIES = 200_000  # how far back a retried append looks for its message ids


class Prepared(NamedTuple):
    message_ids: list[str]  # one per message of the append, in order: new or the original's
    entries: Entries  # what to write, from log.end on: the messages not stored already


def dedup_key_of(message: pubsub_pb2.PubsubMessage, by_payload: bool) -> str:
    """What a repeat is recognised by: the idempotency key, else (by_payload) a hash
    of data and attributes; publish time and ids are not part of it."""
    if message.idempotency_key:
        return "k:" + message.idempotency_key
    if not by_payload:
        return ""
    digest = hashlib.sha256(len(message.data).to_bytes(8, "big") + message.data)
    for key in sorted(message.attributes):
        digest.update(key.encode() + b"\0" + message.attributes[key].encode() + b"\0")
    return "p:" + digest.hexdigest()


class RecentIds:
    """A bounded set of the newest message ids, oldest dropped first."""

    def __init__(self, ids: list[str]):
        self._order = collections.deque(ids[-RETRY_SCAN_ENTRIES:])
        self._ids = set(self._order)

    def add(self, message_id: str) -> None:
        self._order.append(message_id)
        self._ids.add(message_id)
        if len(self._order) > RETRY_SCAN_ENTRIES:
            self._ids.discard(self._order.popleft())

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._ids


class Dedup:
    def __init__(self, logs: LogStore, records: Records):
        self._logs, self._records = logs, records

    def prepare(self, shard: str, messages: list[pubsub_pb2.PubsubMessage], epoch: int, dedup_window_ms: int,
                retry: bool, by_payload: bool = False) -> Prepared:
        """Leader side, synchronous: the ids to answer and the new entries (from
        log.end on) for messages not already stored: by idempotency key (or, with
        by_payload, by a hash of data and attributes) within the window, or, for a
        retry, by message id. Ids the client did not set are assigned here."""
        log_ = self._logs.shard(shard)
        publish_ms = now_ms()
        # The entry is built as bytes: the message, its publish time appended (a
        # field the client may not set, so appending it is setting it), then the
        # entry's own fields.
        publish_time = wire.field(4, timestamp(publish_ms).SerializeToString())
        entry_fields = storage_pb2.StoredMessage(append_ms=publish_ms, epoch=epoch).SerializeToString()
        dedup_until_ms = publish_ms + dedup_window_ms
        dedup_until_field = storage_pb2.StoredMessage(dedup_until_ms=dedup_until_ms).SerializeToString()
        already = self._recent_ids(log_) if retry else ()
        dedup_keys = [dedup_key_of(message, by_payload) for message in messages]
        staged = log_.staged_keys
        stored = self._stored_ids(log_, {key for key in dedup_keys if key and key not in staged}, publish_ms)
        seen: dict[str, str] = {}  # dedup keys first used within this request
        ids, entries = [], Entries()
        for message, dedup_key in zip(messages, dedup_keys):
            if dedup_key:
                original = seen.get(dedup_key) or staged.get(dedup_key) or stored.get(dedup_key)
                if original:
                    ids.append(original)
                    continue
            if message.message_id in already:
                ids.append(message.message_id)
                continue
            if not message.message_id:
                message.message_id = MessageId.new_batch(*Shard.parse(shard), 1, publish_ms)[0]
            message_id = message.message_id
            serialized = message.SerializeToString() + publish_time
            raw = wire.field(1, serialized) + entry_fields
            if dedup_key:
                seen[dedup_key] = message_id
                raw += wire.field(6, dedup_key.encode()) + dedup_until_field
            entries.add(raw, message_id, dedup_key, dedup_until_ms, epoch)
            entries.messages.append(serialized)
            ids.append(message_id)
        return Prepared(ids, entries)

    def _recent_ids(self, log_: ShardLog) -> RecentIds:
        """Read from the log at the first retry, kept current by the log's writes after."""
        if log_.recent_ids is None:
            log_.recent_ids = RecentIds(
                self._logs.message_ids_from(log_, max(log_.first, log_.end - RETRY_SCAN_ENTRIES)))
        return log_.recent_ids

    def _stored_ids(self, log_: ShardLog, dedup_keys: set[str], now: int) -> dict[str, str]:
        """The message ids stored under those dedup keys and not expired: one multi-get."""
        wanted = list(dedup_keys)
        values = self._records.get_many([log_.layout.idempotency(key) for key in wanted])
        live = keys.live_message_id
        return {key: message_id for key, value in zip(wanted, values)
                if value is not None and (message_id := live(value, now)) is not None}

    def collect_idempotency_keys(self) -> int:
        """Deletes idempotency keys past their window; returns how many."""
        now = now_ms()
        batch = self._records.batch()
        for key, value in self._records.prefixed(keys.IDEMPOTENCY):
            if keys.live_message_id(value, now) is None:
                batch.delete(key)
        if count := len(batch):
            self._records.write(batch)
        return count
