"""The `notifymesh` command: administer topics and subscriptions, publish,
subscribe, and run the local mesh (`notifymesh up`)."""

import argparse
import asyncio
import base64
import collections
import datetime
import importlib
import json
import re
import signal
import sys
import time
from pathlib import Path

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.channel import parse_addresses
from notifymesh.client import Client, Message, default_addr
from notifymesh.contracts import AckId
from notifymesh.errors import InvalidArgument, NotifymeshError

PUBLISH_BATCH = 500
PUBLISH_IN_FLIGHT = 8
PROGRESS_EVERY_S = 0.5


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


def _topic_line(topic) -> str:
    return json.dumps({"name": topic.name, "partitions": topic.partition_count,
                       "replication_factor": topic.replication_factor,
                       "dedup_window_s": topic.dedup_window.seconds, "dedup_by_payload": topic.dedup_by_payload,
                       "dedup_attributes": list(topic.dedup_attributes),
                       "message_retention_s": topic.message_retention.seconds,
                       "retain_acked_s": topic.retain_acked.seconds,
                       "create_time": topic.create_time.ToJsonString()})


def _subscription_line(sub) -> str:
    line = {"name": sub.name, "topic": sub.topic, "ack_deadline_s": sub.ack_deadline.ToMilliseconds() / 1000,
            "create_time": sub.create_time.ToJsonString()}
    if sub.HasField("retry_policy"):
        line |= {"min_backoff_s": sub.retry_policy.minimum_backoff.ToMilliseconds() / 1000,
                 "max_backoff_s": sub.retry_policy.maximum_backoff.ToMilliseconds() / 1000,
                 "backoff_multiplier": sub.retry_policy.multiplier}
    if sub.push_config.endpoint:
        line |= {"push_endpoint": sub.push_config.endpoint, "push_secret": sub.push_config.secret}
    if sub.dead_letter_topic:
        line |= {"max_delivery_attempts": sub.max_delivery_attempts, "dead_letter_topic": sub.dead_letter_topic}
    return json.dumps(line)


def _message_line(received) -> str:
    return json.dumps({**_message_fields(received.message), "attempt": received.delivery_attempt,
                       "ack_id": received.ack_id}, ensure_ascii=False)


def _message_fields(message) -> dict:
    line = {"id": message.message_id, "attributes": dict(message.attributes),
            "publish_time": message.publish_time.ToJsonString()}
    try:
        line["data"] = message.data.decode()
    except UnicodeDecodeError:
        line["data_base64"] = base64.b64encode(message.data).decode()
    return line


def _status_line(status) -> str:
    deliveries = [{"subscription": d.subscription, "state": pubsub_pb2.DeliveryState.Name(d.state),
                   "delivery_attempts": d.delivery_attempts,
                   "attempts": [{"attempt": a.attempt, "delivery_time": a.delivery_time.ToJsonString(),
                                 "outcome": pubsub_pb2.AttemptOutcome.Name(a.outcome),
                                 **({"outcome_time": a.outcome_time.ToJsonString()}
                                    if a.HasField("outcome_time") else {}),
                                 **({"error": a.error} if a.error else {})} for a in d.attempts]}
                  for d in status.deliveries]
    return json.dumps({"topic": status.topic, "partition": status.partition, "message": _message_fields(status.message),
                       "deliveries": deliveries}, ensure_ascii=False)


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


def _subscription_stats_line(stats) -> str:
    return json.dumps({"subscription": stats.subscription, "topic": stats.topic, **_described(stats)})


def _topic_stats_line(stats) -> str:
    return json.dumps({"topic": stats.topic, **_described(stats),
                       "subscriptions": [{"subscription": s.subscription, **_described(s)}
                                         for s in stats.subscriptions]})


async def _nack(args, client: Client) -> None:
    """Ack ids name their subscription; all given must be of one."""
    subscriptions = {AckId.parse(ack_id).subscription for ack_id in args.ack_id}
    if len(subscriptions) != 1:
        raise SystemExit(f"the ack ids are of {len(subscriptions)} subscriptions; give those of one at a time")
    await client.nack(subscriptions.pop(), args.ack_id, args.delay, args.terminal, args.reason or "")


async def _dead_letters(args, client: Client) -> None:
    if args.action == "list":
        for dead in await client.list_dead_letters(args.subscription, args.max):
            print(json.dumps({**_message_fields(dead.message), "delivery_attempts": dead.delivery_attempts,
                              "dead_letter_time": dead.dead_letter_time.ToJsonString(),
                              "last_error": dead.last_error, "dead_letter_message_id": dead.dead_letter_message_id},
                             ensure_ascii=False))
    elif args.action == "redrive":
        redriven = await client.redrive_dead_letters(args.subscription)
        print(f"redriven {redriven} dead letters to {args.subscription}", file=sys.stderr)


async def _topic(args, client: Client) -> None:
    if args.action == "create":
        print(_topic_line(await client.create_topic(args.name, args.retention, args.partitions,
                                                    args.replication_factor, args.dedup_window,
                                                    args.dedup_by_payload, args.dedup_attribute,
                                                    args.retain_acked)))
    elif args.action == "update":
        if args.partitions is None and args.retain_acked is None:
            print("notifymesh topic update: error: give --partitions, --retain-acked or both", file=sys.stderr)
            raise SystemExit(2)
        print(_topic_line(await client.update_topic(args.name, args.partitions or 0, args.retain_acked)))
    elif args.action == "get":
        print(_topic_line(await client.get_topic(args.name)))
    elif args.action == "describe":
        print(_topic_stats_line(await client.describe_topic(args.name)))
    elif args.action == "list":
        for topic in await client.list_topics():
            print(_topic_line(topic))
    elif args.action == "delete":
        await client.delete_topic(args.name)
        print(f"deleted topic {args.name}", file=sys.stderr)


async def _cluster(args, client: Client) -> None:
    """A table for people: members by kind, then every shard with its replicas."""
    status = await client.get_cluster_status()
    by_kind: dict[str, list[str]] = {}
    for member in status.members:
        by_kind.setdefault(member.kind, []).append(f"{member.node_id} ({member.addr})")
    for kind in ("metadata", "storage", "sender", "frontend"):
        print(f"{kind:<9} {', '.join(by_kind.get(kind, [])) or '(none alive)'}")
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
        print(_subscription_line(await client.create_subscription(
            args.name, args.topic, args.ack_deadline, args.min_backoff, args.max_backoff,
            args.max_delivery_attempts, args.dead_letter_topic or "", args.push_endpoint or "")))
    elif args.action == "get":
        print(_subscription_line(await client.get_subscription(args.name)))
    elif args.action == "describe":
        print(_subscription_stats_line(await client.describe_subscription(args.name)))
    elif args.action == "list":
        for sub in await client.list_subscriptions(args.topic or ""):
            print(_subscription_line(sub))
    elif args.action == "delete":
        await client.delete_subscription(args.name)
        print(f"deleted subscription {args.name}", file=sys.stderr)
    elif args.action in ("seek", "purge"):
        await _seek(args, client)
    elif args.action == "update":
        await _update_subscription(args, client)


async def _seek(args, client: Client) -> None:
    """subscription seek NAME --time T | --to-end; subscription purge NAME (seek to the end)."""
    to_end = args.action == "purge" or args.to_end
    reply = await client.seek(args.name, None if to_end else args.time, to_end)
    target = {"to_end": True} if to_end else {"time": args.time.astimezone(datetime.timezone.utc).isoformat()}
    print(json.dumps({"subscription": args.name, **target, "partitions_limited": reply.partitions_limited}))


async def _update_subscription(args, client: Client) -> None:
    """Only the settings given change; the subscription keeps its messages."""
    push_endpoint = "" if args.no_push else args.push_endpoint
    changes = (args.ack_deadline, args.min_backoff, args.max_backoff, args.max_delivery_attempts,
               args.dead_letter_topic, push_endpoint)
    if all(change is None for change in changes):
        print("notifymesh subscription update: error: give at least one setting to change (see --help)",
              file=sys.stderr)
        raise SystemExit(2)
    print(_subscription_line(await client.update_subscription(args.name, *changes)))


async def _pull(args, client: Client) -> int:
    """Prints the messages ready now (or the first within --wait) as JSON lines; with
    --ack, acknowledges them once printed."""
    received = await client.pull(args.subscription, args.max, args.wait)
    for message in received:
        print(_message_line(message), flush=True)
    if received and args.ack:
        await client.acknowledge(args.subscription, [m.ack_id for m in received])
    return 0


async def _publish(args, client: Client) -> int:
    attributes = dict(args.attr or [])
    if args.message != "-":
        [message_id] = await client.publish(args.topic, [Message(args.message.encode(), attributes, args.key or "")])
        print(message_id)
        return 0
    if args.key:
        raise SystemExit("--key applies to one message; with '-' each line is its own message")
    return await _publish_lines(args.topic, attributes, client)


async def _publish_lines(topic: str, attributes: dict[str, str], client: Client) -> int:
    """Publishes stdin lines in batches, PUBLISH_IN_FLIGHT batches at a time, and
    prints the id of each message published, in the order of the lines."""
    acknowledged = failed = read = 0
    slots = asyncio.Semaphore(PUBLISH_IN_FLIGHT)
    sends: collections.deque[asyncio.Task] = collections.deque()  # in the order of the lines
    last_progress = 0.0

    async def send(batch: list[Message]) -> list[str]:
        nonlocal acknowledged, failed
        try:
            ids = await client.publish(topic, batch)
            acknowledged += len(ids)
            return ids
        except NotifymeshError as e:
            failed += len(batch)
            print(f"error: {len(batch)} messages not acknowledged: {e}", file=sys.stderr)
            return []
        finally:
            slots.release()

    def print_ids() -> None:
        while sends and sends[0].done():
            for message_id in sends.popleft().result():
                print(message_id)

    def progress(final: bool = False) -> None:
        nonlocal last_progress
        if final or time.monotonic() - last_progress >= PROGRESS_EVERY_S:
            last_progress = time.monotonic()
            print(f"\rread {read}, acknowledged {acknowledged}, failed {failed}", end="\n" if final else "",
                  file=sys.stderr, flush=True)

    loop = asyncio.get_running_loop()
    batch: list[Message] = []
    while True:
        line = await loop.run_in_executor(None, sys.stdin.buffer.readline)
        if line:
            batch.append(Message(line.rstrip(b"\r\n"), attributes))
            read += 1
        if batch and (len(batch) >= PUBLISH_BATCH or not line):
            await slots.acquire()
            sends.append(asyncio.create_task(send(batch)))
            batch = []
        print_ids()
        progress()
        if not line:
            break
    await asyncio.gather(*sends)
    print_ids()
    progress(final=True)
    return 1 if failed else 0


async def _subscribe(args, client: Client) -> int:
    """Prints each message as it arrives, then acknowledges the frame's messages."""
    seen = 0
    async for frame in client.subscribe_frames(args.subscription, max_outstanding=args.max or 0):
        printed = frame[:args.max - seen] if args.max else frame
        for received in printed:
            print(_message_line(received), flush=True)
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
    mesh = local.LocalMesh(Path(args.data_dir), frontend_port=args.port, storage_nodes=args.storage_nodes, **counts)
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
        print(f"notifymesh mesh is up: frontend{'s' if len(mesh.frontend_addrs) > 1 else ''} {mesh.frontend_target} "
              f"(NOTIFYMESH_ADDR={mesh.frontend_target}; logs in {mesh.data_dir / 'logs'}; Ctrl-C stops)", flush=True)
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
    create = topic_actions.add_parser("create")
    create.add_argument("name")
    create.add_argument("--retention", type=duration, help="how long unacked messages are kept (default 7d)")
    create.add_argument("--partitions", type=int, default=0, help="partitions (default 1)")
    create.add_argument("--replication-factor", type=int, default=0,
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
    update.add_argument("name")
    update.add_argument("--partitions", type=int, help="the new partition count (only raised)")
    update.add_argument("--retain-acked", type=duration, help="keep acknowledged messages this long (0: off)")
    topic_actions.add_parser("get").add_argument("name")
    topic_actions.add_parser("describe", help="every subscription's backlog, in flight, oldest unacknowledged "
                                              "age, delivery rate, dead letters and streams, per partition and "
                                              "in total").add_argument("name")
    topic_actions.add_parser("list")
    topic_actions.add_parser("delete").add_argument("name")


def _add_subscription_commands(commands) -> None:
    """subscription create|get|list|delete|update, and seek|purge"""
    sub = commands.add_parser("subscription", help="create, get, list, delete or update subscriptions")
    sub_actions = sub.add_subparsers(dest="action", required=True)
    create = sub_actions.add_parser("create")
    create.add_argument("name")
    create.add_argument("--topic", required=True)
    create.add_argument("--ack-deadline", type=duration, help="e.g. 10s (default 10s)")
    create.add_argument("--min-backoff", type=duration, help="retry policy: first redelivery wait (default 1s)")
    create.add_argument("--max-backoff", type=duration, help="retry policy: longest redelivery wait (default 60s)")
    create.add_argument("--max-delivery-attempts", type=int, default=0,
                        help="then move the message to --dead-letter-topic")
    create.add_argument("--dead-letter-topic")
    create.add_argument("--push-endpoint", help="http(s) URL to POST each message to")
    sub_actions.add_parser("get").add_argument("name")
    sub_actions.add_parser("describe", help="backlog, in flight, oldest unacknowledged age, delivery rate, "
                                            "dead letters and streams, per partition and in total"
                           ).add_argument("name")
    sub_actions.add_parser("list").add_argument("--topic")
    sub_actions.add_parser("delete").add_argument("name")
    update = sub_actions.add_parser("update", help="change settings in place, keeping the messages")
    update.add_argument("name")
    update.add_argument("--ack-deadline", type=duration, help="e.g. 30s, 1s to 600s")
    update.add_argument("--min-backoff", type=duration, help="retry policy: first redelivery wait")
    update.add_argument("--max-backoff", type=duration, help="retry policy: longest redelivery wait")
    update.add_argument("--max-delivery-attempts", type=int, help="then to the dead-letter topic (0: never)")
    update.add_argument("--dead-letter-topic", help="'' with --max-delivery-attempts 0 ends dead-lettering")
    push = update.add_mutually_exclusive_group()
    push.add_argument("--push-endpoint", help="http(s) URL to POST each message to (the secret stays)")
    push.add_argument("--no-push", action="store_true", help="make it a pull subscription")
    _add_seek_commands(sub_actions)


def _add_seek_commands(sub_actions) -> None:
    """subscription seek|purge"""
    seek = sub_actions.add_parser("seek", help="deliver again what was published since a time, or skip to the end")
    seek.add_argument("name")
    target = seek.add_mutually_exclusive_group(required=True)
    target.add_argument("--time", type=instant, help="an ISO 8601 time with its zone, e.g. 2026-11-30T10:00:00Z: "
                        "what was published since is delivered (again; going back reaches what the topic's "
                        "--retain-acked keeps), what was published before counts as acknowledged")
    target.add_argument("--to-end", action="store_true", help="acknowledge everything published so far")
    sub_actions.add_parser("purge", help="acknowledge everything published so far").add_argument("name")


def _add_message_commands(commands) -> None:
    """publish, subscribe, pull, nack, dead-letters, message status"""
    publish = commands.add_parser("publish", help="publish a message, or each stdin line with '-'")
    publish.add_argument("topic")
    publish.add_argument("message", help="the payload, or - to publish each line of stdin")
    publish.add_argument("--attr", type=attribute, action="append", metavar="KEY=VALUE")
    publish.add_argument("--key", help="idempotency key")

    subscribe = commands.add_parser("subscribe", help="print messages as they arrive, acknowledging each")
    subscribe.add_argument("subscription")
    subscribe.add_argument("--max", type=int, help="exit after this many messages")
    subscribe.add_argument("--no-ack", action="store_true", help="print without acknowledging")

    pull = commands.add_parser("pull", help="print the messages ready now (without a stream) and exit")
    pull.add_argument("subscription")
    pull.add_argument("--max", type=int, default=0, help="at most this many (default 100, up to 1000)")
    pull.add_argument("--wait", type=duration, default=0.0,
                      help="with none ready, wait this long for one (e.g. 2s; up to 30s; default 0)")
    pull.add_argument("--ack", action="store_true", help="acknowledge them once printed")

    nack = commands.add_parser("nack", help="give messages back for redelivery, or to the dead-letter topic")
    nack.add_argument("ack_id", nargs="+")
    nack.add_argument("--terminal", action="store_true", help="to the dead-letter topic now, no more attempts")
    nack.add_argument("--delay", type=duration, help="redeliver after this long (default: the retry backoff)")
    nack.add_argument("--reason", help="kept in the delivery log")

    dead = commands.add_parser("dead-letters", help="list or redrive a subscription's dead letters")
    dead_actions = dead.add_subparsers(dest="action", required=True)
    listing = dead_actions.add_parser("list", help="the dead-lettered messages still kept, oldest first")
    listing.add_argument("subscription")
    listing.add_argument("--max", type=int, default=0, help="at most this many (default 100, up to 1000)")
    dead_actions.add_parser("redrive", help="deliver them to the subscription again").add_argument("subscription")

    message = commands.add_parser("message", help="where a message is")
    message.add_subparsers(dest="action", required=True).add_parser(
        "status", help="per subscription: pending, delivered, acknowledged or dead-lettered, with each attempt"
    ).add_argument("message_id")


def _add_cluster_commands(commands) -> None:
    """cluster status"""
    cluster = commands.add_parser("cluster", help="the state of the cluster")
    cluster.add_subparsers(dest="action", required=True).add_parser(
        "status", help="live members by kind; every partition's replicas, leader, epoch and lag")


def _add_server_side_commands(commands) -> None:
    """up and bench, which need the server side (notifymesh[server])"""
    up = commands.add_parser("up", help="run the local mesh in the foreground")
    up.add_argument("--data-dir", default=".notifymesh")
    up.add_argument("--port", type=int, default=50051,
                    help="P: frontend i at P+i, etcd at P+10.. (clients) and P+20.. (peers); others take free ports")
    up.add_argument("--storage-nodes", type=int, default=3)
    up.add_argument("--senders", type=int, default=1, help="2 or more: another takes over when one dies")
    up.add_argument("--etcd-members", type=int, default=1, choices=(1, 3, 5),
                    help="etcd cluster size (3 survives the loss of one member)")
    up.add_argument("--metadata", type=int, default=1, choices=range(1, 6), metavar="{1..5}",
                    help="metadata services (stateless; any serves)")
    up.add_argument("--frontends", type=int, default=1, choices=range(1, 11), metavar="{1..10}",
                    help="frontends, at --port, --port+1, ...; a client given all of them spreads its calls")
    up.add_argument("--ha", action="store_true",
                    help="no single point of failure: 3 etcd members and 2 each of metadata, sender and frontend")

    bench = commands.add_parser("bench", help="publish-to-deliver benchmark on a fresh topic (the peer harness's "
                                              "workload); one JSON line on stdout")
    bench.add_argument("--messages", type=int, default=50000, help="N messages in all (default 50000)")
    bench.add_argument("--size", type=int, default=256, help="payload bytes, at least 16 (default 256)")
    bench.add_argument("--subscribers", type=int, default=1,
                       help="K subscriptions, one subscriber process each; 0: publishing alone (the peers' phase a)")
    bench.add_argument("--publishers", type=int, default=1, help="publisher processes sharing N (default 1)")
    bench.add_argument("--rate", type=float, help="messages/s in all (default: full speed)")
    bench.add_argument("--window", type=int, default=1000,
                       help="most unacknowledged publishes in flight, and each subscriber's max outstanding")
    bench.add_argument("--topic-partitions", type=int, default=1)
    bench.add_argument("--replication-factor", type=int, default=3)
    bench.add_argument("--timeout", type=float, default=600, help="bound of the publishing and of each subscriber, s")
    bench.add_argument("--idle-timeout", type=float, default=30, help="a subscriber gives up after this long "
                                                                      "without a new message, s")
    bench.add_argument("--addr", default=argparse.SUPPRESS, help="frontend address (as before the command)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="notifymesh", description=__doc__)
    p.add_argument("--addr", type=addresses, default=None,
                   help="frontend host:port, or several as a,b: calls are spread over them and go to the others "
                        "while one is down (default $NOTIFYMESH_ADDR or 127.0.0.1:50051)")
    commands = p.add_subparsers(dest="command", required=True)
    _add_topic_commands(commands)
    _add_subscription_commands(commands)
    _add_message_commands(commands)
    _add_cluster_commands(commands)
    _add_server_side_commands(commands)
    return p


async def _run(args) -> int:
    async with Client(args.addr or default_addr()) as client:
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
            print(_status_line(await client.get_message_status(args.message_id)))
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "up":
        raise SystemExit(_up(args))
    if args.command == "bench":
        raise SystemExit(_server_side("notifymesh.bench", "bench").run(args))
    try:
        raise SystemExit(asyncio.run(_run(args)))
    except NotifymeshError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    except KeyboardInterrupt:
        raise SystemExit(130)


if __name__ == "__main__":
    main()
