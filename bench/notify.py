#!/usr/bin/env python3
"""The notification pipeline end to end on a fresh local mesh (etcd, metadata,
3 storage, --senders senders, a frontend, the local providers; as
bench/backlog.py starts it): loads --recipients recipients (email and phone)
through UpsertRecipients, makes a category without limits and a template with
email and SMS content, then notifies them in one of four modes and prints one
JSON line (progress on stderr):

- sink: both channels to the sink provider (accepts at once): recipients/s and
  sends/s through fan-out, preferences, rate limit, render and log;
- sms: the SMS channel to the local SMS API fake over loopback HTTP; the fake
  posts a delivery receipt for each, and with_receipts is the rate until every
  send's receipt is recorded (the CPU figures run until then too);
- email: the email channel to the local SMTP server;
- push: the push channel to the local APNs fake over HTTP/2 (--push-provider fcm:
  the FCM fake over HTTP/1.1), --devices devices a recipient (added through
  AddDevice before the run); push_sends_per_s counts each device's send;
- latency: both channels to the sink, Notify calls of --batch recipients at a
  steady --rate recipients/s for --duration s; notify-to-provider latency p50/p99.

The throughput modes notify the recipients in Notify calls of 1,000 ids each, or
(--audience) in one Notify to an audience of all of them (its members added
before the run): one notification whose fan-out pages the audience.

Every figure is measured from the notification log (GetNotification pages, read
once the mesh's stats count as many events as sends are expected):
throughput runs from the first Notify call to the last SEND_SENT event's time
(the sender's clock, the same machine's); latency is each SEND_SENT event's time
minus its Notify call's. The CPU seconds of each mesh process (utime + stime of
/proc/<pid>/stat) over the run give where the time goes, per 1,000 recipients,
and the gRPC calls each service served (their /metrics) what was asked of it, per
recipient; rss_mib_peak: each sender's and storage node's largest resident memory
over the run (sampled each second).

    .venv/bin/python bench/notify.py --mode sink --recipients 20000
    .venv/bin/python bench/notify.py --mode sms --senders 2
    .venv/bin/python bench/notify.py --mode latency --rate 1000 --duration 10
    .venv/bin/python bench/notify.py --mode push --recipients 20000 --devices 1
"""

import argparse
import asyncio
import datetime
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import notifymesh.server  # noqa: E402,F401  first: gRPC's I/O path, as the services choose it
from bench import fresh_mesh  # noqa: E402
from bench.fresh_mesh import header, run_on_fresh_mesh  # noqa: E402
from deploy import local_providers  # noqa: E402
from bench.procfs import RssSampler, cpu_s  # noqa: E402
from bench.served_calls import served_calls  # noqa: E402
from deploy.local import LocalMesh  # noqa: E402
from gen.notifymesh.v1 import events_pb2, notify_pb2  # noqa: E402
from notifymesh import errors  # noqa: E402
from notifymesh.client import Client  # noqa: E402

CATEGORY, TEMPLATE, AUDIENCE = "bench", "bench-invoice", "bench-everyone"
PER_CALL = 1000  # the most recipient ids of one Notify
# A send's state once the pipeline is done with it; the states after SEND_SENT come
# from outside it (the SMS fake's delivery receipt moves an SMS send to DELIVERED).
DONE_STATES = frozenset({notify_pb2.SEND_SENT, notify_pb2.SEND_FAILED, notify_pb2.SEND_DEAD_LETTERED,
                         notify_pb2.SUPPRESSED_OPTED_OUT, notify_pb2.SUPPRESSED_RATE_LIMITED,
                         notify_pb2.SUPPRESSED_DUPLICATE, notify_pb2.SUPPRESSED_NO_CONTACT,
                         notify_pb2.SEND_DELIVERED, notify_pb2.SEND_OPENED, notify_pb2.SEND_CLICKED,
                         notify_pb2.SEND_UNSUBSCRIBED})
# An SMS send once its delivery receipt is recorded too (the fake reports each one).
RECEIPTED_STATES = DONE_STATES - {notify_pb2.SEND_SENT}
POLL_S = 1.0


def cpu_by_process(mesh: LocalMesh) -> dict[str, float]:
    return {name: cpu_s(p.popen.pid) for name, p in mesh.processes.items() if p.popen is not None}


def progress(text: str) -> None:
    fresh_mesh.progress("notify", text)


def recipient(i: int) -> notify_pb2.Recipient:
    # 415-200-0000 on: valid US numbers for up to 8,000,000 recipients.
    return notify_pb2.Recipient(id=f"r{i:07d}", email=f"r{i}@example.com", phone=f"+1415{2_000_000 + i:07d}",
                                locale="en", attributes={"name": f"Person {i}"})


async def table_ready(client: Client) -> None:
    """A new mesh's internal topics are created at metadata start, after the mesh
    serves: the table answers UNAVAILABLE until then."""
    deadline = time.monotonic() + 60
    while True:
        try:
            await client.get_recipient("nobody-at-all")
        except errors.NotFound:
            return
        except errors.Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def apns_token(recipient_index: int, device: int) -> str:
    return f"{device:08x}{recipient_index:056x}"


async def add_devices(client: Client, count: int, devices: int, platform_name: str) -> float:
    """Each recipient's devices (APNs tokens, also valid FCM tokens); the seconds it took."""
    started, slots = time.monotonic(), asyncio.Semaphore(64)

    async def add(i: int, d: int) -> None:
        async with slots:
            await client.add_device(recipient(i).id, platform_name, apns_token(i, d))

    await asyncio.gather(*(add(i, d) for i in range(count) for d in range(devices)))
    return round(time.monotonic() - started, 1)


async def add_audience(client: Client, count: int) -> float:
    """Every recipient in the run's audience; the seconds it took."""
    started = time.monotonic()
    await client.create_audience(AUDIENCE, description="bench: every recipient loaded")
    ids = [recipient(i).id for i in range(count)]
    for start in range(0, count, PER_CALL):
        await client.add_audience_members(AUDIENCE, ids[start:start + PER_CALL])
        if (start + PER_CALL) % 50_000 == 0:
            progress(f"audience members {start + PER_CALL}/{count}")
    return round(time.monotonic() - started, 1)


async def load(client: Client, count: int) -> dict:
    await table_ready(client)
    started, refused = time.monotonic(), 0
    async for batch in client.import_recipients(recipient(i) for i in range(count)):
        refused += len(batch.errors)
        if (batch.start + batch.count) % 5000 == 0:
            progress(f"recipients {batch.start + batch.count}/{count}")
    await client.create_category(CATEGORY, description="bench: no limit")
    await client.create_template(notify_pb2.Template(name=TEMPLATE, contents=[
        notify_pb2.TemplateContent(channel=notify_pb2.EMAIL, subject="Invoice {{ data.invoice }} is due",
                                   text="Hello {{ recipient.attributes.name }}, invoice {{ data.invoice }}: {{ data.amount }}.",
                                   html="<p>Invoice <b>{{ data.invoice }}</b>: {{ data.amount }}</p>"),
        notify_pb2.TemplateContent(channel=notify_pb2.SMS, text="Invoice {{ data.invoice }} is due: {{ data.amount }}."),
        notify_pb2.TemplateContent(channel=notify_pb2.PUSH, subject="Invoice {{ data.invoice }}",
                                   text="{{ data.amount }} is due", json_body='{"invoice": "{{ data.invoice }}"}')]))
    return {"load_s": round(time.monotonic() - started, 1), "recipients_refused": refused}


async def set_providers(client: Client, mesh: LocalMesh, mode: str, concurrency: int, push_provider: str) -> int:
    """sink/latency: the sink on email and SMS; sms, email, push: the local providers.
    concurrency 0: each provider kind's default. Returns the max_concurrency stored."""
    creds = local_providers.credentials(mesh.data_dir)
    if mode in ("sink", "latency"):
        records = [notify_pb2.Provider(channel=c, kind="sink") for c in (notify_pb2.EMAIL, notify_pb2.SMS)]
    elif mode == "push" and push_provider == "apns":
        records = [local_providers.apns_record(creds, "127.0.0.1", mesh.provider_ports[2])]
    elif mode == "push":
        records = [r for r in local_providers.provider_records(creds, "127.0.0.1", *mesh.provider_ports[:2])
                   if r.channel == notify_pb2.PUSH]
    else:
        records = [r for r in local_providers.provider_records(creds, "127.0.0.1", *mesh.provider_ports[:2])
                   if r.channel == (notify_pb2.SMS if mode == "sms" else notify_pb2.EMAIL)]
    stored = []
    for record in records:
        record.max_concurrency = concurrency
        stored.append((await client.set_provider(record)).max_concurrency)
    await asyncio.sleep(2.0)  # the senders' mirrors take the providers and their windows
    return max(stored)


def events_counted(stats: events_pb2.Stats, done_states: frozenset[int]) -> int:
    """The events of GetStats that can end a send in done_states (failed ones
    included: a failed attempt may still be retried, so this is a hint, not a count of sends)."""
    counted = stats.delivered + stats.failed + stats.dead_lettered + stats.opened + stats.clicked \
        + stats.unsubscribed
    if notify_pb2.SEND_SENT in done_states:
        counted += stats.sent + stats.suppressed
    return counted


class Tracker:
    """Each notification's sends, read from the log until every one is done. While
    the events counted by the mesh's stats (GetStats of the run's template: a few
    count rows) are fewer than the sends expected, the log is not read: reading a
    notification of 1,000 sends a second from the first Notify on took a fifth of
    the frontend's samples in one profile of an SMS run (py-spy, 15 s), CPU taken
    from the mesh under test (the rates moved less than the host's noise:
    docs/benchmarks.md, 2026-12-02 12:40)."""

    def __init__(self, client: Client, expected_per_notification: dict[str, int], since: datetime.datetime,
                 done_states: frozenset[int] = DONE_STATES):
        """since: the run's start (the stats count from its hour on)."""
        self.client, self.expected, self.done_states = client, expected_per_notification, done_states
        self.since = since
        self.done: dict[str, list[notify_pb2.RecipientSend]] = {}

    async def _read(self, nid: str) -> list[notify_pb2.RecipientSend] | None:
        sends = [s async for page in self.client.notification_pages(nid) for s in page.sends]
        if len(sends) < self.expected[nid] or any(s.state not in self.done_states for s in sends):
            return None
        return sends

    async def _counted(self) -> int:
        return events_counted(await self.client.get_stats(TEMPLATE, start=self.since), self.done_states)

    async def wait(self, deadline: float) -> int:
        """Sends done; once the stats count enough events, reads the pending
        notifications in order, each poll stopping at the first not done (so the log is
        read about once per notification)."""
        expected = sum(self.expected.values())
        while time.monotonic() < deadline:
            counted = await self._counted()
            if counted < expected:
                progress(f"{counted}/{expected} sends' events counted")
                await asyncio.sleep(POLL_S)
                continue
            for nid in self.expected:
                if nid in self.done:
                    continue
                sends = await self._read(nid)
                if sends is None:
                    break
                self.done[nid] = sends
            count = sum(len(s) for s in self.done.values())
            if len(self.done) == len(self.expected):
                return count
            progress(f"{len(self.done)}/{len(self.expected)} notifications done, {count} sends")
            await asyncio.sleep(POLL_S)
        return sum(len(s) for s in self.done.values())


def since(epoch_ms: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch_ms / 1000, datetime.timezone.utc)


def sent_ms(send: notify_pb2.RecipientSend, state: int = notify_pb2.SEND_SENT) -> int | None:
    """The time of the send's last event of that state."""
    times = [e.time.ToMilliseconds() for e in send.timeline if e.state == state]
    return times[-1] if times else None


def states(tracker: Tracker) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sends in tracker.done.values():
        for s in sends:
            name = notify_pb2.SendState.Name(s.state)
            if s.reason:  # why not sent: the first few kinds of reason
                name += f": {s.reason[:120]}"
            if name in counts or len(counts) < 10:
                counts[name] = counts.get(name, 0) + 1
    return counts


def stages(tracker: Tracker) -> dict:
    """Where a send's time goes, from its timeline: queued (fan-out) to rendered (the
    channel worker's reads, rate limit, render) and rendered to sent (the rendered
    event's write, the provider), p50 and p99 in ms."""
    spans: dict[str, list[int]] = {"queued_to_rendered": [], "rendered_to_sent": []}
    for sends in tracker.done.values():
        for s in sends:
            queued, rendered, sent = (sent_ms(s, state) for state in (
                notify_pb2.SEND_QUEUED, notify_pb2.SEND_RENDERED, notify_pb2.SEND_SENT))
            if None not in (queued, rendered, sent):
                spans["queued_to_rendered"].append(rendered - queued)
                spans["rendered_to_sent"].append(sent - rendered)
    return {name: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99)} for name, v in spans.items() if v}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def throughput(client: Client, args, channels: list[int]) -> dict:
    ids = [recipient(i).id for i in range(args.recipients)]
    expected: dict[str, int] = {}
    started_ms = time.time() * 1000
    started = time.monotonic()
    if args.audience:
        nid = await client.notify(TEMPLATE, CATEGORY, audience=AUDIENCE, data={"invoice": 0, "amount": "12.00 EUR"},
                                  channels=channels)
        expected[nid] = len(ids) * len(channels)
    else:
        calls = [client.notify(TEMPLATE, CATEGORY, ids[i:i + PER_CALL], data={"invoice": i, "amount": "12.00 EUR"},
                               channels=channels) for i in range(0, len(ids), PER_CALL)]
        for nid, start in zip(await asyncio.gather(*calls), range(0, len(ids), PER_CALL)):
            expected[nid] = len(ids[start:start + PER_CALL]) * len(channels)
    notify_s = time.monotonic() - started
    progress(f"{len(expected)} notifications accepted in {notify_s:.1f}s")
    tracker = Tracker(client, expected, since(started_ms))
    done = await tracker.wait(started + args.max_seconds)
    sent = [t for sends in tracker.done.values() for s in sends if (t := sent_ms(s)) is not None]
    line = {"notify_calls_s": round(notify_s, 2), "sends_expected": sum(expected.values()), "sends_done": done,
            "states": states(tracker), "stage_ms": stages(tracker)}
    if done == sum(expected.values()) and sent:
        elapsed = (max(sent) - started_ms) / 1000
        queued = [t for sends in tracker.done.values() for s in sends
                  if (t := sent_ms(s, notify_pb2.SEND_QUEUED)) is not None]
        line |= {"fanout_s": round((max(queued) - started_ms) / 1000, 2),  # the last task queued
                 "pipeline_s": round(elapsed, 2), "recipients_per_s": round(args.recipients / elapsed),
                 "sends_per_s": round(len(sent) / elapsed)}
    else:
        line["error"] = f"not done within {args.max_seconds}s"
        return line
    if args.mode == "sms":  # (sink mode's SMS goes to the sink, which reports nothing)
        # The receipts the SMS fake posts back come after SEND_SENT; their cost (the
        # fake's posts, the frontend's callbacks, the log's rows) belongs to the run:
        # it goes on until every send has its receipt (and the CPU figures with it).
        receipted = Tracker(client, expected, since(started_ms), RECEIPTED_STATES)
        if await receipted.wait(started + args.max_seconds) == sum(expected.values()):
            last = max(t for sends in receipted.done.values() for s in sends if (t := sent_ms(s, s.state)))
            line["with_receipts"] = {"s": round((last - started_ms) / 1000, 2),
                                     "recipients_per_s": round(args.recipients * 1000 / (last - started_ms))}
        else:
            line["error"] = f"not every receipt recorded within {args.max_seconds}s"
    return line


async def latency(client: Client, args) -> dict:
    """Notify calls of args.batch recipients at args.rate recipients/s, each timed."""
    ids = [recipient(i).id for i in range(args.recipients)]
    calls_per_s = args.rate / args.batch
    total_calls = int(args.duration * calls_per_s)
    called_ms: dict[str, float] = {}
    expected: dict[str, int] = {}
    started, started_ms, pending = time.monotonic(), time.time() * 1000, set()

    async def one(k: int) -> None:
        start = (k * args.batch) % len(ids)
        batch = ids[start:start + args.batch]
        at = time.time() * 1000
        nid = await client.notify(TEMPLATE, CATEGORY, batch, data={"invoice": k, "amount": "12.00 EUR"})
        called_ms[nid], expected[nid] = at, len(batch) * 2

    for k in range(total_calls):
        await asyncio.sleep(max(0.0, started + k / calls_per_s - time.monotonic()))
        task = asyncio.create_task(one(k))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    offered_s = time.monotonic() - started
    progress(f"{total_calls} calls in {offered_s:.1f}s")
    tracker = Tracker(client, dict(sorted(expected.items(), key=lambda kv: called_ms[kv[0]])), since(started_ms))
    done = await tracker.wait(started + args.duration + args.max_seconds)
    waits = [t - called_ms[nid] for nid, sends in tracker.done.items() for s in sends if (t := sent_ms(s))]
    line = {"rate": args.rate, "batch": args.batch, "offered_recipients_per_s": round(
        total_calls * args.batch / offered_s), "sends_expected": sum(expected.values()), "sends_done": done,
        "states": states(tracker), "stage_ms": stages(tracker)}
    if waits:
        line |= {"latency_ms": {"p50": round(percentile(waits, 0.5)), "p99": round(percentile(waits, 0.99)),
                                "max": round(max(waits))}}
    if done != sum(expected.values()):
        line["error"] = f"not done within {args.max_seconds}s after the last call"
    return line


async def shards_led(client: Client) -> dict[str, int]:
    """The shards (topic partitions, the table's included) each storage node leads at
    the run's end: where the leaders' work fell, beside the CPU figures. On a fresh
    mesh an election among equal logs goes to the node placed first in the shard's
    replica set among the first majority to announce
    (storage/replication_rules.choose_leader)."""
    led: dict[str, int] = {}
    for shard in (await client.get_cluster_status()).shards:
        led[shard.leader or "none"] = led.get(shard.leader or "none", 0) + 1
    return dict(sorted(led.items()))


async def run(mesh: LocalMesh, args) -> dict:
    async with Client(mesh.frontend_addr, timeout_s=60) as client:
        line = await load(client, args.recipients)
        if args.audience:
            line["add_audience_s"] = await add_audience(client, args.recipients)
        if args.mode == "push":
            line["add_devices_s"] = await add_devices(client, args.recipients, args.devices, args.push_provider)
        concurrency = args.concurrency or (256 if args.mode in ("sink", "latency") else 0)
        line["provider_concurrency"] = await set_providers(client, mesh, args.mode, concurrency, args.push_provider)
        before, calls_before, cpu_started = cpu_by_process(mesh), served_calls(mesh), time.monotonic()
        memory = RssSampler(mesh, ("sender-", "storage-"))
        memory.start()
        try:
            if args.mode == "latency":
                line |= await latency(client, args)
                recipients = line["sends_done"] / 2
            else:
                channels = {"sink": [notify_pb2.EMAIL, notify_pb2.SMS], "sms": [notify_pb2.SMS],
                            "email": [notify_pb2.EMAIL], "push": [notify_pb2.PUSH]}[args.mode]
                line |= await throughput(client, args, channels)
                recipients = args.recipients
                if args.mode == "push" and "sends_per_s" in line:  # a recipient's send went to each device
                    line["push_sends_per_s"] = line["sends_per_s"] * args.devices
        finally:
            memory.stopping.set()
        line["rss_mib_peak"] = dict(sorted(memory.peak.items()))  # sampled each second of the run
        after, wall = cpu_by_process(mesh), time.monotonic() - cpu_started
        calls = {key: count - calls_before.get(key, 0.0) for key, count in served_calls(mesh).items()}
        line["shards_led"] = await shards_led(client)
    cpu = {name: after[name] - before.get(name, 0.0) for name in after}
    line["cpu_s"] = {name: round(s, 1) for name, s in sorted(cpu.items())}
    line["cpu_utilisation"] = round(sum(cpu.values()) / wall, 2)  # of the machine's os.cpu_count() cores
    if args.mode == "push" and recipients:
        line["cpu_ms_per_push_send"] = round(sum(cpu.values()) * 1000 / (recipients * args.devices), 3)
    if recipients:
        line["cpu_s_per_1000_recipients"] = {name: round(s * 1000 / recipients, 3) for name, s in sorted(cpu.items())
                                             if s > 0}
        # The replicated writes (TableWrite, Append, Acknowledge, RateAcquire) and reads a
        # recipient took: at low rates each is a replication round of its own. The
        # bench's own reads of the log (GetNotification and its storage calls) included;
        # methods under one call in 200 recipients (the bench's Describe, GetStats) left out.
        line["calls_per_recipient"] = {key: round(count / recipients, 2) for key, count in
                                       sorted(calls.items(), key=lambda kv: -kv[1]) if count >= 0.005 * recipients}
    return line


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("sink", "sms", "email", "latency", "push"), default="sink")
    p.add_argument("--push-provider", choices=("apns", "fcm"), default="apns", help="push: the local fake sent to")
    p.add_argument("--devices", type=int, default=1, help="push: devices a recipient (1 to 20)")
    p.add_argument("--recipients", type=int, default=20_000, help="loaded, and notified (throughput modes)")
    p.add_argument("--senders", type=int, default=1)
    p.add_argument("--audience", action="store_true",
                   help="throughput modes: one Notify to an audience of every recipient, not calls of 1,000 ids")
    p.add_argument("--concurrency", type=int, default=0,
                   help="the providers' max_concurrency (default: 256 for the sink, else each provider kind's "
                        "own default: APNs 256, others 32)")
    p.add_argument("--rate", type=int, default=1000, help="latency: recipients/s offered")
    p.add_argument("--batch", type=int, default=10, help="latency: recipients per Notify call")
    p.add_argument("--duration", type=float, default=10.0, help="latency: seconds of Notify calls")
    p.add_argument("--max-seconds", type=float, default=300.0, help="the most a run waits for its sends")
    p.add_argument("--keep", action="store_true", help="keep the mesh's data dir (logs/*.log)")
    args = p.parse_args()
    if not 1 <= args.recipients <= 8_000_000 or not 1 <= args.batch <= PER_CALL or args.rate < 1 or \
            not 1 <= args.devices <= 20:
        p.error("--recipients 1 to 8,000,000, --batch 1 to 1000, --rate at least 1, --devices 1 to 20")
    if args.audience and args.mode == "latency":
        p.error("--audience is for the throughput modes")
    line = header("notify", mode=args.mode, recipients=args.recipients, senders=args.senders,
                  **({"audience": True} if args.audience else {}),
                  **({"push_provider": args.push_provider, "devices": args.devices} if args.mode == "push" else {}))
    return run_on_fresh_mesh(line, lambda mesh: run(mesh, args), args.keep, args.senders)


if __name__ == "__main__":
    raise SystemExit(main())
