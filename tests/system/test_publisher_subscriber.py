"""The batching Publisher and the flow-controlled Subscriber against the real mesh."""

import asyncio
import time

import grpc
import pytest

from helpers import unique
from deploy.local import free_port
from notifymesh import errors
from notifymesh.client import Client, Message
from notifymesh.publisher import Publisher
from notifymesh.subscriber import Subscriber

SETTLE_S = 0.5  # after everything arrived: a look for late duplicates


async def topic_with_subscriptions(client: Client, subscriptions: int = 1) -> tuple[str, list[str]]:
    topic = unique("pubsub")
    await client.create_topic(topic)
    names = [unique("pubsub-sub") for _ in range(subscriptions)]
    for name in names:
        await client.create_subscription(name, topic)
    return topic, names


async def collect(subscriber: Subscriber, ids: set[str], timeout: float = 60) -> dict[str, int]:
    """Deliveries per message id, acknowledging each, until every id in ids arrived
    (then SETTLE_S more) or timeout passed."""
    seen: dict[str, int] = {}

    async def consume():
        async for delivery in subscriber:
            seen[delivery.message_id] = seen.get(delivery.message_id, 0) + 1
            delivery.ack()

    task = asyncio.create_task(consume())
    deadline = time.monotonic() + timeout
    while not ids <= seen.keys() and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.05)
    if task.done():
        task.result()  # the stream failed: its error says why
    await asyncio.sleep(SETTLE_S)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return seen


async def test_five_thousand_messages_resolve_to_distinct_ids_and_arrive_exactly_once(mesh, client):
    topic, [sub] = await topic_with_subscriptions(client)
    async with Client(mesh.frontend_addr) as sub_client, Subscriber(sub_client, sub) as subscriber:
        async with Publisher(client) as publisher:
            futures = [await publisher.publish(topic, b"m-%d" % i) for i in range(5000)]
        assert all(f.done() for f in futures)  # close() waited for them
        ids = [f.result() for f in futures]
        assert len(set(ids)) == 5000
        seen = await collect(subscriber, set(ids))
    missing = set(ids) - seen.keys()
    duplicates = sum(count - 1 for count in seen.values())
    assert (len(missing), duplicates) == (0, 0)
    assert seen.keys() == set(ids)
    assert subscriber.outstanding_messages == 0 and subscriber.ack_errors == 0


async def test_publisher_sends_at_once_when_idle_and_batches_behind_a_call_in_flight(client):
    """max_latency_s only bounds the wait behind a call in flight: with it at a
    minute, an idle topic's message still goes at once, and what is published
    while that call is out goes when it returns, as one batch."""
    topic, _ = await topic_with_subscriptions(client)
    calls = []
    publish = client.publish

    async def counted(topic, messages):
        calls.append(len(messages))
        return await publish(topic, messages)

    client.publish = counted
    try:
        publisher = Publisher(client, max_latency_s=60)
        first = await publisher.publish(topic, b"first")
        for _ in range(500):  # until its call is out, which is at once: nothing waits for a minute
            if calls:
                break
            await asyncio.sleep(0.01)
        rest = [await publisher.publish(topic, b"m-%d" % i) for i in range(50)]
        await asyncio.wait_for(asyncio.gather(first, *rest), 10)
        assert calls == [1, 50]
        await publisher.close()
    finally:
        del client.publish


async def test_publisher_outstanding_messages_and_bytes_stay_within_their_limits(mesh, client):
    topic, _ = await topic_with_subscriptions(client, subscriptions=0)
    publisher = Publisher(client, max_messages=50, max_outstanding_messages=120, max_outstanding_bytes=60_000)
    most_messages = most_bytes = 0

    async def producer(start: int):
        nonlocal most_messages, most_bytes
        futures = []
        for i in range(start, start + 500):
            futures.append(await publisher.publish(topic, Message(b"%06d" % i + b"x" * 994)))
            most_messages = max(most_messages, publisher.outstanding_messages)
            most_bytes = max(most_bytes, publisher.outstanding_bytes)
        return await asyncio.gather(*futures)

    # Four producers at once: most publish() calls have to wait for room.
    results = await asyncio.gather(*(producer(start) for start in range(0, 2000, 500)))
    await publisher.close()
    assert len({message_id for ids in results for message_id in ids}) == 2000
    assert 0 < most_messages <= 120 and 0 < most_bytes <= 60_000
    assert (publisher.outstanding_messages, publisher.outstanding_bytes) == (0, 0)
    with pytest.raises(RuntimeError):
        await publisher.publish(topic, b"after close")


async def test_publish_to_a_missing_topic_fails_its_future_with_not_found(client):
    async with Publisher(client) as publisher:
        missing = await publisher.publish(unique("missing"), b"nowhere")
        with pytest.raises(errors.NotFound) as raised:
            await missing
    assert raised.value.code == grpc.StatusCode.NOT_FOUND


async def test_invalid_batch_fails_only_its_own_futures(client):
    topic, _ = await topic_with_subscriptions(client, subscriptions=0)
    async with Publisher(client) as publisher:
        good = await publisher.publish(topic, b"fine")
        await publisher.flush()
        empty = await publisher.publish(topic, Message(b""))  # neither data nor attributes
        await publisher.flush()
        again = await publisher.publish(topic, b"fine again")
    assert good.result() and again.result()
    assert isinstance(empty.exception(), errors.InvalidArgument)


async def test_unreachable_frontend_fails_futures_with_unavailable_after_the_retry_window():
    async with Client(f"127.0.0.1:{free_port()}", timeout_s=2) as client:
        publisher = Publisher(client, retry_for_s=1.0)
        started = time.monotonic()
        futures = [await publisher.publish("orders", b"m-%d" % i) for i in range(10)]
        done, pending = await asyncio.wait(futures, timeout=30)
        elapsed = time.monotonic() - started
        await publisher.close()
    assert not pending
    assert {type(f.exception()) for f in done} == {errors.Unavailable}
    assert elapsed >= 1.0  # retried across the window, not failed at the first refusal


async def test_publishes_during_a_frontend_restart_are_retried_and_stored_once(own_mesh):
    async with Client(own_mesh.frontend_addr, timeout_s=5) as client:
        topic, [sub] = await topic_with_subscriptions(client)
        own_mesh.kill("frontend-1")
        async with Publisher(client, retry_for_s=60) as publisher:
            futures = [await publisher.publish(topic, b"m-%d" % i) for i in range(200)]
            await asyncio.sleep(1)  # the first attempts fail: nothing listens
            assert not any(f.done() for f in futures)
            await asyncio.get_running_loop().run_in_executor(None, own_mesh.restart, "frontend-1")
        ids = [f.result() for f in futures]
        async with Subscriber(client, sub) as subscriber:
            seen = await collect(subscriber, set(ids))
    assert len(set(ids)) == 200
    assert seen.keys() == set(ids) and sum(seen.values()) == 200


async def test_same_idempotency_key_twice_gets_the_first_id(client):
    """What a retry after a lost reply relies on: the resent message is recognised."""
    topic, _ = await topic_with_subscriptions(client, subscriptions=0)
    async with Publisher(client) as publisher:
        first = await publisher.publish(topic, Message(b"once", idempotency_key="order-17"))
        await publisher.flush()
        second = await publisher.publish(topic, Message(b"once", idempotency_key="order-17"))
    assert first.result() == second.result()


async def test_nack_redelivers_and_callbacks_that_raise_nack(mesh, client):
    topic, [sub] = await topic_with_subscriptions(client)
    ids = set(await client.publish(topic, [b"job-%d" % i for i in range(20)]))
    attempts: dict[str, list[int]] = {}
    done = asyncio.Event()

    async def handle(delivery):
        attempts.setdefault(delivery.message_id, []).append(delivery.delivery_attempt)
        if delivery.delivery_attempt == 1:
            if len(attempts) % 2:
                delivery.nack()
            else:
                raise RuntimeError("first attempt fails")  # run() nacks it
        else:
            delivery.ack()
            if sum(len(a) for a in attempts.values()) >= 40:
                done.set()

    async with Subscriber(client, sub) as subscriber:
        runner = asyncio.create_task(subscriber.run(handle))
        await asyncio.wait_for(done.wait(), 30)
        await asyncio.sleep(SETTLE_S)
        await subscriber.close()
        await runner
    assert attempts.keys() == ids
    assert all(a == [1, 2] for a in attempts.values())


async def test_sync_callback_and_nack_with_a_delay(mesh, client):
    topic, [sub] = await topic_with_subscriptions(client)
    [message_id] = await client.publish(topic, [b"later"])
    arrivals: list[tuple[float, int]] = []

    def handle(delivery):
        arrivals.append((time.monotonic(), delivery.delivery_attempt))
        if delivery.delivery_attempt == 1:
            delivery.nack(delay_s=1.0)
        else:
            delivery.ack()

    async with Subscriber(client, sub) as subscriber:
        runner = asyncio.create_task(subscriber.run(handle))
        deadline = time.monotonic() + 20
        while len(arrivals) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await subscriber.close()
        await runner
    assert [attempt for _, attempt in arrivals] == [1, 2]
    assert arrivals[1][0] - arrivals[0][0] >= 0.9


async def test_subscriber_holds_back_at_max_outstanding_messages(mesh, client):
    topic, [sub] = await topic_with_subscriptions(client)
    ids = set(await client.publish(topic, [b"m-%d" % i for i in range(100)]))
    held = []
    async with Subscriber(client, sub, max_outstanding_messages=10) as subscriber:
        iterator = aiter(subscriber)
        while len(held) < 10:
            held.append(await asyncio.wait_for(anext(iterator), 10))
        await asyncio.sleep(1)  # no more may come while these ten are outstanding
        assert subscriber.outstanding_messages == 10
        for delivery in held:
            delivery.ack()
        seen = await collect(subscriber, ids - {d.message_id for d in held})
    assert {d.message_id for d in held} | seen.keys() == ids


async def test_subscriber_stops_reading_at_max_outstanding_bytes(mesh, client):
    topic, [sub] = await topic_with_subscriptions(client)
    async with Subscriber(client, sub, max_outstanding_bytes=3000) as subscriber:
        held = []

        async def take():
            async for delivery in subscriber:
                held.append(delivery)

        taker = asyncio.create_task(take())
        await asyncio.sleep(0.5)  # the stream is open
        ids = set()
        for i in range(10):  # one message a frame: the stream is idle when each is published
            ids.update(await client.publish(topic, [b"%04d" % i + b"x" * 996]))
            await asyncio.sleep(0.2)
        # Reading stops once 3000 bytes are outstanding: at most one frame past the limit.
        assert 3 <= len(held) <= 5 and subscriber.outstanding_bytes >= 3000
        for delivery in held:
            delivery.ack()
        deadline = time.monotonic() + 20
        while {d.message_id for d in held} != ids and time.monotonic() < deadline:
            for delivery in held:
                delivery.ack()
            await asyncio.sleep(0.05)
        taker.cancel()
        await asyncio.gather(taker, return_exceptions=True)
    assert {d.message_id for d in held} == ids


async def test_subscribing_to_a_missing_subscription_raises_not_found(client):
    async with Subscriber(client, unique("missing")) as subscriber:
        with pytest.raises(errors.NotFound) as raised:
            async for _ in subscriber:
                pass
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
