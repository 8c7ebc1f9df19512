"""The replicated table: rows kept as a compacted log in the partitions of
internal_topics.TABLE_TOPIC (row keys and values: notifymesh/server/rows.py).

An entry holds the rows of one table write (or a part of it): its message.data is
a serialized TableOps (StoredMessage.table_ops), at most ENTRY_MAX_ROWS ops and no
key twice; older entries hold one TableOp each, and still apply. Every replica
applies its committed entries in order into materialized rows
(keys.ShardKeys.row_prefix: the writing entry's seq and epoch, expiry and value),
moving its applied position (keys.ShardKeys.applied) in the same batch, so a
restart resumes exactly where it stopped. Applying a write stubs the row it
supersedes in that row's entry, and a delete or erase leaves only its own key: a
stub is the row's op rewritten as a delete of its key, so a replica that receives
a stub instead of the value it replaced ends in the same state (the value was
dead; a later entry holds the live one, if any). An entry whose ops are all
stubs or deletes is dead. The log thus holds live values only; the leader trims
its leading dead entries (trim_leading) and followers trim what it trimmed,
though never past what they applied. A follower whose log ends below the
leader's first entry resets (log.reset drops its rows) and rebuilds them from
the entries it then receives: every live value is among them.

Expired rows read as absent; sweep drops them and stubs them in their entries. An
erase, once applied on a replica, has it flush and compact the shard's entries
and rows (compact), so no file keeps the erased value: superseded versions go with
the compaction, the write-ahead log holding them with the flush.

Reads (rows, scan) and rate acquires go to the leader, which applies at commit
and serves once the marker entry of its epoch is applied (TableService.ready).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Iterator, NamedTuple, Protocol, Sequence

from rocksdict import BottommostLevelCompaction, CompactOptions

from gen.notifymesh.internal.v1 import notify_pb2, storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms
from notifymesh.contracts import shard_name
from notifymesh.log import fields
from notifymesh.server.internal_topics import TABLE_TOPIC
from notifymesh.server.table import RateDecision, Scanned
from storage import keys
from storage.db import Database
from storage.log import Entries, ShardLog, ShardLogs

log = logging.getLogger(__name__)

# Rows applied per call (whole entries, at least one): a follower applies at each
# commit advance (a Replicate request carries at most leader.REPLICATE_MAX_ENTRIES);
# the rest, after a restart say, a chunk at a time by the storage node's table loop.
APPLY_CHUNK = 2_000
# The rows of one entry: a write of more is split into several. One entry a write
# instead of one a row saves each replica an entry's sealing, storing, replication
# and reading back per row (issue 15, docs/benchmarks.md); the bound
# keeps the rewrite that stubs one of its rows (parse, serialize, seal) to at most
# this many ops and ENTRY_MAX_BYTES of values (a single larger op goes alone).
ENTRY_MAX_ROWS, ENTRY_MAX_BYTES = 256, 1 << 20
# Rows looked at per sweep of a shard (once per gc interval), from where the last one
# stopped: a few ms of the event loop (a 125,000-row shard is gone over in about 2 min).
SWEEP_CHUNK = 1_000
TRIM_CHUNK = 5_000   # leading entries a leader looks at per trim of a shard
# An erase compacts the shard once no other erase came for this long (a recipient
# import of deletes does not compact once per row), though no later than
# ERASE_COMPACT_MAX_DELAY_S after the first of a run of erases.
ERASE_COMPACT_DELAY_S, ERASE_COMPACT_MAX_DELAY_S = 0.2, 2.0
# Request bounds.
MAX_OPS, MAX_KEYS, MAX_SCAN = 10_000, 10_000, 10_000
MAX_KEY_BYTES, MAX_VALUE_BYTES = 4096, 1 << 20
MAX_RATE_LIMIT = 10_000  # a counter row holds at most this many sends (a few hundred KB)
MAX_PERIOD_MS = 366 * 24 * 3600 * 1000


def _is_write(op: storage_pb2.TableOp) -> bool:
    """A put: anything else (delete, erase, stub) leaves no value."""
    return not (op.delete or op.erase)


def stub_entry(key: bytes, epoch: int) -> bytes:
    """The stub of an entry of one TableOp (as entries were before TableOps): a
    delete of its key, in the same epoch."""
    message = pubsub_pb2.PubsubMessage(data=storage_pb2.TableOp(key=key, delete=True).SerializeToString())
    return storage_pb2.StoredMessage(message=message, epoch=epoch).SerializeToString()


def ops_of(entry: storage_pb2.StoredMessage):
    """The ops of a table entry, in order (raises DecodeError when it holds none)."""
    data = entry.message.data
    return storage_pb2.TableOps.FromString(data).ops if entry.table_ops else [storage_pb2.TableOp.FromString(data)]


def entry_groups(ops: list[storage_pb2.TableOp]) -> Iterator[list[storage_pb2.TableOp]]:
    """The ops of a write, in order, as the ops of its entries: a new entry at
    ENTRY_MAX_ROWS ops, past ENTRY_MAX_BYTES of keys and values, and at a key the
    entry has already (a row's stub names its entry's op by key)."""
    group: list[storage_pb2.TableOp] = []
    seen: set[bytes] = set()
    size = 0
    for op in ops:
        op_size = len(op.key) + len(op.value)
        if group and (len(group) == ENTRY_MAX_ROWS or size + op_size > ENTRY_MAX_BYTES or op.key in seen):
            yield group
            group, size = [], 0
            seen = set()
        group.append(op)
        seen.add(op.key)
        size += op_size
    if group:
        yield group


def key_after(key: bytes) -> bytes | None:
    """The smallest key above every key starting with key (None: there is none)."""
    stripped = key.rstrip(b"\xff")
    return stripped[:-1] + bytes([stripped[-1] + 1]) if stripped else None


def _sought(it, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The rows whose keys start with prefix, through it sought to the first: one
    RocksDB iterator serves many prefixes (Table.scan_many)."""
    it.seek(prefix)
    while it.valid():
        key = it.key()
        if not key.startswith(prefix):
            return
        yield key, it.value()
        it.next()


_UNSEEN = object()  # Table.apply: a row not yet met in the chunk being applied


class Pending(NamedTuple):
    """A leader's write of a row not yet applied."""
    seq: int
    op: storage_pb2.TableOp


@dataclass
class SweepPass:
    """Where a shard's sweeps are in their pass over its rows, and what they know of
    its expiries: a sweep looks at no row before `floor`, when no row expires (the
    bench's rows expire after days: each node looked at 1,000 rows of each shard a
    second, about 5 % of its CPU under load, docs/benchmarks.md 2026-12-01)."""
    start: bytes  # the row key the next sweep starts at
    # The earliest expiry of the rows this pass kept, or applied since it began
    # (rows applied behind it are not looked at before the next pass).
    earliest: float = math.inf
    # No row expires before this: the earliest of the last whole pass, lowered by
    # every row applied since (None: no whole pass yet, as after a restart).
    floor: float | None = None


class Table:
    """The rows of this node's table shards (a part of the StorageEngine)."""

    def __init__(self, logs: ShardLogs, db: Database):
        self._logs, self._db, self._rdict, self._ring = logs, db, db.rdict, db.ring
        # Per shard, the rows written by this node as leader and not yet applied:
        # what a rate acquire decides on (bounded by the writes in flight).
        self.pending: dict[str, dict[bytes, Pending]] = {}
        self._sweeps: dict[str, SweepPass] = {}  # per shard (bounded by the table's partitions)
        # shard -> (first erase not yet compacted, when to compact), monotonic
        self._compact_due: dict[str, tuple[float, float]] = {}
        # Set when the storage node's table loop has work before its next deadline: a
        # commit beyond one chunk left entries unapplied, or a compaction was planned.
        # The loop sleeps otherwise (it ticked every 50 ms: 20 wake-ups a second on
        # every storage node of an idle mesh).
        self.upkeep_due = asyncio.Event()

    def recover(self) -> None:
        for key, value in self._db.prefixed(keys.APPLIED):
            self._logs.shard(keys.shard_of(key)).applied = keys.parse_applied_value(value)

    def shards(self) -> list[ShardLog]:
        return [log_ for log_ in self._logs.shards.values() if log_.table]

    # -- applying ---------------------------------------------------------------

    def entries(self, shard: str, ops: list[storage_pb2.TableOp], epoch: int, start: int,
                many_rows: bool = True) -> Entries:
        """The leader's entries for ops from start on, noted as pending: of many rows
        (entry_groups), or (not many_rows) of one TableOp each, as before TableOps."""
        entries, append_ms = Entries(), now_ms()
        pending = self.pending.setdefault(shard, {})
        for seq, group in enumerate(entry_groups(ops) if many_rows else ([op] for op in ops), start):
            data = storage_pb2.TableOps(ops=group).SerializeToString() if many_rows else group[0].SerializeToString()
            message = pubsub_pb2.PubsubMessage(data=data)
            entries.add(storage_pb2.StoredMessage(message=message, epoch=epoch, append_ms=append_ms,
                                                  table_ops=many_rows).SerializeToString(), "", "", 0, epoch)
            entries.messages.append(None)  # a table shard delivers nothing
            for op in group:
                pending[op.key] = Pending(seq, op)
        return entries

    def apply(self, shard: str, limit: int = APPLY_CHUNK) -> int:
        """Applies committed entries from the applied position on, whole, until limit
        rows are (at least one entry), in one batch with the new position; returns
        how many entries."""
        log_ = self._logs.shards.get(shard)
        if log_ is None or not log_.table:
            return 0
        start = max(log_.applied, log_.first)
        stop = min(log_.commit, start + limit)  # an entry holds at least one row
        if start >= stop:
            return 0
        layout, batch, ring = log_.layout, self._db.batch(), self._ring
        row_prefix, first = layout.row_prefix, log_.first
        rows: dict[bytes, int | None] = {}  # this chunk's rows, by row key: the seq that wrote it (None: gone)
        stubs: dict[int, set[bytes]] = {}  # entry seq -> keys of its rows superseded here
        pending = self.pending.get(shard)
        erased = False
        applied_rows = 0
        earliest = math.inf  # expiry of the rows put
        stop_key = layout.message(stop)
        # Bound once: a push send applies five rows on each of three replicas.
        get, put, row_seq_of, row_value = self._rdict.get, batch.put, keys.row_seq, keys.row_value
        for key, value in self._rdict.items(from_key=layout.message(start)):
            if key >= stop_key:
                break
            seq = keys.seq_of(key)
            if applied_rows >= limit:
                stop = seq
                break
            raw = keys.open_entry(ring, key, value)
            entry = storage_pb2.StoredMessage.FromString(raw) if raw is not None else None
            if entry is None or not entry.HasField("message"):  # an epoch marker (or corrupted: logged by reads)
                continue
            try:
                ops = ops_of(entry)
            except Exception:
                log.error("table entry not applied: no table ops", extra=fields(shard=shard, seq=seq))
                continue
            epoch = entry.epoch
            applied_rows += len(ops)
            for op in ops:
                op_key = op.key
                row_key = row_prefix + op_key
                row_seq = rows.get(row_key, _UNSEEN)
                if row_seq is _UNSEEN:
                    stored = get(row_key)
                    row_seq = row_seq_of(stored) if stored is not None else None
                if row_seq is not None:
                    if row_seq >= seq:  # applied before a restart lost the position
                        continue
                    if row_seq >= first:  # superseded: its value goes
                        stubbed = stubs.get(row_seq)
                        if stubbed is None:
                            stubbed = stubs[row_seq] = set()
                        stubbed.add(op_key)
                if op.delete or op.erase:
                    rows[row_key] = None
                    batch.delete(row_key)
                    erased = erased or op.erase
                else:
                    rows[row_key] = seq
                    expire_ms = op.expire_ms
                    if expire_ms and expire_ms < earliest:
                        earliest = expire_ms
                    put(row_key, row_value(seq, epoch, expire_ms, op.value, ring, row_key))
                if pending and (noted := pending.get(op_key)) is not None and noted.seq <= seq:
                    del pending[op_key]
        for seq, stubbed in stubs.items():
            self._stub_rows(batch, layout, seq, stubbed)
        batch.put(layout.applied, keys.applied_value(stop))
        self._db.write(batch)
        log_.applied = stop
        if earliest < math.inf and (sweeps := self._sweeps.get(shard)) is not None:
            sweeps.earliest = min(sweeps.earliest, earliest)
            if sweeps.floor is not None:
                sweeps.floor = min(sweeps.floor, earliest)
        if pending:  # writes that never came to be (a deposed leader's)
            for key in [k for k, noted in pending.items() if noted.seq < stop]:
                del pending[key]
        if erased:
            self.compact_later(shard)
        if stop < log_.commit:  # the rest a chunk at a time by the table loop
            self.upkeep_due.set()
        return stop - start

    def _stub_rows(self, batch, layout: keys.ShardKeys, seq: int, row_keys: set[bytes]) -> None:
        """Rewrites (in batch) entry seq with the ops of those rows as stubs: one
        rewrite of the entry however many of its rows went (at most ENTRY_MAX_ROWS
        ops to copy)."""
        key = layout.message(seq)
        value = self._rdict.get(key)
        raw = keys.open_entry(self._ring, key, value) if value is not None else None
        if raw is None:  # trimmed meanwhile, or corrupted (logged by reads)
            return
        entry = storage_pb2.StoredMessage.FromString(raw)
        if not entry.table_ops:
            if entry.HasField("message"):
                batch.put(key, keys.seal_entry(self._ring, key, stub_entry(next(iter(row_keys)), entry.epoch)))
            return
        table_ops = storage_pb2.TableOps.FromString(entry.message.data)
        for op in table_ops.ops:
            if op.key in row_keys and _is_write(op):
                op.value, op.expire_ms, op.delete = b"", 0, True
        entry.message.data = table_ops.SerializeToString()
        batch.put(key, keys.seal_entry(self._ring, key, entry.SerializeToString()))

    async def applied_to(self, shard: str, upto: int) -> None:
        """Applies (a chunk at a time, yielding between) until entries below upto are."""
        log_ = self._logs.shard(shard)
        while log_.applied < upto:
            if not self.apply(shard):
                raise errors.Unavailable(f"{shard}: entries up to {upto} are not committed here")
            await asyncio.sleep(0)

    # -- reading ----------------------------------------------------------------

    def read(self, shard: str, row_keys: list[bytes]) -> list[bytes | None]:
        """The live value of each row (None: absent or expired)."""
        layout, now = self._logs.shard(shard).layout, now_ms()
        full_keys = [layout.row_prefix + key for key in row_keys]
        return [self._live(key, value, now) for key, value in zip(full_keys, self._db.get_many(full_keys))]

    def current(self, shard: str, row_keys: list[bytes]) -> dict[bytes, bytes | None]:
        """Each row's value with this leader's pending write of it, if any: the rows
        not pending in one multi-get (a rate acquire of a fan-out page's recipients
        read them one get each)."""
        pending, now = self.pending.get(shard, {}), now_ms()
        values: dict[bytes, bytes | None] = {}
        stored = []
        for key in row_keys:
            noted = pending.get(key)
            if noted is None:
                stored.append(key)
                continue
            op = noted.op
            values[key] = op.value if _is_write(op) and not (op.expire_ms and op.expire_ms <= now) else None
        if stored:
            values.update(zip(stored, self.read(shard, stored)))
        return values

    def scan(self, shard: str, prefix: bytes, start_after: bytes, limit: int, reverse: bool) -> Scanned:
        """Live rows whose keys start with prefix, after start_after (before it, reversed)."""
        row_prefix = self._logs.shard(shard).layout.row_prefix
        full = row_prefix + prefix
        after = row_prefix + start_after if start_after else None
        rows = self._backward(full, after) if reverse else self._forward(full, after)
        return self._live_rows(rows, len(row_prefix), limit, now_ms())

    def scan_many(self, shard: str, prefixes: list[bytes], limit: int) -> list[Scanned]:
        """scan of each prefix from its first row, through one RocksDB iterator sought
        to each: an iterator a prefix (a channel worker's device lists, a prefix a push
        send) cost 6.9 us a prefix against 2.7 sought, in-process over 200,000 rows."""
        row_prefix = self._logs.shard(shard).layout.row_prefix
        it, skip, now = self._rdict.iter(), len(row_prefix), now_ms()
        return [self._live_rows(_sought(it, row_prefix + prefix), skip, limit, now) for prefix in prefixes]

    def _live_rows(self, rows: Iterable[tuple[bytes, bytes]], skip: int, limit: int, now: int) -> Scanned:
        """The live rows of rows, at most limit (more: a live one was left), their keys
        without their first skip bytes (the shard's row prefix)."""
        found_keys, values = [], []
        for key, value in rows:
            live = self._live(key, value, now)
            if live is None:
                continue
            if len(found_keys) == limit:
                return Scanned(found_keys, values, True)
            found_keys.append(key[skip:])
            values.append(live)
        return Scanned(found_keys, values, False)

    def _live(self, key: bytes, value: bytes | None, now: int) -> bytes | None:
        """A stored row's value, opened, unless absent or expired."""
        if value is None:
            return None
        expire_ms = keys.row_expire_ms(value)
        return None if expire_ms and expire_ms <= now else keys.open_row_value(self._ring, key, value)

    def _forward(self, prefix: bytes, after: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        start = max(prefix, after + b"\0") if after is not None else prefix
        for key, value in self._rdict.items(from_key=start):
            if not key.startswith(prefix):
                return
            yield key, value

    def _backward(self, prefix: bytes, before: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        end = key_after(prefix)
        bound = min(end, before) if before is not None and end is not None else (before or end)
        it = self._rdict.iter()
        if bound is None:
            it.seek_to_last()
        else:
            it.seek_for_prev(bound)
            if it.valid() and it.key() >= bound:
                it.prev()
        while it.valid() and it.key().startswith(prefix):
            yield it.key(), it.value()
            it.prev()

    # -- upkeep -----------------------------------------------------------------

    def sweep(self, shard: str, limit: int = SWEEP_CHUNK) -> int:
        """Drops expired rows and stubs their entries, looking at up to limit rows from
        where the last sweep stopped (from the first again at the end); returns how
        many it dropped."""
        log_ = self._logs.shards.get(shard)
        if log_ is None:
            return 0
        layout, now = log_.layout, now_ms()
        sweeps = self._sweeps.get(shard)
        if sweeps is None:
            sweeps = self._sweeps[shard] = SweepPass(layout.row_prefix)
        if sweeps.floor is not None and now < sweeps.floor:
            return 0
        batch, earliest = self._db.batch(), sweeps.earliest
        looked, dropped, last = 0, 0, None
        stubs: dict[int, set[bytes]] = {}  # entry seq -> keys of its rows dropped here
        for key, value in self._rdict.items(from_key=sweeps.start):
            if not key.startswith(layout.row_prefix) or looked == limit:
                break
            looked, last = looked + 1, key
            expire_ms = keys.row_expire_ms(value)
            if not expire_ms:
                continue
            if expire_ms > now:
                if expire_ms < earliest:
                    earliest = expire_ms
            else:
                row = keys.parse_row_value(value)
                batch.delete(key)
                if row.seq >= log_.first:
                    stubs.setdefault(row.seq, set()).add(key[len(layout.row_prefix):])
                dropped += 1
        for seq, stubbed in stubs.items():
            self._stub_rows(batch, layout, seq, stubbed)
        if looked == limit and last is not None:
            sweeps.start, sweeps.earliest = last + b"\0", earliest
        else:  # the pass is whole: from the first row again
            sweeps.start, sweeps.floor, sweeps.earliest = layout.row_prefix, earliest, math.inf
        if len(batch):
            self._db.write(batch)
        return dropped

    def trim_leading(self, shard: str, limit: int = TRIM_CHUNK) -> int:
        """The leader drops its leading dead entries (markers and stubs, deletes
        included: a replica that lacks one resets, one that has it applies it before
        trimming), looking at up to limit; returns how many."""
        log_ = self._logs.shards.get(shard)
        if log_ is None:
            return 0
        stop = min(log_.applied, log_.commit, log_.first + limit)
        first = log_.first
        stop_key = log_.layout.message(stop)
        for key, value in self._rdict.items(from_key=log_.layout.message(first)):
            if key >= stop_key or keys.seq_of(key) != first:
                break
            raw = keys.open_entry(self._ring, key, value)
            entry = storage_pb2.StoredMessage.FromString(raw) if raw is not None else None
            if entry is not None and entry.HasField("message") and any(map(_is_write, ops_of(entry))):
                break
            first += 1
        return self._logs.trim(shard, first)

    def compact_later(self, shard: str) -> None:
        now = time.monotonic()
        first, _ = self._compact_due.get(shard, (now, now))
        self._compact_due[shard] = first, min(now + ERASE_COMPACT_DELAY_S, first + ERASE_COMPACT_MAX_DELAY_S)
        self.upkeep_due.set()  # a new deadline for the loop's sleep

    def next_compaction(self) -> float | None:
        """When the soonest planned compaction is due (monotonic), if any."""
        return min((at for _, at in self._compact_due.values()), default=None)

    def due_compactions(self) -> list[str]:
        now = time.monotonic()
        due = [shard for shard, (_, at) in self._compact_due.items() if at <= now]
        for shard in due:
            del self._compact_due[shard]
        return due

    def compact(self, shard: str) -> None:
        """Flushes the memtable (the write-ahead log files holding what it held go) and
        compacts the shard's entries and rows through the bottommost level, so the
        versions an erase superseded are in no file. Blocking: run in a thread."""
        layout = keys.ShardKeys(shard)
        self._rdict.flush(True)
        options = CompactOptions()
        options.set_bottommost_level_compaction(BottommostLevelCompaction.force())
        for prefix in (layout.message_prefix, layout.row_prefix):
            self._rdict.compact_range(prefix, keys.prefix_end(prefix), options)
        log.info("table shard compacted after an erase", extra=fields(shard=shard))




class TableLeader(Protocol):
    """What the table's requests need of the leader (storage.leader.Leader)."""

    @property
    def led(self) -> dict: ...
    def leadership(self, shard: str): ...
    def many_rows(self, shard: str) -> bool: ...
    async def append_entries(self, shard: str, make: Callable[[int, int], Entries]) -> int: ...


@dataclass
class RowLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class TableService:
    """The Storage servicer's table requests: validated, on this node as leader."""

    def __init__(self, table: Table, logs: ShardLogs, leader: TableLeader,
                 partition_count: Callable[[], Awaitable[int]]):
        """partition_count(): awaitable of the table topic's partition count."""
        self._table, self._logs, self._leader, self._partition_count = table, logs, leader, partition_count
        # (shard, key) -> the lock serializing rate acquires of one row, and how many
        # acquires hold or wait for it: removed when none does (a released lock reads
        # unlocked while the waiter it woke has not run yet, so locked() cannot tell).
        self._locks: dict[tuple[str, bytes], RowLock] = {}

    async def _shard(self, partition: int) -> str:
        count = await self._partition_count()
        if not 0 <= partition < count:
            raise errors.NotFound(f"table partition {partition} does not exist (the table has {count})")
        return shard_name(TABLE_TOPIC, partition)

    def ready(self, shard: str) -> None:
        """UNAVAILABLE unless this node leads the shard and has applied the marker of
        its epoch (then every acknowledged write is in its rows)."""
        lead = self._leader.leadership(shard)
        log_ = self._logs.shard(shard)
        if log_.applied <= lead.marker:
            self._table.apply(shard)
        if log_.applied <= lead.marker:
            raise errors.Unavailable(f"{shard}: the new leader is still applying its log; retry")

    async def write(self, partition: int, ops: list[storage_pb2.TableOp]) -> None:
        if not 1 <= len(ops) <= MAX_OPS:
            raise errors.InvalidArgument(f"a table write takes 1 to {MAX_OPS} ops, not {len(ops)}")
        _check_ops(ops)
        shard = await self._shard(partition)
        await self._write(shard, ops)

    async def _write(self, shard: str, ops: list[storage_pb2.TableOp]) -> None:
        many_rows = self._leader.many_rows(shard)
        upto = await self._leader.append_entries(
            shard, lambda epoch, start: self._table.entries(shard, ops, epoch, start, many_rows))
        await self._table.applied_to(shard, upto)

    async def read(self, partition: int, row_keys: list[bytes]) -> list[bytes | None]:
        if not 1 <= len(row_keys) <= MAX_KEYS:
            raise errors.InvalidArgument(f"a table read takes 1 to {MAX_KEYS} keys, not {len(row_keys)}")
        for key in row_keys:
            _check_key(key)
        shard = await self._shard(partition)
        self.ready(shard)
        return self._table.read(shard, row_keys)

    async def scan(self, partition: int, prefix: bytes, start_after: bytes, limit: int, reverse: bool) -> Scanned:
        if not 1 <= limit <= MAX_SCAN:
            raise errors.InvalidArgument(f"limit must be 1 to {MAX_SCAN}, not {limit}")
        if len(prefix) > MAX_KEY_BYTES or len(start_after) > MAX_KEY_BYTES:
            raise errors.InvalidArgument(f"prefix and start_after are at most {MAX_KEY_BYTES} bytes")
        shard = await self._shard(partition)
        self.ready(shard)
        return self._table.scan(shard, prefix, start_after, limit, reverse)

    async def scan_many(self, partition: int, prefixes: list[bytes], limit: int) -> list[Scanned]:
        """Each prefix's first rows (at most limit), as scan would list them."""
        if not prefixes or limit < 1 or limit * len(prefixes) > MAX_SCAN:
            raise errors.InvalidArgument(f"a scan of many prefixes takes 1 or more prefixes and a limit of 1 or "
                                         f"more, at most {MAX_SCAN} rows in all, not {len(prefixes)} x {limit}")
        if any(len(prefix) > MAX_KEY_BYTES for prefix in prefixes):
            raise errors.InvalidArgument(f"a prefix is at most {MAX_KEY_BYTES} bytes")
        shard = await self._shard(partition)
        self.ready(shard)
        return self._table.scan_many(shard, prefixes, limit)

    async def rate_acquire(self, partition: int, acquires: list[storage_pb2.RateAcquire],
                           ops: Sequence[storage_pb2.TableOp] = ()) -> list[RateDecision]:
        """Sliding logs of sends (notify_pb2.RateCounter): at most limit within
        period_ms. A token already counted is allowed again without counting; force
        counts even over the limit. The acquires are decided in order (a second one
        of a row sees the first) and their rows written in one replicated write, with
        ops (as write() writes them): one round for a fan-out page's duplicate checks
        and index rows, not one per recipient. Acquires of one row take turns across
        calls, each answered once its write is committed and applied."""
        if not 1 <= len(acquires) + len(ops) <= MAX_OPS:
            raise errors.InvalidArgument(f"a rate acquire takes 1 to {MAX_OPS} acquires and ops, "
                                         f"not {len(acquires) + len(ops)}")
        _check_ops(ops)
        for acquire in acquires:
            _check_key(acquire.key)
            if not 1 <= acquire.limit <= MAX_RATE_LIMIT:
                raise errors.InvalidArgument(f"limit must be 1 to {MAX_RATE_LIMIT}, not {acquire.limit}")
            if not 1 <= acquire.period_ms <= MAX_PERIOD_MS:
                raise errors.InvalidArgument(f"period_ms must be 1 to {MAX_PERIOD_MS}, not {acquire.period_ms}")
        shard = await self._shard(partition)
        keys = sorted({acquire.key for acquire in acquires})  # locked in key order: calls sharing rows never deadlock
        locks = []
        for key in keys:
            row = self._locks.setdefault((shard, key), RowLock())
            row.users += 1
            locks.append(row)
        held = 0  # the locks acquired, in order (not an AsyncExitStack: one context a row, for a page of 1,000)
        try:
            for row in locks:
                await row.lock.acquire()
                held += 1
            self.ready(shard)
            now = now_ms()
            values = self._table.current(shard, keys)
            writes: dict[bytes, storage_pb2.TableOp] = {}
            decisions = []
            for acquire in acquires:
                key = acquire.key
                decision, counter = decide(values[key], acquire.limit, acquire.period_ms, acquire.token,
                                           acquire.force, now)
                if counter is not None:
                    values[key] = counter.SerializeToString()
                    # the row goes once the window passed its sends
                    writes[key] = storage_pb2.TableOp(key=key, value=values[key],
                                                      expire_ms=max(counter.sent_ms) + acquire.period_ms)
                decisions.append(decision)
            if writes or ops:
                await self._write(shard, [*writes.values(), *ops])
            return decisions
        finally:
            for row in locks[:held]:
                row.lock.release()
            for key, row in zip(keys, locks):
                row.users -= 1
                if not row.users:
                    del self._locks[(shard, key)]


def _check_ops(ops: Sequence[storage_pb2.TableOp]) -> None:
    """InvalidArgument for an op a table write does not take."""
    for op in ops:
        _check_key(op.key)
        if len(op.value) > MAX_VALUE_BYTES:
            raise errors.InvalidArgument(f"a row value is at most {MAX_VALUE_BYTES} bytes, not {len(op.value)}")
        if (op.delete or op.erase) and op.value:
            raise errors.InvalidArgument("a delete or erase carries no value")
        if op.expire_ms < 0:
            raise errors.InvalidArgument(f"expire_ms must not be negative, not {op.expire_ms}")


def decide(current: bytes | None, limit: int, period_ms: int, token: str, force: bool,
           now: int) -> tuple[RateDecision, notify_pb2.RateCounter | None]:
    """The rate decision, and the counter to write (None: nothing to write)."""
    if not current:  # no sends counted (a fan-out's duplicate check, mostly): this one is the first
        return RateDecision(True, 0, 1), notify_pb2.RateCounter(sent_ms=[now], tokens=[token])
    counter = notify_pb2.RateCounter.FromString(current) if current else notify_pb2.RateCounter()
    tokens = list(counter.tokens) + [""] * (len(counter.sent_ms) - len(counter.tokens))
    sends = [(ms, t) for ms, t in zip(counter.sent_ms, tokens) if ms > now - period_ms][-limit:]
    if token and any(t == token for _, t in sends):
        return RateDecision(True, 0, len(sends)), None
    if len(sends) >= limit and not force:
        return RateDecision(False, max(1, sends[len(sends) - limit][0] + period_ms - now), len(sends)), None
    sends = (sends + [(now, token)])[-limit:]
    written = notify_pb2.RateCounter(sent_ms=[ms for ms, _ in sends], tokens=[t for _, t in sends])
    return RateDecision(True, 0, len(sends)), written


def _check_key(key: bytes) -> None:
    if not key:
        raise errors.InvalidArgument("a row key must not be empty")
    if len(key) > MAX_KEY_BYTES:
        raise errors.InvalidArgument(f"a row key is at most {MAX_KEY_BYTES} bytes, not {len(key)}")
