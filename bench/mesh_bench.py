"""Benchmarks of a local notifymesh mesh, through the asyncio Python client.

Starts its own mesh (etcd + metadata + 3 storage + sender + frontend, each an OS
process on free loopback ports) in a temporary directory, runs the benchmarks and
stops the mesh. Each result is ONE JSON line on stdout; progress goes to stderr.

    .venv/bin/python bench/mesh_bench.py                         # everything, defaults
    .venv/bin/python bench/mesh_bench.py --messages 2000 --duration 3
    .venv/bin/python bench/mesh_bench.py --only e2e_latency --subscriptions 1,10
    .venv/bin/python bench/mesh_bench.py --only failover --failover-seconds 12

See bench/README.md for what each line means.
"""

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Runnable as a plain script from anywhere: the repo root holds deploy/, notifymesh/, gen/.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.fresh_mesh import started_mesh  # noqa: E402
from deploy.local import LocalMesh  # noqa: E402
from notifymesh import errors  # noqa: E402
from notifymesh.client import Client  # noqa: E402
from notifymesh.contracts import AckId  # noqa: E402
from notifymesh.server.ring import Ring  # noqa: E402

BENCHES = ("publish_batched", "publish_unbatched", "e2e_latency", "webhook", "fanout_streams", "deliver", "failover")
# The mesh's own bound (metadata/store.py MAX_REPLICATION_FACTOR); the mesh caps a
# topic's replica set at the live storage nodes (3 here) when the topic is created.
MAX_REPLICATION_FACTOR = 5

BATCH_SIZE = 500
BATCHED_IN_FLIGHT = 8
UNBATCHED_IN_FLIGHT = 32
# e2e: default cap on Publish calls in flight (--max-in-flight); when reached the
# publisher waits (and so falls behind schedule, sending at once when there is room).
E2E_MAX_IN_FLIGHT = 256
STRAGGLER_WAIT_S = 15.0
WARMUP_WAIT_S = 15.0
# After every expected message arrived: a short look for late duplicates.
SETTLE_S = 0.5
HEADER = struct.Struct(">QQ")  # send time (time.time_ns()), sequence number
# failover: one publisher, one call at a time, FAILOVER_BATCH messages a call; the
# leader of partition 0 is SIGKILLed FAILOVER_KILL_AFTER_S after publishing starts.
FAILOVER_BATCH = 20
FAILOVER_REPLICATION_FACTOR = 3
FAILOVER_KILL_AFTER_S = 3.0
LEADER_WAIT_S = 20.0  # for a fresh topic's first leader, before a run starts
FAILOVER_LEADER_WAIT_S = 10.0  # for a leader to show in the cluster status before the kill
# After a failed call: a short pause so a call that fails at once does not spin.
FAILOVER_RETRY_PAUSE_S = 0.05
FAILOVER_DELIVERY_WAIT_S = 60.0  # for every acknowledged message to be delivered after the run


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> dict:
    uname = platform.uname()
    return {"nproc": os.cpu_count(), "processor": platform.processor() or uname.machine,
            "system": f"{uname.system} {uname.release}", "python": platform.python_version()}


def emit(bench: str, params: dict, results: dict) -> None:
    line = {"bench": bench, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "params": params, "results": results}
    print(json.dumps(line), flush=True)


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), -(-len(sorted_values) * p // 100)))
    return sorted_values[int(rank) - 1]


def latency_summary(values_ms: list[float]) -> dict:
    values = sorted(values_ms)

    def r(v):
        return None if v is None else round(v, 3)
    return {"p50_ms": r(percentile(values, 50)), "p90_ms": r(percentile(values, 90)),
            "p99_ms": r(percentile(values, 99)), "max_ms": r(values[-1] if values else None),
            "mean_ms": r(sum(values) / len(values) if values else None)}


def error_kind(e: BaseException) -> str:
    return type(e).__name__ + (f":{e.code().name}" if hasattr(e, "code") else "")


def unique(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:10]}"


def payload(size: int, seq: int) -> bytes:
    """size bytes: send time (ns) in the first 8, the sequence number in the next 8."""
    head = HEADER.pack(time.time_ns(), seq)
    if size <= len(head):
        return head[:size]
    return head + b"x" * (size - len(head))


# -- publish throughput ----------------------------------------------------------

async def shard_of(client: Client, topic: str, partition: int = 0):
    """The ClusterStatus shard of topic/partition, None when not (yet) listed."""
    status = await client.get_cluster_status()
    return next((s for s in status.shards if s.topic == topic and s.partition == partition), None)


async def wait_for_leader(client: Client, topic: str, timeout: float, partition: int = 0):
    """Polls the cluster status until topic/partition has a leader; returns the shard
    (None when none was elected within timeout). A fresh topic's leader is elected
    on the storage nodes' next tick: waiting keeps that out of the measurement."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            shard = await shard_of(client, topic, partition)
        except Exception as e:
            log(f"cluster status failed: {error_kind(e)}")
            shard = None
        if shard is not None and shard.leader:
            return shard
        if time.monotonic() >= deadline:
            log(f"warning: no leader of {topic}/{partition} within {timeout:g}s")
            return None
        await asyncio.sleep(0.1)


async def publish_throughput(client: Client, n: int, size: int, batch: int, in_flight: int,
                             timeout_s: float, replication_factor: int) -> dict:
    """Publishes n messages in batches of `batch`, at most `in_flight` calls at once,
    to a fresh topic of the given replication factor."""
    topic = unique("pub")
    await client.create_topic(topic, replication_factor=replication_factor)
    t0 = time.monotonic()
    shard = await wait_for_leader(client, topic, LEADER_WAIT_S)
    leader_wait = time.monotonic() - t0
    replicas = len(shard.replicas) if shard is not None else None  # the mesh caps it at live nodes
    body = b"p" * size
    batches = [min(batch, n - start) for start in range(0, n, batch)]
    semaphore = asyncio.Semaphore(in_flight)
    call_ms: list[float] = []
    ok = errors = 0
    error_kinds: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s

    async def one(count: int) -> None:
        nonlocal ok, errors
        async with semaphore:
            if time.monotonic() > deadline:
                errors += count
                error_kinds["skipped_after_timeout"] = error_kinds.get("skipped_after_timeout", 0) + count
                return
            t0 = time.perf_counter()
            try:
                ids = await client.publish(topic, [body] * count)
            except Exception as e:  # counted, not fatal: the line reports them
                errors += count
                kind = type(e).__name__ + (f":{e.code().name}" if hasattr(e, "code") else "")
                error_kinds[kind] = error_kinds.get(kind, 0) + 1
                return
            call_ms.append((time.perf_counter() - t0) * 1000)
            ok += len(ids)

    start = time.perf_counter()
    tasks = [asyncio.create_task(one(count)) for count in batches]
    done, pending = await asyncio.wait(tasks, timeout=timeout_s + 35)  # a call's own timeout is 30 s
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.perf_counter() - start
    return {"replicas": replicas, "leader_wait_s": round(leader_wait, 3),
            "published": ok, "errors": errors, "error_kinds": error_kinds, "timed_out_calls": len(pending),
            "elapsed_s": round(elapsed, 3), "msgs_per_s": round(ok / elapsed, 1) if elapsed else None,
            "mb_per_s": round(ok * size / elapsed / 1e6, 3) if elapsed else None,
            "calls": len(call_ms), "call_latency": latency_summary(call_ms)}


# -- end-to-end latency ----------------------------------------------------------

class Receiver:
    """One streaming subscriber of one subscription: records first-delivery latency
    per message and acknowledges every frame (acks run beside the stream, so the
    receive timestamp of the next frame does not wait for an ack's round trip)."""

    def __init__(self, client: Client, subscription: str):
        self.client, self.subscription = client, subscription
        self.first_seen: dict[str, float] = {}  # message id -> latency ms (first delivery)
        self.seqs: dict[str, int] = {}  # message id -> sequence
        self.recv_ns: dict[str, int] = {}  # message id -> time.time_ns() at first delivery
        self.deliveries = 0
        self.redelivered = 0  # delivery_attempt > 1
        self.ack_errors = 0
        self._acks: set[asyncio.Task] = set()

    async def run(self) -> None:
        async for frame in self.client.subscribe_frames(self.subscription):
            now_ns = time.time_ns()
            for received in frame:
                message = received.message
                self.deliveries += 1
                if received.delivery_attempt > 1:
                    self.redelivered += 1
                if message.message_id in self.first_seen:
                    continue
                sent_ns, seq = HEADER.unpack_from(message.data.ljust(HEADER.size, b"\0"))
                self.seqs[message.message_id] = seq
                self.recv_ns[message.message_id] = now_ns
                self.first_seen[message.message_id] = (now_ns - sent_ns) / 1e6
            if frame:
                task = asyncio.create_task(self._ack([m.ack_id for m in frame]))
                self._acks.add(task)
                task.add_done_callback(self._acks.discard)

    async def _ack(self, ack_ids: list[str]) -> None:
        try:
            await self.client.acknowledge(self.subscription, ack_ids)
        except Exception:
            self.ack_errors += 1

    async def drain_acks(self, timeout: float) -> None:
        if self._acks:
            await asyncio.wait(list(self._acks), timeout=timeout)

    def has_all(self, ids: set[str]) -> bool:
        return ids.issubset(self.first_seen)


async def wait_until(condition, timeout: float, poll_s: float = 0.02) -> bool:
    """Polls condition until it holds (True) or timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


async def e2e_latency(addr: str, k: int, size: int, rate: float, duration: float,
                      max_in_flight: int) -> tuple[dict, dict]:
    topic = unique("e2e")
    planned = max(1, int(round(rate * duration)))
    async with Client(addr) as admin:
        await admin.create_topic(topic)
        subscriptions = [f"{topic}-sub{i}" for i in range(k)]
        for name in subscriptions:
            await admin.create_subscription(name, topic)

    sub_clients = [Client(addr) for _ in range(k)]  # one channel per subscriber
    publisher = Client(addr)
    receivers = [Receiver(c, s) for c, s in zip(sub_clients, subscriptions)]
    tasks = [asyncio.create_task(r.run()) for r in receivers]
    try:
        # Warm-up: one message every stream must see before the clock starts, so
        # stream set-up is not counted as latency.
        warm_ids = set(await publisher.publish(topic, [payload(size, 2**64 - 1)]))
        if not await wait_until(lambda: all(r.has_all(warm_ids) for r in receivers), WARMUP_WAIT_S):
            log(f"warning: warm-up message not seen by every subscriber within {WARMUP_WAIT_S}s")

        published: dict[str, int] = {}  # message id -> seq
        publish_ms: list[float] = []
        publish_errors: dict[str, int] = {}
        in_flight: set[asyncio.Task] = set()
        room = asyncio.Semaphore(max_in_flight)
        behind_ms: list[float] = []  # how late each send was against its schedule

        async def send(seq: int) -> None:
            try:
                t0 = time.perf_counter()
                ids = await publisher.publish(topic, [payload(size, seq)])
                publish_ms.append((time.perf_counter() - t0) * 1000)
                published[ids[0]] = seq
            except Exception as e:
                kind = type(e).__name__ + (f":{e.code().name}" if hasattr(e, "code") else "")
                publish_errors[kind] = publish_errors.get(kind, 0) + 1
            finally:
                room.release()

        log(f"e2e K={k}: publishing {planned} messages at {rate:g}/s")
        start, start_wall_ns = time.monotonic(), time.time_ns()
        hard_stop = start + duration * 2 + 10  # bound even when the mesh stalls
        sent = 0
        for seq in range(planned):
            target = start + seq / rate  # absolute schedule: no drift
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await asyncio.wait_for(room.acquire(), max(0.0, hard_stop - time.monotonic()))
            except TimeoutError:
                break
            if time.monotonic() > hard_stop:
                room.release()
                break
            behind_ms.append(max(0.0, (time.monotonic() - target) * 1000))
            task = asyncio.create_task(send(seq))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            sent += 1
        send_elapsed = time.monotonic() - start
        if in_flight:
            _, stuck = await asyncio.wait(list(in_flight), timeout=35)
            for task in stuck:
                task.cancel()
        log(f"e2e K={k}: {len(published)} published in {send_elapsed:.2f}s; waiting for delivery")

        ids = set(published)
        complete = await wait_until(lambda: all(r.has_all(ids) for r in receivers), STRAGGLER_WAIT_S)
        if complete:
            await asyncio.sleep(SETTLE_S)  # a look for late duplicates
        waited = time.monotonic() - start - send_elapsed
        for r in receivers:
            await r.drain_acks(5)
    finally:
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log(f"warning: subscriber ended with {task.exception()!r}")
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in [publisher, *sub_clients]:
            await c.close()

    latencies: list[float] = []
    from_schedule: list[float] = []  # receive time - scheduled send time: includes publisher lag
    delivered = missing = duplicates = unknown = redelivered = ack_errors = 0
    per_subscription_missing = []
    for r in receivers:
        got = [mid for mid in r.first_seen if mid in ids]
        latencies.extend(r.first_seen[mid] for mid in got)
        from_schedule.extend((r.recv_ns[mid] - start_wall_ns) / 1e6 - r.seqs[mid] * 1000 / rate for mid in got)
        delivered += len(got)
        miss = len(ids) - len(got)
        missing += miss
        per_subscription_missing.append(miss)
        # every delivery beyond the first of a message (warm-up included)
        duplicates += r.deliveries - len(r.first_seen)
        unknown += sum(1 for mid in r.first_seen if mid not in ids and mid not in warm_ids)
        redelivered += r.redelivered
        ack_errors += r.ack_errors

    params = {"subscriptions": k, "size": size, "rate": rate, "duration_s": duration, "planned": planned,
              "subscribers_per_subscription": 1, "publish_batch": 1, "max_in_flight": max_in_flight}
    results = {
        "sent": sent, "published": len(published), "publish_errors": publish_errors,
        "achieved_rate": round(len(published) / send_elapsed, 1) if send_elapsed else None,
        "send_elapsed_s": round(send_elapsed, 3),
        "schedule_lag": latency_summary(behind_ms),
        "expected": len(published) * k, "delivered": delivered, "missing": missing, "duplicates": duplicates,
        "missing_per_subscription": per_subscription_missing,
        "unexpected": unknown,  # delivered ids whose Publish call failed or timed out
        "redelivered": redelivered, "ack_errors": ack_errors,
        "complete": complete, "wait_after_send_s": round(waited, 3),
        "latency": latency_summary(latencies),
        "latency_from_schedule": latency_summary(from_schedule),
        "publish_call_latency": latency_summary(publish_ms),
    }
    return params, results


# -- failover --------------------------------------------------------------------

async def failover(mesh: LocalMesh, seconds: float, max_messages: int, size: int) -> tuple[dict, dict]:
    """One publisher, one call of FAILOVER_BATCH messages at a time, for at most
    `seconds` and `max_messages`; FAILOVER_KILL_AFTER_S in, the leader of partition 0
    is SIGKILLed. After the run the node is restarted and the one subscription
    (created before publishing) is read until every acknowledged id arrived."""
    addr = mesh.frontend_addr
    topic = unique("failover")
    subscription = f"{topic}-sub"
    admin, publisher, sub_client = Client(addr), Client(addr), Client(addr)
    receiver = Receiver(sub_client, subscription)
    receive_task = None
    killed: str | None = None
    try:
        await admin.create_topic(topic, replication_factor=FAILOVER_REPLICATION_FACTOR)
        await admin.create_subscription(subscription, topic)
        shard = await wait_for_leader(admin, topic, LEADER_WAIT_S)
        replicas = list(shard.replicas) if shard is not None else []

        acked: dict[str, int] = {}  # message id -> seq
        ack_times: list[float] = []  # monotonic time of each acknowledged call
        call_ms: list[float] = []
        failed_calls = 0
        failed_messages = 0
        error_kinds: dict[str, int] = {}
        kill_at: float | None = None
        start = time.monotonic()
        deadline = start + seconds

        async def publish_loop() -> int:
            nonlocal failed_calls, failed_messages
            seq = 0
            while time.monotonic() < deadline and seq < max_messages:
                count = min(FAILOVER_BATCH, max_messages - seq)
                batch = [payload(size, seq + i) for i in range(count)]
                t0 = time.perf_counter()
                try:
                    ids = await publisher.publish(topic, batch)
                except Exception as e:  # counted, not fatal
                    failed_calls += 1
                    failed_messages += count
                    kind = error_kind(e)
                    error_kinds[kind] = error_kinds.get(kind, 0) + 1
                    await asyncio.sleep(FAILOVER_RETRY_PAUSE_S)
                else:
                    ack_times.append(time.monotonic())
                    call_ms.append((time.perf_counter() - t0) * 1000)
                    for i, message_id in enumerate(ids):
                        acked[message_id] = seq + i
                seq += count
            return seq

        async def kill_leader() -> None:
            nonlocal killed, kill_at
            await asyncio.sleep(FAILOVER_KILL_AFTER_S)
            current = await wait_for_leader(admin, topic, min(FAILOVER_LEADER_WAIT_S, deadline - time.monotonic()))
            if current is None:
                log("failover: no leader in the cluster status; nothing killed")
                return
            killed = current.leader
            log(f"failover: SIGKILL {killed} (leader of {topic}/0, replicas {list(current.replicas)}) "
                f"at {time.monotonic() - start:.2f}s, {len(acked)} acknowledged so far")
            await asyncio.to_thread(mesh.kill, killed, signal.SIGKILL)
            kill_at = time.monotonic()  # once the process is gone (reaped)

        log(f"failover: publishing up to {max_messages} messages for at most {seconds:g}s, "
            f"{FAILOVER_BATCH} per call, one call at a time; leader killed after {FAILOVER_KILL_AFTER_S:g}s")
        killer = asyncio.create_task(kill_leader())
        try:
            sent = await publish_loop()
        finally:
            if not killer.done() and killed is None:  # publishing ended first (count bound): no kill
                log("failover: publishing ended before the kill; nothing killed")
                killer.cancel()
            await asyncio.gather(killer, return_exceptions=True)
        end = time.monotonic()
        publish_elapsed = end - start
        log(f"failover: {len(acked)} acknowledged, {failed_calls} failed calls in {publish_elapsed:.2f}s")

        new_leader = None
        try:
            after = await shard_of(admin, topic)
            new_leader = after.leader if after is not None else None
        except Exception as e:
            log(f"failover: cluster status failed: {error_kind(e)}")

        restart_s = restart_error = None
        if killed is not None:
            log(f"failover: restarting {killed}")
            t0 = time.monotonic()
            try:
                await asyncio.to_thread(mesh.restart, killed)
                restart_s = round(time.monotonic() - t0, 3)
            except Exception as e:
                restart_error = f"{type(e).__name__}: {e}"
                log(f"failover: restart of {killed} failed: {restart_error}")

        # The subscription existed before the first publish: every acknowledged id must come.
        receive_task = asyncio.create_task(receiver.run())
        ids = set(acked)
        t0 = time.monotonic()
        complete = await wait_until(lambda: receiver.has_all(ids), FAILOVER_DELIVERY_WAIT_S)
        if complete:
            await asyncio.sleep(SETTLE_S)  # a look for late duplicates
        delivery_wait = time.monotonic() - t0
        await receiver.drain_acks(5)
        if receive_task.done() and not receive_task.cancelled() and receive_task.exception() is not None:
            log(f"warning: subscriber ended with {receive_task.exception()!r}")
    finally:
        if receive_task is not None:
            receive_task.cancel()
            await asyncio.gather(receive_task, return_exceptions=True)
        for c in (admin, publisher, sub_client):
            await c.close()
        if killed is not None and not mesh.processes[killed].alive():
            log(f"failover: {killed} still down; restarting")
            try:
                await asyncio.to_thread(mesh.restart, killed)
            except Exception as e:
                log(f"failover: restart of {killed} failed: {type(e).__name__}: {e}")

    gaps = [b - a for a, b in zip(ack_times, ack_times[1:])]
    stall = max(gaps, default=None)
    stall_at = gaps.index(stall) if gaps else None
    after_kill = [t for t in ack_times if kill_at is not None and t > kill_at]
    delivered = sum(1 for mid in receiver.first_seen if mid in ids)
    by_seq: dict[int, int] = {}
    for seq in receiver.seqs.values():
        by_seq[seq] = by_seq.get(seq, 0) + 1
    params = {"replication_factor": FAILOVER_REPLICATION_FACTOR, "size": size, "batch": FAILOVER_BATCH,
              "in_flight": 1, "max_seconds": seconds, "max_messages": max_messages,
              "kill_after_s": FAILOVER_KILL_AFTER_S, "kill_signal": "SIGKILL", "partition": 0}
    results = {
        "replicas": replicas, "killed": killed, "new_leader": new_leader,
        "killed_at_s": round(kill_at - start, 3) if kill_at is not None else None,
        # longest gap between two successive acknowledged publish calls, and when it began
        "stall_s": round(stall, 3) if stall is not None else None,
        "stall_began_at_s": round(ack_times[stall_at] - start, 3) if stall_at is not None else None,
        # kill -> first acknowledgement after it (None: none came before the run ended)
        "first_ack_after_kill_s": round(after_kill[0] - kill_at, 3) if after_kill else None,
        "acked_calls_after_kill": len(after_kill),
        # last acknowledgement -> end of publishing (a long tail: it never recovered)
        "no_ack_at_end_s": round(end - ack_times[-1], 3) if ack_times else round(publish_elapsed, 3),
        "sent": sent, "acknowledged": len(acked), "failed_calls": failed_calls, "failed_messages": failed_messages,
        "error_kinds": error_kinds, "publish_elapsed_s": round(publish_elapsed, 3),
        "acked_msgs_per_s": round(len(acked) / publish_elapsed, 1) if publish_elapsed else None,
        "call_latency": latency_summary(call_ms),
        "restart_s": restart_s, "restart_error": restart_error,
        "delivered": delivered, "missing": len(ids) - delivered,
        # deliveries beyond the first of a message id
        "duplicates": receiver.deliveries - len(receiver.first_seen),
        # payloads (sequence numbers) delivered under more than one message id
        "duplicate_payloads": sum(n - 1 for n in by_seq.values() if n > 1),
        # delivered ids whose Publish call failed (stored, but the client was not told)
        "unexpected": sum(1 for mid in receiver.first_seen if mid not in ids),
        "redelivered": receiver.redelivered, "ack_errors": receiver.ack_errors,
        "complete": complete, "delivery_wait_s": round(delivery_wait, 3),
    }
    return params, results


# -- webhook (push subscriptions) ------------------------------------------------

class WebhookReceiver:
    """One local HTTP endpoint for every push subscription: answers 200 to every
    POST and records, per (subscription, message_id), the first arrival time and
    the number of POSTs. An aiohttp server on the bench's event loop when aiohttp
    is importable, else a stdlib ThreadingHTTPServer (HTTP/1.1 keep-alive) in a thread."""

    def __init__(self):
        self.first: dict[tuple[str, str], float] = {}  # (subscription, id) -> monotonic time of first POST
        self.posts: dict[tuple[str, str], int] = {}  # (subscription, id) -> POSTs
        self.distinct: dict[str, int] = {}  # subscription -> distinct ids received
        self.bad_requests = 0  # bodies that were not the mesh's JSON
        self._lock = threading.Lock()
        self.kind = self.url = None
        self._runner = self._server = None

    def record(self, body: bytes) -> None:
        now = time.monotonic()
        try:
            doc = json.loads(body)
            key = (doc["subscription"], doc["message_id"])
        except (ValueError, KeyError, TypeError):
            with self._lock:
                self.bad_requests += 1
            return
        with self._lock:
            n = self.posts.get(key, 0)
            self.posts[key] = n + 1
            if n == 0:
                self.first[key] = now
                self.distinct[key[0]] = self.distinct.get(key[0], 0) + 1

    async def start(self) -> str:
        try:
            from aiohttp import web
        except ImportError:
            web = None
        if web is not None:
            async def handle(request):
                self.record(await request.read())
                return web.Response(status=200)
            app = web.Application(client_max_size=16 * 1024 * 1024)
            app.router.add_post("/{tail:.*}", handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            port = self._runner.addresses[0][1]
            self.kind = "aiohttp"
        else:
            receiver = self

            class Handler(BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.1"  # keep-alive: the sender reuses connections

                def do_POST(self):
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    receiver.record(body)
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

                def log_message(self, *args):
                    pass

            class Server(ThreadingHTTPServer):
                daemon_threads = True
                request_queue_size = 1024

                def handle_error(self, request, client_address):
                    if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                        super().handle_error(request, client_address)  # a reset by the sender is no news

            self._server = Server(("127.0.0.1", 0), Handler)
            port = self._server.server_address[1]
            threading.Thread(target=self._server.serve_forever, daemon=True, name="webhook").start()
            self.kind = "stdlib ThreadingHTTPServer"
        self.url = f"http://127.0.0.1:{port}"
        log(f"webhook receiver ({self.kind}) on {self.url}")
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def received(self, subscriptions: list[str]) -> int:
        with self._lock:
            return sum(self.distinct.get(s, 0) for s in subscriptions)


async def webhook(client: Client, receiver: WebhookReceiver, k: int, n: int, size: int,
                  timeout_s: float) -> tuple[dict, dict]:
    """K push subscriptions on a fresh topic to the one receiver; after a warm-up
    message reached all K, publishes n messages in batches of BATCH_SIZE (at most
    BATCHED_IN_FLIGHT calls in flight) and waits for K x n distinct deliveries."""
    topic = unique("hook")
    await client.create_topic(topic)
    subscriptions = [f"{topic}-sub{i}" for i in range(k)]
    created = []
    try:
        for i, name in enumerate(subscriptions):
            created.append(await client.create_subscription(name, topic,
                                                            push_endpoint=f"{receiver.url}/hook/{i}"))
        push_max_in_flight = created[0].push_config.max_in_flight if created else None
        await wait_for_leader(client, topic, LEADER_WAIT_S)
        # Warm-up: one message every subscription must get before the clock starts,
        # so starting the push workers is not counted.
        t0 = time.monotonic()
        warm_ids = await client.publish(topic, [payload(size, 2**64 - 1)])
        warm_keys = [(s, warm_ids[0]) for s in subscriptions]
        warm_ok = await wait_until(lambda: all(key in receiver.first for key in warm_keys), WARMUP_WAIT_S)
        warmup_s = time.monotonic() - t0
        if not warm_ok:
            log(f"warning: webhook warm-up message not pushed to every subscription within {WARMUP_WAIT_S}s")
        base = receiver.received(subscriptions)  # the warm-up deliveries

        log(f"webhook K={k}: publishing {n} x {size} B in batches of {BATCH_SIZE}")
        published: list[str] = []
        errors: dict[str, int] = {}
        room = asyncio.Semaphore(BATCHED_IN_FLIGHT)

        async def one(start_seq: int, count: int) -> None:
            async with room:
                try:
                    published.extend(await client.publish(topic, [payload(size, start_seq + i)
                                                                  for i in range(count)]))
                except Exception as e:  # counted, not fatal
                    errors[error_kind(e)] = errors.get(error_kind(e), 0) + count

        start = time.monotonic()
        deadline = start + timeout_s
        publishing = asyncio.gather(*(one(s, min(BATCH_SIZE, n - s)) for s in range(0, n, BATCH_SIZE)))
        try:
            await asyncio.wait_for(asyncio.shield(publishing), timeout_s)
        except TimeoutError:
            log(f"webhook K={k}: publishing not done within {timeout_s:g}s")
        publish_elapsed = time.monotonic() - start
        expected = len(published) * k
        complete = await wait_until(lambda: publishing.done() and receiver.received(subscriptions) - base >= expected,
                                    max(0.0, deadline - time.monotonic()))
        if not publishing.done():
            publishing.cancel()
            await asyncio.gather(publishing, return_exceptions=True)
            expected = len(published) * k
        if complete:
            await asyncio.sleep(SETTLE_S)  # a look for late duplicates
        waited = time.monotonic() - start
        # counts as of the end of the wait (pushes go on while the subscriptions are deleted)
        ids, names = set(published), set(subscriptions)
        with receiver._lock:
            keys = [(s, mid) for s in subscriptions for mid in ids if (s, mid) in receiver.first]
            last = max((receiver.first[key] for key in keys), default=None)
            posts = sum(receiver.posts[key] for key in keys)
            unexpected = sum(1 for (s, mid) in receiver.first if s in names and mid not in ids and mid not in warm_ids)
            bad_requests = receiver.bad_requests
    finally:
        for sub in created:
            try:
                await client.delete_subscription(sub.name)
            except Exception as e:
                log(f"warning: deleting {sub.name} failed: {error_kind(e)}")

    deliveries = len(keys)
    elapsed = (last - start) if last is not None else None
    per_sub = {s: 0 for s in subscriptions}
    for s, _ in keys:
        per_sub[s] += 1
    params = {"subscriptions": k, "messages": n, "size": size, "batch": BATCH_SIZE, "in_flight": BATCHED_IN_FLIGHT,
              "timeout_s": timeout_s, "receiver": receiver.kind, "push_max_in_flight": push_max_in_flight}
    results = {
        "published": len(published), "publish_errors": errors, "publish_elapsed_s": round(publish_elapsed, 3),
        "expected": expected, "deliveries": deliveries, "missing": expected - deliveries,
        "duplicates": posts - deliveries,  # POSTs beyond the first of a (subscription, id)
        "unexpected": unexpected,  # ids pushed whose Publish call failed
        "min_per_subscription": min(per_sub.values(), default=0),
        "max_per_subscription": max(per_sub.values(), default=0),
        "complete": complete, "warmup_ok": warm_ok, "warmup_s": round(warmup_s, 3),
        # first publish -> last distinct delivery
        "elapsed_s": round(elapsed, 3) if elapsed is not None else None,
        "delivered_per_s": round(deliveries / elapsed, 1) if elapsed else None,
        "wait_s": round(waited, 3), "bad_requests": bad_requests,
    }
    return params, results


# -- deliver: one partitioned subscription drained by the senders owning its pairs --

async def deliver(client: Client, n: int, size: int, partitions: int, max_outstanding: int, timeout_s: float,
                  senders: list[str]) -> tuple[dict, dict]:
    """A backlog of n messages on a fresh topic of `partitions` partitions (batches of
    BATCH_SIZE spread over them), then one Subscribe stream through the frontend
    drains it, acknowledging every frame; the clock runs from subscribing to the last
    distinct message. per_sender: messages by the sender owning their pair."""
    topic = unique("deliver")
    sub = f"{topic}-sub"
    await client.create_topic(topic, partitions=partitions)
    await client.create_subscription(sub, topic, ack_deadline_s=60)
    for partition in range(partitions):
        await wait_for_leader(client, topic, LEADER_WAIT_S, partition)
    room = asyncio.Semaphore(BATCHED_IN_FLIGHT)
    published: list[str] = []

    async def one(start_seq: int, count: int) -> None:
        async with room:
            published.extend(await client.publish(topic, [payload(size, start_seq + i) for i in range(count)]))
    log(f"deliver: backlog of {n} x {size} B on {partitions} partitions")
    await asyncio.gather(*(one(s, min(BATCH_SIZE, n - s)) for s in range(0, n, BATCH_SIZE)))
    seen: set[str] = set()
    by_partition: dict[int, int] = {}
    received = 0
    acks: set[asyncio.Task] = set()

    async def drain() -> None:
        nonlocal received
        async for frame in client.subscribe_frames(sub, max_outstanding=max_outstanding):
            received += len(frame)
            for m in frame:
                if m.message.message_id not in seen:
                    seen.add(m.message.message_id)
                    partition = AckId.parse(m.ack_id).partition
                    by_partition[partition] = by_partition.get(partition, 0) + 1
            task = asyncio.create_task(client.acknowledge(sub, [m.ack_id for m in frame]))
            acks.add(task)
            task.add_done_callback(acks.discard)
            if len(seen) >= len(published):
                return
    log(f"deliver: draining through one stream, max_outstanding {max_outstanding}, senders {senders}")
    start = time.monotonic()
    try:
        await asyncio.wait_for(drain(), timeout_s)
    except TimeoutError:
        log(f"deliver: not drained within {timeout_s:g}s")
    elapsed = time.monotonic() - start
    await asyncio.gather(*acks, return_exceptions=True)
    await client.delete_subscription(sub)
    ring = Ring(senders)
    per_sender: dict[str, int] = {}
    for partition, count in by_partition.items():
        owner = ring.owner(sub, partition)
        per_sender[owner] = per_sender.get(owner, 0) + count
    params = {"messages": n, "size": size, "partitions": partitions, "senders": len(senders),
              "max_outstanding": max_outstanding}
    results = {"published": len(published), "delivered": len(seen), "duplicates": received - len(seen),
               "elapsed_s": round(elapsed, 3), "msgs_per_s": round(len(seen) / elapsed, 1) if elapsed else None,
               "per_sender": per_sender}
    return params, results


# -- CPU accounting --------------------------------------------------------------

def _cpu_seconds(pid: int | str) -> float | None:
    """user + system CPU seconds of one process, from /proc (None where unavailable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields_ = f.read().rsplit(")", 1)[1].split()
        return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_snapshot(mesh: LocalMesh) -> dict[str, tuple[int, float | None] | None]:
    """name -> (pid, CPU seconds); the pid tells a restarted process from the one before."""
    snap = {"bench": (os.getpid(), _cpu_seconds("self"))}
    for name, process in mesh.processes.items():
        snap[name] = (process.popen.pid, _cpu_seconds(process.popen.pid)) if process.alive() else None
    return snap


def cpu_used(before: dict, after: dict) -> dict[str, float | None]:
    """CPU seconds each process (the bench client too) spent between two snapshots;
    None for a process not alive at both, or killed and restarted in between."""
    used = {}
    for name, now in after.items():
        then = before.get(name)
        ok = then is not None and now is not None and then[0] == now[0] and None not in (then[1], now[1])
        used[name] = round(now[1] - then[1], 2) if ok else None
    return used


# -- fan-out to many streams -----------------------------------------------------

FANOUT_CREATE_CONCURRENCY = 64
FANOUT_CONNECT_TIMEOUT_S = 300
FANOUT_DELIVERY_TIMEOUT_S = 30
FANOUT_WARM_UP_EVERY_S = 10
FANOUT_QUIET_CORES = 0.1  # the mesh counts as settled below this CPU use over a second
FANOUT_SETTLE_TIMEOUT_S = 120
FANOUT_IDLE_WINDOW_S = 5


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration, ValueError):
        return None


def _fanout_streams_process(addr: str, names: list[str], connected, go, results, done) -> None:
    """One client process: a Subscribe stream per name. Counts the streams that saw
    the warm-up message; after go, reports each stream's receive time of the
    measured message, once its acks of it were answered; closes its streams at done."""
    async def main():
        seen_warm: set[str] = set()
        measured: dict[str, int] = {}
        acked: set[str] = set()  # the streams whose ack of the measured message was answered

        async def consume(client: Client, name: str):
            async for frame in client.subscribe_frames(name, max_outstanding=10):
                now = time.time_ns()
                got = False
                for received in frame:
                    if received.message.data == b"warm-up":
                        if name not in seen_warm:
                            seen_warm.add(name)
                            connected.value += 1
                    else:
                        measured.setdefault(name, now)
                        got = True
                await client.acknowledge(name, [m.ack_id for m in frame])
                if got:
                    acked.add(name)

        async with Client(addr) as client:
            tasks = [asyncio.create_task(consume(client, name)) for name in names]
            while not go.is_set():
                await asyncio.sleep(0.05)
            give_up = time.monotonic() + FANOUT_DELIVERY_TIMEOUT_S
            while len(measured) < len(names) and time.monotonic() < give_up:
                await asyncio.sleep(0.01)
            while len(acked) < len(measured) and time.monotonic() < give_up:  # the acks' cost is measured too
                await asyncio.sleep(0.01)
            results.put(list(measured.values()))
            while not done.is_set():  # the streams' ends are not the message's cost
                await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


async def settle(mesh: LocalMesh) -> float:
    """Waits until the mesh's processes together use under FANOUT_QUIET_CORES for a
    second (bounded by FANOUT_SETTLE_TIMEOUT_S); returns the seconds waited."""
    started = time.monotonic()
    before = cpu_snapshot(mesh)
    while time.monotonic() - started < FANOUT_SETTLE_TIMEOUT_S:
        await asyncio.sleep(1)
        after = cpu_snapshot(mesh)
        used = sum(v for name, v in cpu_used(before, after).items() if name != "bench" and v)
        before = after
        if used < FANOUT_QUIET_CORES:
            break
    return round(time.monotonic() - started, 1)


async def fanout_streams(mesh: LocalMesh, streams: int, processes: int) -> tuple[dict, dict]:
    """streams subscriptions of one topic, one Subscribe stream each through the one
    frontend, spread over client processes; then one message, and how long until
    every stream has it. Also the frontend's memory with all streams open."""
    import multiprocessing
    params = {"streams": streams, "client_processes": processes, "replication_factor": 3}
    topic = unique("fanout")
    names = [f"{topic}-{i}" for i in range(streams)]
    async with Client(mesh.frontend_addr) as client:
        await client.create_topic(topic, replication_factor=3)
        await wait_for_leader(client, topic, 30)
        limit = asyncio.Semaphore(FANOUT_CREATE_CONCURRENCY)
        created = 0
        started = time.monotonic()

        async def create(name):
            nonlocal created
            async with limit:
                await client.create_subscription(name, topic)
            created += 1
            if created % 1000 == 0:
                log(f"fanout_streams: {created}/{streams} subscriptions created")

        await asyncio.gather(*(create(name) for name in names))
        create_s = time.monotonic() - started
        frontend_pid = mesh.processes["frontend-1"].popen.pid
        rss_before = _rss_mb(frontend_pid)
        ctx = multiprocessing.get_context("spawn")  # gRPC does not survive fork
        connected = [ctx.RawValue("q", 0) for _ in range(processes)]
        go, results, done = ctx.Event(), ctx.Queue(), ctx.Event()
        children = [ctx.Process(target=_fanout_streams_process, daemon=True,
                                args=(mesh.frontend_addr, names[i::processes], connected[i], go, results, done))
                    for i in range(processes)]
        for child in children:
            child.start()
        try:
            started = time.monotonic()
            give_up = started + FANOUT_CONNECT_TIMEOUT_S
            while sum(c.value for c in connected) < streams and time.monotonic() < give_up:
                # Tells when each stream is attached; again for the streams that attach later.
                try:
                    await client.publish(topic, [b"warm-up"])
                except (errors.Unavailable, errors.DeadlineExceeded) as e:  # under this load: the next round tries again
                    log(f"fanout_streams: warm-up not published: {e}")
                await asyncio.sleep(FANOUT_WARM_UP_EVERY_S)
                log(f"fanout_streams: {sum(c.value for c in connected)}/{streams} streams attached")
            attached = sum(c.value for c in connected)
            connect_s = time.monotonic() - started
            settle_s = await settle(mesh)  # warm-up deliveries and acks done: one message alone is measured
            idle_before = cpu_snapshot(mesh)
            await asyncio.sleep(FANOUT_IDLE_WINDOW_S)  # what the open streams cost with nothing to deliver
            idle_cores = {name: round(v / FANOUT_IDLE_WINDOW_S, 3)
                          for name, v in cpu_used(idle_before, cpu_snapshot(mesh)).items() if v is not None}
            rss_streams = _rss_mb(frontend_pid)
            log(f"fanout_streams: settled after {settle_s} s; publishing the measured message")
            go.set()
            message_cpu_before, message_started = cpu_snapshot(mesh), time.monotonic()
            sent_ns = time.time_ns()
            await client.publish(topic, [b"measured"])
            receipts = []
            for _ in children:
                receipts += await asyncio.to_thread(results.get, True, FANOUT_DELIVERY_TIMEOUT_S + 30)
            # What the one message cost each process, its acks included: from its publish
            # until every client's acks were answered, and FANOUT_IDLE_WINDOW_S more for what
            # follows them (the sender's acks to storage, the leader's saved state). Not until
            # the mesh settles: idle streams alone kept it near FANOUT_QUIET_CORES (up to 105 s).
            await asyncio.sleep(FANOUT_IDLE_WINDOW_S)
            message_window_s = round(time.monotonic() - message_started, 1)
            message_cpu_s = cpu_used(message_cpu_before, cpu_snapshot(mesh))
            # Every client closes its streams at once (the process ends): what that costs.
            teardown_cpu_before = cpu_snapshot(mesh)
            done.set()
            for child in children:
                await asyncio.to_thread(child.join, 30)
            await asyncio.sleep(FANOUT_IDLE_WINDOW_S)
            teardown_cpu_s = cpu_used(teardown_cpu_before, cpu_snapshot(mesh))
        finally:
            done.set()
            for child in children:
                child.join(10)
                if child.is_alive():
                    child.terminate()
    latencies = sorted((t - sent_ns) / 1e6 for t in receipts)
    return params, {"subscriptions_created_s": round(create_s, 1), "streams_attached": attached,
                    "attach_s": round(connect_s, 1), "settle_s": settle_s, "idle_cores": idle_cores,
                    "message_window_s": message_window_s, "message_cpu_s": message_cpu_s,
                    "teardown_cpu_s": teardown_cpu_s,
                    "received": len(latencies),
                    "all_received_ms": round(latencies[-1], 1) if len(latencies) == streams else None,
                    **latency_summary(latencies),
                    "frontend_rss_mb": {"before_streams": rss_before, "with_streams": rss_streams},
                    "sender_rss_mb": _rss_mb(mesh.processes["sender-1"].popen.pid)}


# -- driver ----------------------------------------------------------------------

async def run(mesh: LocalMesh, args, only: list[str], subscriptions: list[int]) -> None:
    addr = mesh.frontend_addr
    publish_runs = [("publish_batched", args.messages, BATCH_SIZE, BATCHED_IN_FLIGHT),
                    ("publish_unbatched", args.unbatched_messages, 1, UNBATCHED_IN_FLIGHT)]
    for bench, messages, batch, in_flight in publish_runs:
        if bench not in only:
            continue
        for rf in args.replication_factors:  # each on a fresh topic of that replication factor
            log(f"{bench}: {messages} x {args.size} B, {batch} per call, {in_flight} in flight, "
                f"replication factor {rf}")
            cpu0 = cpu_snapshot(mesh)
            async with Client(addr) as client:
                results = await publish_throughput(client, messages, args.size, batch, in_flight,
                                                   timeout_s=args.max_seconds, replication_factor=rf)
            results["cpu_s"] = cpu_used(cpu0, cpu_snapshot(mesh))
            emit(bench, {"messages": messages, "size": args.size, "batch": batch, "in_flight": in_flight,
                         "clients": 1, "replication_factor": rf}, results)
    if "e2e_latency" in only:
        for k in subscriptions:
            cpu0 = cpu_snapshot(mesh)
            params, results = await e2e_latency(addr, k, args.size, args.rate, args.duration, args.max_in_flight)
            results["cpu_s"] = cpu_used(cpu0, cpu_snapshot(mesh))
            emit("e2e_latency", params, results)
    if "webhook" in only:
        receiver = WebhookReceiver()
        await receiver.start()
        try:
            async with Client(addr) as client:
                for k in args.webhook_subscriptions:
                    cpu0 = cpu_snapshot(mesh)
                    params, results = await webhook(client, receiver, k, args.webhook_messages, args.size,
                                                    args.webhook_seconds)
                    results["cpu_s"] = cpu_used(cpu0, cpu_snapshot(mesh))
                    emit("webhook", params, results)
        finally:
            await receiver.stop()
    if "fanout_streams" in only:
        cpu0 = cpu_snapshot(mesh)
        params, results = await fanout_streams(mesh, args.fanout_streams, args.fanout_processes)
        results["cpu_s"] = cpu_used(cpu0, cpu_snapshot(mesh))
        emit("fanout_streams", params, results)
    if "deliver" in only:
        cpu0 = cpu_snapshot(mesh)
        async with Client(addr) as client:
            params, results = await deliver(client, args.deliver_messages, args.size, args.deliver_partitions,
                                            args.deliver_outstanding, args.max_seconds,
                                            [f"sender-{i}" for i in range(1, mesh.senders + 1)])
        results["cpu_s"] = cpu_used(cpu0, cpu_snapshot(mesh))
        emit("deliver", params, results)
    if "failover" in only:  # last: it kills (and restarts) a storage node
        cpu0 = cpu_snapshot(mesh)
        params, results = await failover(mesh, args.failover_seconds, args.failover_messages, args.size)
        results["cpu_s"] = cpu_used(cpu0, cpu_snapshot(mesh))
        emit("failover", params, results)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200000, help="messages of publish_batched (default 200000)")
    parser.add_argument("--unbatched-messages", type=int, default=None,
                        help="messages of publish_unbatched (default 3000, or --messages when that is smaller)")
    parser.add_argument("--size", type=int, default=256, help="payload bytes of every message (default 256)")
    parser.add_argument("--rate", type=float, default=1000, help="e2e publish rate, msg/s (default 1000)")
    parser.add_argument("--duration", type=float, default=10, help="e2e publish duration, s (default 10)")
    parser.add_argument("--subscriptions", default="1,10", help="e2e: one run per K in this list (default 1,10)")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma list of: {', '.join(BENCHES)}")
    parser.add_argument("--max-in-flight", type=int, default=E2E_MAX_IN_FLIGHT,
                        help=f"e2e: most Publish calls in flight (default {E2E_MAX_IN_FLIGHT})")
    parser.add_argument("--max-seconds", type=float, default=300,
                        help="time bound of each publish throughput run (default 300)")
    parser.add_argument("--replication-factors", default="1,3",
                        help="publish_batched/unbatched: one run per replication factor in this list (default 1,3)")
    parser.add_argument("--failover-seconds", type=float, default=12,
                        help=f"failover: most seconds of publishing (default 12; more than {FAILOVER_KILL_AFTER_S:g})")
    parser.add_argument("--failover-messages", type=int, default=100000,
                        help="failover: most messages published (default 100000)")
    parser.add_argument("--webhook-subscriptions", default="1,100",
                        help="webhook: one run per K push subscriptions in this list (default 1,100)")
    parser.add_argument("--webhook-messages", type=int, default=2000,
                        help="webhook: messages published per run (default 2000)")
    parser.add_argument("--webhook-seconds", type=float, default=120,
                        help="webhook: time bound of each run from the first publish (default 120)")
    parser.add_argument("--fanout-streams", type=int, default=10000,
                        help="fanout_streams: subscriptions, one stream each (default 10000)")
    parser.add_argument("--fanout-processes", type=int, default=4,
                        help="fanout_streams: client processes holding the streams (default 4)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="mesh data dir (default: a new temp dir, removed at the end unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the mesh data dir (logs/*.log) at the end")
    parser.add_argument("--senders", type=int, default=1, help="sender processes of the mesh (default 1)")
    parser.add_argument("--deliver-messages", type=int, default=100000, help="deliver: backlog (default 100000)")
    parser.add_argument("--deliver-partitions", type=int, default=4, help="deliver: topic partitions (default 4)")
    parser.add_argument("--deliver-outstanding", type=int, default=2000,
                        help="deliver: the stream's max_outstanding_messages (default 2000)")
    args = parser.parse_args(argv)
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in only if b not in BENCHES]
    if unknown:
        parser.error(f"unknown bench(es) {unknown}; choose from {list(BENCHES)}")
    try:
        subscriptions = [int(k) for k in args.subscriptions.split(",") if k.strip()]
    except ValueError:
        parser.error("--subscriptions must be a comma list of integers")
    if any(k < 1 for k in subscriptions) or not subscriptions:
        parser.error("--subscriptions must list positive integers")
    try:
        args.replication_factors = [int(rf) for rf in args.replication_factors.split(",") if rf.strip()]
    except ValueError:
        parser.error("--replication-factors must be a comma list of integers")
    if not args.replication_factors or any(not 1 <= rf <= MAX_REPLICATION_FACTOR for rf in args.replication_factors):
        parser.error(f"--replication-factors must list integers from 1 to {MAX_REPLICATION_FACTOR}")
    if args.failover_seconds <= FAILOVER_KILL_AFTER_S or args.failover_messages < 1:
        parser.error(f"--failover-seconds must be more than {FAILOVER_KILL_AFTER_S:g}, "
                     "--failover-messages positive")
    if (args.messages < 1 or args.unbatched_messages is not None and args.unbatched_messages < 1 or args.size < 16
            or args.rate <= 0 or args.duration <= 0 or args.max_in_flight < 1 or args.max_seconds <= 0):
        parser.error("--messages, --unbatched-messages, --rate, --duration, --max-in-flight and --max-seconds "
                     "must be positive, --size at least 16")
    try:
        args.webhook_subscriptions = [int(k) for k in args.webhook_subscriptions.split(",") if k.strip()]
    except ValueError:
        parser.error("--webhook-subscriptions must be a comma list of integers")
    if (not args.webhook_subscriptions or any(k < 1 for k in args.webhook_subscriptions)
            or args.webhook_messages < 1 or args.webhook_seconds <= 0):
        parser.error("--webhook-subscriptions must list positive integers, --webhook-messages and "
                     "--webhook-seconds must be positive")
    if args.senders < 1 or args.deliver_messages < 1 or args.deliver_partitions < 1 or args.deliver_outstanding < 1:
        parser.error("--senders, --deliver-messages, --deliver-partitions and --deliver-outstanding must be positive")
    if args.unbatched_messages is None:
        args.unbatched_messages = min(3000, args.messages)
    return args, only, subscriptions


def main(argv=None) -> int:
    args, only, subscriptions = parse_args(argv)
    made_temp = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="notifymesh-bench-")) if made_temp else args.data_dir
    mesh = None
    failed = True
    try:
        log(f"starting mesh in {data_dir / 'mesh'}")
        t0 = time.monotonic()
        mesh = started_mesh(data_dir / "mesh", log, senders=args.senders)
        log(f"mesh up in {time.monotonic() - t0:.1f}s; frontend {mesh.frontend_addr}")
        asyncio.run(run(mesh, args, only, subscriptions))
        failed = False
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        log("stopping mesh")
        if mesh is not None:
            mesh.stop()
        if made_temp and not args.keep and not failed:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            log(f"mesh data and logs kept in {data_dir / 'mesh'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
