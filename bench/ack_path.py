"""CPU time of the frontend's handling of acks, per acked id: Gateway.acknowledge with
the real SenderClient routing over a real Cluster view (one sender, three storage
nodes; no etcd: the members are set by hand), the merged call to the sender a no-op.
No gRPC, auth or interceptors: what the gateway itself does with an id (check,
group by pair, find the pair's owner, merge). Two shapes of call:

- k10: 100 ids of one subscription a call, ten subscriptions in turn (a subscriber's
  acks at K=10);
- fanout: one id each of 1,000 subscriptions a call (a client holding many streams
  merges their acks, subscription ""; one message to 50,000 streams).

process_time() counts this process's CPU only. One JSON line per run.

    PYTHONPATH=. python bench/ack_path.py [--runs 3]
"""

import argparse
import asyncio
import json
import time

from frontend.gateway import Gateway
from notifymesh.contracts import AckId, MemberRecord
from notifymesh.server.clients import SenderClient
from notifymesh.server.cluster import Cluster
from notifymesh.server.config import Config


class _Sender(SenderClient):
    async def acknowledge(self, addr: str, ack_ids: list[str]) -> None:
        pass


def _calls(shape: str) -> list[tuple[str, list[str]]]:
    if shape == "k10":
        return [(f"bench-sub-{c % 10}", [AckId(0, 1000 * c + i, f"bench-sub-{c % 10}").encode() for i in range(100)])
                for c in range(200)]
    return [("", [AckId(0, 5000 + c, f"fanout-sub-{c * 1000 + i:05d}").encode() for i in range(1000)])
            for c in range(20)]


async def run(shape: str, repeats: int = 5) -> dict:
    cluster = Cluster(etcd=None, max_message_bytes=1 << 20)
    cluster.members.items = {"sender/sender-1": MemberRecord("127.0.0.1:1"),
                             **{f"storage/storage-{i}": MemberRecord(f"127.0.0.1:{10 + i}") for i in range(3)}}
    cluster._rebuild_rings()
    gateway = Gateway(cluster, Config(), senders=_Sender(cluster))
    calls = _calls(shape)
    ids = sum(len(ack_ids) for _, ack_ids in calls)
    best = float("inf")
    for _ in range(repeats):  # the best of a few passes: the least disturbed by other load
        started = time.process_time()
        for name, ack_ids in calls:
            await gateway.acknowledge(name, ack_ids)
        best = min(best, time.process_time() - started)
    return {"bench": "ack_path", "shape": shape, "ids": ids, "us_per_id": round(best / ids * 1e6, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    for _ in range(args.runs):
        for shape in ("k10", "fanout"):
            print(json.dumps(asyncio.run(run(shape))), flush=True)


if __name__ == "__main__":
    main()
