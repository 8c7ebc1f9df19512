#!/usr/bin/env python3
"""Bounded state under a backlog: a fresh local mesh, a topic with a subscription
nobody consumes and a push subscription whose endpoint is dead, and N messages
published to it. Samples every process's resident memory (VmRSS from /proc) while
publishing, and prints one JSON line: the largest RSS per process and per kind,
publish throughput over the first and the last tenth of the run (publishing must
go on at the end as at the start), and errors.

    .venv/bin/python bench/backlog.py --messages 1000000 --size 1024

With --stuck-lease, the topic has one subscription instead, whose subscriber
acknowledges every message but the first it receives, which it never does (its
lease expires and it comes back, again and again). At the end the line also
gives the message bytes each storage node still keeps (read from its RocksDB once
the mesh has stopped): what the one stuck message pins.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import notifymesh.server  # noqa: E402,F401  first: gRPC's I/O path, as the services choose it
from bench.procfs import RssSampler  # noqa: E402
from deploy.local import LocalMesh, free_port  # noqa: E402
from notifymesh.client import Client  # noqa: E402
from notifymesh.publisher import Publisher  # noqa: E402
from notifymesh.subscriber import Subscriber  # noqa: E402
from storage import keys  # noqa: E402
from storage.db import Database  # noqa: E402

SAMPLE_EVERY_S = 1.0
PROGRESS_EVERY = 50_000
SETTLE_S = 10.0  # after publishing: for the last acks, and a few garbage-collection rounds (1 s each)


def dead_endpoint() -> str:
    """A loopback URL nothing listens on: every push is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/dead"


async def consume_all_but_the_first(client: Client, subscription: str, counts: dict) -> None:
    """Acknowledges every message but the first received, which it never does."""
    stuck = None
    async with Subscriber(client, subscription, max_outstanding_messages=1000) as subscriber:
        async for delivery in subscriber:
            if stuck is None:
                stuck = delivery.message_id
            if delivery.message_id == stuck:
                counts["stuck_deliveries"] += 1
                continue  # neither acked nor nacked: its lease runs out
            counts["acknowledged_by_subscriber"] += 1
            delivery.ack()


async def publish(addr: str, args) -> dict:
    payload = b"x" * args.size
    topic = "backlog"
    marks: list[float] = []
    errors = 0
    consumed = {"stuck_deliveries": 0, "acknowledged_by_subscriber": 0}
    async with Client(addr, timeout_s=30) as client:
        await client.create_topic(topic, partitions=args.partitions, replication_factor=3)
        if args.stuck_lease:
            await client.create_subscription("backlog-stuck", topic, ack_deadline_s=10)
            consumer = asyncio.create_task(consume_all_but_the_first(client, "backlog-stuck", consumed))
        else:
            await client.create_subscription("backlog-idle", topic)
            await client.create_subscription("backlog-dead-push", topic, push_endpoint=dead_endpoint())
        tenth = args.messages // 10 or 1
        marks.append(time.monotonic())
        acked = 0

        def done(future: asyncio.Future) -> None:
            """Counts each publish as it settles and marks each tenth acknowledged
            (a callback, so no list of futures grows with the run)."""
            nonlocal acked, errors
            if future.cancelled() or future.exception() is not None:
                errors += 1
                return
            acked += 1
            if acked % tenth == 0:
                marks.append(time.monotonic())

        async with Publisher(client) as publisher:  # at most 10,000 outstanding: it waits for room
            for i in range(args.messages):
                (await publisher.publish(topic, payload)).add_done_callback(done)
                if (i + 1) % PROGRESS_EVERY == 0:
                    print(f"backlog: published {i + 1}/{args.messages}, acknowledged {acked}", file=sys.stderr,
                          flush=True)
        if args.stuck_lease:
            await asyncio.sleep(SETTLE_S)
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
    return {"publish_errors": errors, **(consumed if args.stuck_lease else {}),
            "first_tenth_msgs_per_s": round(tenth / (marks[1] - marks[0]), 1) if len(marks) > 2 else None,
            "last_tenth_msgs_per_s": round(tenth / (marks[-1] - marks[-2]), 1) if len(marks) > 2 else None,
            "acknowledged_msgs_per_s": round(acked / (marks[-1] - marks[0]), 1) if len(marks) > 1 else None}


def kept_message_mib(path: Path) -> float:
    """The bytes of the log entries a stopped storage node's RocksDB holds."""
    db = Database(path)
    try:
        it, total = db.rdict.iter(), 0
        it.seek(keys.MESSAGE)
        while it.valid() and it.key().startswith(keys.MESSAGE):
            total += len(it.value())
            it.next()
        return round(total / 2**20, 1)
    finally:
        db.rdict.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--stuck-lease", action="store_true",
                   help="one subscription, acknowledged but for one message (see above)")
    args = p.parse_args()
    uname = platform.uname()
    line = {"system": "notifymesh", "bench": "backlog-stuck-lease" if args.stuck_lease else "backlog",
            "messages": args.messages, "size": args.size,
            "partitions": args.partitions,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cores": os.cpu_count(), "system": f"{uname.system} {uname.release}"}}
    with tempfile.TemporaryDirectory() as tmp:
        mesh = LocalMesh(Path(tmp), frontend_port=free_port(), etcd_ports=[(free_port(), free_port())])
        sampler = RssSampler(mesh, ("",), SAMPLE_EVERY_S)  # every process
        try:
            mesh.start()
            sampler.start()
            started = time.monotonic()
            line |= asyncio.run(publish(mesh.frontend_addr, args))
            line["publish_s"] = round(time.monotonic() - started, 1)
            time.sleep(5 * SAMPLE_EVERY_S)  # what the backlog holds once publishing stopped
        except Exception as e:
            line["error"] = repr(e)
        finally:
            sampler.stopping.set()
            mesh.stop()
        if args.stuck_lease:
            line["kept_message_mib"] = {path.name: kept_message_mib(path / "rocksdb")
                                        for path in sorted(Path(tmp).glob("storage-*"))}
    peak = {name: round(mib, 1) for name, mib in sorted(sampler.peak.items())}
    by_kind: dict[str, float] = {}
    for name, mib in peak.items():
        kind = name.rsplit("-", 1)[0]
        by_kind[kind] = max(by_kind.get(kind, 0.0), mib)
    line |= {"peak_rss_mib": peak, "peak_rss_mib_by_kind": by_kind}
    print(json.dumps(line), flush=True)
    return 0 if "error" not in line and not line.get("publish_errors") else 2


if __name__ == "__main__":
    raise SystemExit(main())
