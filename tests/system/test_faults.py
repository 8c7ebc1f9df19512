"""Durability and membership with real processes: SIGKILL, restart, whole-mesh restart."""

import asyncio
import signal
import time

import grpc
import pytest

from helpers import ids_of, new_topic, receive, unique
from notifymesh import errors
from notifymesh.client import Client

LEASE_TTL_S = 3  # config.member_lease_ttl_s


async def leader_of(client, topic: str) -> str:
    status = await client.get_cluster_status()
    return next(s.leader for s in status.shards if s.topic == topic)


async def test_acknowledged_messages_survive_sigkill_of_their_leader(own_mesh):
    async with Client(own_mesh.frontend_addr) as client:
        topic, sub = await new_topic(client, "durable")
        ids = []
        for start in range(0, 1000, 100):
            ids += await client.publish(topic, [b"m-%d" % i for i in range(start, start + 100)])
        # some delivered but not acked: in-flight state must survive too
        in_flight = await receive(client, sub, 50, timeout=10, ack=False, max_outstanding=50)
        assert in_flight
        leader = await leader_of(client, topic)
        own_mesh.kill(leader)
        own_mesh.restart(leader)
        received = await receive(client, sub, 1000, timeout=60)
        assert set(ids_of(received)) == set(ids)


async def test_whole_mesh_restart_keeps_topics_subscriptions_and_unacked_messages(own_mesh):
    async with Client(own_mesh.frontend_addr) as client:
        topic, sub = await new_topic(client, "restart", ack_deadline_s=2)
        acked_ids = await client.publish(topic, [b"acked-%d" % i for i in range(10)])
        await receive(client, sub, 10, timeout=10)
        unacked_ids = await client.publish(topic, [b"unacked-%d" % i for i in range(20)])
        delivered = await receive(client, sub, 5, timeout=10, ack=False, max_outstanding=5)
        assert delivered
    own_mesh.stop()
    own_mesh.start()
    async with Client(own_mesh.frontend_addr) as client:
        assert (await client.get_topic(topic)).name == topic
        assert (await client.get_subscription(sub)).topic == topic
        received = await receive(client, sub, 20, timeout=30)
        assert set(ids_of(received)) == set(unacked_ids)
        assert not set(ids_of(received)) & set(acked_ids)


async def test_killed_member_leaves_etcd_within_its_lease_and_rings_agree(own_mesh):
    members = own_mesh.internal_members()  # Node.Describe: a frontend's on its mutual-TLS port
    assert set(members) == set(own_mesh.service_names())
    topics = [f"topic-{i}" for i in range(64)]
    subscriptions = [f"sub-{i}" for i in range(64)]
    views = [own_mesh.describe(topics, subscriptions, addr=addr) for addr in members.values()]
    assert len(views) == 6
    for view in views[1:]:
        assert dict(view.topic_owners) == dict(views[0].topic_owners)
        assert dict(view.subscription_owners) == dict(views[0].subscription_owners)
    assert len(set(views[0].topic_owners.values())) == 3, "topics spread over all storage nodes"

    own_mesh.kill("storage-2", signal.SIGKILL)
    killed_at = time.monotonic()
    while "storage-2" in own_mesh.members():
        assert time.monotonic() - killed_at < LEASE_TTL_S + 2, "registration outlived its lease"
        await asyncio.sleep(0.1)
    members = own_mesh.internal_members()
    views = [own_mesh.describe(topics, addr=addr) for addr in members.values()]
    owners = [dict(v.topic_owners) for v in views]
    deadline = time.monotonic() + 5
    while any(o != owners[0] for o in owners) and time.monotonic() < deadline:  # watches settle
        await asyncio.sleep(0.1)
        owners = [dict(own_mesh.describe(topics, addr=addr).topic_owners) for addr in members.values()]
    assert all(o == owners[0] for o in owners)
    assert "storage-2" not in owners[0].values()


async def test_subscriber_stream_survives_a_sender_restart(own_mesh):
    """The frontend relays the stream to the sender; when that sender dies and comes
    back, the relay reconnects and the client's stream carries on, unbroken."""
    async with Client(own_mesh.frontend_addr) as client:
        topic, sub = await new_topic(client, "relay", ack_deadline_s=2)
        frames = client.subscribe_frames(sub, reconnect=False)  # any break would raise here
        first = await client.publish(topic, [b"before"])
        got = await asyncio.wait_for(frames.__anext__(), 10)
        assert ids_of(got) == first
        await client.acknowledge(sub, [m.ack_id for m in got])
        own_mesh.kill("sender-1")
        own_mesh.restart("sender-1")
        second = await client.publish(topic, [b"after"])
        got = await asyncio.wait_for(frames.__anext__(), 20)
        assert ids_of(got) == second
        await frames.aclose()


async def test_a_frontend_shutting_down_tells_its_subscribers_to_subscribe_again(own_mesh):
    """SIGTERM drains: the frontend ends each Subscribe stream with UNAVAILABLE at
    once (clients reconnect elsewhere) rather than leaving it to the grace period's
    blanket cancel."""
    async with Client(own_mesh.frontend_addr) as client:
        topic, sub = await new_topic(client, "drain")
        frames = client.subscribe_frames(sub, reconnect=False)
        sent = await client.publish(topic, [b"attached"])
        assert ids_of(await asyncio.wait_for(frames.__anext__(), 10)) == sent
        own_mesh.kill("frontend-1", signal.SIGTERM)  # returns once the process has exited
        with pytest.raises(errors.Unavailable) as info:
            await asyncio.wait_for(frames.__anext__(), 10)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert "shutting down; subscribe again" in info.value.details


async def test_sender_sigkill_with_a_thousand_in_flight_loses_none(own_mesh, record_property):
    """A thousand messages delivered and unacknowledged when the sender dies: after
    it comes back, every one is delivered again (at least once) and then acked."""
    async with Client(own_mesh.frontend_addr) as client:
        topic, sub = await new_topic(client, "inflight", ack_deadline_s=2)
        ids = []
        for start in range(0, 1000, 250):
            ids += await client.publish(topic, [b"m-%d" % i for i in range(start, start + 250)])
        before: list[str] = []
        after: list[str] = []
        killed = asyncio.Event()

        async def consume():
            async for frame in client.subscribe_frames(sub, max_outstanding=1000):
                if not killed.is_set():
                    before.extend(ids_of(frame))  # held in flight, never acked
                    continue
                after.extend(ids_of(frame))
                await client.acknowledge(sub, [m.ack_id for m in frame])
                if len(set(after)) >= 1000:
                    return

        consumer = asyncio.create_task(consume())
        deadline = time.monotonic() + 20
        while len(set(before)) < 1000 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert set(before) == set(ids), "all 1,000 delivered and in flight"
        killed.set()
        own_mesh.kill("sender-1")
        own_mesh.restart("sender-1")
        await asyncio.wait_for(consumer, 60)
        record_property("deliveries_after_sender_kill", len(after))
        record_property("duplicates_after_sender_kill", len(after) - len(set(after)))
        assert set(after) == set(ids)
        assert await receive(client, sub, 1, timeout=4) == [], "all acknowledged after the restart"


async def test_another_sender_takes_over_when_the_owner_dies(tmp_path, record_property):
    """Two senders: SIGKILL the one that owns a streaming and a push subscription
    (no restart). The other takes both over within the lease TTL, the stream goes
    on through the frontend, and every message is delivered."""
    from helpers import Receiver, new_mesh
    mesh = new_mesh(tmp_path / "mesh", senders=2)
    receiver = Receiver()
    try:
        async with Client(mesh.frontend_addr) as client:
            topic, sub = unique("handover"), unique("handover-sub")
            await client.create_topic(topic)
            owner = mesh.describe(subscriptions=[sub]).subscription_owners[sub]
            push = unique("handover-push")
            while mesh.describe(subscriptions=[push]).subscription_owners[push] != owner:
                push = unique("handover-push")  # both subscriptions on the sender that will die
            await client.create_subscription(sub, topic, ack_deadline_s=2)
            await client.create_subscription(push, topic, push_endpoint=receiver.url)
            frames = client.subscribe_frames(sub, reconnect=False)  # a break would raise here
            first = await client.publish(topic, [b"before"])
            got = await asyncio.wait_for(frames.__anext__(), 10)
            assert ids_of(got) == first
            mesh.kill(owner)  # and not restarted
            killed_at = time.monotonic()
            later = await client.publish(topic, [b"after-%d" % i for i in range(20)])
            seen = set()
            while not set(later) <= seen:
                seen.update(ids_of(await asyncio.wait_for(frames.__anext__(), 20)))
            record_takeover = time.monotonic() - killed_at
            pushed = {m["message_id"] for m in receiver.messages()}
            deadline = time.monotonic() + 20
            while not set(first + later) <= pushed and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                pushed = {m["message_id"] for m in receiver.messages()}
            assert set(first + later) <= pushed
            record_property("stream_takeover_s", round(record_takeover, 2))
            assert record_takeover < 15
            await frames.aclose()
    finally:
        receiver.close()
        mesh.stop()
