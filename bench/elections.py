#!/usr/bin/env python3
"""How fast a fresh local mesh (etcd, metadata, 3 storage nodes, a sender, one
frontend) elects leaders for many shards at once:

- created: a topic of --partitions partitions is created; the seconds until every
  partition has a leader (GetClusterStatus, polled every 0.1 s), and of them the
  CreateTopic call's;
- failover: the storage node leading the most of them is killed (SIGKILL); the
  seconds until every partition has a live leader again.

Prints one JSON line (progress on stderr).

    .venv/bin/python bench/elections.py --partitions 256
"""

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import notifymesh.server  # noqa: E402,F401  first: gRPC's I/O path, as the services choose it
from bench import fresh_mesh  # noqa: E402
from bench.fresh_mesh import header, run_on_fresh_mesh  # noqa: E402
from bench.notify import table_ready  # noqa: E402
from deploy.local import LocalMesh  # noqa: E402
from notifymesh.client import Client  # noqa: E402

TOPIC = "bench-elections"
POLL_S = 0.1


def progress(text: str) -> None:
    fresh_mesh.progress("elections", text)


async def leaders(client: Client) -> dict[int, str]:
    """The bench topic's partitions that have a leader, and its node."""
    status = await client.get_cluster_status()
    return {s.partition: s.leader for s in status.shards if s.topic == TOPIC and s.leader}


async def all_led(client: Client, partitions: int, started: float, max_seconds: float,
                  excluded: str = "") -> tuple[float, dict[int, str]]:
    """Seconds from started until every partition has a leader other than excluded."""
    while True:
        led = await leaders(client)
        if len(led) == partitions and excluded not in led.values():
            return time.monotonic() - started, led
        if time.monotonic() - started > max_seconds:
            raise TimeoutError(f"{len(led)} of {partitions} partitions led after {max_seconds}s")
        await asyncio.sleep(POLL_S)


async def run(mesh: LocalMesh, args) -> dict:
    async with Client(mesh.frontend_addr, timeout_s=60) as client:
        await table_ready(client)
        started = time.monotonic()
        await client.create_topic(TOPIC, partitions=args.partitions)
        create_call_s = time.monotonic() - started
        created_s, led = await all_led(client, args.partitions, started, args.max_seconds)
        per_node = {node: list(led.values()).count(node) for node in sorted(set(led.values()))}
        progress(f"{args.partitions} partitions led after {created_s:.2f}s: {per_node}")
        victim = max(per_node, key=per_node.get)
        started = time.monotonic()
        mesh.kill(victim, signal.SIGKILL)
        failover_s, _ = await all_led(client, args.partitions, started, args.max_seconds, excluded=victim)
        progress(f"{per_node[victim]} partitions of {victim} led again after {failover_s:.2f}s")
    return {"create_call_s": round(create_call_s, 2), "created_s": round(created_s, 2),
            "leaders_per_node": per_node, "killed": victim, "moved": per_node[victim],
            "failover_s": round(failover_s, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--partitions", type=int, default=256, help="the topic's partitions (at most 256)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="the most each phase waits")
    p.add_argument("--keep", action="store_true", help="keep the mesh's data dir (logs/*.log)")
    args = p.parse_args()
    if not 1 <= args.partitions <= 256:
        p.error("--partitions 1 to 256 (a topic's most)")
    line = header("elections", partitions=args.partitions)
    return run_on_fresh_mesh(line, lambda mesh: run(mesh, args), args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
