"""Publisher: batching, flow control, retries and close, driven with a fake client."""

import asyncio
import time

import pytest

from fakes import FakePublishClient, eventually, settle
from notifymesh import errors, publisher
from notifymesh.backoff import BackoffPolicy
from notifymesh.client import Message
from notifymesh.publisher import Publisher, message_size

LONG = 10.0  # a max_latency_s no test waits for: a test that needs it times out


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(publisher, "RETRY_BACKOFF", BackoffPolicy(first_s=0.002, max_s=0.005))


def sized(i: int, data_bytes: int = 96) -> Message:
    """A message of data_bytes + 4 bytes (its key is 4 characters)."""
    return Message(b"x" * data_bytes, idempotency_key=f"k{i:03d}")


async def test_a_batch_holds_at_most_max_messages():
    client = FakePublishClient()
    async with Publisher(client, max_messages=3, max_latency_s=LONG) as pub:
        futures = [await pub.publish("orders", b"m%d" % i) for i in range(7)]
        ids = await asyncio.wait_for(asyncio.gather(*futures), 1)
    assert [len(call.data) for call in client.calls] == [3, 3, 1]
    assert [d for call in client.calls for d in call.data] == [b"m%d" % i for i in range(7)]
    assert ids == [f"id-{i}" for i in range(7)]  # each future gets its own message's id


async def test_a_batch_holds_at_most_max_bytes_but_always_one_message():
    assert message_size(sized(0)) == 100
    client = FakePublishClient()
    async with Publisher(client, max_messages=100, max_bytes=250, max_latency_s=LONG) as pub:
        futures = [await pub.publish("orders", sized(i)) for i in range(5)]
        futures.append(await pub.publish("orders", sized(5, data_bytes=500)))  # over max_bytes alone
        await asyncio.wait_for(asyncio.gather(*futures), 1)
    assert [len(call.data) for call in client.calls] == [2, 2, 1, 1]
    assert client.calls[-1].keys == ["k005"]


async def test_topics_are_batched_apart():
    client = FakePublishClient()
    async with Publisher(client, max_latency_s=LONG) as pub:
        futures = [await pub.publish(topic, b"x") for topic in ("a", "b", "a")]
        await asyncio.wait_for(asyncio.gather(*futures), 1)
    assert sorted((call.topic, len(call.data)) for call in client.calls) == [("a", 2), ("b", 1)]


async def test_an_idle_topic_sends_at_once():
    client = FakePublishClient()
    async with Publisher(client, max_latency_s=LONG) as pub:
        future = await pub.publish("orders", b"alone")
        assert await asyncio.wait_for(future, 0.5) == "id-0"
    assert client.calls[0].data == [b"alone"]


async def test_max_latency_bounds_the_wait_behind_a_call_in_flight():
    client = FakePublishClient()
    client.gate = asyncio.Event()
    pub = Publisher(client, max_latency_s=0.05)
    first = await pub.publish("orders", b"first")
    await eventually(lambda: len(client.calls) == 1)
    started = time.monotonic()
    second = await pub.publish("orders", b"second")
    await settle()
    assert len(client.calls) == 1  # behind the call in flight it waits to fill a batch...
    await eventually(lambda: len(client.calls) == 2)  # ...but no longer than max_latency_s
    assert client.call_times[1] - started >= 0.045
    assert not first.done()  # the first call is still out: the bound, not its return, sent it
    client.gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), 1) == ["id-0", "id-1"]
    await pub.close()


async def test_what_gathered_behind_a_call_goes_when_it_returns():
    client = FakePublishClient()
    client.gate = asyncio.Event()
    pub = Publisher(client, max_latency_s=LONG)
    futures = [await pub.publish("orders", b"first")]
    await eventually(lambda: len(client.calls) == 1)
    futures += [await pub.publish("orders", b"m%d" % i) for i in range(3)]
    await settle()
    assert len(client.calls) == 1
    client.gate.set()
    await asyncio.wait_for(asyncio.gather(*futures), 1)
    assert [call.data for call in client.calls] == [[b"first"], [b"m0", b"m1", b"m2"]]
    await pub.close()


async def test_publish_waits_while_max_outstanding_messages_are_in_use():
    client = FakePublishClient()
    client.gate = asyncio.Event()
    pub = Publisher(client, max_outstanding_messages=2, max_latency_s=0)
    futures = [await pub.publish("orders", b"a"), await pub.publish("orders", b"b")]
    assert pub.outstanding_messages == 2
    third = asyncio.create_task(pub.publish("orders", b"c"))
    await asyncio.sleep(0.01)
    assert not third.done()
    client.gate.set()
    futures.append(await asyncio.wait_for(third, 1))
    assert await asyncio.wait_for(asyncio.gather(*futures), 1) == ["id-0", "id-1", "id-2"]
    await pub.close()
    assert (pub.outstanding_messages, pub.outstanding_bytes) == (0, 0)


async def test_room_goes_first_come_first_served():
    """A small message that would fit waits behind a big one that does not."""
    client = FakePublishClient()
    client.gate = asyncio.Event()
    pub = Publisher(client, max_outstanding_bytes=250, max_latency_s=0)
    held = await pub.publish("orders", sized(0, data_bytes=146))  # 150 bytes in flight
    order = []

    async def publish(message, name):
        future = await pub.publish("orders", message)
        order.append(name)
        return future

    big = asyncio.create_task(publish(sized(1, data_bytes=146), "big"))  # 150 more: no room
    await settle()
    small = asyncio.create_task(publish(sized(2, data_bytes=6), "small"))  # 10 would fit
    await asyncio.sleep(0.01)
    assert not big.done() and not small.done()
    assert order == []
    client.gate.set()
    await asyncio.wait_for(asyncio.gather(held, await big, await small), 1)
    assert order == ["big", "small"]
    await pub.close()


async def test_a_retryable_error_is_retried_with_the_same_idempotency_keys():
    client = FakePublishClient()
    client.outcomes = [errors.Unavailable("leader moved"), errors.DeadlineExceeded("slow")]
    async with Publisher(client, max_latency_s=0) as pub:
        futures = [await pub.publish("orders", Message(b"a")),
                   await pub.publish("orders", Message(b"b", idempotency_key="mine")),
                   await pub.publish("orders", b"c")]
        ids = await asyncio.wait_for(asyncio.gather(*futures), 1)
    assert len(client.calls) == 3
    keys = client.calls[0].keys
    assert all(keys) and keys[1] == "mine" and len(set(keys)) == 3  # given where missing, kept where given
    assert [call.keys for call in client.calls] == [keys, keys, keys]
    assert ids == ["id-0", "id-1", "id-2"]  # from the attempt that succeeded


async def test_generated_keys_differ_between_publishers():
    client = FakePublishClient()
    async with Publisher(client) as one, Publisher(client) as two:
        await asyncio.wait_for(asyncio.gather(await one.publish("t", b"x"), await two.publish("t", b"x")), 1)
    assert client.calls[0].keys != client.calls[1].keys


async def test_a_terminal_error_fails_only_that_batch_and_is_not_retried():
    client = FakePublishClient()
    client.outcomes = [errors.InvalidArgument("bad message")]
    async with Publisher(client, max_messages=2, max_latency_s=LONG) as pub:
        futures = [await pub.publish("orders", b"m%d" % i) for i in range(4)]
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 1)
    assert [type(r) for r in results[:2]] == [errors.InvalidArgument] * 2
    assert results[2:] == ["id-0", "id-1"]
    assert [call.data for call in client.calls] == [[b"m0", b"m1"], [b"m2", b"m3"]]


async def test_retries_stop_after_retry_for_s_with_the_last_error():
    client = FakePublishClient()
    client.always = errors.Unavailable("no leader")
    pub = Publisher(client, retry_for_s=0.05)
    started = time.monotonic()
    future = await pub.publish("orders", b"x")
    with pytest.raises(errors.Unavailable):
        await asyncio.wait_for(future, 2)
    elapsed = time.monotonic() - started
    await asyncio.wait_for(pub.close(), 1)
    assert 0.045 <= elapsed < 1
    assert len(client.calls) > 2
    assert client.call_times[-1] - client.call_times[0] <= 0.05 + 0.1  # the last try is at the bound


async def test_no_retry_window_means_one_try():
    client = FakePublishClient()
    client.always = errors.Unavailable("no leader")
    pub = Publisher(client, retry_for_s=0)
    with pytest.raises(errors.Unavailable):
        await asyncio.wait_for(await pub.publish("orders", b"x"), 1)
    await asyncio.wait_for(pub.close(), 1)
    assert len(client.calls) == 1


async def test_close_sends_what_is_queued_waits_for_outstanding_publishes_and_refuses_new_ones():
    client = FakePublishClient()
    client.gate = asyncio.Event()
    pub = Publisher(client, max_latency_s=LONG, max_outstanding_messages=3)
    futures = [await pub.publish("orders", b"m0")]
    await eventually(lambda: len(client.calls) == 1)
    futures += [await pub.publish("orders", b"m1"), await pub.publish("orders", b"m2")]
    waiting = asyncio.create_task(pub.publish("orders", b"no room"))  # waits for room
    await settle()
    assert len(client.calls) == 1  # m1 and m2 wait behind the call in flight
    closing = asyncio.create_task(pub.close())
    await eventually(lambda: len(client.calls) == 2)  # close sends them now, not after max_latency_s
    await asyncio.sleep(0.01)
    assert not closing.done()  # the calls are still out
    with pytest.raises(RuntimeError, match="closed"):
        await pub.publish("orders", b"late")
    client.gate.set()
    await asyncio.wait_for(closing, 1)
    assert [f.result() for f in futures] == ["id-0", "id-1", "id-2"]
    with pytest.raises(RuntimeError, match="closed"):  # room came after close: refused, not queued
        await asyncio.wait_for(waiting, 1)
    assert [call.data for call in client.calls] == [[b"m0"], [b"m1", b"m2"]]
    assert (pub.outstanding_messages, pub.outstanding_bytes) == (0, 0)
