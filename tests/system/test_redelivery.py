"""Ack deadlines: an unacknowledged message comes back; an acknowledged one never does."""

import asyncio
import json

import pytest

from helpers import cli, ids_of, new_topic, receive, unique
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.client import Message


async def test_unacked_message_is_redelivered_after_the_deadline_and_not_after_ack(mesh, client):
    topic, sub = await new_topic(client, "redeliver", ack_deadline_s=1)
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
    topic, sub = await new_topic(client, "nack", ack_deadline_s=60)
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
    topic, sub = await new_topic(client, "handback", ack_deadline_s=60)
    ids = await client.publish(topic, [b"a", b"b", b"c"])
    first = await receive(client, sub, 3, timeout=10, ack=False)  # stream closes without acking
    assert set(ids_of(first)) == set(ids)
    second = await receive(client, sub, 3, timeout=10)  # long before the 60 s deadline
    assert set(ids_of(second)) == set(ids)


async def test_nack_with_a_delay_redelivers_after_it(mesh, client):
    topic, sub = await new_topic(client, "later", ack_deadline_s=60)
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


async def test_retry_backoff_then_dead_letter_topic(mesh, client):
    topic, dead, sub, dead_sub = unique("flaky"), unique("flaky-dead"), unique("flaky-sub"), unique("dead-sub")
    await client.create_topic(topic)
    await client.create_topic(dead)
    await client.create_subscription(dead_sub, dead)
    created = await client.create_subscription(sub, topic, min_backoff_s=1, max_backoff_s=1.5,
                                               max_delivery_attempts=3, dead_letter_topic=dead)
    assert created.retry_policy.multiplier == 2.0
    [message_id] = await client.publish(topic, [Message(b"poison", {"kind": "bad"})])
    loop = asyncio.get_running_loop()
    attempts = []

    async def nack_everything():
        async for received in client.subscribe(sub):
            attempts.append((loop.time(), received.delivery_attempt))
            await client.nack(sub, [received.ack_id])

    nacker = asyncio.create_task(nack_everything())
    try:
        [moved] = await receive(client, dead_sub, 1, timeout=20)
        await asyncio.sleep(1.0)  # no fourth attempt follows
    finally:
        nacker.cancel()
    assert [n for _, n in attempts] == [1, 2, 3]
    gaps = [later - earlier for (earlier, _), (later, _) in zip(attempts, attempts[1:])]
    assert 0.9 <= gaps[0] < 5 and 1.4 <= gaps[1] < 5, gaps  # 1 s, then 1 s x 2 capped at 1.5 s
    assert moved.message.data == b"poison"
    assert moved.message.attributes["kind"] == "bad"
    assert moved.message.attributes["notifymesh.original_message_id"] == message_id
    assert moved.message.attributes["notifymesh.delivery_attempts"] == "3"
    assert moved.message.attributes["notifymesh.subscription"] == sub


async def test_dead_letter_settings_are_checked(client):
    topic = unique("dlq-checks")
    await client.create_topic(topic)
    for kwargs, expected in [
        ({"max_delivery_attempts": 3}, "needs a dead-letter topic"),
        ({"max_delivery_attempts": 3, "dead_letter_topic": topic}, "must differ"),
        ({"max_delivery_attempts": 0, "dead_letter_topic": "nowhere-topic"}, "max delivery attempts"),
        ({"min_backoff_s": 5, "max_backoff_s": 2}, "maximum backoff"),
    ]:
        with pytest.raises(errors.InvalidArgument) as info:
            await client.create_subscription(unique("sub"), topic, **kwargs)
        assert expected in info.value.details
    with pytest.raises(errors.NotFound):
        await client.create_subscription(unique("sub"), topic, max_delivery_attempts=5,
                                         dead_letter_topic=unique("missing"))


async def test_terminal_nack_list_and_redrive_from_the_cli(mesh, client):
    topic, dead, sub, dead_sub = unique("orders"), unique("orders-dead"), unique("orders-sub"), unique("dead-sub")
    await client.create_topic(topic)
    await client.create_topic(dead)
    await client.create_subscription(dead_sub, dead)
    assert cli(mesh, "subscription", "create", sub, "--topic", topic, "--max-delivery-attempts", "5",
               "--dead-letter-topic", dead).returncode == 0
    published = cli(mesh, "publish", topic, "malformed order")
    message_id = json.loads(published.stdout)["message_id"]
    subscribed = cli(mesh, "subscribe", sub, "--max", "1", "--no-ack")
    ack_id = json.loads(subscribed.stdout)["ack_id"]

    nacked = cli(mesh, "nack", ack_id, "--terminal", "--reason", "schema v1 expected")
    assert nacked.returncode == 0, nacked.stderr
    assert json.loads(nacked.stdout) == {"subscription": sub, "nacked": 1, "terminal": True}
    [moved] = await receive(client, dead_sub, 1, timeout=15)  # at once: no further attempts
    assert moved.message.attributes["notifymesh.original_message_id"] == message_id
    assert moved.message.attributes["notifymesh.last_error"] == "schema v1 expected"
    assert moved.message.attributes["notifymesh.delivery_attempts"] == "1"

    [listed] = [json.loads(line) for line in cli(mesh, "dead-letters", "list", sub).stdout.splitlines()]
    assert (listed["id"], listed["data"], listed["last_error"]) == (message_id, "malformed order", "schema v1 expected")
    status = json.loads(cli(mesh, "message", "status", message_id).stdout)
    [delivery] = status["deliveries"]
    assert (delivery["subscription"], delivery["state"]) == (sub, "DEAD_LETTERED")
    assert [(a["attempt"], a["outcome"], a["error"]) for a in delivery["attempts"]] == [
        (1, "DEAD_LETTER", "schema v1 expected")]

    redriven = cli(mesh, "dead-letters", "redrive", sub)
    assert redriven.returncode == 0 and json.loads(redriven.stdout) == {"subscription": sub, "redriven": 1}
    [again] = await receive(client, sub, 1, timeout=15)
    assert again.message.message_id == message_id and again.delivery_attempt == 1
    assert await receive(client, dead_sub, 1, timeout=1) == [], "the dead-letter topic got it once"

    missing = cli(mesh, "message", "status", "0" * 39)
    assert missing.returncode == 1 and b"NOT_FOUND" in missing.stderr
    bad = cli(mesh, "message", "status", "nonsense")
    assert bad.returncode == 1 and b"INVALID_ARGUMENT" in bad.stderr


async def test_terminal_nack_needs_a_dead_letter_topic(mesh, client):
    topic, sub = await new_topic(client, "plain")
    await client.publish(topic, [b"x"])
    [received] = await receive(client, sub, 1, ack=False)
    with pytest.raises(errors.FailedPrecondition) as info:
        await client.nack(sub, [received.ack_id], terminal=True)
    assert "no dead-letter topic" in info.value.details
    with pytest.raises(errors.InvalidArgument):
        await client.nack(sub, [received.ack_id], delay_s=900)


async def test_a_redriven_message_is_dead_lettered_again(mesh, client):
    """Each dead-lettering is its own move: after a redrive, the second terminal
    nack lands in the dead-letter topic again (its move is not taken for a repeat
    of the first)."""
    topic, dead, sub, dead_sub = unique("twice"), unique("twice-dead"), unique("twice-sub"), unique("dead-sub")
    await client.create_topic(topic)
    await client.create_topic(dead)
    await client.create_subscription(dead_sub, dead)
    await client.create_subscription(sub, topic, max_delivery_attempts=5, dead_letter_topic=dead)
    [message_id] = await client.publish(topic, [b"poison twice"])
    moved_ids = []
    for round_ in (1, 2):
        [received] = await receive(client, sub, 1, timeout=15, ack=False)
        assert received.message.message_id == message_id and received.delivery_attempt == 1, round_
        await client.nack(sub, [received.ack_id], terminal=True, reason=f"round {round_}")
        [moved] = await receive(client, dead_sub, 1, timeout=15)
        assert moved.message.attributes["notifymesh.original_message_id"] == message_id
        assert moved.message.attributes["notifymesh.last_error"] == f"round {round_}"
        moved_ids.append(moved.message.message_id)
        for _ in range(50):  # buried right after the move: a moment after it arrived
            listed = await client.list_dead_letters(sub)
            if listed and listed[0].dead_letter_message_id == moved.message.message_id:
                break
            await asyncio.sleep(0.1)
        assert [d.dead_letter_message_id for d in listed] == [moved.message.message_id], round_
        assert await client.redrive_dead_letters(sub) == 1
    assert moved_ids[0] != moved_ids[1]


async def test_status_of_a_message_every_subscription_acknowledged_keeps_its_identity(mesh, client):
    """Once acknowledged everywhere the message's payload is collected, but its
    status still names it: id, publish time and attributes (its data is gone)."""
    topic, sub = await new_topic(client, "done")
    [message_id] = await client.publish(topic, [Message(b"finished", {"order": "42"})])
    [received] = await receive(client, sub, 1)
    published = received.message.publish_time
    for _ in range(100):  # storage collects what every subscription acknowledged about every second
        status = await client.get_message_status(message_id)
        if not status.message.data:
            break
        await asyncio.sleep(0.1)
    assert status.message.data == b"", "collected"
    assert status.message.message_id == message_id
    assert status.message.publish_time == published and published.seconds > 0
    assert dict(status.message.attributes) == {"order": "42"}
    [delivery] = status.deliveries
    assert (delivery.subscription, delivery.state) == (sub, pubsub_pb2.ACKNOWLEDGED)
