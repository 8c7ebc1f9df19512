"""CPU time of the replicated table per push send, in one process: a leader and two
followers (StorageEngine over real RocksDB, encryption at rest on unless --plain,
no gRPC or TLS). Each round is a fan-out page of --page recipients as a push send
writes it (docs/benchmarks.md 2026-12-01, "storage's CPU per notification send"):
the leader's rate acquire of a duplicate-check row each with a recipient index row
each (TableService.rate_acquire, one call a partition) and, in three writes through the
notification log, the events (a SEND_QUEUED row each; SEND_RENDERED and SEND_SENT a
row a task of 25 recipients), each write replicated to both followers as
replication sends it (the leader's tail) and applied on all three at commit; the
channel worker's reads (a contact row and the device scan a recipient). Events are
keyed by notification, so one page's events share a shard, as in the pipeline.
process_time() counts this process's CPU (RocksDB's threads included). One JSON
line per run: CPU per push send (3 rows and 2/25 on 3 replicas and the reads), split.

    PYTHONPATH=. python bench/table_cpu.py [--pages 40] [--page 500] [--runs 3]
"""

import argparse
import asyncio
import gc
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from bench.storage_cpu import ring
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import notify_pb2
from notifymesh.clock import now_ms
from notifymesh.server import rows
from notifymesh.server.internal_topics import TABLE_TOPIC
from notifymesh.server.notification_log import Event, NotificationLog
from notifymesh.server.process import GC_THRESHOLDS
from sender import channel_tasks
from storage.engine import StorageEngine
from storage.log import Entries
from storage.table import TableService

PARTITIONS = 8
DAY_MS = 86_400_000


class OneLeader:
    """TableService's leader: this process's leader engine, followers fed in line."""

    def __init__(self, leader: StorageEngine, followers: list[StorageEngine], timer: dict):
        self.leader, self.followers, self.timer = leader, followers, timer
        self.led: dict = {}
        self.epoch = 1

    def leadership(self, shard: str):
        return SimpleNamespace(marker=-1)

    def many_rows(self, shard: str) -> bool:
        return True

    async def append_entries(self, shard: str, make) -> int:
        log_ = self.leader.shard(shard)
        start = log_.end
        entries = make(self.epoch, start)
        written = self.leader.write_entries(shard, start, entries)
        replicated = self.leader.entries_from(shard, start, len(entries.raw))
        for follower in self.followers:
            await follower.write_replicated(shard, start, Entries.replicated(storage_pb2.ShardEntries(
                entries=replicated.raw, message_ids=replicated.ids, dedup_keys=replicated.dedup_keys,
                dedup_until_ms=replicated.dedup_until_ms, last_entry_epoch=replicated.last_epoch)))
        await written
        end = log_.end
        self.leader.release_tail(shard, end)
        self.leader.advance_commit(shard, end)
        started = time.process_time()
        for follower in self.followers:
            follower.advance_commit(shard, end)
        self.timer["follower_apply"] += time.process_time() - started
        return end


async def run(pages: int, page: int, encrypted: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        nodes = [StorageEngine(Path(tmp) / f"s{i}", f"storage-{i}", ring(encrypted)) for i in range(3)]
        for node in nodes:
            node.start()
        leader, followers = nodes[0], nodes[1:]
        timer = {"follower_apply": 0.0, "acquire": 0.0, "writes": 0.0, "reads": 0.0}
        one = OneLeader(leader, followers, timer)
        partitions = PARTITIONS

        async def count() -> int:
            return partitions

        service = TableService(leader.table, leader.log, one, count)

        class LogTable:  # the notification log's writes, straight to the service
            async def write_many(self, ops_by_partition_key: dict[str, list[storage_pb2.TableOp]]) -> None:
                for partition_key, ops in ops_by_partition_key.items():
                    await service.write(rows.partition_of(partition_key, partitions), ops)

        notification_log = NotificationLog(LogTable(), DAY_MS)
        contact = notify_pb2.Recipient(id="r0000000", email="r0@example.com", phone="+14152000000", locale="en",
                                       attributes={"name": "Person 0"}).SerializeToString()
        # The recipients' rows, as the bench loads them: a contact row and a device each.
        for p in range(pages):
            by_partition: dict[int, list] = {}
            for i in range(p * page, (p + 1) * page):
                rid = f"r{i:07d}"
                part = rows.partition_of(rid, partitions)
                by_partition.setdefault(part, []).extend([
                    storage_pb2.TableOp(key=rows.contact_key(rid), value=contact),
                    storage_pb2.TableOp(key=rows.has_devices_key(rid), value=b""),
                    storage_pb2.TableOp(key=rows.device_key(rid, "ios", f"token{i}"), value=b"x" * 90)])
            for part, ops in by_partition.items():
                await service.write(part, ops)
        for key in timer:
            timer[key] = 0.0
        started = time.process_time()
        for p in range(pages):
            nid = f"n{p:05d}"
            rids = [f"r{i:07d}" for i in range(p * page, (p + 1) * page)]
            by_partition = {}
            for rid in rids:
                by_partition.setdefault(rows.partition_of(rid, partitions), []).append(rid)
            now = now_ms()
            t0 = time.process_time()
            for part, group in by_partition.items():  # the fan-out's duplicate checks, with the index rows
                await service.rate_acquire(part, [storage_pb2.RateAcquire(
                    key=rows.duplicate_key(rid, "h" * 16), limit=1, period_ms=DAY_MS, token=nid) for rid in group],
                    [storage_pb2.TableOp(key=rows.recipient_notification_key(rid, now, nid), expire_ms=now + DAY_MS)
                     for rid in group])
            t1 = time.process_time()
            groups = channel_tasks.log_groups(rids)
            for state in (notify_pb2.SEND_QUEUED, notify_pb2.SEND_RENDERED, notify_pb2.SEND_SENT):
                # As the fan-out and a channel worker write them: a row each queued, a row a task of the others.
                await notification_log.write_rows([Event(
                    nid, now, rid, notify_pb2.PUSH, state, now + state, provider="apns",
                    provider_message_id="m" * 36, attempt=1, log_group=group, log_writer=f"{group}.1.{state}")
                    for rid, group in zip(rids, groups)])
            t2 = time.process_time()
            for part, group in by_partition.items():  # the channel worker's reads
                await service.read(part, [rows.contact_key(rid) for rid in group])
                await service.scan_many(part, [rows.devices_prefix(rid) for rid in group], 21)
            t3 = time.process_time()
            timer["acquire"] += t1 - t0
            timer["writes"] += t2 - t1
            timer["reads"] += t3 - t2
        cpu = time.process_time() - started
        for node in nodes:
            await node.close()
    sends = pages * page
    per = {key: round(value * 1e6 / sends, 1) for key, value in timer.items()}
    return {"bench": "table_cpu", "encryption_at_rest": encrypted, "sends": sends, "page": page,
            "cpu_us_per_send": round(cpu * 1e6 / sends, 1), "split_us_per_send": per,
            "loadavg": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pages", type=int, default=40)
    p.add_argument("--page", type=int, default=500)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--plain", action="store_true", help="encryption at rest off")
    args = p.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)  # as the storage process runs
    for _ in range(args.runs):
        print(json.dumps(asyncio.run(run(args.pages, args.page, not args.plain))), flush=True)


if __name__ == "__main__":
    main()
