"""Who led the partitions of a topic, from three records the mesh keeps anyway
(no server change): each storage node's `leading` log line (node, shard, epoch;
storage/leader.py), etcd's history of the shard's leader key (the epoch is the
key's create revision, so etcd says which node it granted each epoch to), and
the epoch each entry of the replicas' logs carries (the epoch of the leader that
appended it). tests/audit.py draws the conclusions."""

import asyncio
import json
from pathlib import Path

import aetcd
from audit import Leading
from replica_reads import read_replica

from gen.notifymesh.internal.v1 import storage_pb2
from notifymesh.contracts import LeaderRecord, Shard, leader_key, shard_name
from notifymesh.server import sealing
from notifymesh.server.cluster import connect_etcd
from storage import keys

GRANT_WAIT_S = 3  # etcd answers a watch of past revisions at once; only an epoch it never granted waits this long


def claims_in_logs(log_paths: list[Path], topic: str) -> list[Leading]:
    """Every `leading` line of the topic's shards in the storage nodes' logs (JSON
    lines, appended across restarts; a line cut short by SIGKILL is skipped)."""
    claims = []
    for path in log_paths:
        with open(path, errors="replace") as log:
            for line in log:
                if '"leading"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                shard = Shard.parse(record.get("shard", "/0"))
                if record.get("msg") == "leading" and shard.topic == topic:
                    claims.append(Leading(record["node"], shard.partition, int(record["epoch"])))
    return claims


def stored_epochs(data_dirs: list[Path], topic: str, partitions: int, ring: sealing.KeyRing) -> dict[str, set[int]]:
    """message id -> the epochs of its entries in the replicas' logs. Read-only
    opens beside the running nodes (RocksDB allows it; the synced WAL is read
    too). The checker's witness subscription, never consumed, keeps every entry
    from being collected."""
    epochs: dict[str, set[int]] = {}

    def read(db) -> dict[str, set[int]]:
        found: dict[str, set[int]] = {}
        for partition in range(partitions):
            prefix = keys.ShardKeys(shard_name(topic, partition)).message_prefix
            for key, value in db.items(from_key=prefix):
                if not key.startswith(prefix):
                    break
                entry = keys.open_entry(ring, key, value)
                if entry is None:
                    continue  # corrupted: never delivered either
                stored = storage_pb2.StoredMessage.FromString(entry)
                if stored.message.message_id:  # else an epoch marker
                    found.setdefault(stored.message.message_id, set()).add(stored.epoch)
        return found

    for data_dir in data_dirs:
        for message_id, found in read_replica(data_dir / "rocksdb", read).items():
            epochs.setdefault(message_id, set()).update(found)
    return epochs


async def grants(etcd_endpoint: str, tls, topic: str,
                 epochs: set[tuple[int, int]]) -> dict[tuple[int, int], str | None]:
    """(partition, epoch) -> the node etcd created the shard's leader key for at
    that revision; None when the key was not created then. A watch from that
    revision replays the key's history: its first event is that creation or not."""
    etcd = connect_etcd(etcd_endpoint, tls)
    granted = {}
    try:
        for partition, epoch in sorted(epochs):
            granted[(partition, epoch)] = await _granted(etcd, leader_key(shard_name(topic, partition)), epoch)
    finally:
        await etcd.close()
    return granted


async def _granted(etcd: aetcd.Client, key: bytes, epoch: int) -> str | None:
    watch = await etcd.watch(key, start_revision=epoch)
    try:
        event = await asyncio.wait_for(anext(aiter(watch)), GRANT_WAIT_S)
    except TimeoutError:
        return None
    finally:
        await watch.cancel()
    if event.kind != aetcd.rtypes.EventKind.PUT or event.kv.create_revision != epoch:
        return None
    return LeaderRecord.parse(event.kv.value).node
