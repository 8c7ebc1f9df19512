"""Day-to-day operations through the whole mesh: a subscription updated in place
(its backlog kept, the new ack deadline, retry policy and push endpoint in force),
a unary pull (empty after its wait, at once when messages are ready), list calls
in pages, and the CLI commands for them."""

import asyncio
import base64
import json
import time
from types import SimpleNamespace

import grpc
import pytest

from helpers import Receiver, authed, cli, ids_of, new_topic, unique
from gen.notifymesh.v1 import pubsub_pb2, pubsub_pb2_grpc
from notifymesh import errors, webhooks
from metadata.store import MetadataStore
from notifymesh.client import Message
from notifymesh.server.cluster import connect_etcd
from notifymesh.server.config import Config

MIRROR_S = 0.5  # time for every process's watch to see an etcd record change


async def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return predicate()


# -- UpdateSubscription ------------------------------------------------------------------


async def test_an_update_keeps_the_backlog_and_the_new_ack_deadline_holds_on_an_open_stream(mesh, client):
    topic, sub = await new_topic(client, "upd-deadline", ack_deadline_s=60)
    backlog = await client.publish(topic, [b"kept-%d" % i for i in range(20)])
    created = await client.get_subscription(sub)
    deliveries: list[tuple[float, pubsub_pb2.ReceivedMessage]] = []
    loop = asyncio.get_running_loop()

    async def run():  # one stream, open across the update; acks nothing
        async for frame in client.subscribe_frames(sub, max_outstanding=100):
            deliveries.extend((loop.time(), m) for m in frame)

    stream = asyncio.create_task(run())
    assert await wait_until(lambda: len(deliveries) >= 20, 15)
    assert set(ids_of(m for _, m in deliveries)) == set(backlog)  # the backlog, before the update

    updated = await client.update_subscription(sub, ack_deadline_s=2)
    assert updated.ack_deadline.seconds == 2 and updated.topic == topic
    assert updated.create_time == created.create_time  # the same subscription, not a new one
    assert (await client.get_subscription(sub)).ack_deadline.seconds == 2
    await asyncio.sleep(MIRROR_S)
    [late] = await client.publish(topic, [b"after the update"])
    assert await wait_until(lambda: [m for _, m in deliveries if m.message.message_id == late][1:], 10), \
        "delivered again after the new 2 s deadline, on the stream opened before the update"
    first, second = [t for t, m in deliveries if m.message.message_id == late][:2]
    assert second - first >= 1.8
    assert all(m.delivery_attempt == 1 for _, m in deliveries if m.message.message_id in backlog), \
        "leases given before the update keep their 60 s deadline"
    stream.cancel()
    await asyncio.gather(stream, return_exceptions=True)


async def test_a_retry_policy_set_by_an_update_spaces_redeliveries(mesh, client):
    topic, sub = await new_topic(client, "upd-retry", ack_deadline_s=60)
    await client.publish(topic, [b"retry me"])
    [first] = await client.pull(sub, 1, wait_s=5)
    await client.nack(sub, [first.ack_id])
    [again] = await client.pull(sub, 1, wait_s=5)  # no retry policy: back at once
    assert again.delivery_attempt == 2

    updated = await client.update_subscription(sub, min_backoff_s=3, max_backoff_s=3)
    assert updated.retry_policy.minimum_backoff.seconds == 3 and updated.retry_policy.multiplier == 2
    await asyncio.sleep(MIRROR_S)
    await client.nack(sub, [again.ack_id])
    nacked = time.monotonic()
    assert await client.pull(sub, 1, wait_s=1.5) == [], "storage took the 3 s backoff"
    [third] = await client.pull(sub, 1, wait_s=10)
    assert third.delivery_attempt == 3 and time.monotonic() - nacked >= 2.8
    await client.acknowledge(sub, [third.ack_id])


async def test_a_push_endpoint_changed_by_an_update_gets_the_next_messages_signed_as_before(mesh, client):
    before, after = Receiver(), Receiver()
    try:
        topic = unique("upd-push")
        await client.create_topic(topic)
        sub = unique("upd-push-sub")
        created = await client.create_subscription(sub, topic, push_endpoint=before.url)
        [one] = await client.publish(topic, [b"one"])
        assert await wait_until(lambda: before.requests, 15)
        await asyncio.sleep(0.3)  # its ack lands before the worker is replaced
        updated = await client.update_subscription(sub, push_endpoint=after.url)
        assert updated.push_config.endpoint == after.url
        assert (updated.push_config.secret, updated.push_config.secret_set) == ("", True)  # kept, not shown
        await asyncio.sleep(MIRROR_S)
        [two] = await client.publish(topic, [b"two"])
        assert await wait_until(lambda: after.requests, 15), "the sender pushes to the new endpoint"
        assert {m["message_id"] for m in after.messages()} == {two}
        _, headers, body = after.requests[0]
        assert webhooks.verify(created.push_config.secret, headers[webhooks.HEADER], body)  # receivers keep verifying
        assert {m["message_id"] for m in before.messages()} == {one}
        assert (await client.get_subscription(sub)).push_config.max_in_flight == 16  # the rest kept

        pulled = await client.update_subscription(sub, push_endpoint="")  # back to a pull subscription
        assert not pulled.HasField("push_config")
        await asyncio.sleep(MIRROR_S)
        [three] = await client.publish(topic, [b"three"])
        assert ids_of(await client.pull(sub, 10, wait_s=5)) == [three]
        assert len(after.requests) == 1
        await client.delete_subscription(sub)
    finally:
        before.close()
        after.close()


async def test_an_update_refuses_unknown_or_fixed_fields_and_missing_things(mesh, client):
    topic, sub = await new_topic(client, "upd-bad")
    stub = authed(pubsub_pb2_grpc.SubscriberStub, client)

    async def update(paths, **fields):
        request = pubsub_pb2.UpdateSubscriptionRequest(subscription=pubsub_pb2.Subscription(name=sub, **fields))
        request.update_mask.paths.extend(paths)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.UpdateSubscription(request)
        return e.value.code(), e.value.details()

    assert await update(["topic"], topic="other") == (
        grpc.StatusCode.INVALID_ARGUMENT, "a subscription's topic cannot be changed (create another one)")
    code, details = await update(["ack_deadlines"])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'ack_deadlines'" in details
    assert (await update([]))[0] == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(errors.InvalidArgument, match="ack deadline 0.5s out of range"):
        await client.update_subscription(sub, ack_deadline_s=0.5)
    with pytest.raises(errors.NotFound, match="topic 'no-such-dead' not found"):
        await client.update_subscription(sub, max_delivery_attempts=3, dead_letter_topic="no-such-dead")
    with pytest.raises(errors.NotFound, match="subscription 'no-such-sub' not found"):
        await client.update_subscription("no-such-sub", ack_deadline_s=5)
    assert (await client.get_subscription(sub)).ack_deadline.seconds == 10  # nothing changed


async def test_dead_lettering_set_by_an_update_takes_a_terminal_nack(mesh, client):
    topic, sub = await new_topic(client, "upd-dead", ack_deadline_s=60)
    dead = unique("upd-dead-letters")
    await client.create_topic(dead)
    [message_id] = await client.publish(topic, [b"poison"])
    [received] = await client.pull(sub, 1, wait_s=5)
    with pytest.raises(errors.FailedPrecondition):  # no dead-letter topic yet
        await client.nack(sub, [received.ack_id], terminal=True)
    await client.update_subscription(sub, max_delivery_attempts=5, dead_letter_topic=dead)
    await asyncio.sleep(MIRROR_S)
    await client.nack(sub, [received.ack_id], terminal=True, reason="bad")  # still leased: its ack id holds
    [listed] = await wait_until_async(lambda: client.list_dead_letters(sub), 10)
    assert listed.message.message_id == message_id and listed.last_error == "bad"


async def wait_until_async(get, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := await get():
            return got
        await asyncio.sleep(0.2)
    return None


async def test_subscription_update_in_the_cli(mesh, client):
    topic, sub = await new_topic(client, "upd-cli")
    backlog = await client.publish(topic, [b"b-%d" % i for i in range(50)])
    updated = cli(mesh, "subscription", "update", sub, "--ack-deadline", "20s", "--min-backoff", "2s")
    assert updated.returncode == 0, updated.stderr
    line = json.loads(updated.stdout)
    assert (line["name"], line["topic"], line["ack_deadline_s"], line["min_backoff_s"]) == (sub, topic, 20.0, 2.0)
    pulled = await client.pull(sub, 100, wait_s=5)
    assert sorted(ids_of(pulled)) == sorted(backlog), "the backlog published before the update is kept"
    await client.acknowledge(sub, [m.ack_id for m in pulled])
    missing = cli(mesh, "subscription", "update", "no-such-sub", "--ack-deadline", "20s")
    assert missing.returncode == 1
    assert missing.stderr.decode().strip() == "error: NOT_FOUND: subscription 'no-such-sub' not found"
    nothing = cli(mesh, "subscription", "update", sub)
    assert nothing.returncode == 2 and b"give at least one setting" in nothing.stderr
    assert b"Traceback" not in missing.stderr + nothing.stderr


# -- Pull -------------------------------------------------------------------------------------


async def test_a_pull_with_nothing_ready_returns_after_its_wait_or_at_once_without_one(mesh, client):
    _, sub = await new_topic(client, "pull-empty", topic_options={"partitions": 3})
    started = time.monotonic()
    assert await client.pull(sub, 10, wait_s=1.5) == []
    assert 1.4 <= time.monotonic() - started < 5
    started = time.monotonic()
    assert await client.pull(sub, 10) == []
    assert time.monotonic() - started < 1


async def test_a_pull_returns_ready_messages_at_once_up_to_its_max_and_they_are_acked_like_streamed_ones(
        mesh, client):
    topic, sub = await new_topic(client, "pull-ready", topic_options={"partitions": 3}, ack_deadline_s=60)
    ids = await client.publish(topic, [Message(b"m-%d" % i, ordering_key=f"k{i}") for i in range(5)])
    started = time.monotonic()
    first = await client.pull(sub, 3, wait_s=20)
    assert time.monotonic() - started < 3 and 1 <= len(first) <= 3  # from whichever partitions hold them
    rest: list = []
    while len(first) + len(rest) < 5 and time.monotonic() - started < 20:
        rest += await client.pull(sub, 10, wait_s=5)
    assert sorted(ids_of(first + rest)) == sorted(ids)
    await client.acknowledge(sub, [m.ack_id for m in first + rest])
    assert await client.pull(sub, 10, wait_s=1) == []  # acked: gone; leased: not handed out twice
    status = await client.get_message_status(ids[0])
    assert [d.state for d in status.deliveries if d.subscription == sub] == [pubsub_pb2.ACKNOWLEDGED]


async def test_a_waiting_pull_returns_the_message_published_meanwhile(mesh, client):
    topic, sub = await new_topic(client, "pull-wait", topic_options={"partitions": 3})
    pull = asyncio.create_task(client.pull(sub, 10, wait_s=20))
    await asyncio.sleep(1)
    assert not pull.done()
    published = time.monotonic()
    [message_id] = await client.publish(topic, [b"late"])
    received = await asyncio.wait_for(pull, 10)
    assert ids_of(received) == [message_id] and time.monotonic() - published < 3


async def test_a_pull_of_a_missing_subscription_or_out_of_range_is_refused(mesh, client):
    _, sub = await new_topic(client, "pull-bad")
    with pytest.raises(errors.NotFound):
        await client.pull("no-such-sub", 1)
    with pytest.raises(errors.InvalidArgument, match="max_messages 1001 out of range"):
        await client.pull(sub, 1001)
    with pytest.raises(errors.InvalidArgument, match="pull wait 31s out of range"):
        await client.pull(sub, 1, wait_s=31)


async def test_pull_in_the_cli_prints_json_lines_and_acks_with_ack(mesh, client):
    topic, sub = await new_topic(client, "pull-cli", ack_deadline_s=60)
    ids = await client.publish(topic, [b"a", b"b", b"c"])
    unacked = cli(mesh, "pull", sub, "--max", "1")
    assert unacked.returncode == 0, unacked.stderr
    [line] = [json.loads(text) for text in unacked.stdout.decode().splitlines()]
    assert line["id"] in ids and line["ack_id"] and line["attempt"] == 1
    acked = cli(mesh, "pull", sub, "--max", "10", "--wait", "2s", "--ack")
    lines = [json.loads(text) for text in acked.stdout.decode().splitlines()]
    assert acked.returncode == 0 and sorted([line["id"]] + [m["id"] for m in lines]) == sorted(ids)
    assert await client.pull(sub, 10, wait_s=1) == []  # the first is leased (60 s), the others acked
    await client.nack(sub, [line["ack_id"]], delay_s=0)
    assert ids_of(await client.pull(sub, 10, wait_s=5)) == [line["id"]]  # not acked: it comes back

    empty = cli(mesh, "pull", sub, "--wait", "0")
    assert (empty.returncode, empty.stdout) == (0, b"")
    missing = cli(mesh, "pull", "no-such-sub")
    assert missing.returncode == 1
    assert missing.stderr.decode().strip() == "error: NOT_FOUND: subscription 'no-such-sub' not found"


# -- pages -------------------------------------------------------------------------------------


async def test_topics_come_in_pages_by_name_and_every_one_once(mesh, client):
    mine = sorted(unique("paged") for _ in range(7))
    for name in mine:
        await client.create_topic(name, replication_factor=1)
    pages = [page async for page in client.topic_pages(page_size=3)]
    names = [t.name for page in pages for t in page]
    assert names == sorted(set(names)) and set(mine) <= set(names)
    assert all(len(page) == 3 for page in pages[:-1]) and 1 <= len(pages[-1]) <= 3
    assert [t.name for t in await client.list_topics()] == names  # the default pages, followed


async def test_a_topics_subscriptions_come_in_pages_and_the_cli_follows_them(mesh, client):
    topic, other = unique("paged-subs"), unique("paged-other")
    await client.create_topic(topic)
    await client.create_topic(other)
    names = sorted(unique("ps") for _ in range(105))
    for name in names:
        await client.create_subscription(name, topic)
    for _ in range(3):
        await client.create_subscription(unique("ps"), other)  # interleaved by name, never listed with topic
    pages = [[s.name for s in page] async for page in client.subscription_pages(topic, page_size=50)]
    assert [len(page) for page in pages] == [50, 50, 5] and sum(pages, []) == names

    listed = cli(mesh, "subscription", "list", "--topic", topic)  # more than one default page of 100
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["name"] for line in listed.stdout.decode().splitlines()] == names


async def test_a_bad_page_size_or_token_is_refused(mesh, client):
    for _ in range(2):
        await client.create_topic(unique("paged-token"), replication_factor=1)
    topics = authed(pubsub_pb2_grpc.PublisherStub, client)
    token = (await topics.ListTopics(pubsub_pb2.ListTopicsRequest(page_size=1))).next_page_token
    assert token and len((await topics.ListTopics(pubsub_pb2.ListTopicsRequest(page_token=token))).topics) >= 1
    subscriptions = authed(pubsub_pb2_grpc.SubscriberStub, client)
    for call, request in (
            (topics.ListTopics, pubsub_pb2.ListTopicsRequest(page_size=1001)),
            (topics.ListTopics, pubsub_pb2.ListTopicsRequest(page_token="garbage!")),
            (topics.ListTopics, pubsub_pb2.ListTopicsRequest(page_token=base64.urlsafe_b64encode(b"topic/0x").decode())),
            (subscriptions.ListSubscriptions, pubsub_pb2.ListSubscriptionsRequest(page_token=token))):  # a topic's
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(request)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    with pytest.raises(errors.InvalidArgument, match="page_size 1001 out of range"):
        await client.list_subscriptions(page_size=1001)


async def test_a_topic_delete_fails_when_an_update_names_it_as_a_dead_letter_topic_meanwhile(mesh, client):
    """The delete's check and its transaction are apart: an update in between that
    names the topic fails the transaction, and the retry's check refuses."""
    topic, sub = await new_topic(client, "del-race")
    dead = unique("del-race-dead")
    await client.create_topic(dead)
    etcd = connect_etcd(mesh.etcd_endpoint, mesh.client_tls())
    raced = []

    class RacingEtcd:
        """etcd, with the update right after the delete's check read the subscriptions."""

        def __getattr__(self, name):
            return getattr(etcd, name)

        async def get_prefix(self, prefix):
            listed = await etcd.get_prefix(prefix)
            if not raced:
                raced.append(await client.update_subscription(sub, max_delivery_attempts=5, dead_letter_topic=dead))
            return listed

    try:
        store = MetadataStore(SimpleNamespace(etcd=RacingEtcd()), Config(), storage=None)
        with pytest.raises(errors.FailedPrecondition, match="is the dead-letter topic of 1 subscription"):
            await store.delete_topic(dead)
        assert raced and (await client.get_topic(dead)).name == dead
    finally:
        await etcd.close()
