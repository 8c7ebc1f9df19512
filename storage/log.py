"""Each shard's replicated log on this node: entries in RocksDB by seq, the
positions that matter (first kept, end written, written synced, commit), and
what the leader keeps in memory to replicate and deliver without reading back.
Entries below `commit` are on a majority of the replica set and only those are
delivered. Writes are group-committed (storage/group_commit.py)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Container

from gen.notifymesh.internal.v1 import storage_pb2
from notifymesh import errors
from notifymesh.clock import now_ms, to_ms
from notifymesh.contracts import Shard
from notifymesh.log import fields
from notifymesh.server.internal_topics import TABLE_TOPIC
from storage import keys, wire
from storage.db import Database
from storage.group_commit import GroupCommit, GroupWrite

if TYPE_CHECKING:
    from storage.dedup import RecentIds
    from storage.delivery import SubscriptionState

log = logging.getLogger(__name__)

# Per shard, what the leader keeps in memory besides RocksDB, bounded by count and
# by the bytes of the entries (messages) themselves; a node holds at most the sum
# over the shards it leads. What falls out is read back from RocksDB.
# - The tail (entries not yet on every follower): a request carries at most
#   max_grpc_message_bytes // 4 (16 MiB), so a follower that is behind is served
#   from RocksDB either way; 8 MiB covers about 0.3 s of a 1 KiB-message publish
#   peak (24-27k messages/s here) while followers keep up.
MAX_TAIL_ENTRIES, MAX_TAIL_BYTES = 50_000, 8 << 20
# - The recent messages, for delivery, trimmed to what some subscription has not
#   reached once there are RECENT_TRIM_AT of them.
RECENT_TRIM_AT, MAX_RECENT_MESSAGES, MAX_RECENT_BYTES = 1_000, 10_000, 4 << 20
# - The identities (keys.collected_value) of the newest entries, on every replica,
#   so that retention and a follower's trim record them without reading each entry
#   back and opening it (40 % of a follower's CPU at K=1 full speed went there).
#   50,000 cover the entries between first and end at 25,000 msg/s with the leader
#   collecting each second; about 90 bytes each in memory (a 39-character id, a
#   publish time, the bytes object), so about 4.5 MB per shard at most, less with
#   the byte bound on the identities themselves. What falls out is read back.
MAX_IDENTITIES, MAX_IDENTITY_BYTES = 50_000, 4 << 20
_NOT_KEPT = object()  # SeqWindow.get's answer for a seq outside the window
TAIL_EPOCH = 4  # the column of ShardLog.tail holding each entry's epoch


def _size(value) -> int:
    return len(value) if value is not None else 0


class SeqWindow:
    """Values of the consecutive seqs start, start + 1, ... kept in memory, in one
    or more parallel columns (lists of equal length). `bytes` is the total length
    of the first column's values (bytes, or None for none)."""
    __slots__ = ("start", "columns", "bytes")

    def __init__(self, columns: int = 1):
        self.start, self.columns, self.bytes = 0, [[] for _ in range(columns)], 0

    def __len__(self) -> int:
        return len(self.columns[0])

    def get(self, seq: int, default=None, column: int = 0):
        """The column's value for seq (the first's by default)."""
        index = seq - self.start
        return self.columns[column][index] if 0 <= index < len(self) else default

    def slice(self, start: int, limit: int) -> list[list]:
        """Each column's values for up to limit seqs from start on (empty lists when
        start is outside)."""
        index = start - self.start
        if not 0 <= index < len(self):
            return [[] for _ in self.columns]
        return [column[index:index + limit] for column in self.columns]

    def put(self, start: int, columns: list[list], limit: int, max_bytes: int) -> None:
        """Values from start on, replacing any from there; keeps the newest, at most
        limit of them and max_bytes of the first column's (though always the last)."""
        if not self.start <= start <= self.start + len(self):  # not adjoining: start over
            self.clear()
            self.start = start
        first = self.columns[0]
        self.bytes += sum(map(_size, columns[0])) - sum(map(_size, first[start - self.start:]))
        for column, values in zip(self.columns, columns):
            del column[start - self.start:]
            column.extend(values)
        self.drop_below(self.start + len(self) - limit)
        if self.bytes > max_bytes:
            over, count = self.bytes - max_bytes, 0
            for value in first:
                if over <= 0 or count == len(first) - 1:
                    break
                over -= _size(value)
                count += 1
            self.drop_below(self.start + count)

    def drop_below(self, seq: int) -> None:
        count = min(seq - self.start, len(self))
        if count > 0:
            self.bytes -= sum(map(_size, self.columns[0][:count]))
            for column in self.columns:
                del column[:count]
            self.start += count

    def clear(self) -> None:
        self.columns = [[] for _ in self.columns]
        self.bytes = 0


@dataclass
class ShardLog:
    """What this node holds in memory of one shard: its log's positions, and
    beside them the shard's delivery state (storage/delivery.py) and dedup state
    (storage/dedup.py), so each part finds a shard's state with one lookup."""
    name: str
    partition: int
    first: int = 0       # lowest seq still kept
    end: int = 0         # one past the last entry written here
    written: int = 0     # ... and synced: end runs ahead while a write is under way
    replacements: int = 0  # counts writes that replaced entries (a deposed leader's tail)
    commit: int = 0      # entries below are on a majority (as far as this node knows)
    stubbed_to: int = 0  # entries below no longer needed are stubs (storage/retention.py), bar the pinned
    # At least the append time of the newest message deleted from below first (0: none
    # known): a seek back to a later time went past what is gone (keys.FirstKept).
    trimmed_ms: int = 0
    last_epoch: int = 0  # epoch of the entry at end - 1 (0: none, or below first)
    # The newest leader epoch this node has taken a batch of (or led), kept on disk
    # (keys.EPOCH) so a restart does not forget it: Raft's currentTerm.
    seen_epoch: int = 0
    subscriptions: dict[str, SubscriptionState] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Counts changes of the delivery state, so the leader knows what a follower has.
    state_version: int = 0
    # (leader epoch, state_version) of the delivery state held here, as last saved.
    state_stamp: tuple[int, int] = (0, 0)
    # The delivery state as saved or received from the leader, by subscription, not
    # yet taken into subscriptions (a follower never needs it there; a new leader does).
    saved: dict[str, storage_pb2.SubscriptionState] | None = None
    # While leading: the epoch; the state_version last saved; the subscriptions
    # detached, with the state_version of their detach, for followers that have
    # an older state: the newest MAX_REMOVED, those at or below removed_floor forgotten.
    leader_epoch: int = 0
    # The leader epoch under which every subscription etcd knows was last attached
    # (Deliveries.attach_known); -1: not yet.
    known_attached: int = -1
    # What the last collect that freed nothing went by (retention.Retention.collect):
    # (state_version, commit, first, retention's bound, retain_acked's bound).
    collected_at: tuple | None = None
    saved_version: int = -1
    removed: dict[str, int] = field(default_factory=dict)
    removed_floor: int = 0
    # Ids of the last RETRY_SCAN_ENTRIES messages, read from the log at the first
    # retried append and kept up to date after it (None until then).
    recent_ids: RecentIds | None = None
    # Dedup keys of entries staged for a write not yet synced (key -> message id):
    # RocksDB does not have them yet, and a repeat may arrive meanwhile.
    staged_keys: dict[str, str] = field(default_factory=dict)
    # The leader's entries not yet on every follower, and the one before them
    # (columns: serialized entry, message id, dedup key, dedup expiry, epoch), so
    # replication sends them without reading them back from RocksDB.
    tail: SeqWindow = field(default_factory=lambda: SeqWindow(columns=5))
    # The leader's newest messages (serialized PubsubMessage; None for an epoch
    # marker), delivered without reading them back from RocksDB.
    recent: SeqWindow = field(default_factory=SeqWindow)
    # The identities of the newest entries written here (keys.collected_value; None
    # for an epoch marker), for retention (storage/retention.py keep_identities).
    identities: SeqWindow = field(default_factory=SeqWindow)
    # A partition of the replicated table (storage/table.py): entries below applied are in its rows.
    table: bool = field(init=False)
    applied: int = 0
    layout: keys.ShardKeys = field(init=False, repr=False)  # the shard's keys

    def __post_init__(self) -> None:
        self.layout = keys.ShardKeys(self.name)
        self.table = Shard.parse(self.name).topic == TABLE_TOPIC

    def touch(self, state: SubscriptionState) -> None:
        """Counts a change of the subscription's delivery state."""
        self.state_version += 1
        state.version = self.state_version

    def notify(self) -> None:
        """Wakes every pull waiting on this shard."""
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


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
    def of(cls, stored: list[storage_pb2.StoredMessage]) -> Entries:
        entries = cls()
        for e in stored:
            entries.add(e.SerializeToString(), e.message.message_id, e.dedup_key, e.dedup_until_ms, e.epoch)
            entries.messages.append(e.message.SerializeToString() if e.HasField("message") else None)
        return entries

    @classmethod
    def parsed(cls, raw: list[bytes]) -> Entries:
        entries = cls()
        for value in raw:
            e = storage_pb2.StoredMessage.FromString(value)
            entries.add(value, e.message.message_id, e.dedup_key, e.dedup_until_ms, e.epoch)
        return entries

    @classmethod
    def replicated(cls, batch: storage_pb2.ShardEntries) -> Entries:
        """A leader's batch, indexed as the leader sent it (parsed when the index does
        not match the entries)."""
        count = len(batch.entries)
        if not len(batch.message_ids) == len(batch.dedup_keys) == len(batch.dedup_until_ms) == count:
            return cls.parsed(list(batch.entries))
        return cls(list(batch.entries), list(batch.message_ids), list(batch.dedup_keys), list(batch.dedup_until_ms),
                   batch.last_entry_epoch)


ENTRY_FRAMING_BYTES = 32  # an entry's share of a request besides its bytes: tags, lengths, expiry


def entry_bytes(raw: bytes, message_id: str, dedup_key: str) -> int:
    """What one entry adds to a Replicate request (ShardEntries' parallel columns)."""
    return len(raw) + len(message_id) + len(dedup_key) + ENTRY_FRAMING_BYTES


def _fitting(sizes, max_bytes: int, at_least_one: bool) -> int:
    """How many of the sizes fit in max_bytes, in order (at least one if so told)."""
    count, total = 0, 0
    for size in sizes:
        total += size
        if (count or not at_least_one) and total > max_bytes:
            break
        count += 1
    return count


class ShardLogs:
    """Implements interfaces.LogStore."""

    def __init__(self, db: Database, group: GroupCommit):
        self._db = db
        self._ring = db.ring
        self._rdict = db.rdict  # read directly on the delivery path (no call layer per message)
        self._group = group
        self.shards: dict[str, ShardLog] = {}

    def recover(self) -> None:
        """Rebuilds the positions of every shard's log from the keys on disk."""
        for key, value in self._db.prefixed(keys.FIRST):
            log_ = self.shard(keys.shard_of(key))
            log_.first, log_.trimmed_ms = keys.parse_first_value(value)
        for key, value in self._db.prefixed(keys.EPOCH):
            self.shard(keys.shard_of(key)).seen_epoch = keys.parse_epoch_value(value)
        it = self._rdict.iter()
        it.seek(keys.MESSAGE)
        while it.valid() and it.key().startswith(keys.MESSAGE):
            first = keys.parse_message(it.key())
            log_ = self.shard(first.shard)
            log_.first = max(log_.first, first.seq)
            after = keys.prefix_end(log_.layout.message_prefix)
            it.seek_for_prev(after)
            log_.end = keys.seq_of(it.key()) + 1
            entry = self._decode(first.shard, it.key(), it.value())
            log_.last_epoch = entry.epoch if entry else 0
            it.seek(after)
        for log_ in self.shards.values():
            log_.end = log_.written = max(log_.end, log_.first)
        log.info("recovered", extra=fields(shards=len(self.shards),
                                           entries=sum(s.end - s.first for s in self.shards.values())))

    def shard(self, name: str) -> ShardLog:
        log_ = self.shards.get(name)
        if log_ is None:
            log_ = self.shards[name] = ShardLog(name, Shard.parse(name).partition)
        return log_

    # -- reading ----------------------------------------------------------------

    def entry(self, shard: str, seq: int) -> storage_pb2.StoredMessage | None:
        log_ = self.shards.get(shard)  # not shard(): reading creates no shard
        key = log_.layout.message(seq) if log_ else keys.message(shard, seq)
        return self._decode(shard, key, self._rdict.get(key))

    def _decode(self, shard: str, key: bytes, value: bytes | None) -> storage_pb2.StoredMessage | None:
        if value is None:
            return None
        entry = keys.open_entry(self._ring, key, value)
        if entry is None:
            log.error("corrupted entry skipped", extra=fields(shard=shard, seq=keys.seq_of(key)))
            return None
        return storage_pb2.StoredMessage.FromString(entry)

    def epoch_at(self, shard: str, seq: int) -> int | None:
        """The epoch of entry seq. That of the last one (a follower's check of each
        batch: rules.resend_from) and those in the leader's tail are known without
        reading the entry back and opening it."""
        log_ = self.shards.get(shard)
        if log_ is not None:
            if seq == log_.end - 1 and seq >= log_.first and log_.last_epoch:
                return log_.last_epoch
            epoch = log_.tail.get(seq, column=TAIL_EPOCH)
            if epoch is not None:
                return epoch
        entry = self.entry(shard, seq)
        return entry.epoch if entry else None

    def message(self, log_: ShardLog, seq: int, messages: dict[int, bytes | None]) -> bytes | None:
        """The serialized PubsubMessage of entry seq (None: an epoch marker, or gone)."""
        message = log_.recent.get(seq, _NOT_KEPT)
        if message is not _NOT_KEPT:
            return message
        if seq not in messages:
            key = log_.layout.message(seq)
            value = self._rdict.get(key)
            entry = keys.open_entry(self._ring, key, value) if value is not None else None
            if value is not None and entry is None:
                log.error("corrupted entry skipped", extra=fields(shard=log_.name, seq=seq))
            messages[seq] = wire.message_of(entry) if entry is not None else None
        return messages[seq]

    def identity(self, log_: ShardLog, seq: int) -> bytes | None:
        """The identity (keys.collected_value) of entry seq: kept since its write, else
        read back (None: an epoch marker, or gone)."""
        identity = log_.identities.get(seq, _NOT_KEPT)
        if identity is not _NOT_KEPT:
            return identity
        message = self.message(log_, seq, {})
        return keys.collected_value(message) if message is not None else None

    def message_ids_from(self, log_: ShardLog, start: int) -> list[str]:
        ids = []
        prefix = log_.layout.message_prefix
        for key, value in self._rdict.items(from_key=log_.layout.message(start)):
            if not key.startswith(prefix):
                break
            entry = self._decode(log_.name, key, value)
            if entry is not None and entry.HasField("message"):
                ids.append(entry.message.message_id)
        return ids

    def first_seq_at_or_after(self, log_: ShardLog, ms: int) -> int:
        """Binary search over the entries, which are in append-time order."""
        low, high = log_.first, log_.end
        it = self._rdict.iter()
        prefix = log_.layout.message_prefix
        while low < high:
            mid = (low + high) // 2
            it.seek(log_.layout.message(mid))
            if not it.valid() or not it.key().startswith(prefix):
                high = mid
                continue
            seq = keys.seq_of(it.key())
            entry = self._decode(log_.name, it.key(), it.value())
            if entry is not None and entry.append_ms >= ms:
                high = mid
            else:
                low = seq + 1
        return low

    def entries_from(self, shard: str, start: int, limit: int, max_bytes: int | None = None,
                     at_least_one: bool = True) -> Entries:
        """Up to limit entries from start on, for replication, and (max_bytes) no more
        than that many bytes of them (entry_bytes), though at least one unless told
        otherwise; stops before a gap or a corrupted entry rather than send entries
        out of place."""
        log_ = self.shard(shard)
        raw, ids, dedup_keys, dedup_until_ms, epochs = log_.tail.slice(start, min(limit, log_.end - start))
        if raw:
            if max_bytes is not None:
                count = _fitting(map(entry_bytes, raw, ids, dedup_keys), max_bytes, at_least_one)
                if not count:
                    return Entries()
                raw, ids, dedup_keys, dedup_until_ms = raw[:count], ids[:count], dedup_keys[:count], \
                    dedup_until_ms[:count]
                epochs = epochs[:count]
            return Entries(raw, ids, dedup_keys, dedup_until_ms, epochs[-1])
        raw, size = [], 0
        stop = log_.layout.message(log_.end)
        for key, value in self._rdict.items(from_key=log_.layout.message(start)):
            if key >= stop or len(raw) >= limit or keys.seq_of(key) != start + len(raw):
                break
            entry = keys.open_entry(self._ring, key, value)
            if entry is None:
                log.error("corrupted entry not replicated", extra=fields(shard=shard, seq=keys.seq_of(key)))
                break
            # Its id and dedup key (sent beside it too) are within it: at most its length again.
            size += 2 * len(entry) + ENTRY_FRAMING_BYTES
            if max_bytes is not None and (raw or not at_least_one) and size > max_bytes:
                break
            raw.append(entry)
        return Entries.parsed(raw)

    # -- writing ----------------------------------------------------------------

    def write_entries(self, shard: str, start: int, entries: Entries) -> Awaitable[None]:
        """The leader's own entries, staged at once and kept in the tail, so
        replication can send them while they are being synced here, and (with
        subscriptions) among the recent messages to deliver; await the result for
        the synced write (see _write)."""
        log_ = self.shard(shard)
        written = self._write(log_, start, entries)  # first: the tail names what a replaced part held
        epochs = [entries.last_epoch] * len(entries.raw)  # a leader writes entries of its own epoch
        log_.tail.put(start, [entries.raw, entries.ids, entries.dedup_keys, entries.dedup_until_ms, epochs],
                      MAX_TAIL_ENTRIES, MAX_TAIL_BYTES)
        recent = log_.recent
        if log_.subscriptions:
            recent.put(start, [entries.messages], MAX_RECENT_MESSAGES, MAX_RECENT_BYTES)
            if len(recent) > RECENT_TRIM_AT:
                recent.drop_below(min(state.cursor for state in log_.subscriptions.values()))
        else:
            recent.clear()
        return written

    def write_replicated(self, shard: str, start: int, entries: Entries) -> Awaitable[None]:
        """Entries replicated from the leader, stored as they came."""
        log_ = self.shard(shard)
        written = self._write(log_, start, entries)  # first: the tail names what a replaced part held
        log_.tail.clear()  # a follower now
        log_.recent.clear()
        return written

    def release_tail(self, shard: str, below: int) -> None:
        """Every follower has the entries below: replication needs them no more, bar
        the last one's epoch, which the next request to a follower names (its
        prev_epoch): kept in the tail, not read back and opened, a whole entry
        (a table write's rows, an events message's 1,000 events) for one number."""
        self.shard(shard).tail.drop_below(below - 1)

    def _write(self, log_: ShardLog, start: int, entries: Entries) -> Awaitable[None]:
        """Stages entries at start.. into the group being formed, replacing anything
        from start on (a deposed leader's unreplicated tail): end moves at once,
        written (and the returned awaitable) once the group is synced. Indexes each
        message by id, and records its dedup key (storage/dedup.py reads them)."""
        if start < log_.first:
            raise errors.FailedPrecondition(f"{log_.name}: entry {start} is below the first kept entry {log_.first}")
        batch, done = self._group.join()
        layout = log_.layout
        if start < log_.end:
            self._forget_keys(log_, batch, start)
            batch.delete_range(layout.message(start), layout.message(log_.end))
            log_.recent_ids = None  # ids of the replaced tail may be among them
            log_.replacements += 1
        recent_ids, dedup_keys, staged = log_.recent_ids, [], log_.staged_keys
        put_entry, put_idempotency, ring = layout.put_entry, layout.put_idempotency, self._ring
        for seq, (value, message_id, dedup_key, dedup_until_ms) in enumerate(
                zip(entries.raw, entries.ids, entries.dedup_keys, entries.dedup_until_ms), start):
            put_entry(batch, seq, value, message_id, ring)  # sealed: one encryption per entry
            if message_id and recent_ids is not None:
                recent_ids.add(message_id)
            if dedup_key:
                put_idempotency(batch, dedup_key, dedup_until_ms, message_id)
                staged[dedup_key] = message_id
                dedup_keys.append((dedup_key, message_id))
        if not log_.table:  # a table's entries are applied to rows, not collected
            if len(entries.messages) == len(entries.raw):  # the leader's own: their messages at hand
                collected = keys.collected_value
                identities = [collected(m) if m is not None else None for m in entries.messages]
            else:  # a follower's: sliced out of the entries
                identities = list(map(keys.entry_collected_value, entries.raw))
            log_.identities.put(start, [identities], MAX_IDENTITIES, MAX_IDENTITY_BYTES)
        # Before end moves: epoch_at knows the last entry's epoch as that of end - 1.
        last_epoch = entries.last_epoch if entries.raw else (self.epoch_at(log_.name, start - 1) or 0)
        # Set before the write completes so the next leader append lands after these.
        end = log_.end = start + len(entries.raw)
        log_.written = min(log_.written, start)
        log_.last_epoch = last_epoch
        log_.commit = min(log_.commit, log_.end)
        self._group.staged(GroupWrite(log_, end, log_.replacements, dedup_keys, start, entries.ids, entries.dedup_keys))
        return asyncio.shield(done)  # one writer giving up does not cancel the group

    def save_epoch(self, shard: str, epoch: int) -> Awaitable[None] | None:
        """Records that this node has seen epoch of shard (a no-op, None, when it knew
        as new a one): in memory at once, on disk with the group being formed, which
        the returned awaitable waits for. Groups are written in order, so entries
        staged after this are never on disk without it."""
        log_ = self.shard(shard)
        if epoch <= log_.seen_epoch:
            return None
        log_.seen_epoch = epoch
        batch, done = self._group.join()
        batch.put(log_.layout.epoch, keys.epoch_value(epoch))
        return asyncio.shield(done)

    def _forget_keys(self, log_: ShardLog, batch, start: int) -> None:
        """Deletes (in batch, before the replacing entries' puts) the index and
        idempotency keys of the entries from start to end, and their staged dedup
        keys: a repeat must not be answered with the id of an entry that is gone.
        Deleting an idempotency key unconditionally loses nothing live: the entry was
        written only because no live entry held its key. The entries are read from
        the tail where kept, else from RocksDB, and from the writes not yet synced."""
        layout, staged = log_.layout, log_.staged_keys
        _raw, ids, dedup_keys, _until, _epochs = log_.tail.slice(start, log_.end - start)
        dropped = list(zip(ids, dedup_keys)) + self._group.unsynced(log_, start)
        read_from = start + len(ids)
        stop = layout.message(log_.end)
        for key, value in self._rdict.items(from_key=layout.message(read_from)) if read_from < log_.end else ():
            if key >= stop:
                break
            entry = self._decode(log_.name, key, value)
            if entry is not None:
                dropped.append((entry.message.message_id, entry.dedup_key))
        for message_id, dedup_key in dropped:
            if message_id:
                batch.delete(layout.index(message_id))
            if dedup_key:
                batch.delete(layout.idempotency(dedup_key))
                if staged.get(dedup_key) == message_id:
                    del staged[dedup_key]

    def advance_commit(self, shard: str, commit: int) -> None:
        log_ = self.shard(shard)
        commit = min(commit, log_.end)
        if commit > log_.commit:
            log_.commit = commit
            log_.notify()

    # -- dropping -----------------------------------------------------------------

    def reset(self, shard: str, first: int) -> None:
        """A follower too far behind starts over at the leader's first entry: every
        entry goes, with its index, idempotency and delivery keys."""
        log_ = self.shard(shard)
        layout = log_.layout
        batch = self._db.batch()
        for prefix in (layout.message_prefix, layout.index_prefix, layout.idempotency_prefix, layout.deliveries()):
            batch.delete_range(prefix, keys.prefix_end(prefix))
        # What came before first is unknown here: it was appended before now.
        log_.trimmed_ms = now_ms() if first else 0
        batch.put(layout.first, keys.first_value(first, log_.trimmed_ms))
        if log_.table:  # its rows are rebuilt from the entries it now receives (all live values are there)
            batch.delete_range(layout.row_prefix, keys.prefix_end(layout.row_prefix))
            batch.put(layout.applied, keys.applied_value(first))
            log_.applied = first
        self._db.write_synced(batch)
        log_.first = log_.end = log_.written = log_.commit = first
        log_.last_epoch = 0
        log_.tail.clear()
        log_.recent.clear()
        log_.identities.clear()
        log_.recent_ids = None
        log_.replacements += 1  # a read of recent ids under way starts over; writes under way move no `written`
        log_.staged_keys.clear()
        log.info("log reset", extra=fields(shard=shard, first=first))

    def trim(self, shard: str, first: int) -> int:
        """Drops entries below first (the leader no longer keeps them); returns how many."""
        log_ = self.shard(shard)
        first = min(first, log_.commit)
        if first <= log_.first:
            return 0
        if not log_.table:  # a table is not sought
            log_.trimmed_ms = max(log_.trimmed_ms, self._appended_ms(log_, first - 1))
        batch = self._db.batch()
        batch.delete_range(log_.layout.message(log_.first), log_.layout.message(first))
        batch.put(log_.layout.first, keys.first_value(first, log_.trimmed_ms))
        self._db.write(batch)
        freed, log_.first = first - log_.first, first
        log_.identities.drop_below(first)
        return freed

    def _appended_ms(self, log_: ShardLog, seq: int) -> int:
        """When entry seq was appended: its message's publish time (the same) from
        the identities kept, else read back (as when its identity is recorded, and
        for an epoch marker: after the messages before it, so a bound on theirs)."""
        identity = log_.identities.get(seq, None)
        if identity is not None:
            return to_ms(keys.parse_collected_value(identity).publish_time)
        entry = self.entry(log_.name, seq)
        return entry.append_ms if entry is not None else 0

    def stub(self, log_: ShardLog, start: int, stop: int, keep: Container[int], batch) -> list[tuple[int, bytes]]:
        """Replaces, in batch, each message entry from start to stop but those in
        keep by its stub: the entry without its message (what an epoch marker is),
        so that its data takes no room while an older entry keeps the log from being
        trimmed. Returns the (seq, serialized message) of each one replaced."""
        layout, replaced = log_.layout, []
        stop_key = layout.message(stop)
        for key, value in self._rdict.items(from_key=layout.message(start)):
            if key >= stop_key:
                break
            seq = keys.seq_of(key)
            if seq in keep:
                continue
            entry = self._decode(log_.name, key, value)
            if entry is None or not entry.HasField("message"):
                continue
            replaced.append((seq, entry.message.SerializeToString()))
            entry.ClearField("message")
            batch.put(key, keys.seal_entry(self._ring, key, entry.SerializeToString()))
        return replaced

    def drop(self, shard: str) -> None:
        """Forgets the shard entirely (its topic was deleted, or it moved away)."""
        log_ = self.shards.pop(shard, None)
        if log_ is None:
            return
        batch = self._db.batch()
        layout = log_.layout
        for prefix in layout.entry_prefixes():
            batch.delete_range(prefix, keys.prefix_end(prefix))
        batch.delete(layout.first)
        batch.delete(layout.state)
        batch.delete_range(layout.subscription_state_prefix, keys.prefix_end(layout.subscription_state_prefix))
        batch.delete(layout.epoch)
        batch.delete(layout.applied)
        self._db.write(batch)
        log_.notify()
        log.info("shard dropped", extra=fields(shard=shard))
