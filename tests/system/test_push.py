"""Push subscriptions against real HTTP servers on loopback."""

import asyncio
import base64
import hashlib
import hmac
import time

import pytest

from helpers import Receiver, receive, unique
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.client import Message


@pytest.fixture
def receiver_factory():
    made = []

    def make(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


async def wait_until(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return predicate()


def verify(secret: str, headers: dict, body: bytes) -> bool:
    """What a receiver does with Notifymesh-Signature (as README shows it), and the
    deprecated X-Notifymesh-Signature agrees."""
    t, v1 = (dict(part.split("=", 1) for part in headers["Notifymesh-Signature"].split(","))[k] for k in ("t", "v1"))
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    legacy = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return abs(time.time() - int(t)) < 300 and hmac.compare_digest(expected, v1) and \
        hmac.compare_digest(legacy, headers["X-Notifymesh-Signature"])


async def test_failing_endpoint_is_retried_with_backoff_until_it_accepts(client, receiver_factory):
    receiver = receiver_factory(statuses=[500, 500, 500])
    topic, sub = unique("hooks"), unique("hooks-sub")
    await client.create_topic(topic)
    created = await client.create_subscription(sub, topic, push_endpoint=receiver.url, min_backoff_s=1,
                                               max_backoff_s=2)
    [message_id] = await client.publish(topic, [Message(b"order 7", {"kind": "order"})])
    assert await wait_until(lambda: len(receiver.requests) >= 4, 30)
    await asyncio.sleep(2.5)  # acknowledged by the 200: no fifth attempt
    assert len(receiver.requests) == 4
    times = [t for t, _, _ in receiver.requests]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert 0.9 <= gaps[0] < 5 and 1.9 <= gaps[1] < 6 and 1.9 <= gaps[2] < 6, gaps  # 1 s, 2 s, 2 s (capped)
    bodies = receiver.messages()
    assert [b["delivery_attempt"] for b in bodies] == [1, 2, 3, 4]
    assert {b["message_id"] for b in bodies} == {message_id}
    assert base64.b64decode(bodies[0]["data"]) == b"order 7" and bodies[0]["attributes"] == {"kind": "order"}
    _, headers, body = receiver.requests[-1]
    assert headers["X-Notifymesh-Message-Id"] == message_id and headers["X-Notifymesh-Delivery-Attempt"] == "4"
    assert verify(created.push_config.secret, headers, body)
    assert not verify(created.push_config.secret, headers, body.replace(b"order", b"0rder"))
    assert not verify("another secret", headers, body)
    # the delivery log: three failed attempts with their error, then the ack
    status = await client.get_message_status(message_id)
    [delivery] = [d for d in status.deliveries if d.subscription == sub]
    assert delivery.state == pubsub_pb2.ACKNOWLEDGED and delivery.delivery_attempts == 4
    assert [(a.attempt, a.outcome, a.error) for a in delivery.attempts] == [
        (1, pubsub_pb2.NACKED, "HTTP 500"), (2, pubsub_pb2.NACKED, "HTTP 500"), (3, pubsub_pb2.NACKED, "HTTP 500"),
        (4, pubsub_pb2.ACKED, "")]
    await client.delete_subscription(sub)


async def test_an_endpoint_that_never_accepts_dead_letters_and_redrive_delivers_once_it_recovers(
        client, receiver_factory):
    receiver = receiver_factory(statuses=[503, 503, 503])
    topic, dead, sub, dead_sub = unique("hooks"), unique("hooks-dead"), unique("hooks-sub"), unique("dead-sub")
    await client.create_topic(topic)
    await client.create_topic(dead)
    await client.create_subscription(dead_sub, dead)
    await client.create_subscription(sub, topic, push_endpoint=receiver.url, min_backoff_s=1, max_backoff_s=1,
                                     max_delivery_attempts=3, dead_letter_topic=dead)
    [message_id] = await client.publish(topic, [b"undeliverable"])
    [moved] = await receive(client, dead_sub, 1, timeout=30)
    assert moved.message.attributes["notifymesh.original_message_id"] == message_id
    assert moved.message.attributes["notifymesh.last_error"] == "HTTP 503"
    assert len(receiver.requests) == 3
    [dead_letter] = await client.list_dead_letters(sub)
    assert dead_letter.message.message_id == message_id and dead_letter.delivery_attempts == 3
    assert dead_letter.dead_letter_message_id == moved.message.message_id
    status = await client.get_message_status(message_id)
    assert [d.state for d in status.deliveries] == [pubsub_pb2.DEAD_LETTERED]
    # the endpoint answers 200 from now on: redrive delivers the message there, once
    assert await client.redrive_dead_letters(sub) == 1
    assert await wait_until(lambda: len(receiver.requests) == 4, 15)
    assert receiver.messages()[-1]["message_id"] == message_id
    assert receiver.messages()[-1]["delivery_attempt"] == 1
    assert await client.list_dead_letters(sub) == []
    await asyncio.sleep(1.5)
    assert len(receiver.requests) == 4
    status = await client.get_message_status(message_id)
    assert [d.state for d in status.deliveries] == [pubsub_pb2.ACKNOWLEDGED]
    await client.delete_subscription(sub)


async def test_slow_and_dead_endpoints_do_not_hold_up_a_healthy_one(client, receiver_factory):
    slow = receiver_factory(delay_s=3)
    healthy = receiver_factory()
    topic = unique("fanout")
    await client.create_topic(topic)
    slow_sub = await client.create_subscription(unique("slow"), topic, push_endpoint=slow.url)
    dead_sub = await client.create_subscription(unique("dead"), topic, push_endpoint="http://127.0.0.1:1/hook")
    healthy_sub = await client.create_subscription(unique("healthy"), topic, push_endpoint=healthy.url)
    assert dead_sub.retry_policy.minimum_backoff.seconds == 1  # push retries back off by default
    ids = []
    for start in range(0, 300, 100):
        ids += await client.publish(topic, [b"m-%d" % i for i in range(start, start + 100)])
    assert await wait_until(lambda: len({m["message_id"] for m in healthy.messages()}) == 300, 20)
    # the slow endpoint never has more than its window in flight at once
    await asyncio.sleep(1)
    assert slow_sub.push_config.max_in_flight == 16
    assert 1 <= slow.most_concurrent <= 16
    for sub in (slow_sub, dead_sub, healthy_sub):
        await client.delete_subscription(sub.name)


async def test_push_settings_are_checked(client):
    topic = unique("hook-checks")
    await client.create_topic(topic)
    for url in ("ftp://example/x", "not a url", "http://"):
        with pytest.raises(errors.InvalidArgument) as info:
            await client.create_subscription(unique("sub"), topic, push_endpoint=url)
        assert "push endpoint" in info.value.details
