#!/usr/bin/env python3
"""What an idle mesh costs: a fresh local mesh (etcd, metadata, 3 storage, a sender,
a frontend, the local providers; TLS, encryption and tracing at their defaults),
left alone for --settle s, then the CPU seconds of each process (utime + stime of
/proc/<pid>/stat) over --seconds s, as ms of CPU per second (10 ms/s is 1 % of a
core). With --topics N, N topics (replication factor 3), each with one pull
subscription, are made before the settling, and with --subscribe one Subscribe
stream holds each of them (this process's, counted apart as "client"): idle shards
and subscriptions cost their leaders' heartbeats and the sender's watches of the
shards for messages. One JSON line (progress on stderr).

    .venv/bin/python bench/idle_cpu.py --settle 60 --seconds 60
    .venv/bin/python bench/idle_cpu.py --topics 1 --subscribe --seconds 30
"""

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fresh_mesh import header, progress, run_on_fresh_mesh  # noqa: E402
from procfs import cpu_s  # noqa: E402


async def idle(mesh, args) -> dict:
    from notifymesh.client import Client
    async with Client(mesh.frontend_addr, timeout_s=60) as client:
        for i in range(args.topics):
            await client.create_topic(f"idle-{i}", replication_factor=3)
            await client.create_subscription(f"idle-{i}-sub", f"idle-{i}")
        streams = [asyncio.create_task(_drain(client, f"idle-{i}-sub"))
                   for i in range(args.topics if args.subscribe else 0)]
        try:
            return await _measured(mesh, args)
        finally:
            for stream in streams:
                stream.cancel()
            await asyncio.gather(*streams, return_exceptions=True)


async def _drain(client, subscription: str) -> None:
    async for _ in client.subscribe_frames(subscription):
        pass


async def _measured(mesh, args) -> dict:
    progress("idle", f"settling {args.settle:g} s")
    await asyncio.sleep(args.settle)
    pids = {name: p.popen.pid for name, p in mesh.processes.items() if p.popen is not None}
    pids["client"] = os.getpid()
    before, started = {name: cpu_s(pid) for name, pid in pids.items()}, time.monotonic()
    progress("idle", f"measuring {args.seconds:g} s")
    await asyncio.sleep(args.seconds)
    after, took = {name: cpu_s(pid) for name, pid in pids.items()}, time.monotonic() - started
    per_s = {name: round((after[name] - before[name]) * 1000 / took, 2) for name in sorted(pids)}
    per_s["mesh"] = round(sum(v for name, v in per_s.items() if name != "client"), 2)
    return {"seconds": round(took, 1), "cpu_ms_per_s": per_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settle", type=float, default=60.0, help="s left alone before measuring")
    parser.add_argument("--seconds", type=float, default=60.0, help="s measured")
    parser.add_argument("--topics", type=int, default=0, help="topics (one subscription each) made first")
    parser.add_argument("--subscribe", action="store_true", help="one Subscribe stream on each subscription")
    parser.add_argument("--keep", action="store_true", help="keep the data dir (logs/*.log)")
    args = parser.parse_args()
    line = header("idle_cpu", params={"settle_s": args.settle, "seconds": args.seconds, "topics": args.topics,
                                          "subscribe": args.subscribe})
    return run_on_fresh_mesh(line, lambda mesh: idle(mesh, args), args.keep)


if __name__ == "__main__":
    sys.exit(main())
