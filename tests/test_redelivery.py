"""Ack deadlines: an unacknowledged message comes back; an acknowledged one never does."""

import asyncio

from conftest import ids_of, receive, unique


async def test_unacked_message_is_redelivered_after_the_deadline_and_not_after_ack(mesh, client):
    topic, sub = unique("redeliver"), unique("redeliver-sub")
    await client.create_topic(topic)
    await client.create_subscription(sub, topic, ack_deadline_s=1)
    [message_id] = await client.publish(topic, [b"retry me"])

    deliveries = []
    loop = asyncio.get_running_loop()

    async def run():
        async for received in client.subscribe(sub):
            deliveries.append((loop.time(), received))
            if len(deliveries) == 2:
                await client.acknowledge(sub, [received.ack_id])
                return

    await asyncio.wait_for(run(), 15)
    (first_at, first), (second_at, second) = deliveries
    assert first.message.message_id == second.message.message_id == message_id
    assert (first.delivery_attempt, second.delivery_attempt) == (1, 2)
    assert second_at - first_at >= 0.9, "not before the ack deadline"
    assert await receive(client, sub, 1, timeout=3) == [], "acknowledged: never again"


async def test_nack_redelivers_at_once(mesh, client):
    topic, sub = unique("nack"), unique("nack-sub")
    await client.create_topic(topic)
    await client.create_subscription(sub, topic, ack_deadline_s=60)
    [message_id] = await client.publish(topic, [b"again"])
    attempts = []

    async def run():
        async for received in client.subscribe(sub):
            attempts.append(received.delivery_attempt)
            if len(attempts) == 1:
                await client.nack(sub, [received.ack_id])
            else:
                await client.acknowledge(sub, [received.ack_id])
                return

    await asyncio.wait_for(run(), 10)  # far less than the 60 s deadline
    assert attempts == [1, 2]


async def test_disconnected_subscriber_hands_its_messages_to_the_next(mesh, client):
    topic, sub = unique("handback"), unique("handback-sub")
    await client.create_topic(topic)
    await client.create_subscription(sub, topic, ack_deadline_s=60)
    ids = await client.publish(topic, [b"a", b"b", b"c"])
    first = await receive(client, sub, 3, timeout=10, ack=False)  # stream closes without acking
    assert set(ids_of(first)) == set(ids)
    second = await receive(client, sub, 3, timeout=10)  # long before the 60 s deadline
    assert set(ids_of(second)) == set(ids)


async def test_nack_with_a_delay_redelivers_after_it(mesh, client):
    topic, sub = unique("later"), unique("later-sub")
    await client.create_topic(topic)
    await client.create_subscription(sub, topic, ack_deadline_s=60)
    await client.publish(topic, [b"not yet"])
    loop = asyncio.get_running_loop()
    seen = []

    async def run():
        async for received in client.subscribe(sub):
            seen.append(loop.time())
            if len(seen) == 1:
                await client.nack(sub, [received.ack_id], delay_s=1.5)
            else:
                await client.acknowledge(sub, [received.ack_id])
                return

    await asyncio.wait_for(run(), 15)
    assert 1.4 <= seen[1] - seen[0] < 10
