"""notifymesh/server/table.py with a fake StorageClient: calls per partition,
concurrent writes and reads coalesced, reads of many keys grouped per partition."""

import asyncio

import pytest
from fakes import FakeCluster

from gen.notifymesh.internal.v1 import storage_pb2
from notifymesh import errors
from notifymesh.server.internal_topics import TABLE_TOPIC
from notifymesh.server.rows import partition_of
from notifymesh.server.table import Acquire, TableClient, put


class FakeStorage:
    """StorageClient.call against rows in memory, one partition's calls at a time."""

    def __init__(self):
        self.calls: list[tuple[str, int, int]] = []  # (method, partition, ops or keys)
        self.rows: dict[bytes, bytes] = {}
        self.gate = asyncio.Event()
        self.gate.set()
        self.old_version = False

    async def call(self, method: str, topic: str, partition: int, request):
        assert topic == TABLE_TOPIC and request.partition == partition
        await self.gate.wait()
        if method == "TableWrite":
            self.calls.append((method, partition, len(request.ops)))
            self.rows.update((op.key, op.value) for op in request.ops)
            return storage_pb2.TableWriteResponse()
        if method == "RateAcquire":  # allowed once a key (limit 1, tokens aside); its ops written too
            self.calls.append((method, partition, len(request.acquires) + len(request.ops)))
            decisions = [storage_pb2.RateDecision(allowed=a.key not in self.rows) for a in request.acquires]
            self.rows.update((a.key, b"1") for a in request.acquires)
            if self.old_version:  # ignores ops, as a leader before them did
                return storage_pb2.RateAcquireResponse(decisions=decisions)
            self.rows.update((op.key, op.value) for op in request.ops)
            return storage_pb2.RateAcquireResponse(decisions=decisions, ops_written=bool(request.ops))
        self.calls.append((method, partition, len(request.keys)))
        return storage_pb2.TableReadResponse(values=[self.rows.get(k, b"") for k in request.keys],
                                             found=[k in self.rows for k in request.keys])


@pytest.fixture
def table():
    client = TableClient(FakeCluster(topics={TABLE_TOPIC: 8}))
    client._storage = FakeStorage()
    return client


async def test_concurrent_writes_to_one_partition_go_in_one_call(table):
    table._storage.gate.clear()
    first = asyncio.create_task(table.write("alice", [put(b"a0", b"x")]))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(table.write("alice", [put(b"a%d" % i, b"x")])) for i in range(1, 20)]
    await asyncio.sleep(0)
    table._storage.gate.set()
    await asyncio.gather(first, *rest)
    assert table._storage.calls == [("TableWrite", partition_of("alice", 8), 1),
                                    ("TableWrite", partition_of("alice", 8), 19)]


async def test_concurrent_reads_of_one_partition_go_in_one_call_each_with_its_values(table):
    await table.write("alice", [put(b"C\0alice", b"A"), put(b"P\0alice", b"P")])
    table._storage.calls.clear()
    table._storage.gate.clear()
    first = asyncio.create_task(table.read("alice", [b"C\0alice"]))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(table.read("alice", keys))
            for keys in ([b"P\0alice", b"C\0alice"], [b"X\0alice"], [b"C\0alice"])]
    await asyncio.sleep(0)
    table._storage.gate.set()
    assert await asyncio.gather(first, *rest) == [[b"A"], [b"P", b"A"], [None], [b"A"]]
    partition = partition_of("alice", 8)
    assert table._storage.calls == [("TableRead", partition, 1), ("TableRead", partition, 4)]


async def test_many_keys_are_read_one_call_per_partition(table):
    recipients = [f"r{i}" for i in range(100)]
    await table.write_many({rid: [put(b"C\0" + rid.encode(), rid.encode())] for rid in recipients})
    writes = len(table._storage.calls)
    assert writes == len({partition_of(rid, 8) for rid in recipients})
    found = await table.read_many({rid: [b"C\0" + rid.encode()] for rid in recipients + ["nobody"]})
    assert found == {**{b"C\0" + rid.encode(): rid.encode() for rid in recipients}, b"C\0nobody": None}
    reads = table._storage.calls[writes:]
    assert len(reads) == len({partition_of(rid, 8) for rid in recipients + ["nobody"]})
    assert await table.read("r1", [b"C\0r1", b"C\0none"]) == [b"r1", None]
    assert table._storage.calls[-1] == ("TableRead", partition_of("r1", 8), 2)


async def test_acquires_of_many_counters_go_one_request_per_partition_in_order(table):
    recipients = [f"r{i}" for i in range(100)]
    await table.rate_acquire_many([Acquire("r3", b"D\0r3", 1, 60_000, "n0")])
    table._storage.calls.clear()
    decisions = await table.rate_acquire_many([Acquire(rid, b"D\0" + rid.encode(), 1, 60_000, "n1")
                                               for rid in recipients])
    assert [d.allowed for d in decisions] == [rid != "r3" for rid in recipients]
    partitions = {partition_of(rid, 8) for rid in recipients}
    assert sorted(p for _, p, _ in table._storage.calls) == sorted(partitions)
    assert sum(n for _, _, n in table._storage.calls) == 100


async def test_no_partition_before_the_table_topic_is_created():
    cluster = FakeCluster()
    table = TableClient(cluster)
    with pytest.raises(errors.Unavailable):
        table.partition("alice")
    with pytest.raises(errors.Unavailable, match="not created yet"):
        await table.read("alice", [b"C\0alice"])


async def test_rows_written_with_acquires_go_in_their_calls(table):
    partition = partition_of("r1", 8)
    other = next(f"r{i}" for i in range(2, 100) if partition_of(f"r{i}", 8) != partition)
    decisions = await table.rate_acquire_many([Acquire("r1", b"D\0r1", 1, 60_000, "n1")],
                                              {"r1": [put(b"R\0r1", b"1")], other: [put(b"R\0" + other.encode(), b"2")]})
    assert [d.allowed for d in decisions] == [True]
    assert sorted(table._storage.calls) == sorted([("RateAcquire", partition, 2),
                                                   ("RateAcquire", partition_of(other, 8), 1)])
    assert await table.read_many({"r1": [b"R\0r1"], other: [b"R\0" + other.encode()]}) == {
        b"R\0r1": b"1", b"R\0" + other.encode(): b"2"}


async def test_rows_an_older_leader_ignored_with_acquires_are_written_apart(table):
    table._storage.old_version = True
    decisions = await table.rate_acquire_many([Acquire("r1", b"D\0r1", 1, 60_000, "n1")], {"r1": [put(b"R\0r1", b"1")]})
    assert [d.allowed for d in decisions] == [True]
    partition = partition_of("r1", 8)
    assert table._storage.calls == [("RateAcquire", partition, 2), ("TableWrite", partition, 1)]
    assert await table.read("r1", [b"R\0r1"]) == [b"1"]
