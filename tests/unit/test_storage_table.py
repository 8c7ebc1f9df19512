"""The replicated table (storage/table.py) on a real RocksDB in a temporary
directory: apply, stubs, trim, rebuild, expiry, erase, rate acquire, and the
deferred nack of storage/delivery.py."""

import asyncio
import subprocess
from types import SimpleNamespace

import pytest

from gen.notifymesh.internal.v1 import notify_pb2, storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms
from notifymesh.contracts import shard_name
from notifymesh.server.internal_topics import TABLE_TOPIC
from notifymesh.server.table import delete, erase, put
from storage import keys
from storage.delivery import Pull
from storage.engine import StorageEngine
from storage.log import Entries
from storage.table import ENTRY_MAX_ROWS, ERASE_COMPACT_DELAY_S, TableService, decide, ops_of, stub_entry

SHARD = shard_name(TABLE_TOPIC, 0)


async def write(engine: StorageEngine, ops, epoch: int = 1) -> int:
    """What the leader does: its entries written, committed (one replica) and applied."""
    log_ = engine.shard(SHARD)
    start = log_.end
    await engine.write_entries(SHARD, start, engine.table.entries(SHARD, ops, epoch, start))
    engine.advance_commit(SHARD, log_.end)
    return log_.end


def read(engine: StorageEngine, *row_keys: bytes) -> list[bytes | None]:
    return engine.table.read(SHARD, list(row_keys))


def ops_in_log(engine: StorageEngine) -> list[list[storage_pb2.TableOp] | None]:
    """The log from its first entry: each entry's ops (None: a marker)."""
    log_ = engine.shard(SHARD)
    out = []
    for seq in range(log_.first, log_.end):
        entry = engine.log.entry(SHARD, seq)
        out.append(list(ops_of(entry)) if entry.HasField("message") else None)
    return out


async def replicate(leader: StorageEngine, follower: StorageEngine, start: int) -> None:
    """Sends the follower the leader's entries from start on, as a leader does for a
    follower behind: read back from RocksDB (stubs included), not from its tail."""
    leader.release_tail(SHARD, leader.shard(SHARD).end)
    entries = leader.entries_from(SHARD, start, 10_000)
    await follower.write_replicated(SHARD, start, entries)
    follower.advance_commit(SHARD, leader.shard(SHARD).commit)
    follower.trim(SHARD, leader.shard(SHARD).first)


async def test_writes_apply_into_rows_and_superseded_entries_become_stubs(engine):
    await write(engine, [put(b"a", b"1"), put(b"b", b"2")])
    await write(engine, [put(b"a", b"3"), delete(b"b")])
    assert read(engine, b"a", b"b", b"c") == [b"3", None, None]
    # One entry a write; only the live value keeps its bytes: the rest are deletes of their keys.
    assert ops_in_log(engine) == [[delete(b"a"), delete(b"b")], [put(b"a", b"3"), delete(b"b")]]
    log_ = engine.shard(SHARD)
    assert log_.applied == log_.end == 2
    assert engine.table.trim_leading(SHARD) == 1  # the leading dead entries, up to the live one
    assert (log_.first, read(engine, b"a")) == (1, [b"3"])
    assert engine.table.trim_leading(SHARD) == 0


async def test_the_applied_position_and_rows_survive_a_restart(engine, tmp_path):
    await write(engine, [put(b"a", b"1")])
    await write(engine, [put(b"a", b"2"), put(b"b", b"x")])
    await engine.close()
    reopened = StorageEngine(tmp_path / "node", "storage-1")
    reopened.start()
    try:
        log_ = reopened.shard(SHARD)
        assert log_.applied == 2 and log_.commit == 0
        reopened.advance_commit(SHARD, 2)  # nothing to apply again
        assert read(reopened, b"a", b"b") == [b"2", b"x"]
        # A position lost (unsynced) is applied again to the same rows.
        log_.applied = 0
        assert reopened.table.apply(SHARD) == 2
        assert read(reopened, b"a", b"b") == [b"2", b"x"]
    finally:
        await reopened.close()


async def test_a_follower_converges_whether_it_gets_values_or_their_stubs(engine, tmp_path):
    follower = StorageEngine(tmp_path / "follower", "storage-2")
    follower.start()
    try:
        await write(engine, [put(b"a", b"1"), put(b"b", b"1"), put(b"c", b"1")])
        await replicate(engine, follower, 0)
        assert read(follower, b"a", b"b", b"c") == [b"1", b"1", b"1"]
        end = engine.shard(SHARD).end
        await write(engine, [put(b"a", b"2")])
        await write(engine, [put(b"a", b"3"), delete(b"b"), put(b"c", b"2", expire_ms=now_ms() + 100)])
        await asyncio.sleep(0.15)
        assert engine.table.sweep(SHARD) == 1  # c expired: dropped and stubbed on the leader
        await replicate(engine, follower, end)  # a=2 arrives as a stub; c=2 too: c=1 must go
        for key in (b"a", b"b", b"c"):
            assert read(follower, key) == read(engine, key)
        assert read(follower, b"a", b"b", b"c") == [b"3", None, None]
        # The leader trims its dead head; the follower trims only what it applied.
        assert engine.table.trim_leading(SHARD) > 0
        follower.shard(SHARD).applied = 1
        follower.trim(SHARD, engine.shard(SHARD).first)
        assert follower.shard(SHARD).first == 1
    finally:
        await follower.close()


async def test_a_follower_reset_rebuilds_its_rows_from_the_entries_it_then_receives(engine, tmp_path):
    follower = StorageEngine(tmp_path / "follower", "storage-2")
    follower.start()
    try:
        await write(engine, [put(b"old", b"1"), put(b"gone", b"1")])
        await replicate(engine, follower, 0)
        assert read(follower, b"old", b"gone") == [b"1", b"1"]
        # While the follower is away: the old rows are deleted, others written, the head trimmed.
        await write(engine, [delete(b"gone")])
        await write(engine, [put(b"old", b"2")] + [put(b"k%d" % i, b"v") for i in range(5)])
        await write(engine, [delete(b"k0")])
        engine.table.trim_leading(SHARD)
        first = engine.shard(SHARD).first
        assert first > follower.shard(SHARD).end  # the follower is too far behind: it resets
        follower.reset(SHARD, first)
        assert read(follower, b"old") == [None]  # rows dropped with the log
        await replicate(engine, follower, first)
        names = [b"old", b"gone"] + [b"k%d" % i for i in range(5)]
        assert read(follower, *names) == read(engine, *names) == [b"2", None, None, b"v", b"v", b"v", b"v"]
    finally:
        await follower.close()


async def test_expired_rows_read_as_absent_and_a_sweep_drops_them(engine):
    await write(engine, [put(b"soon", b"x", expire_ms=now_ms() + 100_000), put(b"past", b"y", expire_ms=1)])
    assert read(engine, b"soon", b"past") == [b"x", None]
    assert engine.table.scan(SHARD, b"", b"", 10, False).keys == [b"soon"]
    assert engine.table.sweep(SHARD) == 1
    assert ops_in_log(engine) == [[put(b"soon", b"x", expire_ms=ops_in_log(engine)[0][0].expire_ms), delete(b"past")]]
    assert engine.db.get(engine.shard(SHARD).layout.row_prefix + b"past") is None


class CountedItems:
    """The engine's Rdict, counting the iterations over a shard's rows (a sweep's)."""

    def __init__(self, rdict, row_prefix: bytes):
        self._rdict, self._row_prefix, self.iterations = rdict, row_prefix, 0

    def items(self, from_key: bytes = b"", **kwargs):
        self.iterations += from_key.startswith(self._row_prefix)
        return self._rdict.items(from_key=from_key, **kwargs)

    def __getattr__(self, name):
        return getattr(self._rdict, name)


async def test_a_sweep_looks_at_no_row_until_one_may_have_expired_and_a_row_applied_since_counts(engine):
    later = now_ms() + 3_600_000
    await write(engine, [put(b"kept", b"x", expire_ms=later), put(b"forever", b"y")])
    assert engine.table.sweep(SHARD) == 0  # the whole pass: nothing expires within the hour
    counted = engine.table._rdict = CountedItems(engine.table._rdict, engine.shard(SHARD).layout.row_prefix)
    assert engine.table.sweep(SHARD) == 0
    assert counted.iterations == 0  # nothing looked at
    await write(engine, [put(b"past", b"z", expire_ms=now_ms() - 1)])  # applied expired: the next sweep looks
    assert engine.table.sweep(SHARD) == 1
    assert counted.iterations == 1 and read(engine, b"kept", b"forever", b"past") == [b"x", b"y", None]


async def test_a_write_of_many_rows_is_one_entry_split_at_the_bound_and_at_a_repeated_key(engine):
    names = [b"r%03d" % i for i in range(ENTRY_MAX_ROWS + 44)]
    assert await write(engine, [put(name, b"v") for name in names]) == 2
    assert [len(ops) for ops in ops_in_log(engine)] == [ENTRY_MAX_ROWS, 44]
    assert read(engine, *names) == [b"v"] * len(names)
    # A key twice in one write: the second starts an entry, and supersedes the first.
    assert await write(engine, [put(b"x", b"1"), put(b"y", b"1"), put(b"x", b"2")]) == 4
    assert ops_in_log(engine)[2:] == [[delete(b"x"), put(b"y", b"1")], [put(b"x", b"2")]]
    assert read(engine, b"x", b"y") == [b"2", b"1"]


async def test_applying_goes_by_whole_entries_until_the_rows_of_a_chunk(engine):
    for i in range(3):
        await write(engine, [put(b"a%d" % i, b"v"), put(b"b%d" % i, b"v")])
    engine.shard(SHARD).applied = 0
    assert engine.table.apply(SHARD, limit=3) == 2  # 2 rows, then 2 more: past 3, whole entries
    assert engine.shard(SHARD).applied == 2
    assert engine.table.apply(SHARD, limit=3) == 1


async def test_a_backlog_left_by_applying_wakes_the_table_loop_and_none_left_does_not(engine):
    for i in range(3):
        await write(engine, [put(b"a%d" % i, b"v"), put(b"b%d" % i, b"v")])
    engine.shard(SHARD).applied = 0
    engine.table.upkeep_due.clear()
    engine.table.apply(SHARD, limit=3)  # two of three entries: the loop has the rest
    assert engine.table.upkeep_due.is_set()
    engine.table.upkeep_due.clear()
    engine.table.apply(SHARD, limit=3)  # the last one
    await write(engine, [put(b"c", b"v")])  # applied whole at commit
    assert not engine.table.upkeep_due.is_set()


def test_a_planned_compaction_wakes_the_table_loop_and_is_its_next_deadline(engine, monkeypatch):
    monkeypatch.setattr("storage.table.time.monotonic", lambda: 100.0)
    table = engine.table
    assert table.next_compaction() is None
    table.upkeep_due.clear()
    table.compact_later(SHARD)
    assert table.upkeep_due.is_set()
    assert table.next_compaction() == pytest.approx(100.0 + ERASE_COMPACT_DELAY_S)


async def test_a_multi_row_entry_reaches_a_follower_and_its_rows_are_stubbed_alike(engine, tmp_path):
    follower = StorageEngine(tmp_path / "follower", "storage-2")
    follower.start()
    try:
        await write(engine, [put(b"a", b"1"), put(b"b", b"1"), put(b"c", b"1"), put(b"d", b"1")])
        # From the leader's tail, as sent while the follower keeps up: one entry of four rows.
        entries = engine.entries_from(SHARD, 0, 10_000)
        assert len(entries.raw) == 1
        await follower.write_replicated(SHARD, 0, entries)
        follower.advance_commit(SHARD, 1)
        assert read(follower, b"a", b"b", b"c", b"d") == [b"1"] * 4
        # Rows of it superseded, erased, deleted and expired: each replica stubs them in that one entry.
        await write(engine, [put(b"a", b"2"), erase(b"b"), delete(b"c"), put(b"d", b"2", expire_ms=now_ms() + 50)])
        await asyncio.sleep(0.1)
        assert engine.table.sweep(SHARD) == 1
        assert ops_in_log(engine) == [[delete(b"a"), delete(b"b"), delete(b"c"), delete(b"d")],
                                      [put(b"a", b"2"), erase(b"b"), delete(b"c"), delete(b"d")]]
        await replicate(engine, follower, 1)  # read back: d's value arrives as a stub
        assert follower.shard(SHARD).applied == 2
        assert read(follower, b"a", b"b", b"c", b"d") == read(engine, b"a", b"b", b"c", b"d") == [b"2", None, None,
                                                                                                 None]
        assert ops_in_log(follower)[0] == [delete(b"a"), delete(b"b"), delete(b"c"), delete(b"d")]
        assert engine.table.trim_leading(SHARD) == 1  # the whole entry is dead
        await asyncio.sleep(0.25)
        assert follower.table.due_compactions() == [SHARD]  # the erase compacts the follower too
    finally:
        await follower.close()


async def test_a_new_leader_applies_and_stubs_the_multi_row_entries_of_the_old_one(engine, tmp_path):
    follower = StorageEngine(tmp_path / "follower", "storage-2")
    follower.start()
    try:
        await write(engine, [put(b"a", b"1"), put(b"b", b"1"), put(b"c", b"1")], epoch=1)
        entries = engine.entries_from(SHARD, 0, 10_000)
        await follower.write_replicated(SHARD, 0, entries)  # committed, not yet applied there: the leader dies
        follower.shard(SHARD).commit = 1
        assert follower.shard(SHARD).applied == 0
        # The follower leads in epoch 2: it applies the old leader's entry, then its own writes stub rows of it.
        await write(follower, [put(b"b", b"2"), erase(b"c")], epoch=2)
        assert follower.shard(SHARD).applied == 2
        assert read(follower, b"a", b"b", b"c") == [b"1", b"2", None]
        assert ops_in_log(follower) == [[put(b"a", b"1"), delete(b"b"), delete(b"c")], [put(b"b", b"2"), erase(b"c")]]
        assert follower.log.entry(SHARD, 0).epoch == 1  # a stubbed entry keeps its epoch
        assert follower.table.trim_leading(SHARD) == 0  # a is live in it
        # The old leader comes back as a follower and converges.
        await replicate(follower, engine, 1)
        assert read(engine, b"a", b"b", b"c") == [b"1", b"2", None]
        assert ops_in_log(engine) == ops_in_log(follower)
    finally:
        await follower.close()


async def test_entries_of_one_op_as_written_before_still_apply_and_become_stubs(engine):
    log_ = engine.shard(SHARD)
    for seq, op in enumerate([put(b"a", b"1"), put(b"b", b"1")]):
        stored = storage_pb2.StoredMessage(message=pubsub_pb2.PubsubMessage(data=op.SerializeToString()), epoch=1)
        await engine.write_entries(SHARD, seq, Entries.parsed([stored.SerializeToString()]))
    engine.advance_commit(SHARD, log_.end)
    assert read(engine, b"a", b"b") == [b"1", b"1"]
    await write(engine, [put(b"a", b"2"), put(b"c", b"1", expire_ms=1)])
    assert engine.log.entry(SHARD, 0).SerializeToString() == stub_entry(b"a", 1)
    assert ops_in_log(engine) == [[delete(b"a")], [put(b"b", b"1")], [put(b"a", b"2"), put(b"c", b"1", expire_ms=1)]]
    assert engine.table.trim_leading(SHARD) == 1


async def test_an_entry_whose_rows_all_expired_is_trimmed(engine):
    await write(engine, [put(b"a", b"1", expire_ms=1), put(b"b", b"1", expire_ms=1)])
    await write(engine, [put(b"c", b"1")])
    assert engine.table.sweep(SHARD) == 2
    assert ops_in_log(engine)[0] == [delete(b"a"), delete(b"b")]
    assert engine.table.trim_leading(SHARD) == 1


async def test_scan_by_prefix_in_both_directions_with_pages(engine):
    await write(engine, [put(b"M\0aud\0" + name, b"") for name in (b"a", b"b", b"c", b"d")]
                + [put(b"M\0aue\0x", b""), put(b"L", b"")])
    scan = engine.table.scan
    page = scan(SHARD, b"M\0aud\0", b"", 3, False)
    assert page.keys == [b"M\0aud\0a", b"M\0aud\0b", b"M\0aud\0c"] and page.more
    page = scan(SHARD, b"M\0aud\0", page.keys[-1], 3, False)
    assert page.keys == [b"M\0aud\0d"] and not page.more
    page = scan(SHARD, b"M\0aud\0", b"", 2, True)
    assert page.keys == [b"M\0aud\0d", b"M\0aud\0c"] and page.more
    assert scan(SHARD, b"M\0aud\0", b"M\0aud\0c", 10, True).keys == [b"M\0aud\0b", b"M\0aud\0a"]
    assert scan(SHARD, b"", b"", 10, True).keys[0] == b"M\0aue\0x"


async def test_a_scan_of_many_prefixes_lists_what_a_scan_of_each_would(engine):
    """One iterator sought to each prefix, in any order: expired rows skipped, each
    prefix's rows up to the limit, a prefix without rows empty, one beyond every row too."""
    await write(engine, [put(b"V\0bob\0" + d, b"dev-" + d) for d in (b"1", b"2", b"3")]
                + [put(b"V\0bob", b""), put(b"V\0bo\0x", b"other"), put(b"V\0amy\0gone", b"x", expire_ms=1),
                   put(b"V\0amy\0kept", b"y", expire_ms=now_ms() + 100_000)])
    other = engine.shard(shard_name(TABLE_TOPIC, 1)).layout.row_prefix  # another shard's rows stay apart
    engine.db.rdict[other + b"V\0carl\0z"] = keys.ROW_HEAD.pack(1, 1, 0) + b"z"
    prefixes = [b"V\0bob\0", b"V\0amy\0", b"V\0bo\0", b"V\0carl\0", b"V\0zed\0", b"V\0bob\0"]
    for limit in (1, 2, 3, 10):
        scanned = engine.table.scan_many(SHARD, prefixes, limit)
        assert scanned == [engine.table.scan(SHARD, prefix, b"", limit, False) for prefix in prefixes]
    bobs = [b"V\0bob\0" + b"1", b"V\0bob\0" + b"2"]
    assert engine.table.scan_many(SHARD, prefixes, 2) == [
        (bobs, [b"dev-1", b"dev-2"], True), ([b"V\0amy\0kept"], [b"y"], False),
        ([b"V\0bo\0x"], [b"other"], False), ([], [], False), ([], [], False), (bobs, [b"dev-1", b"dev-2"], True)]


async def test_erase_leaves_no_file_with_the_erased_value(engine, tmp_path):
    secret = b"erase-me-7f3a@example.com"
    await write(engine, [put(b"C\0alice", secret)] + [put(b"filler%d" % i, b"x" * 100) for i in range(100)])
    engine.db.rdict.flush(True)  # the value is in a table file, not only in the write-ahead log

    def files_with_secret() -> str:
        return subprocess.run(["grep", "-rl", secret, str(tmp_path / "node")], capture_output=True,
                              text=True).stdout

    assert files_with_secret()
    await write(engine, [erase(b"C\0alice")])
    assert read(engine, b"C\0alice") == [None]
    assert engine.table.due_compactions() == []  # debounced
    await asyncio.sleep(0.25)
    assert engine.table.due_compactions() == [SHARD]
    engine.table.compact(SHARD)
    assert files_with_secret() == ""


def test_a_run_of_erases_compacts_once_and_not_later_than_the_bound(engine, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("storage.table.time.monotonic", lambda: clock[0])
    table = engine.table
    for _ in range(30):  # an erase every 0.1 s: each pushes the compaction back, up to the bound
        table.compact_later(SHARD)
        clock[0] += 0.1
        if table.due_compactions():
            break
    assert clock[0] == pytest.approx(102.1)
    assert table.due_compactions() == []


def test_rate_decisions_count_within_the_window_once_per_token():
    now = 1_000_000
    current = None
    for i in range(3):
        decision, counter = decide(current, 3, 60_000, f"t{i}", False, now + i)
        assert decision.allowed and decision.count == i + 1
        current = counter.SerializeToString()
    decision, counter = decide(current, 3, 60_000, "t3", False, now + 10)
    assert (decision.allowed, decision.retry_after_ms, decision.count, counter) == (False, 59_990, 3, None)
    decision, counter = decide(current, 3, 60_000, "t1", False, now + 10)  # counted already: allowed, not again
    assert (decision.allowed, decision.count, counter) == (True, 3, None)
    decision, counter = decide(current, 3, 60_000, "t4", True, now + 10)  # forced: counted, the oldest goes
    assert decision.allowed and list(counter.tokens) == ["t1", "t2", "t4"]
    decision, counter = decide(current, 3, 60_000, "t5", False, now + 60_000)  # t0 left the window
    assert decision.allowed and list(counter.tokens) == ["t1", "t2", "t5"]
    assert decide(current, 2, 60_000, "t6", False, now + 10)[0].count == 2  # a lowered limit: at most 2 kept


class FakeLeader:
    """storage.leader.Leader's part in the table: one replica, this engine."""

    def __init__(self, engine: StorageEngine):
        self.engine, self.led = engine, {}
        self.replicas_read_table_ops = True

    def leadership(self, shard: str):
        if shard not in self.led:
            raise errors.Unavailable(f"this node does not lead {shard}")
        return self.led[shard]

    def many_rows(self, shard: str) -> bool:
        return self.replicas_read_table_ops

    async def append_entries(self, shard: str, make) -> int:
        lead = self.leadership(shard)
        log_ = self.engine.shard(shard)
        start = log_.end
        await self.engine.write_entries(shard, start, make(lead.epoch, start))
        self.engine.advance_commit(shard, log_.end)
        return log_.end


@pytest.fixture
def service(engine):
    leader = FakeLeader(engine)

    async def partitions() -> int:
        return 2

    return SimpleNamespace(tables=TableService(engine.table, engine.log, leader, partitions), leader=leader)


async def acquire(tables: TableService, partition: int, key: bytes, limit: int, period_ms: int, token: str,
                  force: bool):
    """One acquire, alone in its call."""
    (decision,) = await tables.rate_acquire(partition, [storage_pb2.RateAcquire(
        key=key, limit=limit, period_ms=period_ms, token=token, force=force)])
    return decision


async def test_requests_are_served_once_the_leaders_marker_is_applied(engine, service):
    with pytest.raises(errors.Unavailable):
        await service.tables.read(0, [b"a"])
    await engine.write_entries(SHARD, 0, Entries.of([storage_pb2.StoredMessage(epoch=2)]))  # the marker
    service.leader.led[SHARD] = SimpleNamespace(epoch=2, marker=0)
    with pytest.raises(errors.Unavailable, match="still applying"):
        await service.tables.read(0, [b"a"])
    engine.advance_commit(SHARD, 1)
    await service.tables.write(0, [put(b"a", b"1")])
    assert await service.tables.read(0, [b"a", b"b"]) == [b"1", None]
    decisions = [await acquire(service.tables, 0, b"Q\0alice\0m", 2, 60_000, f"n{i}", False) for i in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    counter = notify_pb2.RateCounter.FromString((await service.tables.read(0, [b"Q\0alice\0m"]))[0])
    assert list(counter.tokens) == ["n0", "n1"]


async def test_concurrent_acquires_of_one_row_take_turns(engine, service):
    await engine.write_entries(SHARD, 0, Entries.of([storage_pb2.StoredMessage(epoch=1)]))
    engine.advance_commit(SHARD, 1)
    service.leader.led[SHARD] = SimpleNamespace(epoch=1, marker=0)
    decisions = await asyncio.gather(*(acquire(service.tables, 0, b"Q\0bob\0m", 3, 60_000, f"n{i}", False)
                                       for i in range(10)))
    assert sum(d.allowed for d in decisions) == 3
    assert not service.tables._locks  # every lock let go


async def led_with_writes_listed(engine, service) -> list[list[bytes]]:
    """SHARD led here; each replicated write's row keys, listed as it is made."""
    await engine.write_entries(SHARD, 0, Entries.of([storage_pb2.StoredMessage(epoch=1)]))
    engine.advance_commit(SHARD, 1)
    service.leader.led[SHARD] = SimpleNamespace(epoch=1, marker=0)
    writes = []
    write = service.tables._write

    async def listed_write(shard, ops):
        writes.append([op.key for op in ops])
        await write(shard, ops)
    service.tables._write = listed_write
    return writes


async def test_acquires_of_one_call_are_decided_in_order_and_written_once(engine, service):
    writes = await led_with_writes_listed(engine, service)
    dave, erin = b"Q\0dave\0m", b"Q\0erin\0m"
    acquires = [storage_pb2.RateAcquire(key=key, limit=2, period_ms=60_000, token=token)
                for key, token in [(dave, "n1"), (erin, "n1"), (dave, "n2"), (dave, "n3"), (dave, "n1")]]
    decisions = await service.tables.rate_acquire(0, acquires)
    # dave's third is over his limit of 2; his first token again is counted already
    assert [d.allowed for d in decisions] == [True, True, True, False, True]
    assert [d.count for d in decisions] == [1, 1, 2, 2, 2]
    assert writes == [[dave, erin]]  # one replicated write, one row per counter changed
    rows = await service.tables.read(0, [dave, erin])
    assert [list(notify_pb2.RateCounter.FromString(r).tokens) for r in rows] == [["n1", "n2"], ["n1"]]
    assert not service.tables._locks


async def test_rows_written_with_acquires_go_in_their_write_and_alone_too(engine, service):
    writes = await led_with_writes_listed(engine, service)
    dave = b"Q\0dave\0m"
    decisions = await service.tables.rate_acquire(
        0, [storage_pb2.RateAcquire(key=dave, limit=1, period_ms=60_000, token="n1")], [put(b"R\0dave", b"")])
    assert [d.allowed for d in decisions] == [True]
    assert await service.tables.rate_acquire(0, [], [put(b"R\0erin", b"e")]) == []  # no acquire: the rows alone
    assert writes == [[dave, b"R\0dave"], [b"R\0erin"]]
    assert await service.tables.read(0, [b"R\0dave", b"R\0erin"]) == [b"", b"e"]
    with pytest.raises(errors.InvalidArgument, match="1 to 10000 acquires and ops"):
        await service.tables.rate_acquire(0, [], [])
    with pytest.raises(errors.InvalidArgument, match="carries no value"):
        await service.tables.rate_acquire(0, [], [storage_pb2.TableOp(key=b"R\0x", value=b"v", delete=True)])
    assert len(writes) == 2 and not service.tables._locks


async def test_a_write_takes_one_entry_a_row_while_a_replica_reads_no_table_ops(engine, service):
    service.leader.led[SHARD] = SimpleNamespace(epoch=1, marker=-1)
    service.leader.replicas_read_table_ops = False  # a node of the older version, during a rolling update
    await service.tables.write(0, [put(b"a", b"1"), put(b"b", b"1")])
    log_ = engine.shard(SHARD)
    entries = [engine.log.entry(SHARD, seq) for seq in range(log_.end)]
    assert [e.table_ops for e in entries] == [False, False]  # what that node parses: one TableOp each
    assert [storage_pb2.TableOp.FromString(e.message.data) for e in entries] == [put(b"a", b"1"), put(b"b", b"1")]
    service.leader.replicas_read_table_ops = True
    await service.tables.write(0, [put(b"a", b"2"), put(b"c", b"1")])
    assert ops_in_log(engine) == [[delete(b"a")], [put(b"b", b"1")], [put(b"a", b"2"), put(b"c", b"1")]]
    assert read(engine, b"a", b"b", b"c") == [b"2", b"1", b"1"]


def test_a_leader_writes_table_ops_only_while_every_node_its_entries_go_to_reads_them():
    from storage.leader import Leader, Leadership, Progress

    class Peers:
        reading = {"storage-1", "storage-2", "storage-3"}

        def reads_table_ops(self, node: str) -> bool:
            return node in self.reading

    peers = Peers()
    leader = Leader(None, peers, None, "storage-1", lambda: SimpleNamespace(valid_until=float("inf")), {})
    lead = leader.led[SHARD] = Leadership(SHARD, 1, ["storage-1", "storage-2", "storage-3"], 0)
    lead.progress = {"storage-2": Progress(next=0), "storage-3": Progress(next=0)}
    assert leader.many_rows(SHARD)
    peers.reading = {"storage-1", "storage-2"}  # storage-3 is down, or of the older version
    assert not leader.many_rows(SHARD)
    peers.reading = {"storage-1", "storage-2", "storage-3"}
    lead.progress["storage-4"] = Progress(next=0)  # a learner of the older version
    lead.learners.add("storage-4")
    assert not leader.many_rows(SHARD)


@pytest.mark.parametrize("call, error", [
    (lambda t: t.write(0, []), errors.InvalidArgument),
    (lambda t: t.write(0, [put(b"", b"x")]), errors.InvalidArgument),
    (lambda t: t.write(0, [storage_pb2.TableOp(key=b"k", value=b"v", delete=True)]), errors.InvalidArgument),
    (lambda t: t.write(0, [put(b"k", b"v", expire_ms=-1)]), errors.InvalidArgument),
    (lambda t: t.write(2, [put(b"k", b"v")]), errors.NotFound),
    (lambda t: t.read(0, []), errors.InvalidArgument),
    (lambda t: t.read(0, [b""]), errors.InvalidArgument),
    (lambda t: t.read(-1, [b"k"]), errors.NotFound),
    (lambda t: t.scan(0, b"", b"", 0, False), errors.InvalidArgument),
    (lambda t: t.scan(0, b"", b"", 10_001, False), errors.InvalidArgument),
    (lambda t: acquire(t, 0, b"", 3, 1000, "t", False), errors.InvalidArgument),
    (lambda t: acquire(t, 0, b"q", 0, 1000, "t", False), errors.InvalidArgument),
    (lambda t: acquire(t, 0, b"q", 3, 0, "t", False), errors.InvalidArgument),
    (lambda t: acquire(t, 5, b"q", 3, 1000, "t", False), errors.NotFound),
    (lambda t: t.rate_acquire(0, []), errors.InvalidArgument),
])
async def test_malformed_requests_are_refused(service, call, error):
    with pytest.raises(error):
        await call(service.tables)


async def test_a_deferred_nack_redelivers_without_counting_an_attempt(engine):
    shard = "orders/0"
    engine.attach(shard, pubsub_pb2.Subscription(name="audit", topic="orders"))
    ids, entries = engine.prepare(shard, [pubsub_pb2.PubsubMessage(data=b"x")], 1, 60_000, False)
    await engine.write_entries(shard, 0, entries)
    engine.advance_commit(shard, 1)

    async def pull_one() -> pubsub_pb2.ReceivedMessage:
        got = (await engine.pull(shard, [Pull("audit", 1, 60_000)], 2000))["audit"]
        [received] = [pubsub_pb2.ReceivedMessage.FromString(raw) for raw in got.received]
        return received

    first = await pull_one()
    engine.nack(shard, "audit", [first.ack_id], delay_ms=100, reason="rate limited", deferred=True)
    second = await pull_one()
    assert (first.delivery_attempt, second.delivery_attempt) == (1, 1)
    engine.nack(shard, "audit", [second.ack_id], delay_ms=0)
    third = await pull_one()
    assert third.delivery_attempt == 2
    outcomes = [(a.attempt, a.outcome, a.error)
                for a in engine.message_status(shard, ids[0]).deliveries[0].attempts]
    assert outcomes[:2] == [(1, pubsub_pb2.DEFERRED, "rate limited"), (1, pubsub_pb2.NACKED, "nacked")]
    with pytest.raises(errors.InvalidArgument):
        engine.nack(shard, "audit", [third.ack_id], deferred=True)


async def test_a_rows_lock_stays_while_an_acquire_waits_for_it(engine, service):
    """Released, a lock reads unlocked before the waiter it woke runs: the lock must
    stay for that waiter, or a later acquire would take a second lock of the row."""
    await engine.write_entries(SHARD, 0, Entries.of([storage_pb2.StoredMessage(epoch=1)]))
    engine.advance_commit(SHARD, 1)
    service.leader.led[SHARD] = SimpleNamespace(epoch=1, marker=0)
    gates = [asyncio.Event(), asyncio.Event()]
    write = service.tables._write

    async def gated_write(shard, ops):
        await gates.pop(0).wait()
        await write(shard, ops)
    service.tables._write = gated_write
    first_gate, second_gate = gates
    key = b"Q\0carol\0m"
    first = asyncio.create_task(acquire(service.tables, 0, key, 3, 60_000, "n1", False))
    second = asyncio.create_task(acquire(service.tables, 0, key, 3, 60_000, "n2", False))
    for _ in range(5):
        await asyncio.sleep(0)
    first_gate.set()
    await first
    assert (shard_name(TABLE_TOPIC, 0), key) in service.tables._locks  # the second holds it now
    second_gate.set()
    await second
    assert not service.tables._locks
