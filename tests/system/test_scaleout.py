"""Two senders share one partitioned subscription: each serves the (subscription,
partition) pairs the sender ring gives it, for streams, unary pulls and push; a
killed sender's pairs move to the other and nothing is lost."""

import asyncio
import json
import time
from collections import Counter

import pytest
from helpers import Receiver, ids_of, new_mesh, receive, unique

from notifymesh.client import Client, Message
from notifymesh.contracts import AckId
from notifymesh.server.ring import Ring

SENDERS = ["sender-1", "sender-2"]
PARTITIONS = 4


@pytest.fixture(scope="module")
def two_senders(tmp_path_factory):
    mesh = new_mesh(tmp_path_factory.mktemp("scaleout"), senders=2)
    yield mesh
    mesh.stop()


def owners(subscription: str) -> dict[int, str]:
    """partition -> the sender that owns the pair, as every process computes it."""
    return {p: Ring(SENDERS).owner(subscription, p) for p in range(PARTITIONS)}


def pulled_shards(mesh, topic: str) -> dict[str, set[int]]:
    """sender -> the partitions of topic it pulled, from its log."""
    pulled = {}
    for name in SENDERS:
        with open(mesh.processes[name].log_path, errors="replace") as log:
            lines = [json.loads(line) for line in log if '"pulling shard"' in line]
        pulled[name] = {line["partition"] for line in lines if line.get("topic") == topic}
    return pulled


def spread(prefix: str, count: int) -> list[Message]:
    """Messages the frontend spreads over the partitions (each by its own key)."""
    return [Message(b"%s-%d" % (prefix.encode(), i), idempotency_key=f"{prefix}-{i}") for i in range(count)]


def logged(mesh, sender: str, text: str) -> bool:
    with open(mesh.processes[sender].log_path, errors="replace") as log:
        return any(text in line for line in log)


async def test_both_senders_stream_one_subscription_each_message_once_with_acks(two_senders):
    async with Client(two_senders.frontend_addr) as client:
        topic, sub = unique("scale"), unique("scale-sub")
        await client.create_topic(topic, partitions=PARTITIONS)
        await client.create_subscription(sub, topic, ack_deadline_s=10)
        published = await client.publish(topic, spread(unique("m"), 400))
        got = await receive(client, sub, len(published), max_outstanding=100)
        assert sorted(ids_of(got)) == sorted(published), "every message, once"
        per_sender = Counter(owners(sub)[AckId.parse(m.ack_id).partition] for m in got)
        assert set(per_sender) == set(SENDERS), per_sender
        pulled = pulled_shards(two_senders, topic)
        assert pulled == {s: {p for p, o in owners(sub).items() if o == s} for s in SENDERS}, "only owned pairs"

        frames = client.subscribe_frames(sub)  # one client stream, one upstream to each sender: one stream
        first = asyncio.ensure_future(anext(frames))
        deadline = time.monotonic() + 10
        while (await client.describe_subscription(sub)).streams != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert (await client.describe_subscription(sub)).streams == 1
        done, _ = await asyncio.wait([first], timeout=1.5)
        assert not done, "all were acknowledged: nothing comes again"
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await frames.aclose()


async def test_unary_pulls_nacks_and_modacks_reach_both_senders(two_senders):
    async with Client(two_senders.frontend_addr) as client:
        topic, sub = unique("scale-pull"), unique("scale-pull-sub")
        await client.create_topic(topic, partitions=PARTITIONS)
        await client.create_subscription(sub, topic, ack_deadline_s=30)
        published = await client.publish(topic, spread(unique("p"), 40))

        async def pull_all() -> dict:
            got = {}
            deadline = time.monotonic() + 20
            while len(got) < len(published) and time.monotonic() < deadline:
                batch = await client.pull(sub, max_messages=10, wait_s=1)
                assert len(batch) <= 10
                got.update({m.message.message_id: m for m in batch})
            return got
        got = await pull_all()
        assert sorted(got) == sorted(published)
        assert {owners(sub)[AckId.parse(m.ack_id).partition] for m in got.values()} == set(SENDERS)
        # one nack and one modack, each spanning both owners' pairs (ack deadline 30 s: only the nack brings them back)
        await client.modify_ack_deadline(sub, [m.ack_id for m in got.values()], 60)
        await client.nack(sub, [m.ack_id for m in got.values()], delay_s=0)
        again = await pull_all()
        assert sorted(again) == sorted(published) and all(m.delivery_attempt == 2 for m in again.values())
        await client.acknowledge(sub, [m.ack_id for m in again.values()])
        await client.publish(topic, [b"late"])  # a long poll over both owners ends with the first message
        started = time.monotonic()
        assert len(await client.pull(sub, max_messages=10, wait_s=20)) == 1
        assert time.monotonic() - started < 10


async def test_both_senders_push_one_subscription(two_senders):
    receiver = Receiver()
    try:
        async with Client(two_senders.frontend_addr) as client:
            topic, sub = unique("scale-push"), unique("scale-push-sub")
            await client.create_topic(topic, partitions=PARTITIONS)
            await client.create_subscription(sub, topic, push_endpoint=receiver.url)
            published = await client.publish(topic, spread(unique("h"), 60))
            deadline = time.monotonic() + 20
            while {m["message_id"] for m in receiver.messages()} < set(published) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert {m["message_id"] for m in receiver.messages()} == set(published)
            assert all(logged(two_senders, s, sub) for s in SENDERS), "a push worker on each sender"
            pulled = pulled_shards(two_senders, topic)
            assert pulled == {s: {p for p, o in owners(sub).items() if o == s} for s in SENDERS}
    finally:
        receiver.close()


async def test_a_killed_senders_pairs_move_and_nothing_is_lost(tmp_path):
    mesh = new_mesh(tmp_path / "mesh", senders=2)
    try:
        async with Client(mesh.frontend_addr) as client:
            topic, sub = unique("scale-kill"), unique("scale-kill-sub")
            await client.create_topic(topic, partitions=PARTITIONS)
            await client.create_subscription(sub, topic, ack_deadline_s=3)
            frames = client.subscribe_frames(sub, reconnect=False)  # a break would raise here
            before = await client.publish(topic, spread(unique("b"), 40))
            seen: list = []

            async def take(ids):
                while not set(ids) <= set(ids_of(seen)):
                    frame = await asyncio.wait_for(anext(frames), 20)
                    seen.extend(frame)
                    await client.acknowledge(sub, [m.ack_id for m in frame])
            await take(before)
            mesh.kill("sender-2")  # not restarted: sender-1 takes its pairs over
            after = await client.publish(topic, spread(unique("a"), 40))
            await take(after)
            moved = [m for m in seen if m.message.message_id in after
                     and owners(sub)[AckId.parse(m.ack_id).partition] == "sender-2"]
            assert moved, "messages of the dead sender's pairs came through the other"
            assert set(ids_of(seen)) == set(before + after)
            assert pulled_shards(mesh, topic)["sender-1"] == set(range(PARTITIONS)), "its pairs moved"
            await frames.aclose()
    finally:
        mesh.stop()


async def test_a_streams_nacks_free_the_room_of_the_sender_that_delivered(two_senders):
    """max_outstanding 4: two per sender. A nack routed to the wrong sender would leave
    the other's room taken until the ack deadline (60 s) and stall the stream."""
    async with Client(two_senders.frontend_addr) as client:
        topic, sub = unique("scale-nack"), unique("scale-nack-sub")
        await client.create_topic(topic, partitions=PARTITIONS)
        await client.create_subscription(sub, topic, ack_deadline_s=60)
        published = await client.publish(topic, spread(unique("n"), 20))
        frames = client.subscribe_frames(sub, max_outstanding=4)
        acked: set[str] = set()
        while acked != set(published):
            frame = await asyncio.wait_for(anext(frames), 10)
            first = [m.ack_id for m in frame if m.delivery_attempt == 1]
            if first:
                await client.nack(sub, first, delay_s=0)
            again = [m for m in frame if m.delivery_attempt > 1]
            if again:
                await client.acknowledge(sub, [m.ack_id for m in again])
                acked.update(m.message.message_id for m in again)
        await frames.aclose()
