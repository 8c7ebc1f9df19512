"""Replicated storage with real processes: leaders killed (SIGKILL) and paused
(SIGSTOP), quorum loss, nodes added and removed, an etcd member lost."""

import asyncio
import signal
import time

import grpc
import pytest

from helpers import aio_channel, ids_of, new_topic, receive, unique
from gen.notifymesh.internal.v1 import storage_pb2, storage_pb2_grpc
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.client import Client
from notifymesh.errors import NotifymeshError

FAILOVER_TIMEOUT_S = 20


async def shard_status(client: Client, topic: str, partition: int = 0):
    status = await client.get_cluster_status()
    return next(s for s in status.shards if s.topic == topic and s.partition == partition)


async def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


async def leader_of(client: Client, topic: str, partition: int = 0) -> str:
    async def elected():
        return bool((await shard_status(client, topic, partition)).leader)
    await wait_for(elected, FAILOVER_TIMEOUT_S, f"a leader for {topic}/{partition}")
    return (await shard_status(client, topic, partition)).leader


async def test_continuous_publish_loses_nothing_when_a_leader_and_a_follower_die(own_mesh, record_property):
    mesh = own_mesh
    async with Client(mesh.frontend_addr) as client:
        topics = [unique("stream-a"), unique("stream-b")]
        subs = {}
        for topic in topics:
            await client.create_topic(topic, replication_factor=3)
            subs[topic] = [unique(f"{topic}-s1"), unique(f"{topic}-s2")]
            for sub in subs[topic]:
                await client.create_subscription(sub, topic)
        acked: dict[str, list[str]] = {topic: [] for topic in topics}
        last_ack = {topic: time.monotonic() for topic in topics}
        stalls = {topic: 0.0 for topic in topics}
        errors: list[str] = []
        stop = asyncio.Event()

        async def publisher(topic: str):
            sent = 0
            deadline = time.monotonic() + 20  # bounded in time and count
            while not stop.is_set() and time.monotonic() < deadline and sent < 50_000:
                batch = [b"%s-%d" % (topic.encode(), sent + i) for i in range(10)]
                sent += len(batch)
                try:
                    acked[topic] += await client.publish(topic, batch)
                    now = time.monotonic()
                    stalls[topic] = max(stalls[topic], now - last_ack[topic])
                    last_ack[topic] = now
                except NotifymeshError as e:
                    errors.append(e.code.name)
                await asyncio.sleep(0.02)

        publishers = [asyncio.create_task(publisher(t)) for t in topics]
        await asyncio.sleep(3)
        leader_a = await leader_of(client, topics[0])
        mesh.kill(leader_a)  # the leader of topic a's shard
        await asyncio.sleep(5)
        mesh.restart(leader_a)
        await asyncio.sleep(2)
        status_b = await shard_status(client, topics[1])
        follower_b = next(n for n in status_b.replicas if n != status_b.leader)
        mesh.kill(follower_b)  # a follower of topic b's shard
        await asyncio.sleep(4)
        mesh.restart(follower_b)
        await asyncio.gather(*publishers)

        longest = max(stalls.values())
        record_property("longest_publish_stall_s", round(longest, 2))
        record_property("acknowledged", sum(len(ids) for ids in acked.values()))
        record_property("failed_publish_calls", len(errors))
        assert all(len(ids) > 500 for ids in acked.values())
        for topic in topics:
            for sub in subs[topic]:
                received = await receive(client, sub, len(acked[topic]), timeout=120)
                missing = set(acked[topic]) - set(ids_of(received))
                assert not missing, f"{len(missing)} acknowledged messages of {topic} lost for {sub}"


async def test_two_of_three_replicas_down_refuses_publishes_then_resumes(own_mesh):
    mesh = own_mesh
    async with Client(mesh.frontend_addr, timeout_s=60) as client:
        topic, sub = await new_topic(client, "quorum", topic_options=dict(replication_factor=3))
        before = await client.publish(topic, [b"before-%d" % i for i in range(50)])
        status = await shard_status(client, topic)
        assert len(status.replicas) == 3
        down = [n for n in status.replicas if n != status.leader][:1] + [status.leader]
        for node in down:
            mesh.kill(node)
        with pytest.raises(NotifymeshError) as info:
            await client.publish(topic, [b"must not be accepted"])
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        mesh.restart(down[0])
        after = await client.publish(topic, [b"after-%d" % i for i in range(50)])
        received = await receive(client, sub, 100, timeout=60)
        assert set(ids_of(received)) >= set(before) | set(after)
        assert b"must not be accepted" not in {m.message.data for m in received}


async def test_a_paused_leader_cannot_acknowledge_after_a_new_leader_exists(own_mesh):
    mesh = own_mesh
    async with Client(mesh.frontend_addr) as client:
        topic, sub = await new_topic(client, "fenced", topic_options=dict(replication_factor=3))
        await client.publish(topic, [b"warm-up"])
        old = await leader_of(client, topic)
        old_addr = mesh.members()[old]
        mesh.kill(old, signal.SIGSTOP)
        try:
            async with aio_channel(mesh.data_dir, old_addr) as channel:
                stale = storage_pb2.AppendRequest(topic=topic, partition=0, messages=[
                    pubsub_pb2.PubsubMessage(data=b"from the deposed leader", message_id="stale-1")])
                append = asyncio.ensure_future(storage_pb2_grpc.StorageStub(channel).Append(stale, timeout=30))

                async def replaced():
                    leader = (await shard_status(client, topic)).leader
                    return leader and leader != old
                await wait_for(replaced, FAILOVER_TIMEOUT_S, "a new leader while the old one is paused")
                mesh.kill(old, signal.SIGCONT)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await append
                assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        finally:
            mesh.kill(old, signal.SIGCONT)
        [later] = await client.publish(topic, [b"after the failover"])
        received = await receive(client, sub, 2, timeout=30)
        assert later in ids_of(received)
        assert "stale-1" not in ids_of(received)


async def test_a_joining_node_takes_shards_and_a_lost_node_is_replaced(own_mesh):
    mesh = own_mesh
    async with Client(mesh.frontend_addr) as client:
        topic, sub = await new_topic(client, "moving", topic_options=dict(partitions=8, replication_factor=3))
        ids = []
        for i in range(8):
            ids += await client.publish(topic, [b"m-%d-%d" % (i, j) for j in range(25)])
        new_node = mesh.add_storage_node()

        async def placed_on_new():
            status = await client.get_cluster_status()
            return any(new_node in s.replicas for s in status.shards if s.topic == topic)
        await wait_for(placed_on_new, 30, f"some partition re-placed on {new_node}")
        received = await receive(client, sub, len(ids), timeout=60)
        assert set(ids_of(received)) == set(ids)

        lost = "storage-1"
        mesh.kill(lost)
        more = await client.publish(topic, [b"later-%d" % i for i in range(50)])

        async def three_live_copies():
            status = await client.get_cluster_status()
            shards = [s for s in status.shards if s.topic == topic]
            return all(len(s.replicas) == 3 and lost not in s.replicas for s in shards)
        await wait_for(three_live_copies, 40, f"every partition back to 3 replicas without {lost}")
        # A new leader may deliver again what the lost one had acknowledged (at least
        # once): wait for every new message, not for as many messages as there are.
        received = await receive(client, sub, len(more), timeout=60, wanted=set(more))
        assert set(ids_of(received)) >= set(more)


async def test_the_mesh_keeps_working_without_one_etcd_member(tmp_path):
    from helpers import new_mesh
    mesh = new_mesh(tmp_path / "mesh", etcd_members=3)
    try:
        async with Client(mesh.frontend_addr) as client:
            topic, sub = await new_topic(client, "etcd3")
            first = await client.publish(topic, [b"one"])
            mesh.kill("etcd-1")
            second = await client.publish(topic, [b"two"])
            other = unique("etcd3-more")
            await client.create_topic(other)  # metadata writes still go through
            assert (await client.get_topic(other)).name == other
            received = await receive(client, sub, 2, timeout=30)
            assert set(ids_of(received)) == set(first + second)
    finally:
        mesh.stop()


async def test_repeats_are_recognised_across_a_leader_failover(own_mesh):
    from notifymesh.client import Message
    mesh = own_mesh
    async with Client(mesh.frontend_addr) as client:
        topic, sub = await new_topic(client, "dedup", topic_options=dict(replication_factor=3, dedup_by_payload=True))
        [keyed] = await client.publish(topic, [Message(b"charge 7", idempotency_key="order-7")])
        [hashed] = await client.publish(topic, [Message(b"ship 7", {"carrier": "x"})])
        mesh.kill(await leader_of(client, topic))
        assert await client.publish(topic, [Message(b"charge 7 again", idempotency_key="order-7")]) == [keyed]
        assert await client.publish(topic, [Message(b"ship 7", {"carrier": "x"})]) == [hashed]
        received = await receive(client, sub, 3, timeout=10)
        assert sorted(ids_of(received)) == sorted([keyed, hashed])
