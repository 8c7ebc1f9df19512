"""The `notifymesh` command: administer topics and subscriptions, publish,
subscribe, notify people (recipients, templates, notify: notifymesh.notify_cli),
and run the local mesh (`notifymesh up`).

Output: each result is one JSON object per line on stdout (`--output table`
prints aligned columns for people); a payload that is UTF-8 shows as `data`,
any other as `data_base64`. Errors go to stderr as `error: CODE: details` with
exit 1; usage errors exit 2.
"""

import argparse
import asyncio
import base64
import collections
import datetime
import importlib
import importlib.metadata
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import auth_cli, node_cli, notify_cli
from notifymesh.channel import parse_addresses
from notifymesh.client import Client, Message, default_addr
from notifymesh.contracts import OUTBOX_CHANNELS, AckId, outbox_files
from notifymesh.errors import InvalidArgument, NotifymeshError, Unavailable

PUBLISH_BATCH = 500
PUBLISH_IN_FLIGHT = 8
PUBLISH_LINGER_S = 0.05  # a partial batch goes out once stdin is quiet this long
STDIN_CHUNK_BYTES, STDIN_CHUNKS_AHEAD = 64 * 1024, 16  # stdin read ahead of publishing: 1 MiB at most
INTERRUPT_GRACE_S = 2.0  # after Ctrl-C, how long publishes in flight may still be answered
PROGRESS_EVERY_S = 0.5
CONNECT_PROBE_S = 2.0  # how long a call that found no frontend waits for one before saying so
DEFAULT_MAX_DELIVERY_ATTEMPTS = 5  # with --dead-letter-topic alone (Pub/Sub's default too)
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # as a command killed by SIGPIPE: `subscribe ... | head`


def duration(text: str) -> float:
    """'10s', '500ms', '2m', '1h', or plain seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 10s, 500ms, 2m)")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
    return float(match.group(1)) * scale


def addresses(text: str) -> str:
    """--addr: host:port, or several separated by commas (each must name its port)."""
    try:
        return ",".join(parse_addresses(text))
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(e.details) from None


def instant(text: str) -> datetime.datetime:
    """An ISO 8601 time with its zone: 2026-11-30T10:00:00Z, 2026-11-30T11:00:00+01:00."""
    try:
        parsed = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time with its zone: {text!r} "
                                         "(example: 2026-11-30T10:00:00Z)")
    return parsed


def attribute(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"attribute must be KEY=VALUE, not {text!r}")
    return key, value


def count(low: int, high: int | None = None):
    """An argparse type: an integer from low (to high): out of range is a usage
    error, never replaced by a default."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            allowed = f"{low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} out of range: {allowed}")
        return value
    return parse


def fail(message: str) -> NoReturn:
    """Ends the command with `error: message` on stderr and exit 1."""
    raise SystemExit(f"error: {message}")


class Output:  # every command reports through args.out.record(dict)
    """Where a command's results go: one JSON object per line (the default), or with
    --output table aligned columns, printed at close(). A streaming command's table
    (streaming=True) prints each row as it comes, in columns as wide as the first
    row's (a wider cell pushes the rest of its row); such a command calls flush()
    once it has printed what it has."""

    def __init__(self, form: str = "json", streaming: bool = False):
        self.form, self.streaming = form, streaming
        self._rows: list[dict] = []
        self._columns: dict[str, int] | None = None  # streaming: key -> width

    def record(self, record: dict) -> None:
        if self.form == "json":
            print(json.dumps(record, ensure_ascii=False))
        elif self.streaming:
            cells = {key: _cell(value) for key, value in record.items()}
            if self._columns is None:
                self._columns = {key: max(len(key), len(cell)) for key, cell in cells.items()}
                print("  ".join(key.upper().ljust(width) for key, width in self._columns.items()).rstrip())
            print("  ".join(cells.get(key, "").ljust(width) for key, width in self._columns.items()).rstrip())
        else:
            self._rows.append(record)

    def flush(self) -> None:
        sys.stdout.flush()

    def close(self) -> None:
        rows, self._rows = self._rows, []
        if not rows:
            return
        columns = list(dict.fromkeys(key for row in rows for key in row))
        cells = [[key.upper() for key in columns]] + [[_cell(row.get(key, "")) for key in columns] for row in rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        for line in cells:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def _cell(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


async def require_frontend(client: Client) -> None:
    """Fails with what to do when no frontend accepts a connection (a stream would
    otherwise wait for one, reconnecting, for ever)."""
    if not await client.wait_connected(CONNECT_PROBE_S):
        addresses = client.addr.split(",")
        if _listening(addresses[0]) and not client.credentials.plaintext:
            fail(f"the frontend at {addresses[0]} accepts connections but no TLS session with this client: check "
                 "--ca/--cert/--key (or NOTIFYMESH_CA/CERT/KEY) against the mesh's tls/ca.pem")
        fail(f"cannot reach the frontend{'s' if len(addresses) > 1 else ''} at {client.addr}: "
             "is the mesh running? (make up)")


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


def _topic_record(topic) -> dict:
    return {"name": topic.name, "partitions": topic.partition_count,
            "replication_factor": topic.replication_factor,
            "dedup_window_s": topic.dedup_window.seconds, "dedup_by_payload": topic.dedup_by_payload,
            "dedup_attributes": list(topic.dedup_attributes),
            "message_retention_s": topic.message_retention.seconds,
            "retain_acked_s": topic.retain_acked.seconds,
            "create_time": topic.create_time.ToJsonString()}


def _subscription_record(sub) -> dict:
    line = {"name": sub.name, "topic": sub.topic, "ack_deadline_s": sub.ack_deadline.ToMilliseconds() / 1000,
            "create_time": sub.create_time.ToJsonString()}
    if sub.HasField("retry_policy"):
        line |= {"min_backoff_s": sub.retry_policy.minimum_backoff.ToMilliseconds() / 1000,
                 "max_backoff_s": sub.retry_policy.maximum_backoff.ToMilliseconds() / 1000,
                 "backoff_multiplier": sub.retry_policy.multiplier}
    if sub.push_config.endpoint:
        line |= {"push_endpoint": sub.push_config.endpoint,
                 "push_secret_set": sub.push_config.secret_set or bool(sub.push_config.secret)}
        if sub.push_config.secret:  # only a create or rotate-secret answer carries it: shown once
            line["push_secret"] = sub.push_config.secret
        if sub.push_config.HasField("previous_secret_expire_time"):  # the replaced secret signs too until then
            line["previous_secret_expire_time"] = sub.push_config.previous_secret_expire_time.ToJsonString()
    if sub.dead_letter_topic:
        line |= {"max_delivery_attempts": sub.max_delivery_attempts, "dead_letter_topic": sub.dead_letter_topic}
    return line


def _received_record(received) -> dict:
    return {**_message_fields(received.message), "attempt": received.delivery_attempt, "ack_id": received.ack_id}


def _message_fields(message) -> dict:
    line = {"id": message.message_id, "attributes": dict(message.attributes),
            "publish_time": message.publish_time.ToJsonString()}
    try:
        line["data"] = message.data.decode()
    except UnicodeDecodeError:
        line["data_base64"] = base64.b64encode(message.data).decode()
    return line


def _status_record(status) -> dict:
    deliveries = [{"subscription": d.subscription, "state": pubsub_pb2.DeliveryState.Name(d.state),
                   "delivery_attempts": d.delivery_attempts,
                   "attempts": [{"attempt": a.attempt, "delivery_time": a.delivery_time.ToJsonString(),
                                 "outcome": pubsub_pb2.AttemptOutcome.Name(a.outcome),
                                 **({"outcome_time": a.outcome_time.ToJsonString()}
                                    if a.HasField("outcome_time") else {}),
                                 **({"error": a.error} if a.error else {})} for a in d.attempts]}
                  for d in status.deliveries]
    return {"topic": status.topic, "partition": status.partition, "message": _message_fields(status.message),
            "trace_id": status.trace_id, "deliveries": deliveries}


def _delivery_fields(stats) -> dict:
    """DeliveryStats as describe prints them (the age in seconds; null: nothing unacknowledged)."""
    return {"backlog": stats.backlog, "in_flight": stats.in_flight,
            "oldest_unacked_age_s": (stats.oldest_unacked_age.ToMilliseconds() / 1000
                                     if stats.HasField("oldest_unacked_age") else None),
            "delivery_rate_per_s": round(stats.delivery_rate, 3), "dead_letters": stats.dead_letters}


def _described(stats) -> dict:
    """SubscriptionStats or TopicStats: the totals, then per partition."""
    return {**_delivery_fields(stats.total), "streams": stats.streams,
            "partitions": [{"partition": p.partition, **_delivery_fields(p.stats)} for p in stats.partitions]}


def _subscription_stats_record(stats) -> dict:
    return {"subscription": stats.subscription, "topic": stats.topic, **_described(stats)}


def _topic_stats_record(stats) -> dict:
    return {"topic": stats.topic, **_described(stats),
            "subscriptions": [{"subscription": s.subscription, **_described(s)} for s in stats.subscriptions]}


async def _nack(args, client: Client) -> None:
    """Ack ids name their subscription; all given must be of one."""
    subscriptions = {AckId.parse(ack_id).subscription for ack_id in args.ack_id}
    if len(subscriptions) != 1:
        fail(f"the ack ids are of {len(subscriptions)} subscriptions; give those of one at a time")
    subscription = subscriptions.pop()
    await client.nack(subscription, args.ack_id, args.delay, args.terminal, args.reason or "")
    args.out.record({"subscription": subscription, "nacked": len(args.ack_id), "terminal": args.terminal})


async def _dead_letters(args, client: Client) -> None:
    if args.action == "list":
        async for page in client.dead_letter_pages(args.subscription, args.max):
            for dead in page:
                args.out.record({**_message_fields(dead.message), "delivery_attempts": dead.delivery_attempts,
                                 "dead_letter_time": dead.dead_letter_time.ToJsonString(),
                                 "last_error": dead.last_error, "dead_letter_message_id": dead.dead_letter_message_id,
                                 "redrives": dead.redrives})
            if args.max:
                break  # the first page of that many
    elif args.action == "redrive":
        redriven = await client.redrive_dead_letters(args.subscription)
        args.out.record({"subscription": args.subscription, "redriven": redriven})
    else:
        await _redrive_rules(args, client)


async def _redrive_rules(args, client: Client) -> None:
    """dead-letters rules|add-rule|remove-rule: a rule is named by its reason pattern."""
    if args.action == "rules":
        subscriptions = [await client.get_subscription(args.subscription)] if args.subscription \
            else await client.list_subscriptions()
    else:
        subscription = await client.get_subscription(args.subscription)
        rules = [rule for rule in subscription.redrive_rules if rule.reason != args.reason]
        if args.action == "add-rule":
            rule = pubsub_pb2.RedriveRule(reason=args.reason, max_redrives=args.max_redrives)
            rule.after.FromMilliseconds(round(args.after * 1000))
            rules.append(rule)
        elif len(rules) == len(subscription.redrive_rules):
            fail(f"subscription {args.subscription!r} has no redrive rule with reason {args.reason!r}")
        subscriptions = [await client.set_redrive_rules(args.subscription, rules)]
    for subscription in subscriptions:
        for rule in subscription.redrive_rules:
            args.out.record({"subscription": subscription.name, "reason": rule.reason,
                             "after_s": rule.after.ToMilliseconds() / 1000, "max_redrives": rule.max_redrives})


async def _topic(args, client: Client) -> None:
    if args.action == "create":
        args.out.record(_topic_record(await client.create_topic(args.name, args.retention, args.partitions,
                                                               args.replication_factor, args.dedup_window,
                                                               args.dedup_by_payload, args.dedup_attribute,
                                                               args.retain_acked)))
    elif args.action == "update":
        if args.partitions is None and args.retain_acked is None:
            print("notifymesh topic update: error: give --partitions, --retain-acked or both", file=sys.stderr)
            raise SystemExit(2)
        args.out.record(_topic_record(await client.update_topic(args.name, args.partitions or 0, args.retain_acked)))
    elif args.action == "get":
        args.out.record(_topic_record(await client.get_topic(args.name)))
    elif args.action == "describe":
        args.out.record(_topic_stats_record(await client.describe_topic(args.name)))
    elif args.action == "list":
        async for page in client.topic_pages():  # printed a page at a time: nothing grows with the listing
            for topic in page:
                args.out.record(_topic_record(topic))
    elif args.action == "delete":
        await client.delete_topic(args.name)
        args.out.record({"topic": args.name, "deleted": True})


async def _cluster(args, client: Client) -> None:
    """One JSON object (members, shards); with --output table, a table for people."""
    status = await client.get_cluster_status()
    if args.output == "table":
        _cluster_table(status)
        return
    args.out.record({
        "members": [{"kind": m.kind, "node_id": m.node_id, "addr": m.addr, "metrics_addr": m.metrics_addr,
                     **({"draining": True} if m.draining else {})} for m in status.members],
        "draining": list(status.draining),
        "shards": [{"topic": shard.topic, "partition": shard.partition, "leader": shard.leader, "epoch": shard.epoch,
                    "commit": shard.commit, "replicas": list(shard.replicas),
                    "replica_status": [{"node_id": r.node_id, "role": r.role, "end": r.end, "lag": r.lag}
                                       for r in shard.replica_status],
                    "backlogs": {b.subscription: b.backlog for b in shard.backlogs}} for shard in status.shards]})


def _cluster_table(status) -> None:
    """Members by kind, then every shard with its replicas."""
    by_kind: dict[str, list[str]] = {}
    for member in status.members:
        by_kind.setdefault(member.kind, []).append(
            f"{member.node_id} ({member.addr}{', draining' if member.draining else ''})")
    for kind in ("metadata", "storage", "sender", "frontend"):
        print(f"{kind:<9} {', '.join(by_kind.get(kind, [])) or '(none alive)'}")
    if status.draining:
        print(f"draining  {', '.join(status.draining)} (notifymesh node undrain NODE ends a drain)")
    print()
    print(f"{'TOPIC':<24} {'PART':>4} {'LEADER':<12} {'EPOCH':>7} {'COMMIT':>9}  REPLICAS (role end lag)"
          "  BACKLOG (subscription messages)")
    for shard in status.shards:
        progress = {r.node_id: r for r in shard.replica_status}
        replicas = []
        for node in [*shard.replicas, *(n for n in progress if n not in shard.replicas)]:
            r = progress.get(node)
            replicas.append(f"{node} {r.role} {r.end} {r.lag}" if r else f"{node} ?")
        backlogs = "; ".join(f"{b.subscription} {b.backlog}" for b in shard.backlogs) or "-"
        print(f"{shard.topic:<24} {shard.partition:>4} {shard.leader or '(election)':<12} {shard.epoch:>7} "
              f"{shard.commit:>9}  {'; '.join(replicas)}  {backlogs}")


async def _subscription(args, client: Client) -> None:
    if args.action == "create":
        attempts = args.max_delivery_attempts or (DEFAULT_MAX_DELIVERY_ATTEMPTS if args.dead_letter_topic else 0)
        args.out.record(_subscription_record(await client.create_subscription(
            args.name, args.topic, args.ack_deadline, args.min_backoff, args.max_backoff,
            attempts, args.dead_letter_topic or "", args.push_endpoint or "")))
    elif args.action == "get":
        args.out.record(_subscription_record(await client.get_subscription(args.name)))
    elif args.action == "describe":
        args.out.record(_subscription_stats_record(await client.describe_subscription(args.name)))
    elif args.action == "list":
        async for page in client.subscription_pages(args.topic or ""):
            for sub in page:
                args.out.record(_subscription_record(sub))
    elif args.action == "delete":
        await client.delete_subscription(args.name)
        args.out.record({"subscription": args.name, "deleted": True})
    elif args.action in ("seek", "purge"):
        await _seek(args, client)
    elif args.action == "update":
        await _update_subscription(args, client)
    elif args.action == "rotate-secret":
        args.out.record(_subscription_record(await client.rotate_push_secret(args.name, args.overlap)))


async def _seek(args, client: Client) -> None:
    """subscription seek NAME --time T | --to-end; subscription purge NAME (seek to the end)."""
    to_end = args.action == "purge" or args.to_end
    reply = await client.seek(args.name, None if to_end else args.time, to_end)
    target = {"to_end": True} if to_end else {"time": args.time.astimezone(datetime.timezone.utc).isoformat()}
    args.out.record({"subscription": args.name, **target, "partitions_limited": reply.partitions_limited})


async def _update_subscription(args, client: Client) -> None:
    """Only the settings given change; the subscription keeps its messages."""
    push_endpoint = "" if args.no_push else args.push_endpoint
    changes = (args.ack_deadline, args.min_backoff, args.max_backoff, args.max_delivery_attempts,
               args.dead_letter_topic, push_endpoint)
    if all(change is None for change in changes):
        print("notifymesh subscription update: error: give at least one setting to change (see --help)",
              file=sys.stderr)
        raise SystemExit(2)
    args.out.record(_subscription_record(await client.update_subscription(args.name, *changes)))


async def _pull(args, client: Client) -> int:
    """Prints the messages ready now (or the first within --wait) as JSON lines; with
    --ack, acknowledges them once printed."""
    received = await client.pull(args.subscription, args.max, args.wait)
    for message in received:
        args.out.record(_received_record(message))
    args.out.flush()  # printed (or the pipe closed: then not acknowledged) before the ack
    if received and args.ack:
        await client.acknowledge(args.subscription, [m.ack_id for m in received])
    return 0


async def _publish(args, client: Client) -> int:
    attributes = dict(args.attr or [])
    if args.message != "-":
        [message_id] = await client.publish(args.topic, [Message(args.message.encode(), attributes, args.key or "")])
        args.out.record({"message_id": message_id})
        return 0
    if args.key:
        fail("--key applies to one message; with '-' each line is its own message")
    return await _publish_lines(args.topic, attributes, client, args.out, args.skip_invalid)


_REFUSED_MESSAGE = re.compile(r"message (\d+): (.*)", re.DOTALL)  # the server's words for one bad message
_TOO_MANY = re.compile(r"\d+ messages in one request; at most (\d+)")  # ... and for a batch over its limit


def _refused_message(error: NotifymeshError, batch_size: int) -> tuple[int, str] | None:
    """(index in the batch, what is wrong) when the server refused the batch for one message."""
    match = _REFUSED_MESSAGE.fullmatch(error.details)
    if isinstance(error, InvalidArgument) and match and int(match.group(1)) < batch_size:
        return int(match.group(1)), match.group(2)
    return None


_QUIET = object()  # stdin had no new line for PUBLISH_LINGER_S


class _StdinLines:
    """stdin's lines (without their ends), read by a daemon thread from the descriptor
    itself: a read blocked on a terminal must not hold up the exit after Ctrl-C, and
    a thread still inside sys.stdin's buffer when Python exits makes it abort. The
    thread keeps at most STDIN_CHUNKS_AHEAD chunks of STDIN_CHUNK_BYTES read ahead."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._chunks: asyncio.Queue = asyncio.Queue(STDIN_CHUNKS_AHEAD)
        self._lines: collections.deque[bytes] = collections.deque()
        self._ended = False
        threading.Thread(target=self._read, args=(loop,), name="stdin", daemon=True).start()

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        put = lambda item: asyncio.run_coroutine_threadsafe(self._chunks.put(item), loop).result()  # noqa: E731
        try:
            pending = b""
            try:
                while chunk := os.read(0, STDIN_CHUNK_BYTES):
                    *lines, pending = (pending + chunk).split(b"\n")
                    if lines:
                        put(lines)
            except OSError:  # stdin closed or unreadable: its end
                pass
            if pending:
                put([pending])
            put(None)
        except RuntimeError:  # the loop closed: the command ended
            pass

    async def next(self, linger_s: float | None):
        """The next line, None at the end of stdin, or _QUIET after linger_s without one."""
        while not self._lines:
            if self._ended:
                return None
            try:
                chunk = await (self._chunks.get() if linger_s is None else
                               asyncio.wait_for(self._chunks.get(), linger_s))
            except TimeoutError:
                return _QUIET
            if chunk is None:
                self._ended = True
            else:
                self._lines.extend(chunk)
        return self._lines.popleft()


async def _publish_lines(topic: str, attributes: dict[str, str], client: Client, out: Output,
                         skip_invalid: bool = False) -> int:
    """Publishes stdin lines in batches, PUBLISH_IN_FLIGHT batches at a time, and
    records each line's message id (or error), in the order of the lines. A batch
    the server refuses for one message names that line (1-based); with skip_invalid
    the line is reported and the rest of the batch published. Ctrl-C prints how
    many were acknowledged and how many not before the KeyboardInterrupt."""
    tally = collections.Counter()  # acknowledged, invalid (skipped), failed
    read = 0
    tty = sys.stderr.isatty()  # progress that updates in place is for people watching

    def say(text: str) -> None:
        print(("\r\x1b[K" if tty else "") + text, file=sys.stderr, flush=True)

    slots = asyncio.Semaphore(PUBLISH_IN_FLIGHT)
    sends: collections.deque[asyncio.Task] = collections.deque()  # in the order of the lines
    last_progress = 0.0

    async def send(batch: list[tuple[int, Message]]) -> list[dict]:
        results: dict[int, dict] = {}
        most = len(batch)  # messages a call may carry: fewer once the server says so (config set)
        try:
            while batch:
                part = batch[:most]
                try:
                    ids = await client.publish(topic, [message for _, message in part])
                except InvalidArgument as e:
                    limit = _TOO_MANY.fullmatch(e.details)
                    if limit and 0 < int(limit.group(1)) < most:
                        most = int(limit.group(1))
                        continue
                    refused = _refused_message(e, len(part))
                    if not skip_invalid or refused is None:
                        raise
                    line, _ = batch.pop(refused[0])
                    tally["invalid"] += 1
                    results[line] = {"line": line, "error": f"{e.code.name}: {refused[1]}"}
                    say(f"error: line {line}: {e.code.name}: {refused[1]} (skipped)")
                    continue
                tally["acknowledged"] += len(ids)
                results.update((line, {"line": line, "message_id": message_id})
                               for (line, _), message_id in zip(part, ids))
                del batch[:len(part)]
        except NotifymeshError as e:
            tally["failed"] += len(batch)
            refused = _refused_message(e, len(batch))
            why = f"line {batch[refused[0]][0]}: {e.code.name}: {refused[1]}" if refused else str(e)
            say(f"error: {why}; lines {batch[0][0]} to {batch[-1][0]}: {len(batch)} messages not acknowledged"
                + ("" if skip_invalid or not refused else " (--skip-invalid publishes the others)"))
        finally:
            slots.release()
        return [results[line] for line in sorted(results)]

    def record_results(everything_done: bool = False) -> None:
        """The results of the batches done, in order (at the end: of every batch done)."""
        while sends and (sends[0].done() or everything_done):
            task = sends.popleft()
            if task.done() and not task.cancelled():
                for result in task.result():
                    out.record(result)
        out.flush()

    def progress(final: str = "") -> None:
        """On a terminal, a line updated in place; at the end (final), the summary anywhere."""
        nonlocal last_progress
        counts = f"read {read}, acknowledged {tally['acknowledged']}, not acknowledged {read - tally['acknowledged']}"
        if final:
            say(final + counts)
        elif tty and time.monotonic() - last_progress >= PROGRESS_EVERY_S:
            last_progress = time.monotonic()
            print(f"\r\x1b[K{counts}", end="", file=sys.stderr, flush=True)

    stdin = _StdinLines(asyncio.get_running_loop())
    batch: list[tuple[int, Message]] = []
    try:
        while True:
            # With a partial batch, or results to come, wake up to send it or print them.
            line = await stdin.next(PUBLISH_LINGER_S if batch or sends else None)
            if isinstance(line, bytes):
                read += 1
                batch.append((read, Message(line.rstrip(b"\r\n"), attributes)))
            if batch and (len(batch) >= PUBLISH_BATCH or not isinstance(line, bytes)):
                await slots.acquire()
                sends.append(asyncio.create_task(send(batch)))
                batch = []
            record_results()
            progress()
            if line is None:
                break
        await asyncio.gather(*sends)
    except asyncio.CancelledError:  # Ctrl-C: what is in flight may still be answered, briefly
        in_flight = [task for task in sends if not task.done()]
        if in_flight:
            await asyncio.wait(in_flight, timeout=INTERRUPT_GRACE_S)
        for task in in_flight:
            task.cancel()
        record_results(everything_done=True)
        progress(final="interrupted: ")
        raise
    record_results()
    progress(final="done: ")
    return 1 if tally["failed"] else 0


async def _subscribe(args, client: Client) -> int:
    """Prints each message as it arrives, then acknowledges the frame's messages."""
    await require_frontend(client)  # the stream would wait, reconnecting, for a frontend that is not there
    seen = 0
    async for frame in client.subscribe_frames(args.subscription, max_outstanding=args.max or 0):
        printed = frame[:args.max - seen] if args.max else frame
        for received in printed:
            args.out.record(_received_record(received))
        args.out.flush()  # printed (or the pipe closed: then not acknowledged) before the ack
        seen += len(printed)
        if printed and not args.no_ack:
            await client.acknowledge(args.subscription, [m.ack_id for m in printed])
        if len(printed) < len(frame):  # beyond --max: hand back for prompt redelivery
            await client.nack(args.subscription, [m.ack_id for m in frame[len(printed):]], delay_s=0)
        if args.max and seen >= args.max:
            return 0
    return 0


def _server_side(module: str, command: str):
    """A module of the server side, which `notifymesh[server]` installs."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SystemExit(f"notifymesh {command} needs the server side ({e.name} is missing): "
                         "pip install 'notifymesh[server]'") from None


def _up(args) -> int:
    local = _server_side("deploy.local", "up")
    counts = {"etcd_members": args.etcd_members, "metadata_services": args.metadata, "senders": args.senders,
              "frontends": args.frontends}
    if args.ha:  # at least two of each kind (etcd: three, to keep a majority)
        counts = {kind: max(count, local.HA[kind]) for kind, count in counts.items()}
    mesh = local.LocalMesh(Path(args.data_dir), frontend_port=args.port, storage_nodes=args.storage_nodes,
                           local_providers=args.local_providers, tls=not args.plaintext, **counts,
                           tracing=local.tracing_args(args.trace_sample_ratio, args.otlp_endpoint))
    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    say = lambda line: print(f"notifymesh: {line}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        try:
            mesh.start(progress=say)
        except (RuntimeError, TimeoutError) as e:
            say(f"cannot start: {e}")
            return 1
        http = ", ".join(f"http://{mesh.network.address(name)}:{port}"
                         for name, port in zip(mesh.frontend_names(), mesh.frontend_http_ports()))
        tls = f"TLS, CA {mesh.tls_dir / 'ca.pem'}" if mesh.tls else "plaintext"
        say(f"dashboard: {', '.join(mesh.dashboard_urls())} (log in with the admin key in {mesh.admin_key_path})")
        print(f"notifymesh mesh is up: frontend{'s' if len(mesh.frontend_addrs) > 1 else ''} {mesh.frontend_target} "
              f"(NOTIFYMESH_ADDR={mesh.frontend_target}; {tls}; HTTP {http}; logs in {mesh.data_dir / 'logs'}; "
              "Ctrl-C stops)", flush=True)
        for node, url in mesh.metrics_urls().items():  # ephemeral ports: printed, as the guide asks
            say(f"{node} metrics: {url}")
        mesh.supervise(lambda: stopping, progress=say)
    finally:
        say("stopping")
        mesh.stop()
        say("stopped")
    return 0


def _add_topic_commands(commands) -> None:
    """topic create|update|get|list|delete"""
    topic = commands.add_parser("topic", help="create, get, list or delete topics")
    topic_actions = topic.add_subparsers(dest="action", required=True)
    create = topic_actions.add_parser("create", help="create a topic; prints it")
    create.add_argument("name", help="3 to 255 characters: a letter, then letters, digits, '.', '_' or '-'")
    create.add_argument("--retention", type=duration, help="how long unacked messages are kept (default 7d)")
    create.add_argument("--partitions", type=count(1), default=0, help="partitions (default 1)")
    create.add_argument("--replication-factor", type=count(1), default=0,
                        help="copies of each message, 1 to 5 (default 3, capped by live storage nodes)")
    create.add_argument("--dedup-window", type=duration, help="how long repeats are recognised (default 24h)")
    create.add_argument("--dedup-by-payload", action="store_true",
                        help="a message without an idempotency key repeats one with equal data "
                             "(and the attributes named by --dedup-attribute)")
    create.add_argument("--dedup-attribute", action="append", default=[], metavar="NAME",
                        help="with --dedup-by-payload: an attribute that is part of the payload (repeatable)")
    create.add_argument("--retain-acked", type=duration, help="keep acknowledged messages this long, so "
                        "'subscription seek' can go back that far (default off; at most --retention)")
    update = topic_actions.add_parser("update", help="raise the partition count, set --retain-acked")
    update.add_argument("name", help="the topic")
    update.add_argument("--partitions", type=count(1), help="the new partition count (only raised)")
    update.add_argument("--retain-acked", type=duration, help="keep acknowledged messages this long (0: off)")
    topic_actions.add_parser("get", help="one topic").add_argument("name", help="the topic")
    topic_actions.add_parser("describe", help="every subscription's backlog, in flight, oldest unacknowledged "
                                              "age, delivery rate, dead letters and streams, per partition and "
                                              "in total").add_argument("name", help="the topic")
    topic_actions.add_parser("list", help="every topic, one a line")
    topic_actions.add_parser("delete", help="delete a topic no subscription names").add_argument(
        "name", help="the topic")


def _add_subscription_commands(commands) -> None:
    """subscription create|get|list|delete|update, and seek|purge"""
    sub = commands.add_parser("subscription", help="create, get, list, delete or update subscriptions")
    sub_actions = sub.add_subparsers(dest="action", required=True)
    create = sub_actions.add_parser("create", help="create a subscription; prints it (with a push signing secret)")
    create.add_argument("name", help="3 to 255 characters: a letter, then letters, digits, '.', '_' or '-'")
    create.add_argument("--topic", required=True, help="the topic it receives from")
    create.add_argument("--ack-deadline", type=duration, help="e.g. 10s (default 10s)")
    create.add_argument("--min-backoff", type=duration, help="retry policy: first redelivery wait (default 1s)")
    create.add_argument("--max-backoff", type=duration, help="retry policy: longest redelivery wait (default 60s)")
    create.add_argument("--max-delivery-attempts", type=count(1, 100), default=0,
                        help="then move the message to --dead-letter-topic (1 to 100; default with it: "
                             f"{DEFAULT_MAX_DELIVERY_ATTEMPTS})")
    create.add_argument("--dead-letter-topic", help="an existing topic that gets the messages whose attempts ran out")
    create.add_argument("--push-endpoint", help="http(s) URL to POST each message to")
    sub_actions.add_parser("get", help="one subscription").add_argument("name", help="the subscription")
    sub_actions.add_parser("describe", help="backlog, in flight, oldest unacknowledged age, delivery rate, "
                                            "dead letters and streams, per partition and in total"
                           ).add_argument("name", help="the subscription")
    sub_actions.add_parser("list", help="every subscription, one a line").add_argument(
        "--topic", help="only those of this topic")
    sub_actions.add_parser("delete", help="delete a subscription").add_argument("name", help="the subscription")
    update = sub_actions.add_parser("update", help="change settings in place, keeping the messages")
    update.add_argument("name", help="the subscription")
    update.add_argument("--ack-deadline", type=duration, help="e.g. 30s, 1s to 600s")
    update.add_argument("--min-backoff", type=duration, help="retry policy: first redelivery wait")
    update.add_argument("--max-backoff", type=duration, help="retry policy: longest redelivery wait")
    update.add_argument("--max-delivery-attempts", type=count(0, 100), help="then to the dead-letter topic (0: never)")
    update.add_argument("--dead-letter-topic", help="'' with --max-delivery-attempts 0 ends dead-lettering")
    push = update.add_mutually_exclusive_group()
    push.add_argument("--push-endpoint", help="http(s) URL to POST each message to (the secret stays)")
    push.add_argument("--no-push", action="store_true", help="make it a pull subscription")
    rotate = sub_actions.add_parser("rotate-secret", help="a new push signing secret, printed once (the old one "
                                                          "signs beside it for --overlap)")
    rotate.add_argument("name", help="the subscription")
    rotate.add_argument("--overlap", type=duration, help="how long the old secret keeps signing beside the new one, "
                                                         "e.g. 2h (default 24h; 0: stops at once; at most 7d)")
    _add_seek_commands(sub_actions)


def _add_seek_commands(sub_actions) -> None:
    """subscription seek|purge"""
    seek = sub_actions.add_parser("seek", help="deliver again what was published since a time, or skip to the end")
    seek.add_argument("name", help="the subscription")
    target = seek.add_mutually_exclusive_group(required=True)
    target.add_argument("--time", type=instant, help="an ISO 8601 time with its zone, e.g. 2026-11-30T10:00:00Z: "
                        "what was published since is delivered (again; going back reaches what the topic's "
                        "--retain-acked keeps), what was published before counts as acknowledged")
    target.add_argument("--to-end", action="store_true", help="acknowledge everything published so far")
    sub_actions.add_parser("purge", help="acknowledge everything published so far").add_argument(
        "name", help="the subscription")


def _add_message_commands(commands) -> None:
    """publish, subscribe, pull, nack, dead-letters, message status"""
    publish = commands.add_parser("publish", help="publish a message, or each stdin line with '-'; prints "
                                                  "{\"message_id\": ...} (with '-': and the line number) per message")
    publish.add_argument("topic", help="the topic")
    publish.add_argument("message", help="the payload, or - to publish each line of stdin")
    publish.add_argument("--attr", type=attribute, action="append", metavar="KEY=VALUE",
                         help="an attribute of the message (repeatable)")
    publish.add_argument("--key", help="idempotency key: a repeat within the topic's dedup window gets the same id")
    publish.add_argument("--skip-invalid", action="store_true",
                         help="with '-': publish the valid lines, report the refused ones (exit 0 all the same)")

    subscribe = commands.add_parser("subscribe", help="print messages as they arrive, acknowledging each; "
                                                      "UTF-8 payloads as data, others as data_base64")
    subscribe.add_argument("subscription", help="the subscription")
    subscribe.add_argument("--max", type=count(1), help="exit after this many messages")
    subscribe.add_argument("--no-ack", action="store_true", help="print without acknowledging")

    pull = commands.add_parser("pull", help="print the messages ready now (without a stream) and exit")
    pull.add_argument("subscription", help="the subscription")
    pull.add_argument("--max", type=count(1, 1000), default=0, help="at most this many (default 100, up to 1000)")
    pull.add_argument("--wait", type=duration, default=0.0,
                      help="with none ready, wait this long for one (e.g. 2s; up to 30s; default 0)")
    pull.add_argument("--ack", action="store_true", help="acknowledge them once printed")

    nack = commands.add_parser("nack", help="give messages back for redelivery, or to the dead-letter topic")
    nack.add_argument("ack_id", nargs="+", help="ack ids (as subscribe --no-ack prints them), of one subscription")
    nack.add_argument("--terminal", action="store_true", help="to the dead-letter topic now, no more attempts")
    nack.add_argument("--delay", type=duration, help="redeliver after this long (default: the retry backoff)")
    nack.add_argument("--reason", help="kept in the delivery log")

    dead = commands.add_parser("dead-letters", help="list or redrive a subscription's dead letters; rules that redrive "
                                                    "them by themselves")
    dead_actions = dead.add_subparsers(dest="action", required=True)
    listing = dead_actions.add_parser("list",
                                      help="the dead-lettered messages still kept, each partition's oldest first")
    listing.add_argument("subscription", help="the subscription")
    listing.add_argument("--max", type=count(1, 1000), default=0,
                         help="at most this many (default: all, page after page; up to 1000)")
    dead_actions.add_parser("redrive", help="deliver them to the subscription again").add_argument(
        "subscription", help="the subscription")
    dead_actions.add_parser("rules", help="the redrive rules: dead letters that go back by themselves").add_argument(
        "subscription", nargs="?", help="default: every subscription's")
    add_rule = dead_actions.add_parser("add-rule", help="redrive dead letters whose last error matches, by themselves "
                                                        "(replaces a rule of the same reason)")
    remove_rule = dead_actions.add_parser("remove-rule", help="remove the rule of that reason")
    for parser_ in (add_rule, remove_rule):
        parser_.add_argument("subscription", help="a subscription with dead-lettering (notifymesh's own too)")
        parser_.add_argument("--reason", required=True, help="a regular expression searched for in the last error, "
                                                             "e.g. '^provider unavailable'")
    add_rule.add_argument("--after", type=duration, default=600.0, help="dead this long first (default 10m)")
    add_rule.add_argument("--max-redrives", type=count(1, 100), default=3, help="per message (default 3)")

    message = commands.add_parser("message", help="where a message is")
    message.add_subparsers(dest="action", required=True).add_parser(
        "status", help="per subscription: pending, delivered, acknowledged or dead-lettered, with each attempt"
    ).add_argument("message_id", help="as publish printed it")


def _add_cluster_commands(commands) -> None:
    """cluster status"""
    cluster = commands.add_parser("cluster", help="the state of the cluster")
    cluster.add_subparsers(dest="action", required=True).add_parser(
        "status", help="live members by kind; every partition's replicas, leader, epoch and lag")


def _add_server_side_commands(commands) -> None:
    """up and bench, which need the server side (notifymesh[server])"""
    up = commands.add_parser("up", help="run the local mesh in the foreground")
    up.add_argument("--data-dir", default=".notifymesh", help="etcd's and the storage nodes' data, and logs/")
    up.add_argument("--port", type=count(1, 65535 - 30), default=50051,
                    help="P: frontend i at P+i, etcd at P+10.. (clients) and P+20.. (peers); others take free ports")
    up.add_argument("--storage-nodes", type=count(1), default=3, help="storage nodes (default 3)")
    up.add_argument("--senders", type=count(1), default=1, help="2 or more: another takes over when one dies")
    up.add_argument("--etcd-members", type=int, default=1, choices=(1, 3, 5),
                    help="etcd cluster size (3 survives the loss of one member)")
    up.add_argument("--metadata", type=int, default=1, choices=range(1, 6), metavar="{1..5}",
                    help="metadata services (stateless; any serves)")
    up.add_argument("--frontends", type=int, default=1, choices=range(1, 6), metavar="{1..5}",
                    help="frontends, at --port, --port+1, ...; a client given all of them spreads its calls")
    up.add_argument("--ha", action="store_true",
                    help="no single point of failure: 3 etcd members and 2 each of metadata, sender and frontend")
    up.add_argument("--no-local-providers", dest="local_providers", action="store_false",
                    help="run no local SMTP server and SMS API (by default at P+18 and P+19, set as the providers "
                         "of channels that have none)")
    up.add_argument("--plaintext", action="store_true",
                    help="no TLS anywhere (default: mutual TLS from a local CA under --data-dir/tls), for a "
                         "comparison or behind a proxy that ends TLS")
    up.add_argument("--trace-sample-ratio", type=float,
                    help="traces: share of publishes and notifications sampled, 0 to 1 (0: off; default 0.01)")
    up.add_argument("--otlp-endpoint", help="traces: OTLP/gRPC collector host:port every service exports to")

    bench = commands.add_parser("bench", help="publish-to-deliver benchmark on a fresh topic (the peer harness's "
                                              "workload); one JSON line on stdout")
    bench.add_argument("--messages", type=count(1), default=50000, help="N messages in all (default 50000)")
    bench.add_argument("--size", type=count(16), default=256, help="payload bytes, at least 16 (default 256)")
    bench.add_argument("--subscribers", type=count(0), default=1,
                       help="K subscriptions, one subscriber process each; 0: publishing alone (the peers' phase a)")
    bench.add_argument("--publishers", type=count(1), default=1, help="publisher processes sharing N (default 1)")
    bench.add_argument("--rate", type=float, help="messages/s in all (default: full speed)")
    bench.add_argument("--window", type=count(1), default=1000,
                       help="most unacknowledged publishes in flight, and each subscriber's max outstanding")
    bench.add_argument("--topic-partitions", type=count(1), default=1, help="partitions of the bench's topic")
    bench.add_argument("--replication-factor", type=count(1, 5), default=3, help="of the bench's topic (default 3)")
    bench.add_argument("--timeout", type=float, default=600, help="bound of the publishing and of each subscriber, s")
    bench.add_argument("--idle-timeout", type=float, default=30, help="a subscriber gives up after this long "
                                                                      "without a new message, s")
    bench.add_argument("--addr", default=argparse.SUPPRESS, help="frontend address (as before the command)")


def _add_config_commands(commands) -> None:
    """config get|set|reset"""
    config = commands.add_parser("config", help="the cluster configuration in etcd, which running services follow")
    actions = config.add_subparsers(dest="action", required=True)
    get = actions.add_parser("get", help="every setting (or one): its value, default, whether etcd has it, and "
                                         "whether a change takes effect live or at restart")
    get.add_argument("key", nargs="?", help="one setting (default: all)")
    put = actions.add_parser("set", help="set a setting cluster-wide: running services take it in within seconds, "
                                         "or when restarted (the answer says which)")
    put.add_argument("key", help="a setting, as `config get` lists them")
    put.add_argument("value", help="a number above 0 (an integer for the integer settings)")
    actions.add_parser("reset", help="remove a setting from etcd: its default applies again").add_argument(
        "key", help="a setting, as `config get` lists them")


def _add_keys_commands(commands) -> None:
    """keys rotate [--master]"""
    keys = commands.add_parser("keys", help="the data keys of encryption at rest")
    rotate = keys.add_subparsers(dest="action", required=True).add_parser(
        "rotate", help="make a new data key, which new writes use from a few seconds on (older ones stay readable)")
    rotate.add_argument("--master", action="store_true",
                        help="re-wrap every data key under the master key's current version instead (put the new "
                             "master key first in the key file, or rotate it in the KMS, before)")


def _add_outbox_command(commands) -> None:
    """outbox list: what the local providers received (a file read, no frontend)"""
    outbox = commands.add_parser("outbox", help="what the local mesh's providers received (email, SMS, webhooks, push)")
    listing = outbox.add_subparsers(dest="action", required=True).add_parser(
        "list", help="every message a local provider received, oldest first, one a line")
    listing.add_argument("--channel", choices=OUTBOX_CHANNELS, help="only this channel (default: all)")
    listing.add_argument("--data-dir", default=".notifymesh", help="the mesh's data dir, as `up` was given it")
    listing.add_argument("--output", choices=OUTPUTS, default=argparse.SUPPRESS, help="as before the command")


def _outbox(args) -> int:
    if not (Path(args.data_dir) / "outbox").is_dir():
        fail(f"no outbox under {args.data_dir}: give the data dir of a mesh `up` runs with its local providers")
    for channel in [args.channel] if args.channel else OUTBOX_CHANNELS:
        for path in outbox_files(args.data_dir, channel):
            try:
                with open(path, encoding="utf-8") as lines:
                    for line in lines:
                        if line.strip():
                            received = json.loads(line)
                            args.out.record({"channel": channel, **received} if args.out.form == "json"
                                            else _outbox_row(channel, received))
            except FileNotFoundError:
                continue
    return 0


def _outbox_row(channel: str, received: dict) -> dict:
    """A received message as one table row: who it went to and its first line."""
    to = received.get("to") or received.get("path", "")
    text = received.get("subject") or received.get("title") or received.get("body") or received.get("text") or ""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return {"channel": channel, "to": ", ".join(to) if isinstance(to, list) else to,
            "message": first[:60] + ("…" if len(first) > 60 else ""),
            "id": received.get("message_id") or received.get("id", "")}


def _add_completion_command(commands) -> None:
    """completion bash|zsh (needs notifymesh[completion])"""
    completion = commands.add_parser(
        "completion", help="print a shell completion script: source <(notifymesh completion bash), or "
                           "notifymesh completion zsh > ~/.zfunc/_notifymesh (needs notifymesh[completion])")
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell")


OUTPUTS = ("json", "table")
NO_FRONTEND = ("up", "bench", "completion", "outbox")  # commands that call no frontend


def _accept_after_the_command(p: argparse.ArgumentParser, top: bool = True) -> None:
    """--addr and --output after the (sub)command too, on every command that calls a
    frontend: walks the parser, so commands added later get them as well."""
    subcommands = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subcommands:
        for name, command in action.choices.items():
            if not (top and name in NO_FRONTEND):
                _accept_after_the_command(command, top=False)
    if not subcommands and not top:
        if "--addr" not in p._option_string_actions:
            p.add_argument("--addr", type=addresses, default=argparse.SUPPRESS, help="as before the command")
        if "--output" not in p._option_string_actions:
            p.add_argument("--output", choices=OUTPUTS, default=argparse.SUPPRESS, help="as before the command")


def _version() -> str:
    try:
        return importlib.metadata.version("notifymesh")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="notifymesh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"notifymesh {_version()}",
                   help="print the version and exit")
    p.add_argument("--addr", type=addresses, default=None,
                   help="frontend host:port, or several as a,b: calls are spread over them and go to the others "
                        "while one is down (default $NOTIFYMESH_ADDR or 127.0.0.1:50051)")
    p.add_argument("--output", choices=OUTPUTS, default="json",
                   help="json: one JSON object per line (default); table: aligned columns for people")
    _add_tls_options(p)
    p.add_argument("--api-key", default=None, help="API key (default $NOTIFYMESH_API_KEY, else a local mesh's "
                                                   "admin.key); or an end user's token")
    commands = p.add_subparsers(dest="command", required=True)
    _add_topic_commands(commands)
    _add_subscription_commands(commands)
    _add_message_commands(commands)
    _add_cluster_commands(commands)
    _add_server_side_commands(commands)
    _add_config_commands(commands)
    _add_keys_commands(commands)
    _add_completion_command(commands)
    _add_outbox_command(commands)
    notify_cli.add_commands(commands)
    auth_cli.add_commands(commands, duration)
    node_cli.add_commands(commands, duration)
    _accept_after_the_command(p)
    return p


def _setting_record(setting) -> dict:
    return {"key": setting.key, "value": json.loads(setting.value), "default": json.loads(setting.default_value),
            "stored": setting.stored, "takes_effect": "at restart" if setting.restart_required else "live"}


async def _config(args, client: Client) -> None:
    if args.action == "get":
        for setting in await client.get_config(args.key or ""):
            args.out.record(_setting_record(setting))
        return
    setting = await client.set_config(args.key, args.value if args.action == "set" else None)
    args.out.record(_setting_record(setting))
    if setting.restart_required:
        print(f"note: services read {setting.key} when they start: running ones take the change in when restarted",
              file=sys.stderr)


def _completion(args) -> int:
    try:
        import shtab
    except ImportError:
        fail("shell completion needs shtab: pip install 'notifymesh[completion]'")
    print(shtab.complete(parser(), args.shell))
    return 0


async def _check_frontend(args) -> None:
    """Fails with what to do when no frontend answers (after a call failed UNAVAILABLE)."""
    async with Client(args.addr or default_addr(), api_key=getattr(args, "api_key", None)) as client:
        await require_frontend(client)


def _quiet_stdout() -> None:
    """stdout's reader went away: what Python still flushes at exit goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


async def _run(args) -> int:
    async with Client(args.addr or default_addr(), api_key=args.api_key) as client:
        if args.command == "topic":
            await _topic(args, client)
        elif args.command == "subscription":
            await _subscription(args, client)
        elif args.command == "cluster":
            await _cluster(args, client)
        elif args.command == "publish":
            return await _publish(args, client)
        elif args.command == "subscribe":
            return await _subscribe(args, client)
        elif args.command == "pull":
            return await _pull(args, client)
        elif args.command == "nack":
            await _nack(args, client)
        elif args.command == "dead-letters":
            await _dead_letters(args, client)
        elif args.command == "message":
            args.out.record(_status_record(await client.get_message_status(args.message_id)))
        elif args.command == "config":
            await _config(args, client)
        elif args.command == "keys":
            done = await client.rotate_keys(master=args.master)
            args.out.record({"data_key": done.data_key, "active_time": done.active_time.ToJsonString(),
                             "rewrapped": done.rewrapped, "master_key_id": done.master_key_id})
        elif args.command in notify_cli.COMMANDS:
            return await notify_cli.run(args, client)
        elif args.command in auth_cli.COMMANDS:
            return await auth_cli.run(args, client)
        elif args.command in node_cli.COMMANDS:
            return await node_cli.run(args, client)
    return 0


TLS_OPTIONS = {"ca": "NOTIFYMESH_CA", "cert": "NOTIFYMESH_CERT", "key": "NOTIFYMESH_KEY"}  # before the command


def _add_tls_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca", dest="tls_ca", help="PEM file of the CA the frontend's certificate is checked "
                   "against (default $NOTIFYMESH_CA, else the local mesh's tls/ca.pem, else the system's)")
    p.add_argument("--cert", dest="tls_cert",
                   help="PEM client certificate (default $NOTIFYMESH_CERT, else the local mesh's)")
    p.add_argument("--key", dest="tls_key", help="PEM key of --cert (default $NOTIFYMESH_KEY, else the local mesh's)")


def _use_tls_options(args) -> None:
    """--ca/--cert/--key as the environment the Client (and bench's processes) read them from."""
    for option, env in TLS_OPTIONS.items():
        path = getattr(args, f"tls_{option}", None)
        if path:
            if not os.path.isfile(path):
                fail(f"--{option} {path}: no such file")
            os.environ[env] = path


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    _use_tls_options(args)
    if args.command == "up":
        raise SystemExit(_up(args))
    if args.command == "bench":
        raise SystemExit(_server_side("notifymesh.bench", "bench").run(args))
    args.out = Output(args.output, streaming=args.command in ("publish", "subscribe", "inbox"))
    try:
        if args.command == "completion":
            raise SystemExit(_completion(args))
        if args.command == "outbox":
            try:
                raise SystemExit(_outbox(args))
            finally:
                args.out.close()
        try:
            code = asyncio.run(_run(args))
        finally:
            args.out.close()
        raise SystemExit(code)
    except NotifymeshError as e:
        if isinstance(e, Unavailable):
            asyncio.run(_check_frontend(args))  # fails with what to do when none answers
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    except KeyboardInterrupt:
        raise SystemExit(130)
    except BrokenPipeError:  # `notifymesh subscribe ... | head`: the reader has what it wanted
        _quiet_stdout()
        raise SystemExit(EXIT_BROKEN_PIPE)


if __name__ == "__main__":
    main()
