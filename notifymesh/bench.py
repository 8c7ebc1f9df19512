"""`notifymesh bench`: the end-to-end workload of the peer-broker harness
(../shared/bench/peers/peer_bench.py) on a running mesh, through Publisher and
Subscriber, so the figures compare with NATS JetStream's and RabbitMQ's.

A fresh topic gets K subscriptions; K subscribers, each its own process, attach
and see one warm-up message; then P publisher processes send N messages in all,
SIZE bytes each, starting with (sequence u64, send time ns u64) as the peer
harness's do, with at most --window unacknowledged publishes in flight, at full
speed or at --rate. Every subscriber must see every sequence number. Progress
goes to stderr, one JSON line to stdout; the topic and subscriptions are deleted
at the end. Exit status 2 when a subscriber missed messages or a publish failed.
"""

import asyncio
import datetime
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import struct
import sys
import time
import uuid
from array import array

import notifymesh.server  # noqa: F401  first: it chooses gRPC's I/O path, for this process and its children
import grpc
import uvloop

from notifymesh import errors

from notifymesh.client import Client, default_addr
from notifymesh.publisher import Publisher
from notifymesh.subscriber import Subscriber

HEADER = struct.Struct("<QQ")  # sequence, send time (time.time_ns()): the peer harness's layout
WARMUP_SEQ = 2**64 - 1
START_TIMEOUT_S = 120  # for the processes to start and every subscriber to see the warm-up message
LEADER_WAIT_S = 20
PROGRESS_EVERY_S = 1.0
POLL_S = 0.05
SETTLE_S = 0.2  # after a subscriber has everything: a look for late duplicates


def log(line: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def percentile(sorted_values, p: float) -> float | None:
    """Nearest rank, as the peer harness computes it."""
    if not sorted_values:
        return None
    return sorted_values[max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))]


def r3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def describe(error: BaseException) -> str:
    if isinstance(error, errors.NotifymeshError):
        return f"{error.code.name}: {error.details}"
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return repr(error)


# -- subscriber process -------------------------------------------------------------

class Seen:
    """One subscriber's record: which sequence numbers arrived, how often, how late."""

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size
        self.seen = bytearray(n)
        self.unique = self.duplicates = self.bad = 0
        self.latencies_ms = array("d")
        self.last_ns = 0
        self.warmed_up = False

    def record(self, data: bytes) -> None:
        now = time.time_ns()
        if len(data) < HEADER.size:
            self.bad += 1
            return
        seq, sent_ns = HEADER.unpack_from(data)
        if seq == WARMUP_SEQ:
            self.warmed_up = True
        elif seq >= self.n or len(data) != self.size:
            self.bad += 1
        elif self.seen[seq]:
            self.duplicates += 1
        else:
            self.seen[seq] = 1
            self.unique += 1
            self.latencies_ms.append((now - sent_ns) / 1e6)
            self.last_ns = now


async def _subscribe(addr: str, subscription: str, args: dict, ready, progress) -> dict:
    seen = Seen(args["messages"], args["size"])
    async with Client(addr) as client, Subscriber(client, subscription,
                                                  max_outstanding_messages=args["window"]) as subscriber:
        async def consume():
            async for delivery in subscriber:
                seen.record(delivery.data)
                delivery.ack()

        consumer = asyncio.create_task(consume())
        deadline = time.monotonic() + START_TIMEOUT_S + args["timeout"]
        last_unique, last_progress = -1, time.monotonic()
        timed_out = None
        cpu0 = time.process_time()
        while seen.unique < seen.n and not consumer.done():
            await asyncio.sleep(POLL_S)
            now = time.monotonic()
            progress.value = seen.unique
            if seen.warmed_up and not ready.is_set():
                ready.set()
                last_progress = now  # the idle clock starts once attached
            if seen.unique != last_unique:
                last_unique, last_progress = seen.unique, now
            if seen.warmed_up and now - last_progress > args["idle_timeout"]:
                timed_out = f"no progress for {args['idle_timeout']:g}s"
                break
            if now > deadline:
                timed_out = f"overall timeout {args['timeout']:g}s"
                break
        cpu_s = time.process_time() - cpu0
        await asyncio.sleep(SETTLE_S)
        progress.value = seen.unique
        stream_error = repr(consumer.exception()) if consumer.done() and consumer.exception() else None
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
    return {"unique": seen.unique, "duplicates": seen.duplicates, "bad": seen.bad, "last_ns": seen.last_ns,
            "latencies_ms": seen.latencies_ms.tobytes(), "timed_out": timed_out, "stream_error": stream_error,
            "ack_errors": subscriber.ack_errors, "cpu_s": round(cpu_s, 2)}


def _subscriber_process(addr, subscription, args, ready, progress, results) -> None:
    try:
        results.put(("subscriber", uvloop.run(_subscribe(addr, subscription, args, ready, progress))))
    except KeyboardInterrupt:
        pass
    except Exception as e:  # reported to the parent rather than leaving it waiting
        results.put(("error", f"subscriber {subscription}: {describe(e)}"))


# -- publisher process ----------------------------------------------------------------

async def _publish(addr: str, topic: str, seqs: range, args: dict, window: int, rate: float | None,
                   ready, go, acked) -> dict:
    pad = b"\0" * (args["size"] - HEADER.size)
    room = asyncio.Semaphore(window)
    ack_ms = array("d")
    errors: list[str] = []

    def on_done(sent_ns: int, future: asyncio.Future) -> None:
        room.release()
        if future.cancelled():
            errors.append("cancelled")
        elif future.exception() is not None:
            errors.append(describe(future.exception()))
        else:
            ack_ms.append((time.time_ns() - sent_ns) / 1e6)
            acked.value += 1

    async with Client(addr) as client:
        await client.get_topic(topic)  # connected before the clock starts
        ready.set()
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, go.wait, START_TIMEOUT_S):
            raise TimeoutError("no start signal")
        publisher = Publisher(client, max_outstanding_messages=window)

        async def send_all():
            start = time.monotonic()
            for i, seq in enumerate(seqs):
                if rate:
                    delay = start + i / rate - time.monotonic()  # an absolute schedule: no drift
                    if delay > 0:
                        await asyncio.sleep(delay)
                await room.acquire()
                sent_ns = time.time_ns()
                future = await publisher.publish(topic, HEADER.pack(seq, sent_ns) + pad)
                future.add_done_callback(lambda f, sent_ns=sent_ns: on_done(sent_ns, f))
            for _ in range(window):  # until every publish is acknowledged
                await room.acquire()

        cpu0 = time.process_time()
        start_ns = time.time_ns()
        timed_out = None
        try:
            await asyncio.wait_for(send_all(), args["timeout"])
        except TimeoutError:
            timed_out = f"overall timeout {args['timeout']:g}s"
        end_ns = time.time_ns()
        cpu_s = time.process_time() - cpu0
        await publisher.close()
    return {"start_ns": start_ns, "end_ns": end_ns, "acked": len(ack_ms), "errors": len(errors),
            "first_error": errors[0] if errors else None, "ack_ms": ack_ms.tobytes(), "timed_out": timed_out,
            "cpu_s": round(cpu_s, 2)}


def _publisher_process(addr, topic, seqs, args, window, rate, ready, go, acked, results) -> None:
    try:
        results.put(("publisher", uvloop.run(_publish(addr, topic, seqs, args, window, rate, ready, go, acked))))
    except KeyboardInterrupt:
        pass
    except Exception as e:
        results.put(("error", f"publisher {seqs}: {describe(e)}"))


# -- the run ------------------------------------------------------------------------------

async def _set_up(addr: str, topic: str, subscriptions: list[str], args: dict, created: list) -> None:
    """Appends ("topic" or "subscription", name) to created as each exists."""
    async with Client(addr) as client:
        await client.create_topic(topic, partitions=args["topic_partitions"],
                                  replication_factor=args["replication_factor"])
        created.append(("topic", topic))
        for name in subscriptions:
            await client.create_subscription(name, topic)
            created.append(("subscription", name))
        # A fresh topic's leaders are elected on the storage nodes' next tick: not part of the run.
        deadline = time.monotonic() + LEADER_WAIT_S
        while time.monotonic() < deadline:
            status = await client.get_cluster_status()
            leaders = sum(1 for s in status.shards if s.topic == topic and s.leader)
            if leaders >= args["topic_partitions"]:
                break
            await asyncio.sleep(0.1)
        else:
            log(f"warning: not every partition of {topic} has a leader after {LEADER_WAIT_S}s")
        await client.publish(topic, [HEADER.pack(WARMUP_SEQ, time.time_ns()) + b"\0" * (args["size"] - HEADER.size)])


async def _tear_down(addr: str, created: list) -> None:
    """Deletes what _set_up created, subscriptions before their topic."""
    async with Client(addr, timeout_s=10) as client:
        for kind, name in reversed(created):
            try:
                await (client.delete_topic(name) if kind == "topic" else client.delete_subscription(name))
            except Exception as e:
                log(f"could not delete {kind} {name}: {describe(e)}")


def _wait_all(events, timeout: float, processes) -> bool:
    deadline = time.monotonic() + timeout
    while not all(e.is_set() for e in events):
        if time.monotonic() > deadline or any(not p.is_alive() for p in processes):
            return False
        time.sleep(POLL_S)
    return True


def _split(n: int, parts: int) -> list[range]:
    bounds = [n * i // parts for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


def check(args) -> str | None:
    """What is wrong with the arguments, or None."""
    if args.messages < 1 or args.subscribers < 0 or args.publishers < 1 or args.window < 1:
        return "--messages, --publishers and --window must be positive, --subscribers not negative"
    if args.size < HEADER.size:
        return f"--size must be at least {HEADER.size}"
    if args.rate is not None and args.rate <= 0 or args.timeout <= 0 or args.idle_timeout <= 0:
        return "--rate, --timeout and --idle-timeout must be positive"
    if args.publishers > args.messages or args.publishers > args.window:
        return "--publishers cannot exceed --messages or --window"
    return None


def run(args) -> int:
    problem = check(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    addr = args.addr or default_addr()
    params = {"messages": args.messages, "size": args.size, "subscribers": args.subscribers,
              "publishers": args.publishers, "rate": args.rate, "window": args.window,
              "topic_partitions": args.topic_partitions, "replication_factor": args.replication_factor,
              "timeout": args.timeout, "idle_timeout": args.idle_timeout, "addr": addr}
    topic = f"bench-{uuid.uuid4().hex[:10]}"
    subscriptions = [f"{topic}-sub{i}" for i in range(args.subscribers)]
    ctx = mp.get_context("spawn")  # gRPC does not survive fork
    results = ctx.Queue()
    processes: list = []
    created: list = []
    loadavg_start = os.getloadavg()
    try:
        log(f"topic {topic}: {args.topic_partitions} partition(s), {args.subscribers} subscription(s)")
        asyncio.run(_set_up(addr, topic, subscriptions, params, created))
        sub_ready = [ctx.Event() for _ in subscriptions]
        sub_progress = [ctx.RawValue("q", 0) for _ in subscriptions]
        for name, ready, progress in zip(subscriptions, sub_ready, sub_progress):
            processes.append(ctx.Process(target=_subscriber_process, daemon=True,
                                         args=(addr, name, params, ready, progress, results)))
        seq_ranges = _split(args.messages, args.publishers)
        window = args.window // args.publishers
        rate = args.rate / args.publishers if args.rate else None
        pub_ready = [ctx.Event() for _ in seq_ranges]
        pub_acked = [ctx.RawValue("q", 0) for _ in seq_ranges]
        go = ctx.Event()
        for seqs, ready, acked in zip(seq_ranges, pub_ready, pub_acked):
            processes.append(ctx.Process(target=_publisher_process, daemon=True,
                                         args=(addr, topic, seqs, params, window, rate, ready, go, acked, results)))
        for process in processes:
            process.start()
        if not _wait_all(sub_ready + pub_ready, START_TIMEOUT_S, processes):
            raise RuntimeError(f"processes not ready within {START_TIMEOUT_S}s: {_first_error(results)}")
        log(f"{args.subscribers} subscriber(s) attached; {args.publishers} publisher(s) sending {args.messages} "
            f"messages of {args.size} bytes" + (f" at {args.rate:g}/s" if args.rate else ""))
        go.set()

        collected = _collect(results, processes, args, pub_acked, sub_progress)
        for process in processes:
            process.join(10)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception as e:
        print(json.dumps({"system": "notifymesh", "params": params, "error": describe(e)}), flush=True)
        return 1
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(10)
        asyncio.run(_tear_down(addr, created))

    line = summary(params, collected["publisher"], collected["subscriber"], loadavg_start)
    print(json.dumps(line), flush=True)
    return 0 if line["missing"] == 0 and line["publish_errors"] == 0 else 2


def _collect(results, processes: list, args, pub_acked: list, sub_progress: list) -> dict[str, list[dict]]:
    """Every process's result, by kind, showing progress meanwhile; raises when a
    process failed, died without a result, or the run outlived its bound."""
    collected: dict[str, list[dict]] = {"publisher": [], "subscriber": []}
    deadline = time.monotonic() + args.timeout + args.idle_timeout + 60
    next_progress = time.monotonic() + PROGRESS_EVERY_S
    while sum(map(len, collected.values())) < len(processes):
        try:
            kind, result = results.get(timeout=POLL_S)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise RuntimeError("no result from every process in time")
            if not any(p.is_alive() for p in processes):
                raise RuntimeError("a process exited without a result")
        else:
            if kind == "error":
                raise RuntimeError(result)
            collected[kind].append(result)
        if time.monotonic() >= next_progress:
            next_progress += PROGRESS_EVERY_S
            log(f"acknowledged {sum(v.value for v in pub_acked)}/{args.messages}, delivered "
                f"{sum(v.value for v in sub_progress)}/{args.messages * args.subscribers}")
    return collected


def _first_error(results) -> str:
    try:
        kind, result = results.get_nowait()
    except queue.Empty:
        return "no error reported"
    return result if kind == "error" else "no error reported"


def summary(params: dict, publishers: list[dict], subscribers: list[dict], loadavg_start) -> dict:
    n, k = params["messages"], params["subscribers"]
    start_ns = min(p["start_ns"] for p in publishers)
    publish_s = (max(p["end_ns"] for p in publishers) - start_ns) / 1e9
    acked = sum(p["acked"] for p in publishers)
    delivered = sum(s["unique"] for s in subscribers)
    last_ns = max((s["last_ns"] for s in subscribers), default=0)
    deliver_s = (last_ns - start_ns) / 1e9 if last_ns else None
    latencies = array("d")
    for s in subscribers:
        latencies.frombytes(s["latencies_ms"])
    ack_ms = array("d")
    for p in publishers:
        ack_ms.frombytes(p["ack_ms"])
    latencies, ack_ms = sorted(latencies), sorted(ack_ms)
    uname = platform.uname()
    return {
        "system": "notifymesh",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "processor": platform.processor() or uname.machine,
                    "system": f"{uname.system} {uname.release}", "python": platform.python_version()},
        "params": params,
        "publish_msgs_per_s": round(acked / publish_s, 1) if publish_s > 0 else None,
        "delivered_msgs_per_s": round(delivered / deliver_s, 1) if deliver_s else None,
        "p50_ms": r3(percentile(latencies, 50)),
        "p99_ms": r3(percentile(latencies, 99)),
        "max_ms": r3(latencies[-1] if latencies else None),
        "mean_ms": r3(sum(latencies) / len(latencies) if latencies else None),
        "publish_ack_p50_ms": r3(percentile(ack_ms, 50)),
        "publish_ack_p99_ms": r3(percentile(ack_ms, 99)),
        "published": acked,
        "publish_errors": sum(p["errors"] for p in publishers),
        "first_publish_error": next((p["first_error"] for p in publishers if p["first_error"]), None),
        "delivered": delivered,
        "expected": n * k,
        "missing": n * k - delivered,
        "duplicates": sum(s["duplicates"] for s in subscribers),
        "bad": sum(s["bad"] for s in subscribers),
        "per_subscriber": [s["unique"] for s in subscribers],
        "publish_elapsed_s": r3(publish_s),
        "deliver_elapsed_s": r3(deliver_s),
        "timed_out": [t for t in (*(p["timed_out"] for p in publishers), *(s["timed_out"] for s in subscribers))
                      if t],
        "stream_errors": [s["stream_error"] for s in subscribers if s["stream_error"]],
        "ack_errors": sum(s["ack_errors"] for s in subscribers),
        "cpu_s": {"publishers": [p["cpu_s"] for p in publishers], "subscribers": [s["cpu_s"] for s in subscribers]},
        "loadavg": {"start": [round(x, 2) for x in loadavg_start], "end": [round(x, 2) for x in os.getloadavg()]},
    }
