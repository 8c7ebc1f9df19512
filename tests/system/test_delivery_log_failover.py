"""The delivery log survives its leader: delivery records (and a collected
message's identity) are on the followers, so message status after a failover
still shows every attempt with its outcome."""

import asyncio
import time

from helpers import new_topic, receive
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.client import Client, Message
from notifymesh.errors import NotifymeshError

FAILOVER_TIMEOUT_S = 20
# The leader sends the delivery state, and the delivery records with it, every tick (0.5 s).
REPLICATED_WITHIN_S = 2.0


async def leader_of(client: Client, topic: str) -> str:
    status = await client.get_cluster_status()
    return next(s for s in status.shards if s.topic == topic and s.partition == 0).leader


async def status_after_failover(client: Client, topic: str, old: str, message_id: str) -> pubsub_pb2.MessageStatus:
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while True:
        try:
            if (leader := await leader_of(client, topic)) and leader != old:
                return await client.get_message_status(message_id)
        except NotifymeshError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"no new leader of {topic} within {FAILOVER_TIMEOUT_S}s")
        await asyncio.sleep(0.2)


async def test_message_status_keeps_every_attempt_after_the_leader_dies(own_mesh):
    mesh = own_mesh
    async with Client(mesh.frontend_addr) as client:
        topic, sub = await new_topic(client, "dlog", topic_options=dict(replication_factor=3))
        [message_id] = await client.publish(topic, [Message(b"charge 9", {"order": "9"})])
        # A unary pull, not a stream: a stream still closing on the sender would take the
        # redelivery and hand it back (a third attempt), which this test is not about.
        [first] = await client.pull(sub, 1, wait_s=10)
        await client.nack(sub, [first.ack_id], delay_s=0, reason="card declined")
        [second] = await receive(client, sub, 1, timeout=10)
        assert second.message.message_id == message_id
        for _ in range(100):  # acknowledged everywhere: collected on the leader about every second
            if not (await client.get_message_status(message_id)).message.data:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(REPLICATED_WITHIN_S)
        old = await leader_of(client, topic)
        mesh.kill(old)
        status = await status_after_failover(client, topic, old, message_id)
    assert status.message.message_id == message_id
    assert dict(status.message.attributes) == {"order": "9"}
    [delivery] = status.deliveries
    assert (delivery.subscription, delivery.state) == (sub, pubsub_pb2.ACKNOWLEDGED)
    assert [(a.attempt, a.outcome, a.error) for a in delivery.attempts] == [
        (1, pubsub_pb2.NACKED, "card declined"), (2, pubsub_pb2.ACKED, "")]
