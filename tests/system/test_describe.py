"""Describe against a known backlog: a subscription that took every message
(some acknowledged, one dead-lettered, the rest in flight on an open stream)
and one that took none, on a topic of two partitions; every number per
partition and in total, through the client, the CLI and `cluster status`."""

import asyncio
import json
import time
import zlib

from helpers import cli, unique

from notifymesh.client import Client, Message
from notifymesh.contracts import AckId


def key_of_partition(partition: int, partitions: int = 2) -> str:
    """An ordering key that sends a message to partition."""
    return next(key for key in (f"key-{i}" for i in range(100)) if zlib.crc32(key.encode()) % partitions == partition)


def numbers(stats) -> tuple:
    """DeliveryStats without the age (checked apart): backlog, in flight, deliveries
    in the last minute, dead letters."""
    return stats.backlog, stats.in_flight, round(stats.delivery_rate * 60), stats.dead_letters


def age_s(stats) -> float | None:
    return stats.oldest_unacked_age.ToMilliseconds() / 1000 if stats.HasField("oldest_unacked_age") else None


async def test_describe_gives_every_number_of_a_known_backlog_per_partition_and_in_total(mesh, client):
    topic, dead_topic = unique("describe"), unique("describe-dead")
    taker, idle = unique("describe-taker"), unique("describe-idle")
    await client.create_topic(topic, partitions=2)
    await client.create_topic(dead_topic)
    await client.create_subscription(taker, topic, ack_deadline_s=120, max_delivery_attempts=5,
                                     dead_letter_topic=dead_topic)
    await client.create_subscription(idle, topic)
    keys = [key_of_partition(0), key_of_partition(1)]
    # Partition 0: 3 messages, then 3 more a second later (the first 3 get acked);
    # partition 1: 4 messages, another second later.
    started = time.time()
    early = await client.publish(topic, [Message(b"p0-early-%d" % i, ordering_key=keys[0]) for i in range(3)])
    await asyncio.sleep(1)
    late = await client.publish(topic, [Message(b"p0-late-%d" % i, ordering_key=keys[0]) for i in range(3)])
    await asyncio.sleep(1)
    last = await client.publish(topic, [Message(b"p1-%d" % i, ordering_key=keys[1]) for i in range(4)])
    published = time.time()

    received = {}  # message id -> ReceivedMessage
    got_all = asyncio.Event()

    async def hold_a_stream():
        async for frame in client.subscribe_frames(taker, max_outstanding=20):
            received.update((m.message.message_id, m) for m in frame)
            if len(received) == 10:
                got_all.set()

    stream = asyncio.create_task(hold_a_stream())
    try:
        await asyncio.wait_for(got_all.wait(), 30)
        assert {AckId.parse(received[i].ack_id).partition for i in early + late} == {0}
        assert {AckId.parse(received[i].ack_id).partition for i in last} == {1}
        await client.acknowledge(taker, [received[i].ack_id for i in early + last[-1:]])
        await client.nack(taker, [received[late[0]].ack_id], terminal=True, reason="describe test")
        for _ in range(100):  # the dead-lettering moves it to the dead-letter topic
            described = await client.describe_subscription(taker)
            if described.total.dead_letters:
                break
            await asyncio.sleep(0.1)

        described_at = time.time()
        topic_stats = await client.describe_topic(topic)
        in_topic = {s.subscription: s for s in topic_stats.subscriptions}
        assert sorted(in_topic) == sorted([taker, idle])
        for stats in (await client.describe_subscription(taker), in_topic[taker]):
            assert (stats.subscription, stats.topic, stats.streams) == (taker, topic, 1)
            [p0, p1] = stats.partitions
            assert (p0.partition, p1.partition) == (0, 1)
            # (backlog, in flight, delivered in the last minute, dead letters)
            assert numbers(p0.stats) == (2, 2, 6, 1)  # 6 taken: 3 acked, 1 dead-lettered, 2 in flight
            assert numbers(p1.stats) == (3, 3, 4, 0)  # 4 taken: 1 acked, 3 in flight
            assert numbers(stats.total) == (5, 5, 10, 1)
        for stats in (await client.describe_subscription(idle), in_topic[idle]):
            assert stats.streams == 0
            [p0, p1] = stats.partitions
            assert numbers(p0.stats) == (6, 0, 0, 0)
            assert numbers(p1.stats) == (4, 0, 0, 0)
            assert numbers(stats.total) == (10, 0, 0, 0)
        assert numbers(topic_stats.total) == (15, 5, 10, 1)
        assert [numbers(p.stats) for p in topic_stats.partitions] == [(8, 2, 6, 1), (7, 3, 4, 0)]
        assert topic_stats.streams == 1

        # Ages: the idle subscription's oldest is the first message of each partition;
        # the taker's, on partition 0, the first not acked (a second younger), on
        # partition 1 the same as idle's.
        taker_p0, taker_p1 = (age_s(p.stats) for p in in_topic[taker].partitions)
        idle_p0, idle_p1 = (age_s(p.stats) for p in in_topic[idle].partitions)
        assert described_at - published - 0.5 <= idle_p1 <= time.time() - published + 2.5
        assert idle_p0 - idle_p1 >= 1.9  # published two seconds earlier
        assert idle_p0 <= time.time() - started + 0.5
        assert 0.9 <= idle_p0 - taker_p0 <= 3
        assert abs(taker_p1 - idle_p1) < 0.1  # the same message
        assert age_s(in_topic[taker].total) == taker_p0 and age_s(topic_stats.total) == idle_p0

        # The CLI prints the same numbers, one JSON line each.
        printed = cli(mesh, "subscription", "describe", taker)
        assert printed.returncode == 0, printed.stderr
        line = json.loads(printed.stdout)
        assert {k: line[k] for k in ("subscription", "topic", "backlog", "in_flight", "dead_letters", "streams")} \
            == {"subscription": taker, "topic": topic, "backlog": 5, "in_flight": 5, "dead_letters": 1, "streams": 1}
        assert line["oldest_unacked_age_s"] >= taker_p0 and abs(line["delivery_rate_per_s"] - 10 / 60) < 0.01
        assert [(p["partition"], p["backlog"], p["in_flight"]) for p in line["partitions"]] == [(0, 2, 2), (1, 3, 3)]
        printed = cli(mesh, "topic", "describe", topic)
        assert printed.returncode == 0, printed.stderr
        line = json.loads(printed.stdout)
        assert (line["topic"], line["backlog"], line["in_flight"], line["streams"]) == (topic, 15, 5, 1)
        assert {s["subscription"]: s["backlog"] for s in line["subscriptions"]} == {taker: 5, idle: 10}
        assert [p["backlog"] for p in line["partitions"]] == [8, 7]

        status = cli(mesh, "cluster", "status")
        assert status.returncode == 0, status.stderr
        shards = {s["partition"]: s["backlogs"] for s in json.loads(status.stdout)["shards"] if s["topic"] == topic}
        assert shards == {0: {taker: 2, idle: 6}, 1: {taker: 3, idle: 4}}
        table = cli(mesh, "cluster", "status", "--output", "table")
        assert table.returncode == 0, table.stderr
        rows = {int(row.split()[1]): row for row in table.stdout.decode().splitlines() if row.startswith(topic + " ")}
        backlogs = sorted([(taker, 2), (idle, 6)])
        assert rows[0].endswith("; ".join(f"{name} {count}" for name, count in backlogs))
        assert rows[1].endswith("; ".join(f"{name} {count}" for name, count in sorted([(taker, 3), (idle, 4)])))
    finally:
        stream.cancel()
        await asyncio.gather(stream, return_exceptions=True)


async def test_numbers_stay_exact_across_a_leader_change(own_mesh):
    """The delivery state travels with the log; the new leader's epoch marker, past
    an idle subscription's cursor, is not counted as a message."""
    async with Client(own_mesh.frontend_addr) as client:
        topic, taker, idle = unique("describe-failover"), unique("describe-taker"), unique("describe-idle")
        await client.create_topic(topic, replication_factor=3)
        await client.create_subscription(taker, topic, ack_deadline_s=120)
        await client.create_subscription(idle, topic)
        await client.publish(topic, [b"m-%d" % i for i in range(10)])
        frames = client.subscribe_frames(taker, max_outstanding=2)  # room for 2: no more is delivered
        taken = []
        while len(taken) < 2:
            taken += await asyncio.wait_for(anext(frames), 30)
        expected = {taker: (10, 2, 2, 0), idle: (10, 0, 0, 0)}
        assert {s.subscription: numbers(s.total) for s in (await client.describe_topic(topic)).subscriptions} \
            == expected
        await asyncio.sleep(1.5)  # the leader sends its followers its delivery state about every 0.5 s

        leader = next(s.leader for s in (await client.get_cluster_status()).shards if s.topic == topic)
        own_mesh.kill(leader)
        for _ in range(200):
            shard = next(s for s in (await client.get_cluster_status()).shards if s.topic == topic)
            if shard.leader and shard.leader != leader and shard.commit:
                break
            await asyncio.sleep(0.05)
        assert shard.leader != leader
        described = {s.subscription: s.total for s in (await client.describe_topic(topic)).subscriptions}
        # Deliveries are counted by the leader that made them: the new one made none.
        assert {name: numbers(stats) for name, stats in described.items()} == {taker: (10, 2, 0, 0),
                                                                               idle: (10, 0, 0, 0)}
        assert described[idle].HasField("oldest_unacked_age")
        await frames.aclose()


async def test_describe_of_what_does_not_exist_is_not_found(mesh, client):
    for args in (("subscription", "describe", unique("nope")), ("topic", "describe", unique("nope"))):
        printed = cli(mesh, *args)
        assert printed.returncode == 1 and b"error: NOT_FOUND" in printed.stderr, printed.stderr
    printed = cli(mesh, "topic", "describe", "!bad")
    assert printed.returncode == 1 and b"error: INVALID_ARGUMENT" in printed.stderr, printed.stderr
