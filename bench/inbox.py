#!/usr/bin/env python3
"""In-app delivery to --streams connected inbox streams on one frontend (a fresh
local mesh: etcd, metadata, 3 storage, a sender, one frontend): loads the
recipients, opens one SubscribeInbox stream per recipient (spread over
--connections client connections), waits until every stream got a warm-up
item, then measures Notify-to-stream latency twice:

- broadcast: one notification to every recipient (Notify calls of 1,000): each
  item's arrival on its stream minus its Notify call's start;
- steady: Notify calls of one random recipient at --rate per second for
  --duration s, the streams otherwise idle.

Each phase begins once the items before it are acknowledged (acked_s: how long
that took after the last item arrived): a phase measured while 10,000
acknowledgements were still under way measured them too.

Streams acknowledge what they get (AckInbox, at most 64 calls in flight), as an
app would. Prints one JSON line (progress on stderr): latency p50/p99/max per
phase, the frontend's RSS with and without the streams, CPU seconds per process.

    .venv/bin/python bench/inbox.py --streams 10000
"""

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import notifymesh.server  # noqa: E402,F401  first: gRPC's I/O path, as the services choose it
from bench import fresh_mesh  # noqa: E402
from bench.fresh_mesh import header, run_on_fresh_mesh  # noqa: E402
from bench.notify import cpu_by_process, percentile, table_ready  # noqa: E402
from bench.procfs import rss_mib  # noqa: E402
from deploy.local import LocalMesh  # noqa: E402
from gen.notifymesh.v1 import notify_pb2  # noqa: E402
from notifymesh.client import Client  # noqa: E402

CATEGORY, TEMPLATE = "bench", "bench-inbox"
PER_CALL = 1000
ACKS_IN_FLIGHT = 64


def progress(text: str) -> None:
    fresh_mesh.progress("inbox", text)


class Streams:
    """One inbox stream per recipient; arrival times by notification id."""

    def __init__(self, clients: list[Client], recipients: list[str]):
        self.arrived: dict[str, list[float]] = {}  # notification id -> arrival times (s since the epoch)
        self.items = 0
        self._acks = asyncio.Semaphore(ACKS_IN_FLIGHT)
        self._tasks = [asyncio.create_task(self._stream(clients[i % len(clients)], rid))
                       for i, rid in enumerate(recipients)]
        self._pending: set[asyncio.Task] = set()

    async def _stream(self, client: Client, rid: str) -> None:
        async for items in client.subscribe_inbox(rid, 100):
            now = time.time()
            for item in items:
                self.arrived.setdefault(item.notification_id, []).append(now)
            self.items += len(items)
            task = asyncio.create_task(self._ack(client, rid, [i.notification_id for i in items]))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _ack(self, client: Client, rid: str, nids: list[str]) -> None:
        async with self._acks:
            await client.ack_inbox(rid, nids)

    async def acknowledged(self, timeout_s: float) -> float:
        """Waits until the items got so far are acknowledged (the next phase then
        measures streams that are otherwise idle); returns the seconds it took."""
        started = time.monotonic()
        while self._pending and time.monotonic() - started < timeout_s:
            await asyncio.wait(list(self._pending), timeout=timeout_s - (time.monotonic() - started))
        return round(time.monotonic() - started, 2)

    async def wait(self, nids: dict[str, int], timeout_s: float) -> bool:
        """Until each notification arrived on as many streams as it named recipients."""
        deadline = time.monotonic() + timeout_s
        while any(len(self.arrived.get(nid, ())) < count for nid, count in nids.items()):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._pending, return_exceptions=True)


async def missing(client: Client, streams: Streams, counts: dict[str, int]) -> dict[str, int]:
    """The log's state of the sends of the notifications some stream has not got
    yet: whether the pipeline is behind (queued, rendered) or the streams are (sent)."""
    found: dict[str, int] = {}
    for nid, count in counts.items():
        if len(streams.arrived.get(nid, ())) < count:
            async for page in client.notification_pages(nid):
                for send in page.sends:
                    name = notify_pb2.SendState.Name(send.state)
                    found[name] = found.get(name, 0) + 1
    return found


def summary(waits_ms: list[float]) -> dict:
    return {"items": len(waits_ms), "p50": round(percentile(waits_ms, 0.5)), "p99": round(percentile(waits_ms, 0.99)),
            "max": round(max(waits_ms))} if waits_ms else {"items": 0}


async def broadcast(client: Client, streams: Streams, recipients: list[str], data: dict,
                    timeout_s: float) -> dict:
    called: dict[str, float] = {}
    counts: dict[str, int] = {}

    async def one(batch: list[str]) -> None:
        at = time.time()
        nid = await client.notify(TEMPLATE, CATEGORY, batch, data=data)
        called[nid], counts[nid] = at, len(batch)

    started = time.monotonic()
    await asyncio.gather(*(one(recipients[i:i + PER_CALL]) for i in range(0, len(recipients), PER_CALL)))
    done = await streams.wait(counts, timeout_s)
    waits = [(t - called[nid]) * 1000 for nid in counts for t in streams.arrived.get(nid, ())]
    line = {**summary(waits), "all_s": round(time.monotonic() - started, 2)}
    if not done:
        line["error"] = f"not every item arrived within {timeout_s}s"
        line["log_states_of_those_missing"] = await missing(client, streams, counts)
    return line


async def steady(client: Client, streams: Streams, recipients: list[str], rate: float, duration: float,
                 timeout_s: float) -> dict:
    called: dict[str, float] = {}
    pending: set[asyncio.Task] = set()

    async def one(k: int) -> None:
        at = time.time()
        # data unlike the broadcasts' (the same data to a recipient again is a duplicate, suppressed)
        nid = await client.notify(TEMPLATE, CATEGORY, [random.choice(recipients)], data={"n": k, "steady": True})
        called[nid] = at

    started = time.monotonic()
    total = int(rate * duration)
    for k in range(total):
        await asyncio.sleep(max(0.0, started + k / rate - time.monotonic()))
        task = asyncio.create_task(one(k))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    done = await streams.wait({nid: 1 for nid in called}, timeout_s)
    waits = [(streams.arrived[nid][0] - at) * 1000 for nid, at in called.items() if nid in streams.arrived]
    line = {"rate": rate, "notifications": total, **summary(waits)}
    if not done:
        line["error"] = f"not every item arrived within {timeout_s}s"
        line["log_states_of_those_missing"] = await missing(client, streams, {nid: 1 for nid in called})
    return line


async def run(mesh: LocalMesh, args) -> dict:
    frontend_pid = mesh.processes["frontend-1"].popen.pid
    recipients = [f"u{i:06d}" for i in range(args.streams)]
    line: dict = {}
    async with Client(mesh.frontend_addr, timeout_s=60) as client:
        await table_ready(client)
        async for _ in client.import_recipients(notify_pb2.Recipient(id=rid) for rid in recipients):
            pass
        await client.create_category(CATEGORY, description="bench: no limit")
        await client.create_template(notify_pb2.Template(name=TEMPLATE, contents=[notify_pb2.TemplateContent(
            channel=notify_pb2.IN_APP, subject="Hello {{ recipient.id }}", text="Item {{ data.n }}",
            json_body='{"n": {{ data.n }}}')]))
        progress(f"{len(recipients)} recipients loaded")
        rss_before = rss_mib(frontend_pid)
        clients = [Client(mesh.frontend_addr, timeout_s=60) for _ in range(args.connections)]
        streams = Streams(clients, recipients)
        try:
            warm = await broadcast(client, streams, recipients, {"n": 0}, args.max_seconds)
            progress(f"warm-up: every stream got an item ({warm})")
            if "error" in warm:
                return {"error": "warm-up: " + warm["error"]}
            line["warm_up_acked_s"] = await streams.acknowledged(args.max_seconds)
            line["frontend_rss_mib"] = {"before_streams": round(rss_before, 1),
                                        "with_streams": round(rss_mib(frontend_pid), 1)}
            before, cpu_started = cpu_by_process(mesh), time.monotonic()
            line["broadcast"] = await broadcast(client, streams, recipients, {"n": 1}, args.max_seconds)
            line["broadcast"]["acked_s"] = await streams.acknowledged(args.max_seconds)
            progress(f"broadcast: {line['broadcast']}")
            line["steady"] = await steady(client, streams, recipients, args.rate, args.duration, args.max_seconds)
            progress(f"steady: {line['steady']}")
            after, wall = cpu_by_process(mesh), time.monotonic() - cpu_started
            line["cpu_s"] = {name: round(after[name] - before.get(name, 0.0), 1) for name in sorted(after)}
            line["wall_s"] = round(wall, 1)
        finally:
            await streams.close()
            for c in clients:
                await c.close()
    return line


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=10_000, help="recipients, one stream each")
    p.add_argument("--connections", type=int, default=20, help="client connections the streams share")
    p.add_argument("--rate", type=float, default=20.0, help="steady: Notify calls per second (one recipient each)")
    p.add_argument("--duration", type=float, default=10.0, help="steady: seconds of Notify calls")
    p.add_argument("--max-seconds", type=float, default=300.0, help="the most a phase waits for its items")
    p.add_argument("--keep", action="store_true", help="keep the mesh's data dir (logs/*.log)")
    args = p.parse_args()
    if not 1 <= args.streams <= 20_000 or args.connections < 1 or args.rate <= 0:
        p.error("--streams 1 to 20,000 (a frontend's most), --connections at least 1, --rate above 0")
    line = header("inbox", streams=args.streams, connections=args.connections)
    return run_on_fresh_mesh(line, lambda mesh: run(mesh, args), args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
