#!/usr/bin/env python3
"""Recipient lookups in the replicated table: a fresh local mesh (3 storage nodes,
the table's 8 partitions at RF 3), N recipient-like contact rows (about 200 bytes
each, a serialized notifymesh.v1.Recipient) loaded through TableClient.write_many
in batches, then random single-row lookups one at a time (TableClient.read, as the
channel worker reads a contact). Prints one JSON line: rows loaded, load rows/s,
read p50/p99 ms, the storage nodes' resident memory (largest while loading, and at
the end) and RocksDB size on disk.

    .venv/bin/python bench/table.py --rows 1000000
"""

import argparse
import asyncio
import datetime
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import notifymesh.server  # noqa: E402,F401  first: gRPC's I/O path, as the services choose it
from bench.procfs import RssSampler  # noqa: E402
from deploy.local import LocalMesh, free_port  # noqa: E402
from gen.notifymesh.v1 import notify_pb2  # noqa: E402
from notifymesh.contracts import shard_name  # noqa: E402
from notifymesh.server import rows  # noqa: E402
from notifymesh.server.cluster import Cluster, connect_etcd  # noqa: E402
from notifymesh.server.config import Config  # noqa: E402
from notifymesh.server.internal_topics import TABLE_TOPIC  # noqa: E402
from notifymesh.server.table import TableClient, put  # noqa: E402

SAMPLE_EVERY_S = 1.0
PROGRESS_EVERY_S = 10.0
READY_TIMEOUT_S = 60
WARMUP_READS = 200


def recipient_row(i: int) -> tuple[str, bytes]:
    """(recipient id, contact row value) of about 200 bytes."""
    rid = f"user-{i:08d}"
    recipient = notify_pb2.Recipient(
        id=rid, email=f"{rid}@mail.example.com", phone=f"+1415{i % 10_000_000:07d}", locale="en-US",
        timezone="America/Los_Angeles", attributes={"plan": "pro", "first_name": f"Name{i}", "company": "Example Inc"},
        webhook_url=f"https://hooks.example.com/notify/{rid}")
    return rid, recipient.SerializeToString()


async def wait_ready(cluster: Cluster) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    shards = [shard_name(TABLE_TOPIC, p) for p in range(8)]
    while not (TABLE_TOPIC in cluster.topics.items and all(
            s in cluster.leaders.items and len(cluster.placements.items[s].replicas) == 3
            for s in shards if s in cluster.placements.items) and all(s in cluster.placements.items for s in shards)):
        if time.monotonic() > deadline:
            raise TimeoutError("the table partitions have no leaders with 3 replicas")
        await asyncio.sleep(0.2)


async def load(table: TableClient, count: int, batch: int, concurrency: int, max_s: float) -> tuple[int, float]:
    """Rows written (acknowledged) and the seconds it took; stops at max_s."""
    started, loaded, next_progress = time.monotonic(), 0, PROGRESS_EVERY_S
    starts = iter(range(0, count, batch))

    async def worker() -> None:
        nonlocal loaded, next_progress
        for start in starts:
            if time.monotonic() - started > max_s:
                return
            ops = {}
            for i in range(start, min(count, start + batch)):
                rid, value = recipient_row(i)
                ops[rid] = [put(rows.contact_key(rid), value)]
            await table.write_many(ops)
            loaded += len(ops)
            if (elapsed := time.monotonic() - started) >= next_progress:
                next_progress += PROGRESS_EVERY_S
                print(f"# {loaded} rows in {elapsed:.0f} s ({loaded / elapsed:.0f}/s)", file=sys.stderr, flush=True)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return loaded, time.monotonic() - started


async def lookups(table: TableClient, loaded: int, count: int) -> list[float]:
    """Latencies (ms) of count random single-row reads, one at a time."""
    latencies = []
    for _ in range(count):
        rid = f"user-{random.randrange(loaded):08d}"
        started = time.perf_counter()
        [value] = await table.read(rid, [rows.contact_key(rid)])
        latencies.append((time.perf_counter() - started) * 1000)
        assert value is not None, rid
    return latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 3)


async def run(mesh: LocalMesh, sampler: RssSampler, args) -> dict:
    cluster = Cluster(connect_etcd(mesh.etcd_endpoint, mesh.client_tls()), Config.max_grpc_message_bytes, mesh.client_tls())
    await cluster.start()
    try:
        await wait_ready(cluster)
        table = TableClient(cluster)
        loaded, seconds = await load(table, args.rows, args.batch, args.concurrency, args.max_load_s)
        await asyncio.sleep(args.settle_s)  # followers apply, the upkeep's rounds run
        await lookups(table, loaded, WARMUP_READS)  # channels to every leader open
        latencies = await lookups(table, loaded, args.reads)
        return {"rows": loaded, "load_s": round(seconds, 1), "load_rows_per_s": round(loaded / seconds),
                "reads": len(latencies), "read_p50_ms": percentile(latencies, 50),
                "read_p99_ms": percentile(latencies, 99), "read_max_ms": round(max(latencies), 3)}
    finally:
        await cluster.stop()
        await cluster.etcd.close()


def disk_mib(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / (1 << 20), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000, help="rows per write_many call")
    parser.add_argument("--concurrency", type=int, default=4, help="write_many calls in flight")
    parser.add_argument("--reads", type=int, default=10_000, help="random single-row lookups")
    parser.add_argument("--max-load-s", type=float, default=1200, help="loading stops after this long")
    parser.add_argument("--settle-s", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="notifymesh-table-bench-") as tmp:
        mesh = LocalMesh(Path(tmp), frontend_port=free_port(), etcd_ports=[(free_port(), free_port())])
        sampler = RssSampler(mesh, ("storage-",), SAMPLE_EVERY_S)
        line = {"bench": "table", "when": datetime.datetime.now().isoformat(timespec="seconds"),
                "host": platform.node(), "row_bytes": len(recipient_row(0)[1])}
        try:
            mesh.start()
            sampler.start()
            line |= asyncio.run(run(mesh, sampler, args))
            line["storage_rss_mib_end"] = sampler.now()
        finally:
            sampler.stopping.set()
            line["storage_rss_mib_peak"] = sampler.peak
            mesh.stop()
            line["storage_disk_mib"] = {p.name: disk_mib(p) for p in sorted(Path(tmp).glob("storage-*"))}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
