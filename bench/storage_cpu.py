"""CPU time of the storage engine per 10,000 messages, with encryption at rest on and
off: a leader and two followers (StorageEngine over real RocksDB, in this one
process, no gRPC or TLS), one subscription. Each round: the leader appends a batch,
the followers take it as replicated, the subscription pulls and acknowledges it, the
followers get the delivery state, and a GC round runs as storage/service.py runs
it (the leader collects; each replica stubs what was below the cursors a round
before; the followers trim to the leader's first). process_time() counts this
process's CPU only (RocksDB's threads included), so other load on the machine
sways it much less than throughput. One JSON line per run.

    PYTHONPATH=. python bench/storage_cpu.py [--messages 100000] [--batch 500] [--runs 3]
"""

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.server import sealing
from notifymesh.server.sealing import DataKeyRecord, KeyRing, LocalMasterKey
from storage.delivery import Pull
from storage.engine import StorageEngine

SHARD = "bench/0"


def ring(enabled: bool) -> KeyRing:
    if not enabled:
        return KeyRing(None, enabled=False)
    line = sealing.new_master_key_line()
    keys = KeyRing(LocalMasterKey(lambda: line, "bench"))
    keys.add(DataKeyRecord(1, keys.master.wrap(os.urandom(32), sealing._wrap_context(1)), 0, 0))
    return keys


async def run(messages: int, batch: int, size: int, encrypted: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        nodes = [StorageEngine(Path(tmp) / f"s{i}", f"storage-{i}", ring(encrypted)) for i in range(3)]
        for node in nodes:
            node.start()
        leader, followers = nodes[0], nodes[1:]
        leader.attach(SHARD, pubsub_pb2.Subscription(name="audit", topic="bench"))
        settled: dict[int, int | None] = {}
        leader_first = 0
        payload = os.urandom(size)
        started = time.process_time()
        for _ in range(messages // batch):
            start = leader.shard(SHARD).end
            _ids, entries = leader.prepare(SHARD, [pubsub_pb2.PubsubMessage(data=payload) for _ in range(batch)], 1,
                                           60_000, False)
            await leader.write_entries(SHARD, start, entries)
            replicated = leader.entries_from(SHARD, start, batch)
            for follower in followers:
                await follower.write_replicated(SHARD, start, replicated)
            leader.release_tail(SHARD, leader.shard(SHARD).end)
            leader.advance_commit(SHARD, leader.shard(SHARD).end)
            pulled = await leader.pull(SHARD, [Pull("audit", batch, 60_000)], 0)
            leader.acknowledge(SHARD, "audit", pulled["audit"].ack_ids)
            update = leader.state_since(SHARD, -1)
            for i, node in enumerate(nodes):  # a GC round
                if node is leader:
                    leader.collect(SHARD, None)
                else:  # the leader's first as replication told it by now: the previous round's
                    node.import_states(SHARD, update)
                    node.advance_commit(SHARD, leader.shard(SHARD).commit)
                    node.trim(SHARD, leader_first)
                if (below := settled.get(i)) is not None:
                    node.stub(SHARD, None, below)
                settled[i] = node.lowest_cursor(SHARD)
            leader_first = leader.shard(SHARD).first
        cpu = time.process_time() - started
        for node in nodes:
            await node.close()
    return {"bench": "storage_cpu", "encryption_at_rest": encrypted, "messages": messages, "batch": batch,
            "size": size, "cpu_ms_per_10k": round(cpu * 1000 * 10_000 / messages, 1),
            "loadavg": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    for _ in range(args.runs):
        for encrypted in (True, False):
            print(json.dumps(asyncio.run(run(args.messages, args.batch, args.size, encrypted))), flush=True)


if __name__ == "__main__":
    main()
