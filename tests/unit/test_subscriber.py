"""Subscriber: batched acks and nacks, flow control by bytes, callbacks, close and
stream errors, driven with a fake client whose stream the test feeds."""

import asyncio

import pytest

from fakes import FakeSubscribeClient, NackCall, eventually, received, settle
from notifymesh import errors
from notifymesh.subscriber import Subscriber

SUB = "orders-audit"
LONG = 10.0  # an ack_latency_s no test waits for


async def take(subscriber: Subscriber, count: int) -> list:
    iterator = aiter(subscriber)
    return [await asyncio.wait_for(anext(iterator), 1) for _ in range(count)]


async def test_the_stream_is_opened_with_the_flow_control_and_reconnect_asked_for():
    client = FakeSubscribeClient()
    client.push_frame(received("a"))
    async with Subscriber(client, SUB, max_outstanding_messages=7, reconnect=False) as subscriber:
        [delivery] = await take(subscriber, 1)
    assert client.subscribe_args == [(SUB, 7, False)]
    assert (delivery.ack_id, delivery.data, delivery.message_id) == ("a", b"payload", "m-a")


async def test_acks_within_ack_latency_go_out_as_one_call():
    client = FakeSubscribeClient()
    client.push_frame(received("a"), received("b"))
    client.push_frame(received("c"))
    subscriber = Subscriber(client, SUB, ack_latency_s=0.05)
    deliveries = await take(subscriber, 3)
    for delivery in deliveries:
        delivery.ack()
    await settle()
    assert client.acks == []  # held for ack_latency_s, to gather more
    await eventually(lambda: client.acks)
    assert client.acks == [(SUB, ["a", "b", "c"])]
    assert subscriber.outstanding_messages == 0
    await subscriber.close()
    assert client.acks == [(SUB, ["a", "b", "c"])] and client.nacks == []


async def test_nacks_are_grouped_by_delay():
    client = FakeSubscribeClient()
    client.push_frame(*(received(ack_id) for ack_id in "abcde"))
    subscriber = Subscriber(client, SUB, ack_latency_s=0.01)
    a, b, c, d, e = await take(subscriber, 5)
    a.nack(delay_s=1)
    b.nack(delay_s=5)
    c.nack(delay_s=1)
    d.nack()
    e.ack()
    await eventually(lambda: len(client.nacks) == 3 and client.acks)
    assert sorted(client.nacks, key=lambda n: (n.delay_s is None, n.delay_s or 0)) == [
        NackCall(SUB, ["a", "c"], 1), NackCall(SUB, ["b"], 5), NackCall(SUB, ["d"], None)]
    assert client.acks == [(SUB, ["e"])]
    await subscriber.close()


async def test_max_outstanding_bytes_stops_reading_frames_until_room_frees():
    client = FakeSubscribeClient()
    size = received("a").ByteSize()
    client.push_frame(received("a"), received("b"))  # fills max_outstanding_bytes
    client.push_frame(received("c"))
    subscriber = Subscriber(client, SUB, max_outstanding_bytes=2 * size, ack_latency_s=LONG)
    iterator = aiter(subscriber)
    a, b = [await asyncio.wait_for(anext(iterator), 1) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert client.frames_read == 1 and client.frames.qsize() == 1  # the second frame is left unread
    assert (subscriber.outstanding_messages, subscriber.outstanding_bytes) == (2, 2 * size)
    next_one = asyncio.ensure_future(anext(iterator))
    await asyncio.sleep(0.01)
    assert not next_one.done()
    a.ack()
    c = await asyncio.wait_for(next_one, 1)
    assert c.ack_id == "c" and client.frames_read == 2
    b.ack()
    c.ack()
    await subscriber.close()
    assert client.acks == [(SUB, ["a", "b", "c"])]


async def test_a_second_ack_or_nack_is_ignored():
    client = FakeSubscribeClient()
    client.push_frame(received("a"), received("b"))
    subscriber = Subscriber(client, SUB, ack_latency_s=LONG)
    a, b = await take(subscriber, 2)
    a.ack()
    a.ack()
    a.nack()
    b.nack(delay_s=3)
    b.nack(delay_s=3)
    b.ack()
    assert (subscriber.outstanding_messages, subscriber.outstanding_bytes) == (0, 0)
    await subscriber.close()
    assert client.acks == [(SUB, ["a"])]
    assert client.nacks == [(SUB, ["b"], 3)]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_a_callback_that_raises_nacks_its_delivery(asynchronous):
    client = FakeSubscribeClient()
    client.push_frame(received("good"), received("bad"), received("fine"))
    client.end()

    def handle(delivery):
        if delivery.ack_id == "bad":
            raise ValueError("cannot handle this")
        delivery.ack()

    async def handle_async(delivery):
        await asyncio.sleep(0)
        handle(delivery)

    subscriber = Subscriber(client, SUB, ack_latency_s=LONG)
    await asyncio.wait_for(subscriber.run(handle_async if asynchronous else handle), 1)
    await subscriber.close()
    assert client.acks == [(SUB, ["good", "fine"])]
    assert client.nacks == [(SUB, ["bad"], None)]  # after the subscription's retry backoff


async def test_close_nacks_undelivered_ones_at_once_and_sends_pending_acks():
    client = FakeSubscribeClient()
    client.push_frame(received("a"), received("b"), received("c"))
    subscriber = Subscriber(client, SUB, ack_latency_s=LONG)
    [a] = await take(subscriber, 1)
    await settle()  # b and c wait in the subscriber's queue
    a.ack()
    await asyncio.wait_for(subscriber.close(), 1)  # without waiting for ack_latency_s
    assert client.acks == [(SUB, ["a"])]
    assert client.nacks == [(SUB, ["b", "c"], 0)]
    assert (subscriber.outstanding_messages, subscriber.outstanding_bytes) == (0, 0)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(aiter(subscriber)), 1)


async def test_close_waits_for_running_callbacks_and_sends_their_acks():
    client = FakeSubscribeClient()
    client.push_frame(received("a"))
    started, release = asyncio.Event(), asyncio.Event()

    async def handle(delivery):
        started.set()
        await release.wait()
        delivery.ack()

    subscriber = Subscriber(client, SUB, ack_latency_s=LONG)
    running = asyncio.create_task(subscriber.run(handle))
    await asyncio.wait_for(started.wait(), 1)
    closing = asyncio.create_task(subscriber.close())
    await asyncio.sleep(0.01)
    assert not closing.done()
    release.set()
    await asyncio.wait_for(closing, 1)
    await asyncio.wait_for(running, 1)
    assert client.acks == [(SUB, ["a"])]


async def test_a_stream_error_reaches_the_consumer():
    client = FakeSubscribeClient()
    client.push_frame(received("a"))
    client.push_error(errors.PermissionDenied("not yours"))
    subscriber = Subscriber(client, SUB, ack_latency_s=LONG)
    iterator = aiter(subscriber)
    delivery = await asyncio.wait_for(anext(iterator), 1)
    with pytest.raises(errors.PermissionDenied):
        await asyncio.wait_for(anext(iterator), 1)
    with pytest.raises(StopAsyncIteration):  # and the iteration is over
        await asyncio.wait_for(anext(iterator), 1)
    delivery.ack()
    await subscriber.close()
    assert client.acks == [(SUB, ["a"])]


async def test_run_raises_the_stream_error():
    client = FakeSubscribeClient()
    client.push_error(errors.NotFound("subscription deleted"))
    subscriber = Subscriber(client, SUB)
    with pytest.raises(errors.NotFound):
        await asyncio.wait_for(subscriber.run(lambda delivery: delivery.ack()), 1)
    await subscriber.close()
