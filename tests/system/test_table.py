"""The replicated table on the real mesh (3 storage nodes, RF 3): acknowledged
writes survive a leader's SIGKILL, a follower stopped through writes and deletes
converges, an erase leaves no file with the erased bytes, rate counts survive
failover; and the internal topics exist while their names stay reserved."""

import asyncio
import contextlib
import time
import uuid
from typing import Callable

import grpc
import pytest
from helpers import key_ring, new_mesh, unique
from replica_reads import read_replica

from gen.notifymesh.internal.v1 import storage_pb2
from notifymesh import errors
from notifymesh.client import Client
from notifymesh.contracts import shard_name
from notifymesh.server import sealing
from notifymesh.server.clients import StorageClient
from notifymesh.server.cluster import Cluster, connect_etcd
from notifymesh.server.config import Config
from notifymesh.server.internal_topics import FANOUT_SUBSCRIPTION, NOTIFY_TOPIC, TABLE_TOPIC
from notifymesh.server.table import TableClient, delete, erase, put
from storage import keys
from storage.engine import StorageEngine
from storage.table import ops_of

PARTITIONS = 8
WAIT_S = 30


@contextlib.asynccontextmanager
async def cluster_view(mesh, ready: Callable[[Cluster], bool], what: str):
    """A started Cluster view of mesh, once ready(cluster) holds (within WAIT_S)."""
    cluster = Cluster(connect_etcd(mesh.etcd_endpoint, mesh.client_tls()), Config.max_grpc_message_bytes, mesh.client_tls())
    await cluster.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while not ready(cluster):
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.1)
        yield cluster
    finally:
        await cluster.stop()
        await cluster.etcd.close()


def table_led(partitions: range, replicas: int = 0) -> Callable[[Cluster], bool]:
    """Every table partition in partitions has a leader (and replicas replicas, when given)."""
    shards = [shard_name(TABLE_TOPIC, p) for p in partitions]
    return lambda cluster: all(shard in cluster.leaders.items and (not replicas or (
        shard in cluster.placements.items and len(cluster.placements.items[shard].replicas) == replicas))
        for shard in shards)


@pytest.fixture
async def table_mesh(tmp_path):
    """A mesh of its own (tests kill its storage nodes) and a TableClient on it,
    once every table partition has a leader and 3 replicas."""
    mesh = new_mesh(tmp_path / "mesh")
    try:
        async with cluster_view(mesh, table_led(range(PARTITIONS), replicas=3),
                                "the table partitions got no leaders") as cluster:
            yield mesh, cluster, TableClient(cluster)
    finally:
        mesh.stop()


async def wait_new_leader(cluster: Cluster, partition: int, old: str) -> str:
    deadline = time.monotonic() + WAIT_S
    while True:
        leader = cluster.leaders.items.get(shard_name(TABLE_TOPIC, partition))
        if leader is not None and leader.node != old:
            return leader.node
        assert time.monotonic() < deadline, f"partition {partition} was not led again"
        await asyncio.sleep(0.05)


async def test_acknowledged_writes_survive_a_leader_kill(table_mesh):
    mesh, cluster, table = table_mesh
    rows = {f"r{i}": f"value-{i}".encode() for i in range(400)}
    await table.write_many({rid: [put(b"C\0" + rid.encode(), value)] for rid, value in rows.items()})
    gone = [f"r{i}" for i in range(0, 400, 7)]
    await table.write_many({rid: [delete(b"C\0" + rid.encode())] for rid in gone})
    shard = shard_name(TABLE_TOPIC, table.partition("r1"))
    leader = cluster.leaders.items[shard].node
    mesh.kill(leader)
    await wait_new_leader(cluster, table.partition("r1"), leader)
    found = await table.read_many({rid: [b"C\0" + rid.encode()] for rid in rows})
    assert {key[2:].decode(): value for key, value in found.items()} == {
        rid: None if rid in gone else value for rid, value in rows.items()}
    # Every replica was live and of this version: the rows of a write shared entries.
    engine = StorageEngine(mesh.data_dir / leader, leader, await key_ring(mesh))
    try:
        log_ = engine.shard(shard)
        entries = [entry for entry in map(lambda seq: engine.log.entry(shard, seq), range(log_.first, log_.end))
                   if entry.HasField("message")]
        assert entries and all(entry.table_ops for entry in entries)
        assert sum(len(ops_of(entry)) for entry in entries) > len(entries)
    finally:
        await engine.close()
    mesh.restart(leader)


async def test_a_stopped_follower_converges_through_writes_deletes_and_a_reset(table_mesh):
    mesh, cluster, table = table_mesh
    partition = table.partition("alice")
    shard = shard_name(TABLE_TOPIC, partition)
    keys = [b"M\0aud\0%04d" % i for i in range(300)]
    gone = [b"M\0aud\0gone%d" % i for i in range(20)]
    await table.write("alice", [put(key, b"first") for key in keys + gone])
    placement = cluster.placements.items[shard]
    leader = cluster.leaders.items[shard].node
    follower = next(node for node in placement.replicas if node != leader)
    await asyncio.sleep(1.5)  # the commit reaches the follower (a heartbeat a second): it applies those rows
    mesh.kill(follower)
    await table.write("alice", [delete(key) for key in gone])  # deletes the leader then trims away
    expected = dict.fromkeys(gone)
    for round_ in range(5):  # every earlier value superseded: the leader trims past the follower's log
        ops = []
        for i, key in enumerate(keys):
            if (i + round_) % 5 == 0:
                ops.append(delete(key))
                expected[key] = None
            else:
                value = b"round-%d-%d" % (round_, i)
                ops.append(put(key, value))
                expected[key] = value
        await table.write("alice", ops)
    await asyncio.sleep(3)  # the leader's upkeep trims its dead head
    mesh.restart(follower)
    await table.write("alice", [put(b"M\0aud\0last", b"x")])
    expected[b"M\0aud\0last"] = b"x"
    await asyncio.sleep(3)  # the commit reaches the follower with the next batch or heartbeat
    found = await table.read("alice", list(expected))
    assert dict(zip(expected, found)) == expected
    log_text = (mesh.data_dir / "logs" / f"{follower}.log").read_text()
    assert "log reset" in log_text and TABLE_TOPIC in log_text  # it rebuilt from the leader's entries
    ring = await key_ring(mesh)  # while etcd runs
    await cluster.stop()
    mesh.stop()
    for node in placement.replicas:  # every replica's own rows, read from its RocksDB
        engine = StorageEngine(mesh.data_dir / node, node, ring)
        try:
            assert dict(zip(expected, engine.table.read(shard, list(expected)))) == expected, node
        finally:
            await engine.close()


def files_holding(mesh, needles: set[bytes]) -> list[str]:
    """The storage nodes' files holding any of needles."""
    return [str(path) for i in (1, 2, 3) for path in (mesh.data_dir / f"storage-{i}").rglob("*")
            if any(needle in _contents(path) for needle in needles)]


def _contents(path) -> bytes:
    """A file's bytes; none for a directory or a file a compaction removed since it was listed (CI saw one)."""
    try:
        return path.read_bytes() if path.is_file() else b""
    except FileNotFoundError:
        return b""


def sealed_copies(mesh, ring: sealing.KeyRing, text: bytes) -> set[bytes]:
    """The GCM tag (unique to each sealed value) of every value, on any replica, that
    opens to something holding text: its log entries and rows (encryption at rest)."""
    def read(db) -> set[bytes]:
        found = set()
        for key, value in db.items():
            row = key[:1] == keys.TABLE_ROW
            if not sealing.is_sealed(value[keys.ROW_HEAD.size:] if row else value):
                continue
            try:
                opened = keys.open_row_value(ring, key, value) if row else ring.open(value, key)
            except sealing.SealError:
                continue
            if text in opened:
                found.add(value[-sealing.TAG_BYTES:])
        return found

    tags = set()
    for i in (1, 2, 3):
        tags |= read_replica(mesh.data_dir / f"storage-{i}" / "rocksdb", read)
    return tags


async def test_an_erase_leaves_no_file_holding_the_erased_bytes(table_mesh):
    """Erased values are sealed with the cluster's data key, which stays: so their
    ciphertexts must go from every file as their clear bytes once had to."""
    mesh, cluster, table = table_mesh
    email = f"erase-{uuid.uuid4().hex}@example.com"
    await table.write("bob", [put(b"C\0bob", email.encode())])
    await table.write("bob", [put(b"C\0bob", (email + ".v2").encode())])
    await table.write_many({f"other{i}": [put(b"C\0other%d" % i, b"x" * 200)] for i in range(200)})
    ring = await key_ring(mesh)
    deadline, copies = time.monotonic() + WAIT_S, set()
    # every replica has its latest entry and its row (in its write-ahead log at least)
    while len(copies := copies | sealed_copies(mesh, ring, email.encode())) < 6 or len(files_holding(mesh, copies)) < 3:
        assert time.monotonic() < deadline, copies
        await asyncio.sleep(0.2)
    assert files_holding(mesh, {email.encode()}) == []  # never in the clear
    await table.write("bob", [erase(b"C\0bob")])
    assert await table.read("bob", [b"C\0bob"]) == [None]
    deadline = time.monotonic() + WAIT_S
    while holding := files_holding(mesh, copies):
        assert time.monotonic() < deadline, f"still holding the erased value: {holding}"
        await asyncio.sleep(0.2)


async def test_rate_counts_survive_a_leader_kill(table_mesh):
    mesh, cluster, table = table_mesh
    key = b"Q\0carol\0marketing"
    decisions = [await table.rate_acquire("carol", key, 3, 3_600_000, f"n{i}") for i in range(3)]
    assert [(d.allowed, d.count) for d in decisions] == [(True, 1), (True, 2), (True, 3)]
    leader = cluster.leaders.items[shard_name(TABLE_TOPIC, table.partition("carol"))].node
    mesh.kill(leader)
    await wait_new_leader(cluster, table.partition("carol"), leader)
    fourth = await table.rate_acquire("carol", key, 3, 3_600_000, "n3")
    assert not fourth.allowed and fourth.count == 3 and 3_500_000 < fourth.retry_after_ms <= 3_600_000
    again = await table.rate_acquire("carol", key, 3, 3_600_000, "n1")  # counted already: allowed, not twice
    assert again.allowed and again.count == 3
    assert (await table.rate_acquire("carol", key, 3, 3_600_000, "n4", force=True)).allowed


async def test_internal_topics_exist_and_their_names_are_reserved(mesh):
    async with Client(mesh.frontend_addr) as client:
        deadline = time.monotonic() + WAIT_S
        while TABLE_TOPIC not in {t.name for t in await client.list_topics()}:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        assert (await client.get_topic(TABLE_TOPIC)).partition_count == PARTITIONS
        calls = [client.create_topic("notifymesh.mine"), client.delete_topic(NOTIFY_TOPIC),
                 client.create_subscription(unique("sub"), NOTIFY_TOPIC),
                 client.create_subscription("notifymesh.sub", NOTIFY_TOPIC),
                 client.delete_subscription(FANOUT_SUBSCRIPTION)]
        for call in calls:
            with pytest.raises(errors.InvalidArgument, match="reserved"):
                await call
        with pytest.raises(errors.InvalidArgument, match="table"):  # a publish would write rows
            await client.publish(TABLE_TOPIC, [storage_pb2.TableOp(key=b"C\0x", value=b"y").SerializeToString()])


async def test_malformed_table_requests_get_invalid_argument_or_not_found(mesh):
    async with cluster_view(mesh, table_led(range(1)), "table partition 0 got no leader") as cluster:
        table = TableClient(cluster)
        storage = StorageClient(cluster)
        for method, request, code in [
                ("TableRead", storage_pb2.TableReadRequest(partition=0), grpc.StatusCode.INVALID_ARGUMENT),
                ("TableWrite", storage_pb2.TableWriteRequest(partition=0, ops=[put(b"", b"x")]),
                 grpc.StatusCode.INVALID_ARGUMENT),
                ("TableScan", storage_pb2.TableScanRequest(partition=0, limit=0), grpc.StatusCode.INVALID_ARGUMENT),
                ("RateAcquire", storage_pb2.RateAcquireRequest(partition=0, acquires=[
                    storage_pb2.RateAcquire(key=b"q", limit=0, period_ms=1000)]),
                 grpc.StatusCode.INVALID_ARGUMENT)]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await storage.call(method, TABLE_TOPIC, 0, request)
            assert info.value.code() == code, (method, info.value.details())
        with pytest.raises(grpc.aio.AioRpcError) as info:  # a partition the table does not have, on a leader
            await storage.call("TableRead", TABLE_TOPIC, 0, storage_pb2.TableReadRequest(partition=99, keys=[b"k"]))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert await table.scan("anyone", b"Z\0nothing") == ([], [], False)


async def test_a_scan_of_many_prefixes_answers_each_as_its_own_scan_would(mesh):
    async with cluster_view(mesh, table_led(range(PARTITIONS)), "the table partitions got no leaders") as cluster:
        table = TableClient(cluster)
        owners = [unique("scanmany") for _ in range(12)]  # spread over the partitions
        for i, owner in enumerate(owners):
            await table.write(owner, [put(f"V\0{owner}\0{j}".encode(), f"{owner}-{j}".encode()) for j in range(i % 4)])
            await table.write(owner, [put(f"W\0{owner}\0x".encode(), b"not under the prefix")])
        scans = [(owner, f"V\0{owner}\0".encode()) for owner in owners]
        assert await table.scan_many(scans, 2) == [await table.scan(owner, prefix, limit=2) for owner, prefix in scans]
        assert [len(s.keys) for s in await table.scan_many(scans, 2)] == [min(i % 4, 2) for i in range(12)]
        assert [s.more for s in await table.scan_many(scans, 2)] == [i % 4 > 2 for i in range(12)]
        storage = StorageClient(cluster)
        for request in [storage_pb2.TableScanManyRequest(partition=0, limit=1),
                        storage_pb2.TableScanManyRequest(partition=0, prefixes=[b"V"], limit=0),
                        storage_pb2.TableScanManyRequest(partition=0, prefixes=[b"V"] * 101, limit=100),
                        storage_pb2.TableScanManyRequest(partition=0, prefixes=[b"V" * 5000], limit=1)]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await storage.call("TableScanMany", TABLE_TOPIC, 0, request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
