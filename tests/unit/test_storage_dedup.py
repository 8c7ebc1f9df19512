"""De-duplication's scans (storage/dedup.py) run in bounded slices with the event
loop running between them: sweeping expired idempotency keys, and reading the
recent message ids a retried append is checked against."""

import asyncio

import pytest

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.clock import now_ms
from storage import dedup as dedup_module
from storage import keys
from storage.dedup import Dedup
from storage.engine import StorageEngine
from tests.unit.storage_fakes import MemoryLog, MemoryRecords

SHARD = "orders/0"
SLICE = 50  # small slices, so a few hundred keys make several


class LoopTurns:
    """Counts reads (read()) between two turns of the event loop: the most seen in
    one turn is what one synchronous stretch read."""

    def __init__(self):
        self.current = self.most = self.turns = 0
        self._task: asyncio.Task | None = None

    def read(self) -> None:
        self.current += 1
        self.most = max(self.most, self.current)

    async def _tick(self) -> None:
        while True:
            self.current = 0
            self.turns += 1
            await asyncio.sleep(0)

    def __enter__(self) -> "LoopTurns":
        self._task = asyncio.ensure_future(self._tick())
        return self

    def __exit__(self, *exc) -> None:
        self._task.cancel()


class CountingRecords(MemoryRecords):
    def __init__(self):
        super().__init__()
        self.turns: LoopTurns | None = None

    def prefixed(self, prefix: bytes, start: bytes = b""):
        for item in super().prefixed(prefix, start):
            if self.turns is not None:
                self.turns.read()
            yield item


@pytest.fixture
def slices(monkeypatch):
    monkeypatch.setattr(dedup_module, "SCAN_SLICE", SLICE)
    monkeypatch.setattr(dedup_module, "RECENT_IDS_SLICE", SLICE)


async def test_expired_idempotency_keys_are_swept_in_slices(slices):
    records, log_ = CountingRecords(), MemoryLog()
    dedup = Dedup(log_, records)
    layout = keys.ShardKeys(SHARD)
    for i in range(4 * SLICE + 7):  # every third one live
        until = now_ms() + (60_000 if i % 3 == 0 else -1)
        records.put(layout.idempotency(f"k:{i:04d}"), keys.idempotency_value(until, f"id-{i}"))
    log_.shard(SHARD).staged_keys["k:0001"] = "id-new"  # a write about to make it live again
    live = {key for key, value in records.values.items() if keys.live_message_id(value, now_ms())}
    with LoopTurns() as turns:
        records.turns = turns
        swept = await dedup.sweep_idempotency_keys()
    assert turns.most <= SLICE and turns.turns >= 4  # the loop ran between slices
    assert set(records.values) == live | {layout.idempotency("k:0001")}
    assert swept == 4 * SLICE + 7 - len(live) - 1
    assert await dedup.sweep_idempotency_keys() == 0 and dedup.collect_idempotency_keys() == 0


async def append(engine: StorageEngine, count: int, wait: bool = True) -> list[str]:
    ids, entries = engine.prepare(SHARD, [pubsub_pb2.PubsubMessage(data=b"m") for _ in range(count)], 1, 60_000,
                                  False)
    written = engine.write_entries(SHARD, engine.shard(SHARD).end, entries)
    if wait:
        await written
    return ids


def retried(message_id: str) -> pubsub_pb2.PubsubMessage:
    return pubsub_pb2.PubsubMessage(data=b"m", message_id=message_id)


async def test_recent_ids_are_read_in_slices_and_miss_nothing_written_meanwhile(slices, engine):
    stored = await append(engine, 6 * SLICE)
    engine.shard(SHARD).tail.clear()  # as if replicated: read back from RocksDB
    entry = engine.log.entry
    with LoopTurns() as turns:
        def counted(shard: str, seq: int):
            turns.read()
            return entry(shard, seq)
        engine.log.entry = counted
        loading = asyncio.ensure_future(engine.load_recent_ids(SHARD))
        await asyncio.sleep(0)
        meanwhile = await append(engine, 3)  # written while the ids are read
        pending = await append(engine, 2, wait=False)  # staged, not yet synced when the read ends
        await loading
    assert turns.most <= SLICE and turns.turns >= 6
    for message_id in (stored[0], stored[-1], *meanwhile, *pending):
        assert engine.prepare(SHARD, [retried(message_id)], 1, 60_000, retry=True).message_ids == [message_id]
    new = retried("0-0-0-unseen")
    assert engine.prepare(SHARD, [new], 1, 60_000, retry=True).entries.ids == ["0-0-0-unseen"]


async def test_recent_ids_are_read_once_for_concurrent_retries(slices, engine):
    stored = await append(engine, 3 * SLICE)
    engine.shard(SHARD).tail.clear()
    reads = 0
    entry = engine.log.entry

    def counted(shard: str, seq: int):
        nonlocal reads
        reads += 1
        return entry(shard, seq)

    engine.log.entry = counted
    await asyncio.gather(*(engine.load_recent_ids(SHARD) for _ in range(5)))
    assert reads == 3 * SLICE  # one read of each entry, not five
    assert engine.prepare(SHARD, [retried(stored[0])], 1, 60_000, retry=True).message_ids == [stored[0]]


# -- what a repeat is recognised by ------------------------------------------------------


def publish(dedup: Dedup, *messages: pubsub_pb2.PubsubMessage, by_payload: bool = False) -> list[str]:
    """A leader's append on the fakes: prepare, then the new entries' dedup keys
    stored as the log's write would."""
    prepared = dedup.prepare(SHARD, list(messages), 1, 60_000, retry=False, by_payload=by_payload)
    layout, entries = keys.ShardKeys(SHARD), prepared.entries
    for message_id, key, until in zip(entries.ids, entries.dedup_keys, entries.dedup_until_ms):
        if key:
            dedup._records.put(layout.idempotency(key), keys.idempotency_value(until, message_id))
    return prepared.message_ids


def sent(data: bytes, retry_key: str, **attributes) -> pubsub_pb2.PubsubMessage:
    return pubsub_pb2.PubsubMessage(data=data, retry_key=retry_key, attributes=attributes)


def test_a_retry_key_recognises_a_resend_but_not_a_repeated_payload_without_payload_dedup():
    dedup = Dedup(MemoryLog(), MemoryRecords())
    [first] = publish(dedup, sent(b"charge", "pub-0"))
    assert publish(dedup, sent(b"charge", "pub-0")) == [first]  # the resend
    assert publish(dedup, sent(b"charge", "pub-1")) != [first]  # another publish of it


def test_on_a_payload_dedup_topic_retry_keys_do_not_hide_a_repeated_payload():
    dedup = Dedup(MemoryLog(), MemoryRecords())
    dedup.payload_attributes = lambda topic: ["tenant"] if topic == "orders" else None
    [first] = publish(dedup, sent(b"charge", "pub-0", tenant="a", sent_at="1"), by_payload=True)
    # other retry keys and other unnamed attributes: the same payload
    assert publish(dedup, sent(b"charge", "pub-1", tenant="a", sent_at="2"), by_payload=True) == [first]
    assert publish(dedup, sent(b"charge", "pub-2", tenant="b", sent_at="1"), by_payload=True) != [first]
    keyed = pubsub_pb2.PubsubMessage(data=b"charge", idempotency_key="order-7", attributes={"tenant": "a"})
    assert publish(dedup, keyed, by_payload=True) != [first]  # an idempotency key is what a keyed message is by
