"""Failover without waiting out the dead process's lease: with a member lease of 30 s,
a killed storage leader's shard is led again, and a killed sender's subscriber
stream is served by the other sender, long before the lease could lapse, because
the peers that see it go find its address refusing connections and end its lease
(notifymesh.server.liveness). Times are recorded; the bound is half the lease."""

import asyncio
import json
import time

from helpers import Receiver, ids_of, new_mesh, unique
from notifymesh.client import Client

LEASE_S = 30  # the last keep-alive was at most LEASE_S / 3 before the kill: expiry 20-30 s after
SANITY_S = LEASE_S / 2


async def test_a_killed_leader_and_a_killed_sender_are_replaced_long_before_their_lease_lapses(
        tmp_path, record_property):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"member_lease_ttl_s": LEASE_S}))
    mesh = new_mesh(tmp_path / "mesh", senders=2, config_file=config)
    try:
        async with Client(mesh.frontend_addr) as client:
            topic = unique("failover")
            await client.create_topic(topic, replication_factor=3)
            sub = unique("failover-sub")
            await client.create_subscription(sub, topic)
            first = await client.publish(topic, [b"before-%d" % i for i in range(20)])

            status = await client.get_cluster_status()
            leader = next(s.leader for s in status.shards if s.topic == topic)
            mesh.kill(leader)
            killed_at = time.monotonic()
            while True:
                shard = next(s for s in (await client.get_cluster_status()).shards if s.topic == topic)
                if shard.leader and shard.leader != leader:
                    break
                assert time.monotonic() - killed_at < SANITY_S, "the dead leader's lease was waited out"
                await asyncio.sleep(0.05)
            record_property("leader_failover_s", round(time.monotonic() - killed_at, 2))
            after = await client.publish(topic, [b"after-%d" % i for i in range(20)])

            owner = mesh.describe(subscriptions=[sub]).subscription_owners[sub]
            frames = client.subscribe_frames(sub, reconnect=False)  # a break would raise here
            seen = set()
            while not set(first + after) <= seen:
                frame = await asyncio.wait_for(frames.__anext__(), 20)
                seen.update(ids_of(frame))
                await client.acknowledge(sub, [m.ack_id for m in frame])
            mesh.kill(owner)
            killed_at = time.monotonic()
            later = await client.publish(topic, [b"later-%d" % i for i in range(20)])
            while not set(later) <= seen:
                assert time.monotonic() - killed_at < SANITY_S, "the dead sender's lease was waited out"
                frame = await asyncio.wait_for(frames.__anext__(), SANITY_S)
                seen.update(ids_of(frame))
            record_property("stream_takeover_s", round(time.monotonic() - killed_at, 2))
            await frames.aclose()
    finally:
        mesh.stop()


async def test_a_killed_sender_with_push_subscriptions_only_is_replaced_long_before_its_lease_lapses(
        tmp_path, record_property):
    """No subscriber stream runs through a frontend here: the storage leader sees the
    dead sender's pull stream break."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"member_lease_ttl_s": LEASE_S}))
    mesh = new_mesh(tmp_path / "mesh", senders=2, config_file=config)
    receiver = Receiver()
    try:
        async with Client(mesh.frontend_addr) as client:
            topic = unique("push-failover")
            await client.create_topic(topic, replication_factor=3)
            sub = unique("push-failover-sub")
            await client.create_subscription(sub, topic, push_endpoint=receiver.url)
            await client.publish(topic, [b"before"])
            while not receiver.requests:
                await asyncio.sleep(0.05)
            owner = mesh.describe(subscriptions=[sub]).subscription_owners[sub]
            mesh.kill(owner)
            killed_at = time.monotonic()
            [later] = await client.publish(topic, [b"later"])
            while later not in {m["message_id"] for m in receiver.messages()}:
                assert time.monotonic() - killed_at < SANITY_S, "the dead sender's lease was waited out"
                await asyncio.sleep(0.02)
            record_property("push_takeover_s", round(time.monotonic() - killed_at, 2))
    finally:
        receiver.close()
        mesh.stop()
