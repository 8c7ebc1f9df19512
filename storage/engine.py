"""A storage node's shards: replicated logs in RocksDB, delivery state in memory. Replication itself (who leads, who follows) is in
storage/replication.py; this module keeps one node's copy.

Each shard's log has sequence numbers. Entries below `commit` are on a majority
of the replica set and only those are delivered. Each subscription has a cursor
(the next seq never delivered) and leases for messages delivered but not yet
acknowledged; a lease past its deadline makes the message deliverable again. The
leader deletes what every subscription has moved past, or what is older than
the topic's retention, and followers drop what the leader no longer keeps.

Log writes are group-committed: concurrent appends (and replicated batches)
share one synced WriteBatch. Cursors, leases and dead letters live in memory on
the leader, which saves them as one value per shard (snapshot) when they changed,
about every 0.5 s, and sends the same to its followers; a crash loses at most that
much, which only means messages are delivered again, as at-least-once allows.
"""

import asyncio
import collections
import hashlib
import heapq
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms, timestamp, to_ms
from notifymesh.contracts import AckId, MessageId, Shard
from notifymesh.log import fields
from storage import keys, wire

log = logging.getLogger(__name__)

NODE_ID_FILE = "NODE_ID"
INDEX_SKEW_MS = 600_000
RETRY_SCAN_ENTRIES = 200_000  # how far back a retried append looks for its message ids
MAX_TAIL_ENTRIES = 50_000  # per shard: unreplicated entries kept in memory
# Per shard with subscriptions: new messages kept in memory for delivery, trimmed to
# what some subscription has not reached once there are RECENT_TRIM_AT of them.
RECENT_TRIM_AT, MAX_RECENT_MESSAGES = 1_000, 10_000
_NOT_KEPT = object()  # SeqWindow.get's answer for a seq outside the window


@dataclass(frozen=True)
class DeliveryPolicy:
    """A subscription's retry backoff and dead-lettering, from its record."""
    min_backoff_ms: int = 0
    max_backoff_ms: int = 0
    multiplier: float = 1.0
    max_attempts: int = 0
    dead_letter_topic: str = ""

    @classmethod
    def of(cls, subscription: pubsub_pb2.Subscription) -> "DeliveryPolicy":
        policy = subscription.retry_policy
        return cls(policy.minimum_backoff.ToMilliseconds(), policy.maximum_backoff.ToMilliseconds(),
                   policy.multiplier or 1.0, subscription.max_delivery_attempts, subscription.dead_letter_topic)

    def backoff_ms(self, attempt: int) -> int:
        """The wait after failed attempt number attempt (1-based)."""
        return int(min(self.max_backoff_ms, self.min_backoff_ms * self.multiplier ** (attempt - 1)))

    def exhausted(self, attempt: int) -> bool:
        return bool(self.max_attempts and self.dead_letter_topic and attempt >= self.max_attempts)


@dataclass
class DeadLetter:
    """A message out of delivery attempts, for the storage service to move."""
    shard: str
    subscription: str
    seq: int
    message: pubsub_pb2.PubsubMessage
    attempts: int
    topic: str
    error: str


DEAD_LETTER_RETRY_MS = 30_000  # a dead letter not moved by then is tried again


class Lease:
    """One in-flight delivery (a plain object: one is made per delivery)."""
    __slots__ = ("deadline_ms", "attempt", "delivered_ms", "last_error")

    def __init__(self, deadline_ms: int, attempt: int, delivered_ms: int, last_error: str = ""):
        # deadline_ms: when the message may be delivered again (ack deadline plus
        # retry backoff); last_error: why the last attempt failed, if it was nacked.
        self.deadline_ms, self.attempt, self.delivered_ms, self.last_error = \
            deadline_ms, attempt, delivered_ms, last_error


@dataclass
class SubscriptionState:
    name: str
    cursor: int
    leases: dict[int, Lease] = field(default_factory=dict)
    # (deadline_ms, seq); entries whose lease changed since are skipped when popped.
    # A lease's deadline is when the message may be delivered again: the ack
    # deadline plus the retry backoff.
    deadlines: list[tuple[int, int]] = field(default_factory=list)
    policy: DeliveryPolicy = DeliveryPolicy()
    # Messages moved to the dead-letter topic, by seq: kept for listing and redrive.
    dead_letters: dict[int, storage_pb2.DeadLetterRecord] = field(default_factory=dict)
    created_ms: int = 0  # the subscription's create time: older messages were never its own
    record: pubsub_pb2.Subscription | None = None  # the etcd record policy and created_ms come from

    def lease(self, seq: int, lease: Lease) -> None:
        self.leases[seq] = lease
        heapq.heappush(self.deadlines, (lease.deadline_ms, seq))

    def next_deadline(self) -> int | None:
        while self.deadlines:
            deadline, seq = self.deadlines[0]
            lease = self.leases.get(seq)
            if lease is not None and lease.deadline_ms == deadline:
                return deadline
            heapq.heappop(self.deadlines)
        return None

    def low_watermark(self) -> int:
        """No entry below this is still owed to the subscription."""
        return min(self.cursor, min(self.leases, default=self.cursor), min(self.dead_letters, default=self.cursor))


class SeqWindow:
    """Values of the consecutive seqs start, start + 1, ... kept in memory, in one
    or more parallel columns (lists of equal length)."""
    __slots__ = ("start", "columns")

    def __init__(self, columns: int = 1):
        self.start, self.columns = 0, [[] for _ in range(columns)]

    def __len__(self) -> int:
        return len(self.columns[0])

    def get(self, seq: int, default=None):
        """The first column's value for seq."""
        index = seq - self.start
        return self.columns[0][index] if 0 <= index < len(self) else default

    def slice(self, start: int, limit: int) -> list[list]:
        """Each column's values for up to limit seqs from start on (empty lists when
        start is outside)."""
        index = start - self.start
        if not 0 <= index < len(self):
            return [[] for _ in self.columns]
        return [column[index:index + limit] for column in self.columns]

    def put(self, start: int, columns: list[list], limit: int) -> None:
        """Values from start on, replacing any from there; keeps the newest limit."""
        if not self.start <= start <= self.start + len(self):  # not adjoining: start over
            self.start = start
            self.clear()
        for column, values in zip(self.columns, columns):
            del column[start - self.start:]
            column.extend(values)
        self.drop_below(self.start + len(self) - limit)

    def drop_below(self, seq: int) -> None:
        count = min(seq - self.start, len(self))
        if count > 0:
            for column in self.columns:
                del column[:count]
            self.start += count

    def clear(self) -> None:
        self.columns = [[] for _ in self.columns]


@dataclass
class ShardLog:
    name: str
    partition: int
    first: int = 0       # lowest seq still kept
    end: int = 0         # one past the last entry written here
    written: int = 0     # ... and synced: end runs ahead while a write is under way
    replacements: int = 0  # counts writes that replaced entries (a deposed leader's tail)
    commit: int = 0      # entries below are on a majority (as far as this node knows)
    last_epoch: int = 0  # epoch of the entry at end - 1 (0: none, or below first)
    subscriptions: dict[str, SubscriptionState] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Counts changes of the delivery state, so the leader knows what a follower has.
    state_version: int = 0
    # (leader epoch, state_version) of the delivery state held here, as last saved.
    state_stamp: tuple[int, int] = (0, 0)
    # The delivery state as saved or received from the leader, not yet taken into
    # subscriptions (a follower never needs it there; a new leader does).
    saved: list[storage_pb2.SubscriptionState] | None = None
    # While leading: the epoch, and the last snapshot taken (state_version, states).
    leader_epoch: int = 0
    snapshot: tuple[int, list[storage_pb2.SubscriptionState]] | None = None
    # Ids of the last RETRY_SCAN_ENTRIES messages, read from the log at the first
    # retried append and kept up to date after it (None until then).
    recent_ids: "RecentIds | None" = None
    # Dedup keys of entries staged for a write not yet synced (key -> message id):
    # RocksDB does not have them yet, and a repeat may arrive meanwhile.
    staged_keys: dict[str, str] = field(default_factory=dict)
    # The leader's entries not yet on every follower (columns: serialized entry,
    # message id, dedup key, dedup expiry, epoch), so replication sends them without
    # reading them back from RocksDB.
    tail: SeqWindow = field(default_factory=lambda: SeqWindow(columns=5))
    # The leader's newest messages (serialized PubsubMessage; None for an epoch
    # marker), delivered without reading them back from RocksDB.
    recent: SeqWindow = field(default_factory=SeqWindow)

    def notify(self) -> None:
        """Wakes every pull waiting on this shard."""
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


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


@dataclass
class Entries:
    """Serialized StoredMessages, with what storing them takes besides their bytes,
    one value per entry (as in storage_pb2.ShardEntries): message id, dedup key and
    dedup expiry; and the epoch of the last entry."""
    raw: list[bytes] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    dedup_keys: list[str] = field(default_factory=list)
    dedup_until_ms: list[int] = field(default_factory=list)
    last_epoch: int = 0
    # The serialized PubsubMessage of each (None: an epoch marker), where the leader
    # made the entries; empty for entries it reads back or receives.
    messages: list[bytes | None] = field(default_factory=list)

    def add(self, raw: bytes, message_id: str, dedup_key: str, dedup_until_ms: int, epoch: int) -> None:
        self.raw.append(raw)
        self.ids.append(message_id)
        self.dedup_keys.append(dedup_key)
        self.dedup_until_ms.append(dedup_until_ms)
        self.last_epoch = epoch

    @classmethod
    def of(cls, stored: list[storage_pb2.StoredMessage]) -> "Entries":
        entries = cls()
        for e in stored:
            entries.add(e.SerializeToString(), e.message.message_id, e.dedup_key, e.dedup_until_ms, e.epoch)
            entries.messages.append(e.message.SerializeToString() if e.HasField("message") else None)
        return entries

    @classmethod
    def parsed(cls, raw: list[bytes]) -> "Entries":
        entries = cls()
        for value in raw:
            e = storage_pb2.StoredMessage.FromString(value)
            entries.add(value, e.message.message_id, e.dedup_key, e.dedup_until_ms, e.epoch)
        return entries

    @classmethod
    def replicated(cls, batch: storage_pb2.ShardEntries) -> "Entries":
        """A leader's batch, indexed as the leader sent it (parsed when the index does
        not match the entries)."""
        count = len(batch.entries)
        if not len(batch.message_ids) == len(batch.dedup_keys) == len(batch.dedup_until_ms) == count:
            return cls.parsed(list(batch.entries))
        return cls(list(batch.entries), list(batch.message_ids), list(batch.dedup_keys), list(batch.dedup_until_ms),
                   batch.last_entry_epoch)


@dataclass
class _GroupWrite:
    """A write staged into the group being formed: what becomes true of its shard
    once the group is synced (or not, when the write failed)."""
    log: ShardLog
    end: int
    replacements: int
    dedup_keys: list[tuple[str, str]]  # (dedup key, message id) staged in the shard's staged_keys


class StorageEngine:
    def __init__(self, data_dir: Path, node_id: str):
        data_dir.mkdir(parents=True, exist_ok=True)
        id_file = data_dir / NODE_ID_FILE
        if id_file.exists() and id_file.read_text().strip() != node_id:
            raise SystemExit(f"{data_dir} belongs to storage node {id_file.read_text().strip()!r}, not {node_id!r}")
        id_file.write_text(node_id + "\n")
        self.node_id = node_id
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(data_dir / "rocksdb"), options)
        self._unsynced = WriteOptions()
        self.shards: dict[str, ShardLog] = {}
        # Messages out of delivery attempts, for the storage service to move.
        self.dead_letters: asyncio.Queue[DeadLetter] = asyncio.Queue()
        # Group commit: writes go into the group being formed, which the committer
        # writes (synced) as one batch while the next one forms.
        self._group = WriteBatch(raw_mode=True)
        self._group_done: asyncio.Future | None = None
        self._group_writes: list[_GroupWrite] = []
        self._wake_committer = asyncio.Event()
        self._committer: asyncio.Task | None = None
        self._closed = False
        self._draining = False
        self._recover()

    # -- recovery ---------------------------------------------------------------

    def _recover(self) -> None:
        """Rebuilds the in-memory index from the keys on disk."""
        db = self._db
        for key, value in self._prefixed(b"f"):
            self.shard(key[1:].decode()).first = int.from_bytes(value, "big")
        for key, value in self._prefixed(b"s"):
            saved = storage_pb2.DeliveryState.FromString(value)
            log_ = self.shard(key[1:].decode())
            log_.saved, log_.state_stamp = list(saved.subscriptions), (saved.epoch, saved.version)
        it = db.iter()
        it.seek(b"m")
        while it.valid() and it.key().startswith(b"m"):
            shard = it.key()[1:].split(b"\0", 1)[0].decode()
            prefix = keys.message_prefix(shard)
            log_ = self.shard(shard)
            log_.first = max(log_.first, keys.seq_of(it.key()))
            it.seek_for_prev(keys.prefix_end(prefix))
            log_.end = keys.seq_of(it.key()) + 1
            entry = self._entry(shard, log_.end - 1)
            log_.last_epoch = entry.epoch if entry else 0
            it.seek(keys.prefix_end(prefix))
        for log_ in self.shards.values():
            log_.end = log_.written = max(log_.end, log_.first)
        log.info("recovered", extra=fields(shards=len(self.shards),
                                           entries=sum(s.end - s.first for s in self.shards.values())))

    def _prefixed(self, prefix: bytes):
        for key, value in self._db.items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key, value

    def shard(self, name: str) -> ShardLog:
        log_ = self.shards.get(name)
        if log_ is None:
            log_ = self.shards[name] = ShardLog(name, Shard.parse(name).partition)
        return log_

    def _entry(self, shard: str, seq: int) -> storage_pb2.StoredMessage | None:
        value = self._db.get(keys.message(shard, seq))
        return self._decode(shard, seq, value)

    def _decode(self, shard: str, seq: int, value: bytes | None) -> storage_pb2.StoredMessage | None:
        if value is None:
            return None
        entry = keys.unsealed(value)
        if entry is None:
            log.error("corrupted entry skipped", extra=fields(shard=shard, seq=seq))
            return None
        return storage_pb2.StoredMessage.FromString(entry)

    def epoch_at(self, shard: str, seq: int) -> int | None:
        entry = self._entry(shard, seq)
        return entry.epoch if entry else None

    def start(self) -> None:
        self._committer = asyncio.create_task(self._commit_loop())

    # -- writing the log --------------------------------------------------------

    def _join_group(self) -> tuple[WriteBatch, asyncio.Future]:
        """The batch being formed, to add a synced write's puts to, and the future
        that is done once that batch is written (shared by every write of the group)."""
        if self._closed:
            raise errors.Unavailable("storage node is shutting down")
        if self._group_done is None:
            self._group_done = asyncio.get_running_loop().create_future()
        self._wake_committer.set()
        return self._group, self._group_done

    async def _commit_loop(self) -> None:
        """While one group is being written, the next accumulates: group commit."""
        while not (self._closed and self._group_done is None):
            await self._wake_committer.wait()
            self._wake_committer.clear()
            batch, done, writes = self._group, self._group_done, self._group_writes
            if done is None:
                continue
            self._group, self._group_done, self._group_writes = WriteBatch(raw_mode=True), None, []
            try:
                await asyncio.to_thread(self._write_synced, batch)
            except Exception as e:
                log.error("log write failed", extra=fields(error=repr(e)))
                done.set_exception(errors.Unavailable(f"storage write failed: {e}"))
                done.exception()  # retrieved: a group no writer awaits any more is not an error
            else:
                for write in writes:  # groups complete in the order they were formed
                    if write.log.replacements == write.replacements:  # else these entries may be gone again
                        write.log.written = max(write.log.written, write.end)
                done.set_result(None)
            for write in writes:  # in RocksDB now, or never: repeats are found there
                staged = write.log.staged_keys
                for dedup_key, message_id in write.dedup_keys:
                    if staged.get(dedup_key) == message_id:
                        del staged[dedup_key]

    def _write_synced(self, batch: WriteBatch) -> None:
        """A durable write. rocksdict holds the GIL through a write, fsync included, which
        stalls every other thread of the process (measured: the event loop ran at about
        40% of its speed meanwhile); flush_wal releases it. The entries are visible to
        reads before the sync completes, but nothing reads them as durable until
        `written` moves (after this returns)."""
        self._db.write(batch, self._unsynced)
        self._db.flush_wal(True)

    def prepare(self, shard: str, messages: list[pubsub_pb2.PubsubMessage], epoch: int, dedup_window_ms: int,
                retry: bool, by_payload: bool = False) -> tuple[list[str], Entries]:
        """Leader side, synchronous: the ids to answer and the new entries (from
        log.end on) for messages not already stored: by idempotency key (or, with
        by_payload, by a hash of data and attributes) within the window, or, for a
        retry, by message id. Ids the client did not set are assigned here."""
        log_ = self.shard(shard)
        publish_ms = now_ms()
        # The entry is built as bytes: the message, its publish time appended (a
        # field the client may not set, so appending it is setting it), then the
        # entry's own fields.
        publish_time = wire.field(4, timestamp(publish_ms).SerializeToString())
        entry_fields = storage_pb2.StoredMessage(append_ms=publish_ms, epoch=epoch).SerializeToString()
        dedup_until_ms = publish_ms + dedup_window_ms
        dedup_until_field = storage_pb2.StoredMessage(dedup_until_ms=dedup_until_ms).SerializeToString()
        if retry and log_.recent_ids is None:
            log_.recent_ids = RecentIds(self._read_recent_ids(log_))
        already = log_.recent_ids if retry else ()
        dedup_keys = [dedup_key_of(message, by_payload) for message in messages]
        staged = log_.staged_keys
        stored = self._stored_ids(shard, {key for key in dedup_keys if key and key not in staged}, publish_ms)
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
        return ids, entries

    def _read_recent_ids(self, log_: ShardLog) -> list[str]:
        start = max(log_.first, log_.end - RETRY_SCAN_ENTRIES)
        ids = []
        for key, value in self._db.items(from_key=keys.message(log_.name, start)):
            if not key.startswith(keys.message_prefix(log_.name)):
                break
            entry = self._decode(log_.name, keys.seq_of(key), value)
            if entry is not None and entry.HasField("message"):
                ids.append(entry.message.message_id)
        return ids

    def _stored_ids(self, shard: str, dedup_keys: set[str], now: int) -> dict[str, str]:
        """The message ids stored under those dedup keys and not expired: one multi-get."""
        wanted = list(dedup_keys)
        values = self._db.get([keys.idempotency(shard, key) for key in wanted]) if wanted else []
        return {key: value[8:].decode() for key, value in zip(wanted, values)
                if value is not None and int.from_bytes(value[:8], "big") > now}

    def write_entries(self, shard: str, start: int, entries: Entries) -> Awaitable[None]:
        """The leader's own entries, staged at once and kept in the tail, so
        replication can send them while they are being synced here, and (with
        subscriptions) among the recent messages to deliver; await the result for
        the synced write (see _write)."""
        log_ = self.shard(shard)
        epochs = [entries.last_epoch] * len(entries.raw)  # a leader writes entries of its own epoch
        log_.tail.put(start, [entries.raw, entries.ids, entries.dedup_keys, entries.dedup_until_ms, epochs],
                      MAX_TAIL_ENTRIES)
        recent = log_.recent
        if log_.subscriptions:
            recent.put(start, [entries.messages], MAX_RECENT_MESSAGES)
            if len(recent) > RECENT_TRIM_AT:
                recent.drop_below(min(state.cursor for state in log_.subscriptions.values()))
        else:
            recent.clear()
        return self._write(shard, start, entries)

    def write_replicated(self, shard: str, start: int, entries: Entries) -> Awaitable[None]:
        """Entries replicated from the leader, stored as they came."""
        log_ = self.shard(shard)
        log_.tail.clear()  # a follower now
        log_.recent.clear()
        return self._write(shard, start, entries)

    def release_tail(self, shard: str, below: int) -> None:
        """Every follower has the entries below: replication needs them no more."""
        self.shard(shard).tail.drop_below(below)

    def _write(self, shard: str, start: int, entries: Entries) -> Awaitable[None]:
        """Stages entries at start.. into the group being formed, replacing anything
        from start on (a deposed leader's unreplicated tail): end moves at once,
        written (and the returned awaitable) once the group is synced."""
        log_ = self.shard(shard)
        if start < log_.first:
            raise errors.FailedPrecondition(f"{shard}: entry {start} is below the first kept entry {log_.first}")
        batch, done = self._join_group()
        if start < log_.end:
            batch.delete_range(keys.message(shard, start), keys.message(shard, log_.end))
            log_.recent_ids = None  # ids of the replaced tail may be among them
            log_.replacements += 1
        recent_ids, dedup_keys = log_.recent_ids, []
        message_prefix, index_prefix = keys.message_prefix(shard), keys.message_index_prefix(shard)
        for seq, (value, message_id, dedup_key, dedup_until_ms) in enumerate(
                zip(entries.raw, entries.ids, entries.dedup_keys, entries.dedup_until_ms), start):
            seq_key = keys.seq_bytes(seq)
            batch.put(message_prefix + seq_key, keys.sealed(value))
            if message_id:
                batch.put(index_prefix + message_id.encode(), seq_key)
                if recent_ids is not None:
                    recent_ids.add(message_id)
            if dedup_key:
                batch.put(keys.idempotency(shard, dedup_key), dedup_until_ms.to_bytes(8, "big") + message_id.encode())
                log_.staged_keys[dedup_key] = message_id
                dedup_keys.append((dedup_key, message_id))
        # Set before the write completes so the next leader append lands after these.
        end = log_.end = start + len(entries.raw)
        log_.written = min(log_.written, start)
        log_.last_epoch = entries.last_epoch if entries.raw else (self.epoch_at(shard, start - 1) or 0)
        log_.commit = min(log_.commit, log_.end)
        self._group_writes.append(_GroupWrite(log_, end, log_.replacements, dedup_keys))
        return asyncio.shield(done)  # one writer giving up does not cancel the group

    def advance_commit(self, shard: str, commit: int) -> None:
        log_ = self.shard(shard)
        commit = min(commit, log_.end)
        if commit > log_.commit:
            log_.commit = commit
            log_.notify()

    def entries_from(self, shard: str, start: int, limit: int) -> Entries:
        """Up to limit entries from start on, for replication; stops before a gap or a
        corrupted entry rather than send entries out of place."""
        log_ = self.shard(shard)
        raw, ids, dedup_keys, dedup_until_ms, epochs = log_.tail.slice(start, min(limit, log_.end - start))
        if raw:
            return Entries(raw, ids, dedup_keys, dedup_until_ms, epochs[-1])
        raw = []
        stop = keys.message(shard, log_.end)
        for key, value in self._db.items(from_key=keys.message(shard, start)):
            if key >= stop or len(raw) >= limit or keys.seq_of(key) != start + len(raw):
                break
            entry = keys.unsealed(value)
            if entry is None:
                log.error("corrupted entry not replicated", extra=fields(shard=shard, seq=keys.seq_of(key)))
                break
            raw.append(entry)
        return Entries.parsed(raw)

    def reset(self, shard: str, first: int) -> None:
        """A follower too far behind starts over at the leader's first entry."""
        log_ = self.shard(shard)
        batch = WriteBatch(raw_mode=True)
        for prefix in (keys.message_prefix(shard), keys.message_index_prefix(shard), keys.delivery_prefix(shard)):
            batch.delete_range(prefix, keys.prefix_end(prefix))
        batch.put(keys.first(shard), keys.seq_bytes(first))
        self._write_synced(batch)
        log_.first = log_.end = log_.written = log_.commit = first
        log_.last_epoch = 0
        log_.tail.clear()
        log_.recent.clear()
        log_.recent_ids = None
        log.info("log reset", extra=fields(shard=shard, first=first))

    def trim(self, shard: str, first: int) -> int:
        """Drops entries below first (the leader no longer keeps them); returns how many."""
        log_ = self.shard(shard)
        first = min(first, log_.commit)
        if first <= log_.first:
            return 0
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(keys.message(shard, log_.first), keys.message(shard, first))
        batch.put(keys.first(shard), keys.seq_bytes(first))
        self._db.write(batch, self._unsynced)
        freed, log_.first = first - log_.first, first
        return freed

    # -- subscriptions ----------------------------------------------------------

    def attach(self, shard: str, subscription: pubsub_pb2.Subscription) -> SubscriptionState:
        """Starts the subscription at the first entry appended at or after its create
        time, unless it is attached already; takes its delivery policy either way."""
        log_ = self._restored(shard)
        state = log_.subscriptions.get(subscription.name)
        if state is not None and state.record is not subscription:  # new, or restored from a snapshot
            state.record, state.policy = subscription, DeliveryPolicy.of(subscription)
            state.created_ms = to_ms(subscription.create_time)
        if state is None:
            cursor = self._first_seq_at_or_after(log_, to_ms(subscription.create_time))
            state = log_.subscriptions[subscription.name] = SubscriptionState(
                subscription.name, cursor, policy=DeliveryPolicy.of(subscription),
                created_ms=to_ms(subscription.create_time), record=subscription)
            log_.state_version += 1
            log.info("subscription attached", extra=fields(shard=shard, subscription=subscription.name,
                                                           cursor=cursor, first=log_.first, end=log_.end))
        return state

    def _first_seq_at_or_after(self, log_: ShardLog, ms: int) -> int:
        """Binary search over the entries, which are in append-time order."""
        low, high = log_.first, log_.end
        it = self._db.iter()
        prefix = keys.message_prefix(log_.name)
        while low < high:
            mid = (low + high) // 2
            it.seek(keys.message(log_.name, mid))
            if not it.valid() or not it.key().startswith(prefix):
                high = mid
                continue
            seq = keys.seq_of(it.key())
            entry = self._decode(log_.name, seq, it.value())
            if entry is not None and entry.append_ms >= ms:
                high = mid
            else:
                low = seq + 1
        return low

    def detach(self, shard: str, subscription: str) -> None:
        log_ = self.shards.get(shard)
        if log_ is None or log_.subscriptions.pop(subscription, None) is None:
            return
        log_.state_version += 1
        log_.notify()
        log.info("subscription detached", extra=fields(shard=shard, subscription=subscription))

    def drop(self, shard: str) -> None:
        """Forgets the shard entirely (its topic was deleted, or it moved away)."""
        log_ = self.shards.pop(shard, None)
        if log_ is None:
            return
        batch = WriteBatch(raw_mode=True)
        for kind in (b"m", b"k", b"i", b"d"):
            prefix = kind + shard.encode() + b"\0"
            batch.delete_range(prefix, keys.prefix_end(prefix))
        batch.delete(keys.first(shard))
        batch.delete(keys.delivery_state(shard))
        self._db.write(batch, self._unsynced)
        log_.notify()
        log.info("shard dropped", extra=fields(shard=shard))

    def subscription(self, shard: str, subscription: str) -> SubscriptionState:
        log_ = self._restored(shard) if shard in self.shards else None
        state = log_.subscriptions.get(subscription) if log_ else None
        if state is None:
            raise errors.NotFound(f"subscription {subscription!r} is not attached to shard {shard}")
        return state

    def lead(self, shard: str, epoch: int) -> None:
        """This node leads the shard from now on: its delivery state comes out of the
        saved (or received) form."""
        log_ = self._restored(shard)
        log_.leader_epoch, log_.snapshot = epoch, None

    def _restored(self, shard: str) -> ShardLog:
        log_ = self.shard(shard)
        if log_.saved is not None:
            log_.subscriptions = {}
            for saved in log_.saved:
                state = log_.subscriptions[saved.name] = SubscriptionState(saved.name, saved.cursor)
                errors_ = saved.lease_errors
                for seq, deadline_ms, delivered_ms, attempt in keys.LEASE_STATE.iter_unpack(saved.leases):
                    state.lease(seq, Lease(deadline_ms, attempt, delivered_ms, errors_.get(seq, "")))
                for dead in saved.dead_letters:
                    state.dead_letters[dead.seq] = dead
            log_.saved = None
        return log_

    def snapshot(self, shard: str) -> list[storage_pb2.SubscriptionState]:
        """The leader's delivery state, saved (without sync) when it changed since the
        last snapshot; the leader sends the same to its followers."""
        log_ = self._restored(shard)
        if log_.snapshot is None or log_.snapshot[0] != log_.state_version:
            pack = keys.LEASE_STATE.pack
            states = [storage_pb2.SubscriptionState(
                          name=s.name, cursor=s.cursor, dead_letters=s.dead_letters.values(),
                          leases=b"".join(pack(seq, lease.deadline_ms, lease.delivered_ms, lease.attempt)
                                          for seq, lease in s.leases.items()),
                          lease_errors={seq: lease.last_error for seq, lease in s.leases.items() if lease.last_error})
                      for s in log_.subscriptions.values()]
            self._save(shard, states, (log_.leader_epoch, log_.state_version))
            log_.snapshot = (log_.state_version, states)
        return log_.snapshot[1]

    def _save(self, shard: str, states: list[storage_pb2.SubscriptionState],
              stamp: tuple[int, int]) -> storage_pb2.DeliveryState:
        self.shard(shard).state_stamp = stamp
        saved = storage_pb2.DeliveryState(subscriptions=states, epoch=stamp[0], version=stamp[1])
        self._db.put(keys.delivery_state(shard), saved.SerializeToString(), self._unsynced)
        return saved

    def import_states(self, shard: str, states: list[storage_pb2.SubscriptionState],
                      stamp: tuple[int, int]) -> None:
        """A follower takes the leader's delivery state as it is (and leaves it in
        that form until it leads)."""
        log_ = self.shard(shard)
        saved = self._save(shard, states, stamp)  # a copy: the request it came in is not kept alive
        log_.saved, log_.subscriptions, log_.snapshot = list(saved.subscriptions), {}, None

    # -- delivery (leader) ------------------------------------------------------

    async def pull(self, shard: str, pulls: list[tuple[str, int, int]],
                   wait_ms: int) -> dict[str, tuple[list[bytes], list[str]]]:
        """For each (subscription, max_messages, ack_deadline_ms), leases deliverable
        messages: expired leases first, then new committed entries. Waits up to
        wait_ms for a first one. Returns, per subscription with messages, the
        serialized ReceivedMessages and their ack ids."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait_ms / 1000
        while True:
            if shard not in self.shards:
                raise errors.NotFound(f"shard {shard} is not kept here")
            log_ = self._restored(shard)
            now = now_ms()
            batch = WriteBatch(raw_mode=True)
            messages: dict[int, bytes | None] = {}  # each entry read once for all subscriptions
            pulled = {}
            soonest = None
            for name, max_messages, ack_deadline_ms in pulls:
                state = log_.subscriptions.get(name)
                if state is None:
                    continue
                leased = self._lease_deliverable(log_, state, max_messages, now, now + ack_deadline_ms, messages,
                                                 batch)
                if leased[0]:
                    pulled[name] = leased
                elif (due := state.next_deadline()) is not None:
                    soonest = due if soonest is None else min(soonest, due)
            if len(batch):
                self._db.write(batch, self._unsynced)
            if pulled or len(batch):
                log_.state_version += 1
            remaining = give_up - loop.time()
            if pulled or remaining <= 0 or self._draining:
                return pulled
            if soonest is not None:
                remaining = min(remaining, max(0.0, (soonest - now_ms()) / 1000))
            try:
                await asyncio.wait_for(log_.changed.wait(), remaining)
            except TimeoutError:
                pass

    def _message(self, shard: str, seq: int, messages: dict[int, bytes | None]) -> bytes | None:
        """The serialized PubsubMessage of entry seq (None: an epoch marker, or gone)."""
        message = self.shards[shard].recent.get(seq, _NOT_KEPT)
        if message is not _NOT_KEPT:
            return message
        if seq not in messages:
            value = self._db.get(keys.message(shard, seq))
            entry = keys.unsealed(value) if value is not None else None
            if value is not None and entry is None:
                log.error("corrupted entry skipped", extra=fields(shard=shard, seq=seq))
            messages[seq] = wire.message_of(entry) if entry is not None else None
        return messages[seq]

    def _lease_deliverable(self, log_: ShardLog, state: SubscriptionState, max_messages: int, now: int,
                           deadline: int, messages: dict[int, bytes | None],
                           batch: WriteBatch) -> tuple[list[bytes], list[str]]:
        """Synchronous on purpose: nothing else runs between choosing messages and
        recording their leases, so two pulls never lease one message twice."""
        raws: list[bytes] = []
        ack_ids: list[str] = []
        shard, name, policy = log_.name, state.name, state.policy
        ack_id_of = AckId.encoder(log_.partition, name)
        while len(raws) < max_messages and (due := state.next_deadline()) is not None and due <= now:
            _, seq = heapq.heappop(state.deadlines)
            message = self._message(shard, seq, messages)
            previous = state.leases[seq]
            if message is None:  # expired by retention meanwhile
                del state.leases[seq]
                continue
            attempts = previous.attempt
            if attempts and not previous.last_error:  # neither acked nor nacked in time
                batch.put(keys.delivery(shard, seq, name, previous.delivered_ms, attempts),
                          keys.delivery_record(0, pubsub_pb2.EXPIRED))
            if policy.exhausted(attempts):
                self._dead_letter(log_, state, seq, message, previous, now)
                continue
            state.lease(seq, Lease(deadline + policy.backoff_ms(attempts + 1), attempts + 1, now))
            ack_id = ack_id_of(seq)
            raws.append(wire.received_message(ack_id, message, attempts + 1))
            ack_ids.append(ack_id)
        if len(raws) < max_messages and state.cursor < log_.commit:
            first_deadline = deadline + policy.backoff_ms(1)
            seq = state.cursor
            while seq < log_.commit and len(raws) < max_messages:
                message = self._message(shard, seq, messages)
                if message is not None:  # else an epoch marker, or corrupted
                    state.lease(seq, Lease(first_deadline, 1, now))
                    ack_id = ack_id_of(seq)
                    raws.append(wire.received_message(ack_id, message, 1))
                    ack_ids.append(ack_id)
                seq += 1
            state.cursor = seq
        return raws, ack_ids

    def _dead_letter(self, log_: ShardLog, state: SubscriptionState, seq: int, message: bytes, lease: "Lease",
                     now: int) -> None:
        """Queues the message for its dead-letter topic; the lease stays (pushed out)
        until it has moved there (see bury), so a failure to move it only delays it."""
        error = lease.last_error or "not acknowledged within the ack deadline"
        self.dead_letters.put_nowait(DeadLetter(log_.name, state.name, seq, pubsub_pb2.PubsubMessage.FromString(message),
                                                lease.attempt, state.policy.dead_letter_topic, error))
        state.lease(seq, Lease(now + DEAD_LETTER_RETRY_MS, lease.attempt, lease.delivered_ms, error))
        log_.state_version += 1

    def bury(self, dead: DeadLetter, dead_letter_message_id: str) -> None:
        """The message is in the dead-letter topic: its lease becomes a dead-letter
        record, kept for listing and redrive."""
        state = self.subscription(dead.shard, dead.subscription)
        lease = state.leases.pop(dead.seq, None)
        if lease is None:
            return  # acknowledged meanwhile, or buried already
        record = storage_pb2.DeadLetterRecord(seq=dead.seq, delivery_attempts=dead.attempts, dead_ms=now_ms(),
                                              last_error=dead.error, dead_letter_message_id=dead_letter_message_id)
        state.dead_letters[dead.seq] = record
        self._db.put(keys.delivery(dead.shard, dead.seq, dead.subscription, lease.delivered_ms, dead.attempts),
                     keys.delivery_record(record.dead_ms, pubsub_pb2.DEAD_LETTER, dead.error), self._unsynced)
        self.shards[dead.shard].state_version += 1

    def list_dead_letters(self, shard: str, subscription: str, limit: int) -> list[pubsub_pb2.DeadLetter]:
        state = self.subscription(shard, subscription)
        listed = []
        for seq in sorted(state.dead_letters)[:limit]:
            record, entry = state.dead_letters[seq], self._entry(shard, seq)
            if entry is not None:
                listed.append(pubsub_pb2.DeadLetter(
                    message=entry.message, delivery_attempts=record.delivery_attempts,
                    dead_letter_time=timestamp(record.dead_ms), last_error=record.last_error,
                    dead_letter_message_id=record.dead_letter_message_id))
        return listed

    def redrive(self, shard: str, subscription: str) -> int:
        """Makes the subscription's dead letters deliverable now, to it alone, with
        their attempts counted from zero again."""
        state = self.subscription(shard, subscription)
        log_ = self.shards[shard]
        now = now_ms()
        redriven = len(state.dead_letters)
        for seq in state.dead_letters:
            state.lease(seq, Lease(now, 0, 0))
        state.dead_letters.clear()
        if redriven:
            log_.state_version += 1
            log_.notify()
        return redriven

    def sweep_dead_letters(self, shard: str) -> None:
        """Moves due, exhausted leases to the dead-letter queue even while no
        subscriber pulls."""
        log_ = self.shards.get(shard)
        if log_ is None:
            return
        now = now_ms()
        for state in log_.subscriptions.values():
            if not state.policy.max_attempts:
                continue
            for seq, lease in list(state.leases.items()):
                if lease.deadline_ms <= now and state.policy.exhausted(lease.attempt):
                    message = self._message(shard, seq, {})
                    if message is not None:
                        self._dead_letter(log_, state, seq, message, lease, now)

    def _seqs(self, log_: ShardLog, subscription: str, ack_ids: list[str]) -> list[int]:
        return self._seqs_by_subscription(log_, subscription, ack_ids).get(subscription, [])

    @staticmethod
    def _seqs_by_subscription(log_: ShardLog, subscription: str, ack_ids: list[str]) -> dict[str, list[int]]:
        """The entries the ack ids name, by subscription; all of subscription's
        unless that is "" (any)."""
        seqs: dict[str, list[int]] = {}
        for value in ack_ids:
            ack = AckId.parse(value)
            if ack.partition != log_.partition or (subscription and ack.subscription != subscription):
                raise errors.InvalidArgument(
                    f"ack id {value!r} is not of {subscription or 'this shard'!r} partition {log_.partition}")
            seqs.setdefault(ack.subscription, []).append(ack.seq)
        return seqs

    def acknowledge(self, shard: str, subscription: str, ack_ids: list[str]) -> int:
        """Ends the leases; returns how many were in flight (others were acked already).
        Subscription "": each ack id's own (a sender merged acks of several), and
        those of a subscription no longer attached are dropped."""
        if subscription:
            self.subscription(shard, subscription)  # NOT_FOUND unless attached
        elif shard not in self.shards:
            return 0
        log_ = self._restored(shard)
        by_subscription = self._seqs_by_subscription(log_, subscription, ack_ids)
        batch = WriteBatch(raw_mode=True)
        acked_record = keys.delivery_record(now_ms(), pubsub_pb2.ACKED)
        acked = 0
        for name, seqs in by_subscription.items():
            state = log_.subscriptions.get(name)
            if state is None:
                continue
            for seq in seqs:
                lease = state.leases.pop(seq, None)
                if lease is not None:
                    batch.put(keys.delivery(shard, seq, name, lease.delivered_ms, lease.attempt), acked_record)
                    acked += 1
        if acked:
            self._db.write(batch, self._unsynced)
            log_.state_version += 1
        return acked

    def modify_ack_deadline(self, shard: str, subscription: str, ack_ids: list[str], ack_deadline_ms: int) -> None:
        """Moves the deadline of in-flight messages; 0 is a nack."""
        if ack_deadline_ms == 0:
            self.nack(shard, subscription, ack_ids)
            return
        state = self.subscription(shard, subscription)
        log_ = self.shards[shard]
        deadline = now_ms() + ack_deadline_ms
        for seq in self._seqs(log_, subscription, ack_ids):
            lease = state.leases.get(seq)
            if lease is not None:
                state.lease(seq, Lease(deadline, lease.attempt, lease.delivered_ms, lease.last_error))
                log_.state_version += 1

    def nack(self, shard: str, subscription: str, ack_ids: list[str], delay_ms: int | None = None,
             terminal: bool = False, reason: str = "") -> None:
        """Gives in-flight messages back: deliverable again after delay_ms (by default
        the retry backoff), or, when terminal, queued for the dead-letter topic now."""
        state = self.subscription(shard, subscription)
        log_ = self.shards[shard]
        if terminal and not state.policy.dead_letter_topic:
            raise errors.FailedPrecondition(f"subscription {subscription!r} has no dead-letter topic")
        batch = WriteBatch(raw_mode=True)
        now = now_ms()
        error = reason or ("nacked as terminal" if terminal else "nacked")
        for seq in self._seqs(log_, subscription, ack_ids):
            lease = state.leases.get(seq)
            if lease is None:
                continue
            batch.put(keys.delivery(shard, seq, subscription, lease.delivered_ms, lease.attempt),
                      keys.delivery_record(now, pubsub_pb2.NACKED, error))
            if terminal and (message := self._message(shard, seq, {})) is not None:
                self._dead_letter(log_, state, seq, message, Lease(0, lease.attempt, lease.delivered_ms, error), now)
                continue
            wait = state.policy.backoff_ms(lease.attempt) if delay_ms is None else delay_ms
            state.lease(seq, Lease(now + wait, lease.attempt, lease.delivered_ms, error))
        if len(batch):
            self._db.write(batch, self._unsynced)
            log_.state_version += 1
            log_.notify()

    def message_status(self, shard: str, message_id: str) -> pubsub_pb2.MessageStatus:
        """Where the message is, for every subscription it was published for. Once
        every subscription is done with it, its payload is gone but its delivery log
        stays for a while (collect_delivery_log)."""
        log_ = self._restored(shard) if shard in self.shards else None
        seq_value = self._db.get(keys.message_index(shard, message_id))
        if log_ is None or seq_value is None:
            raise errors.NotFound(f"message {message_id!r} is unknown in {shard}, or its delivery log expired")
        seq = int.from_bytes(seq_value, "big")
        topic, partition = Shard.parse(shard)
        status = pubsub_pb2.MessageStatus(topic=topic, partition=partition)
        attempts = self._delivery_log(shard, seq)
        if seq < log_.first:
            if not attempts:
                raise errors.NotFound(f"message {message_id!r} is no longer kept in {shard}, nor its delivery log")
            for name, tried in sorted(attempts.items()):
                dead = tried[-1].outcome == pubsub_pb2.DEAD_LETTER
                status.deliveries.add(subscription=name, attempts=tried, delivery_attempts=tried[-1].attempt,
                                      state=pubsub_pb2.DEAD_LETTERED if dead else pubsub_pb2.ACKNOWLEDGED)
            return status
        entry = self._entry(shard, seq)
        if entry is None or entry.message.message_id != message_id:
            raise errors.NotFound(f"message {message_id!r} is not kept in {shard}")
        status.message.CopyFrom(entry.message)
        now = now_ms()
        for name in sorted(log_.subscriptions):
            state = log_.subscriptions[name]
            if state.created_ms > entry.append_ms:
                continue  # published before the subscription existed
            delivery = status.deliveries.add(subscription=name, attempts=attempts.get(name, []))
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
        return status

    def _delivery_log(self, shard: str, seq: int) -> dict[str, list[pubsub_pb2.DeliveryAttempt]]:
        """The recorded attempts at delivering entry seq, by subscription, in attempt order."""
        attempts: dict[str, list[pubsub_pb2.DeliveryAttempt]] = {}
        for key, value in self._prefixed(keys.delivery_prefix(shard, seq)):
            subscription, attempt, delivered_ms, outcome_ms, outcome, error = keys.parse_delivery(key, value)
            record = pubsub_pb2.DeliveryAttempt(attempt=attempt, delivery_time=timestamp(delivered_ms),
                                                outcome=outcome, error=error)
            if outcome_ms:
                record.outcome_time.CopyFrom(timestamp(outcome_ms))
            attempts.setdefault(subscription, []).append(record)
        return attempts

    # -- garbage collection (leader) --------------------------------------------

    def collect(self, shard: str, retention_ms: int | None) -> int:
        """Deletes what no subscription still needs, and what is past retention;
        returns how many entries were freed."""
        if shard not in self.shards:
            return 0
        log_ = self._restored(shard)
        if retention_ms is not None:
            expired_below = min(self._first_seq_at_or_after(log_, now_ms() - retention_ms), log_.commit)
            for state in log_.subscriptions.values():
                self._expire(log_, state, expired_below)
        low = min((s.low_watermark() for s in log_.subscriptions.values()), default=log_.commit)
        return self.trim(shard, low)

    def _expire(self, log_: ShardLog, state: SubscriptionState, below: int) -> None:
        expired = [seq for seq in state.leases if seq < below]
        dead = [seq for seq in state.dead_letters if seq < below]
        if expired or dead or state.cursor < below:
            for seq in expired:
                del state.leases[seq]
            for seq in dead:
                del state.dead_letters[seq]
            state.cursor = max(state.cursor, below)
            log_.state_version += 1

    def collect_delivery_log(self, shard: str, older_than_ms: int) -> int:
        """Deletes the delivery records and index keys of messages no longer kept and
        delivered before older_than_ms; returns how many records."""
        log_ = self.shards.get(shard)
        if log_ is None:
            return 0
        batch = WriteBatch(raw_mode=True)
        end = keys.delivery_prefix(shard, log_.first)
        for key, value in self._prefixed(keys.delivery_prefix(shard)):
            if key >= end or keys.parse_delivery(key, value)[2] >= older_than_ms:
                break  # records are in seq order, which is about delivery order
            batch.delete(key)
        deleted = len(batch)
        # Ids begin with their publish time (the margin covers frontends' clock skew).
        batch.delete_range(keys.message_index_prefix(shard),
                           keys.message_index(shard, MessageId.lowest_at(older_than_ms - INDEX_SKEW_MS)))
        self._db.write(batch, self._unsynced)
        return deleted

    def collect_idempotency_keys(self) -> int:
        """Deletes idempotency keys past their window; returns how many."""
        now = now_ms()
        batch = WriteBatch(raw_mode=True)
        for key, value in self._prefixed(b"k"):
            if int.from_bytes(value[:8], "big") <= now:
                batch.delete(key)
        if count := len(batch):
            self._db.write(batch, self._unsynced)
        return count

    # -- shutdown ---------------------------------------------------------------

    def stop_waiting(self) -> None:
        """Makes waiting pulls return now, so the server's grace period is not spent on them."""
        self._draining = True
        for log_ in self.shards.values():
            log_.notify()

    async def close(self) -> None:
        """Commits what is pending, flushes and closes RocksDB. Safe to call twice."""
        if self._closed:
            return
        self.stop_waiting()
        for name, log_ in self.shards.items():
            if log_.saved is None:  # the delivery state of a shard led here: the latest
                self.snapshot(name)
        self._closed = True
        if self._committer:
            self._wake_committer.set()
            await self._committer
        self._db.flush_wal(True)
        self._db.close()
