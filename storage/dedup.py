"""De-duplication of appends: a message repeated within its topic's window (by
idempotency key, by a hash of its payload, or by retry key: contracts.dedup_key)
or retried by the frontend (by message id) is stored once, and the repeat
answered with the original's id. The log's write path records each entry's dedup
key (storage/log.py ShardLogs._write: per message, so inline there); this module
reads them and collects the expired."""

import asyncio
import collections
import itertools
from typing import Callable, Collection, NamedTuple

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import contracts
from notifymesh.clock import now_ms, timestamp
from notifymesh.contracts import MessageId, Shard
from storage import keys, wire
from storage.interfaces import LogStore, Records
from storage.log import Entries, ShardLog

RETRY_SCAN_ENTRIES = 200_000  # how far back a retried append looks for its message ids
# Read between two yields to the event loop by the scans below, so that neither
# holds it long. Measured here with 200,000 of each (see the report of this
# change): in one go, reading the recent ids took 0.59 s and sweeping the
# idempotency keys 0.33 s, the event loop (member lease renewal included) held
# all along; in these slices the longest hold was ~8 ms for either.
SCAN_SLICE = 4096        # idempotency keys (a range read: ~2 us a key)
RECENT_IDS_SLICE = 1024  # log entries (a point read and parse: ~8 us an entry)


class Prepared(NamedTuple):
    message_ids: list[str]  # one per message of the append, in order: new or the original's
    entries: Entries  # what to write, from log.end on: the messages not stored already


def dedup_key_of(message: pubsub_pb2.PubsubMessage, by_payload: bool,
                 payload_attributes: Collection[str] | None = None) -> str:
    """What a repeat is recognised by (contracts.dedup_key: the idempotency key, else
    with by_payload a hash of the data and the attributes named (None: all), else
    the retry key); publish time and ids are not part of it."""
    return contracts.dedup_key(message, by_payload, payload_attributes)


class RecentIds:
    """A bounded set of the newest message ids, oldest dropped first."""

    def __init__(self, ids: list[str]):
        self._order = collections.deque(ids[-RETRY_SCAN_ENTRIES:])
        self._ids = set(self._order)

    def extend(self, message_ids: list[str]) -> None:
        """Newer ids than those held, in order."""
        self._order.extend(message_ids)
        self._ids.update(message_ids)
        while len(self._order) > RETRY_SCAN_ENTRIES:
            self._ids.discard(self._order.popleft())

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
        self._loading: dict[str, asyncio.Future] = {}  # shard -> its recent ids being read (one per shard)
        # The attributes a topic's payload hash covers besides the data
        # (Topic.dedup_attributes): the storage node looks them up in its topic
        # records. None, as here by default, is all of them.
        self.payload_attributes: Callable[[str], Collection[str] | None] = lambda topic: None

    def prepare(self, shard: str, messages: list[pubsub_pb2.PubsubMessage], epoch: int, dedup_window_ms: int,
                retry: bool, by_payload: bool = False) -> Prepared:
        """Leader side, synchronous: the ids to answer and the new entries (from
        log.end on) for messages not already stored: by idempotency key (or, with
        by_payload, by a hash of the data and the topic's payload_attributes; else
        by retry key) within the window, or, for a retry, by message id. Ids the
        client did not set are assigned here."""
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
        names = self.payload_attributes(Shard.parse(shard)[0]) if by_payload else None
        dedup_keys = [dedup_key_of(message, by_payload, names) for message in messages]
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
        """Kept current by the log's writes once read. Read here in one go only when
        the caller did not await load_recent_ids first (the leader does)."""
        if log_.recent_ids is None:
            log_.recent_ids = RecentIds(
                self._logs.message_ids_from(log_, max(log_.first, log_.end - RETRY_SCAN_ENTRIES)))
        return log_.recent_ids

    async def load_recent_ids(self, shard: str) -> None:
        """Before a retried append: the ids of the last RETRY_SCAN_ENTRIES entries,
        read in slices of RECENT_IDS_SLICE with the event loop running between them (a
        new leader's first retry would otherwise hold it for the whole scan).
        Concurrent callers share one read; at most one per shard is under way."""
        log_ = self._logs.shard(shard)
        while log_.recent_ids is None and self._logs.shards.get(shard) is log_:
            loading = self._loading.get(shard)
            if loading is None:
                loading = self._loading[shard] = asyncio.ensure_future(self._read_recent_ids(log_))
                loading.add_done_callback(lambda _: self._loading.pop(shard, None))
            await asyncio.shield(loading)

    async def _read_recent_ids(self, log_: ShardLog) -> None:
        """Reads the synced entries slice by slice, up to where the log is synced
        (which moves on meanwhile), then the rest (in memory, being synced) without
        yielding and installs the ids: none written meanwhile is missed, and later
        writes add theirs. Starts over when the log's tail is replaced meanwhile."""
        replacements, read = log_.replacements, RecentIds([])
        seq = max(log_.first, log_.end - RETRY_SCAN_ENTRIES)
        while (stop := min(seq + RECENT_IDS_SLICE, log_.written)) > seq:
            read.extend(self._ids_between(log_, seq, stop))
            seq = stop
            await asyncio.sleep(0)
            if log_.recent_ids is not None:
                return  # read in one go meanwhile (_recent_ids)
            if log_.replacements != replacements:
                replacements, read = log_.replacements, RecentIds([])
                seq = max(log_.first, log_.end - RETRY_SCAN_ENTRIES)
        read.extend(self._ids_between(log_, seq, log_.end))
        log_.recent_ids = read

    def _ids_between(self, log_: ShardLog, start: int, stop: int) -> list[str]:
        """The message ids of the entries start..stop-1, in order: from the leader's
        tail where it has them (those being synced are not in RocksDB yet), else read."""
        tail_start = min(max(start, log_.tail.start), stop)
        tail_stop = min(max(tail_start, log_.tail.start + len(log_.tail)), stop)
        ids = self._read_ids(log_, start, tail_start)
        ids.extend(message_id for message_id in log_.tail.slice(tail_start, tail_stop - tail_start)[1] if message_id)
        ids.extend(self._read_ids(log_, tail_stop, stop))
        return ids

    def _read_ids(self, log_: ShardLog, start: int, stop: int) -> list[str]:
        ids = []
        for seq in range(start, stop):
            entry = self._logs.entry(log_.name, seq)
            if entry is not None and entry.message.message_id:
                ids.append(entry.message.message_id)
        return ids

    def _stored_ids(self, log_: ShardLog, dedup_keys: set[str], now: int) -> dict[str, str]:
        """The message ids stored under those dedup keys and not expired: one multi-get."""
        wanted = list(dedup_keys)
        values = self._records.get_many([log_.layout.idempotency(key) for key in wanted])
        live = keys.live_message_id
        return {key: message_id for key, value in zip(wanted, values)
                if value is not None and (message_id := live(value, now)) is not None}

    def collect_idempotency_keys(self) -> int:
        """Deletes idempotency keys past their window, in one go; returns how many."""
        count, after = 0, b""
        while after is not None:
            deleted, after = self._collect_slice(after)
            count += deleted
        return count

    async def sweep_idempotency_keys(self) -> int:
        """collect_idempotency_keys in slices of SCAN_SLICE keys, the event loop
        running between them; each slice reads and deletes without yielding, and
        the next resumes after its last key."""
        count, after = 0, b""
        while True:
            deleted, after = self._collect_slice(after)
            count += deleted
            if after is None:
                return count
            await asyncio.sleep(0)

    def _collect_slice(self, start: bytes) -> tuple[int, bytes | None]:
        """Deletes the expired among up to SCAN_SLICE idempotency keys from start:
        (how many, where the next slice starts; None at the end). A key staged for a
        write not yet synced is kept: that write is about to make it live again."""
        now, batch, read, last = now_ms(), self._records.batch(), 0, b""
        for key, value in itertools.islice(self._records.prefixed(keys.IDEMPOTENCY, start), SCAN_SLICE):
            read, last = read + 1, key
            if keys.live_message_id(value, now) is None and not self._staged(key):
                batch.delete(key)
        if count := len(batch):
            self._records.write(batch)
        return count, (last + b"\0" if read == SCAN_SLICE else None)

    def _staged(self, idempotency_key: bytes) -> bool:
        shard, _, dedup_key = idempotency_key[1:].partition(b"\0")
        log_ = self._logs.shards.get(shard.decode())
        return log_ is not None and dedup_key.decode() in log_.staged_keys
