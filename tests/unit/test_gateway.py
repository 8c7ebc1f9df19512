"""The frontend's routing: publishes to partitions with ids naming them, acks to
the senders that own their subscriptions, status lookups to the shard an id
names; driven with fakes of the cluster view and the internal clients."""

import asyncio
import zlib

import grpc
import pytest
from fakes import FakeCluster, FakeGatewayStorage, FakeMetadata, FakeSenders, eventually, settle

from frontend.gateway import Gateway
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.clock import timestamp
from notifymesh.contracts import AckId, MessageId, dedup_key, topic_hash
from notifymesh.server.config import Config

TOPIC = "orders"
OWNERS = {"sub-a": "sender-1:1", "sub-b": "sender-2:2", "sub-c": "sender-1:1"}


def make_gateway(partitions: int = 4, topics: dict[str, int] | None = None):
    cluster = FakeCluster(topics=topics or {TOPIC: partitions}, subscriptions={name: TOPIC for name in OWNERS})
    storage, senders, metadata = FakeGatewayStorage(), FakeSenders(dict(OWNERS)), FakeMetadata()
    return Gateway(cluster, Config(), storage=storage, senders=senders, metadata=metadata), storage, senders


def message(data: bytes, ordering_key: str = "") -> pubsub_pb2.PubsubMessage:
    return pubsub_pb2.PubsubMessage(data=data, ordering_key=ordering_key)


def ack(partition: int, seq: int, subscription: str) -> str:
    return AckId(partition, seq, subscription).encode()


# -- publish --------------------------------------------------------------------------------


async def test_an_ordering_key_picks_the_partition_by_crc32():
    gateway, storage, _ = make_gateway(partitions=4)
    keys = ["customer-1", "customer-2", "customer-3", "customer-1"]
    ids = await gateway.publish(TOPIC, [message(b"%d" % i, key) for i, key in enumerate(keys)])
    appended = {partition: [m.data for m in messages] for (topic, partition), messages in storage.appends}
    expected: dict[int, list[bytes]] = {}
    for i, key in enumerate(keys):
        expected.setdefault(zlib.crc32(key.encode()) % 4, []).append(b"%d" % i)
    assert appended == expected
    assert len(expected) > 1  # the keys do spread
    for key, message_id in zip(keys, ids):
        assert MessageId.parse(message_id).partition == zlib.crc32(key.encode()) % 4


def partitions_of(storage: FakeGatewayStorage) -> dict[bytes, set[int]]:
    """data -> the partitions messages with that data were appended to."""
    seen: dict[bytes, set[int]] = {}
    for (_, partition), stored in storage.appends:
        for m in stored:
            seen.setdefault(m.data, set()).add(partition)
    return seen


async def test_a_keyed_message_goes_where_its_key_hashes_in_every_publish():
    """De-duplication is per partition: a repeat must meet its original there."""
    gateway, storage, _ = make_gateway(partitions=4)
    for _ in range(8):  # separate publishes, which spread over partitions without a key
        await gateway.publish(TOPIC, [pubsub_pb2.PubsubMessage(data=b"keyed", idempotency_key="order-7"),
                                      pubsub_pb2.PubsubMessage(data=b"retried", retry_key="pub-1-0"),
                                      pubsub_pb2.PubsubMessage(data=b"ordered", idempotency_key="order-7",
                                                               ordering_key="customer-1")])
    assert partitions_of(storage) == {b"keyed": {zlib.crc32(b"k:order-7") % 4},
                                      b"retried": {zlib.crc32(b"r:pub-1-0") % 4},
                                      b"ordered": {zlib.crc32(b"customer-1") % 4}}  # the ordering key decides


async def test_a_batch_known_by_retry_keys_stays_one_append_and_its_resend_meets_it():
    """A Publisher's batch: each message with a retry key of its own. It goes whole
    to one partition (one append, not one per partition), the one its first retry
    key hashes to, so the same batch resent after a lost reply lands there too."""
    gateway, storage, _ = make_gateway(partitions=4)
    batch = [pubsub_pb2.PubsubMessage(data=b"m-%d" % i, retry_key=f"pub-7-{i}") for i in range(20)]
    for _ in range(3):
        await gateway.publish(TOPIC, [pubsub_pb2.PubsubMessage(data=m.data, retry_key=m.retry_key) for m in batch])
    assert [partition for (_, partition), _ in storage.appends] == [zlib.crc32(b"r:pub-7-0") % 4] * 3
    assert all(len(stored) == 20 for _, stored in storage.appends)


async def test_on_a_payload_dedup_topic_a_message_goes_where_its_payload_hashes():
    gateway, storage, _ = make_gateway(partitions=4)
    record = gateway._cluster.topics.items[TOPIC]
    record.dedup_by_payload = True
    record.dedup_attributes.append("tenant")

    def payload(data: bytes, i: int, **attributes) -> pubsub_pb2.PubsubMessage:
        # a retry key of its own each time, as a Publisher gives; other attributes differ too
        return pubsub_pb2.PubsubMessage(data=data, retry_key=f"pub-{i}", attributes={"sent_at": str(i), **attributes})

    for i in range(8):
        await gateway.publish(TOPIC, [payload(b"same", i), payload(b"tenant a", i, tenant="a")])
    seen = partitions_of(storage)
    assert len(seen[b"same"]) == 1 and len(seen[b"tenant a"]) == 1
    assert seen[b"same"] == {zlib.crc32(dedup_key(payload(b"same", 0), True, ["tenant"]).encode()) % 4}
    # the named attribute is part of the payload: equal data with its values differing hashes apart
    storage.appends.clear()
    await gateway.publish(TOPIC, [payload(b"by tenant", 0, tenant=tenant) for tenant in "abcdefgh"])
    assert len({partition for (_, partition), _ in storage.appends}) > 1


async def test_ids_name_the_partition_and_topic_the_message_is_stored_in_and_keep_the_order():
    gateway, storage, _ = make_gateway(partitions=3)
    messages = [message(b"a", "k1"), message(b"b"), message(b"c", "k2"), message(b"d"), message(b"e", "k1")]
    ids = await gateway.publish(TOPIC, messages)
    assert len(set(ids)) == 5
    for (topic, partition), stored in storage.appends:
        for m in stored:
            parsed = MessageId.parse(m.message_id)
            assert (parsed.partition, parsed.topic_hash) == (partition, topic_hash(TOPIC))
    stored_ids = {m.data: m.message_id for _, stored in storage.appends for m in stored}
    assert ids == [stored_ids[m.data] for m in messages]  # each caller's id at its message's place


async def test_without_an_ordering_key_publishes_take_turns_over_idle_partitions():
    gateway, storage, _ = make_gateway(partitions=3)
    for i in range(6):
        await gateway.publish(TOPIC, [message(b"%d" % i), message(b"%d+" % i)])
    assert [partition for (_, partition), _ in storage.appends] == [0, 1, 2, 0, 1, 2]  # a batch stays together


async def test_without_an_ordering_key_a_publish_avoids_a_busy_partition():
    gateway, storage, _ = make_gateway(partitions=3)
    busy = storage.hold((TOPIC, 0))
    stuck = asyncio.create_task(gateway.publish(TOPIC, [message(b"stuck")]))  # partition 0 (its turn)
    await eventually(lambda: storage.appends)
    for i in range(6):
        await asyncio.wait_for(gateway.publish(TOPIC, [message(b"%d" % i)]), 1)
    chosen = [partition for (_, partition), _ in storage.appends]
    assert chosen[:3] == [0, 1, 2]  # idle: each its turn
    assert 0 not in chosen[3:] and set(chosen[3:]) == {1, 2}  # then never the busy one
    busy.set()
    await asyncio.wait_for(stuck, 1)


async def test_a_publish_to_an_unknown_topic_or_of_an_invalid_message_does_no_storage_work():
    gateway, storage, _ = make_gateway()
    with pytest.raises(errors.NotFound):
        await gateway.publish("no-such-topic", [message(b"x")])
    with pytest.raises(errors.InvalidArgument):
        await gateway.publish(TOPIC, [pubsub_pb2.PubsubMessage()])
    assert storage.appends == []


# -- acks ---------------------------------------------------------------------------------------


async def test_acks_of_a_named_subscription_go_to_its_sender():
    gateway, _, senders = make_gateway()
    ids = [ack(0, 1, "sub-b"), ack(3, 2, "sub-b")]
    await gateway.acknowledge("sub-b", ids)
    assert senders.acks == [("sender-2:2", ids)]


async def test_acks_without_a_subscription_go_to_the_owner_of_the_subscription_each_names():
    gateway, _, senders = make_gateway()
    await gateway.acknowledge("", [ack(0, 1, "sub-a"), ack(1, 1, "sub-b"), ack(0, 2, "sub-c"), ack(2, 3, "sub-a")])
    assert sorted(senders.acks) == [
        ("sender-1:1", [ack(0, 1, "sub-a"), ack(0, 2, "sub-c"), ack(2, 3, "sub-a")]),  # by pair
        ("sender-2:2", [ack(1, 1, "sub-b")])]


async def test_concurrent_acks_for_one_sender_share_a_call():
    gateway, _, senders = make_gateway()
    await asyncio.gather(gateway.acknowledge("sub-a", [ack(0, 1, "sub-a")]),
                         gateway.acknowledge("sub-c", [ack(0, 1, "sub-c")]),
                         gateway.acknowledge("sub-a", [ack(0, 2, "sub-a")]))
    assert senders.acks == [("sender-1:1", [ack(0, 1, "sub-a"), ack(0, 1, "sub-c"), ack(0, 2, "sub-a")])]


@pytest.mark.parametrize("name, ack_ids", [
    ("sub-a", ["garbage"]),
    ("sub-a", [ack(0, 1, "sub-a"), "0:zz:sub-a"]),
    ("sub-a", [ack(0, 1, "sub-b")]),  # well formed, of another subscription
    ("", [ack(0, 1, "sub-a"), "no-colons"]),
    ("sub-a", []),
], ids=["malformed", "bad-seq", "other-subscription", "merged-malformed", "none"])
async def test_a_bad_ack_id_is_refused_and_nothing_is_sent(name, ack_ids):
    gateway, _, senders = make_gateway()
    with pytest.raises(errors.InvalidArgument):
        await gateway.acknowledge(name, ack_ids)
    await settle()
    assert senders.acks == []


async def test_nacks_and_deadline_changes_check_their_ack_ids_and_go_to_the_sender():
    gateway, _, senders = make_gateway()
    with pytest.raises(errors.InvalidArgument):
        await gateway.nack(pubsub_pb2.NackRequest(subscription="sub-a", ack_ids=[ack(0, 1, "sub-b")]))
    deadline = pubsub_pb2.ModifyAckDeadlineRequest().ack_deadline
    deadline.FromSeconds(30)
    with pytest.raises(errors.InvalidArgument):
        await gateway.modify_ack_deadline("sub-a", ["garbage"], deadline)
    assert senders.nacks == [] and senders.deadlines == []
    request = pubsub_pb2.NackRequest(subscription="sub-a", ack_ids=[ack(0, 1, "sub-a")])
    await gateway.nack(request)
    await gateway.modify_ack_deadline("sub-a", [ack(0, 1, "sub-a")], deadline)
    assert senders.nacks == [request]
    assert list(senders.deadlines[0].ack_ids) == [ack(0, 1, "sub-a")]


# -- message status --------------------------------------------------------------------------------


async def test_message_status_asks_the_shard_the_id_names():
    gateway, storage, _ = make_gateway(topics={TOPIC: 4, "audit": 8})
    [message_id] = MessageId.new_batch("audit", 5, 1, 1_700_000_000_000)
    status = pubsub_pb2.MessageStatus(topic="audit", partition=5)
    storage.replies[("GetMessageStatus", "audit", 5)] = status
    assert await gateway.message_status(message_id) is status
    [(method, topic, partition, request)] = storage.calls
    assert (method, topic, partition, request.topic, request.partition, request.message_id) == (
        "GetMessageStatus", "audit", 5, "audit", 5, message_id)


async def test_message_status_of_an_unknown_or_malformed_id():
    gateway, storage, _ = make_gateway(topics={TOPIC: 4})
    [of_a_deleted_topic] = MessageId.new_batch("deleted", 0, 1, 1_700_000_000_000)
    with pytest.raises(errors.NotFound):
        await gateway.message_status(of_a_deleted_topic)
    assert storage.calls == []
    with pytest.raises(errors.InvalidArgument):
        await gateway.message_status("not-an-id")
    [gone] = MessageId.new_batch(TOPIC, 1, 1, 1_700_000_000_000)
    storage.replies[("GetMessageStatus", TOPIC, 1)] = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "no such message")
    with pytest.raises(errors.NotFound):
        await gateway.message_status(gone)
    storage.calls.clear()
    [beyond] = MessageId.new_batch(TOPIC, 4, 1, 1_700_000_000_000)  # a partition the topic does not have
    with pytest.raises(errors.NotFound):
        await gateway.message_status(beyond)
    assert storage.calls == []


async def test_admin_calls_go_to_metadata():
    gateway, _, _ = make_gateway()
    request = pubsub_pb2.GetTopicRequest(name=TOPIC)
    await gateway.admin("GetTopic", request)
    assert gateway._metadata.calls == [("GetTopic", request)]


# -- relayed streams ------------------------------------------------------------------------------


class RelayCall:
    """A sender's stream as the gateway relays it: fails with code, or gives one frame."""

    def __init__(self, addr: str, code: grpc.StatusCode | None):
        self.addr, self.code = addr, code

    async def __aiter__(self):
        if self.code is not None:
            raise errors.of_status(self.code.value[0], "stream broke")  # as RelayedFrames raises it
        yield self.addr.encode()

    def cancel(self) -> None:
        pass


class RelayingSenders(FakeSenders):
    """Streams of the senders at the addresses in broken fail with their code."""

    def __init__(self, owners: dict[str, str], broken: dict[str, grpc.StatusCode]):
        super().__init__(owners)
        self.broken = broken

    def subscribe(self, addr: str, request):
        return RelayCall(addr, self.broken.get(addr))


class Suspects:
    """The liveness check: a suspect it finds dead leaves the ring (on_suspect)."""

    def __init__(self, on_suspect):
        self.suspected: list[tuple[str, str]] = []
        self._on_suspect = on_suspect

    def suspect(self, kind: str, addr: str) -> None:
        self.suspected.append((kind, addr))
        self._on_suspect()


def relaying_gateway(code: grpc.StatusCode):
    """sub-a's owner, sender-1, breaks its stream with code; once it is found dead
    (suspected: in this fake, at once), the ring moves sub-a to sender-2."""
    cluster = FakeCluster(topics={TOPIC: 1}, subscriptions={"sub-a": TOPIC})
    senders = RelayingSenders({"sub-a": "sender-1:1"}, {"sender-1:1": code})

    def sender_1_dead():
        senders.owned["sub-a"] = "sender-2:2"
        cluster.ring_changed.set()
    suspects = Suspects(sender_1_dead)
    return Gateway(cluster, Config(), FakeGatewayStorage(), senders, FakeMetadata(), suspects), senders, suspects


async def test_a_sender_whose_stream_breaks_unavailable_is_checked_and_its_successor_relayed():
    gateway, senders, suspects = relaying_gateway(grpc.StatusCode.UNAVAILABLE)
    frames = gateway.subscribe("sub-a", 10)
    assert await asyncio.wait_for(frames.__anext__(), 1) == b"sender-2:2"
    assert suspects.suspected == [("sender", "sender-1:1")]
    await frames.aclose()


async def test_a_stream_the_sender_ended_otherwise_is_no_reason_to_check_it():
    gateway, senders, suspects = relaying_gateway(grpc.StatusCode.CANCELLED)
    frames = gateway.subscribe("sub-a", 10)
    next_frame = asyncio.ensure_future(frames.__anext__())
    await asyncio.sleep(0.3)  # a few reconnects (backoff from 50 ms)
    assert suspects.suspected == [] and not next_frame.done()
    next_frame.cancel()
    await asyncio.gather(next_frame, return_exceptions=True)
    await frames.aclose()


# -- seek --------------------------------------------------------------------------------


async def test_a_seek_goes_to_every_partition_and_counts_those_limited():
    gateway, storage, _ = make_gateway(partitions=3)
    storage.replies[("Seek", TOPIC, 1)] = storage_pb2.StorageSeekResponse(limited=True)
    for partition in (0, 2):
        storage.replies[("Seek", TOPIC, partition)] = storage_pb2.StorageSeekResponse()
    request = pubsub_pb2.SeekRequest(subscription="sub-a", time=timestamp(1_700_000_000_000))
    assert (await gateway.seek(request)).partitions_limited == 1
    assert sorted((p, r.subscription, r.time_ms, r.to_end) for _, _, p, r in storage.calls) == [
        (p, "sub-a", 1_700_000_000_000, False) for p in range(3)]
    storage.calls.clear()
    await gateway.seek(pubsub_pb2.SeekRequest(subscription="sub-a", to_end=True))
    assert sorted((p, r.to_end) for _, _, p, r in storage.calls) == [(p, True) for p in range(3)]


@pytest.mark.parametrize("request_", [pubsub_pb2.SeekRequest(subscription="sub-a"),
                                      pubsub_pb2.SeekRequest(subscription="sub-a", to_end=False)])
async def test_a_seek_without_a_target_is_refused_and_nothing_is_sent(request_):
    gateway, storage, _ = make_gateway()
    with pytest.raises(errors.InvalidArgument, match="a time or to_end"):
        await gateway.seek(request_)
    assert storage.calls == []

async def test_a_pull_is_checked_then_asked_of_the_owning_sender_with_the_default_filled_in():
    gateway, _, senders = make_gateway()
    request = pubsub_pb2.PullRequest(subscription="sub-a")
    request.wait.FromSeconds(2)
    await gateway.pull(request)
    [forwarded] = senders.pulls
    assert (forwarded.subscription, forwarded.max_messages, forwarded.wait.seconds) == ("sub-a", 100, 2)
    for bad in (pubsub_pb2.PullRequest(subscription="sub-a", max_messages=1001),
                pubsub_pb2.PullRequest(subscription="sub-a", max_messages=-1),
                pubsub_pb2.PullRequest(subscription="sub-a", wait={"seconds": 31}),
                pubsub_pb2.PullRequest(subscription="sub-a", wait={"seconds": -1}),
                pubsub_pb2.PullRequest(subscription="x")):
        with pytest.raises(errors.InvalidArgument):
            await gateway.pull(bad)
    with pytest.raises(errors.NotFound):
        await gateway.pull(pubsub_pb2.PullRequest(subscription="nope-sub"))
    assert len(senders.pulls) == 1


# -- the trace context is not shown -----------------------------------------------------------

TRACED = {"kind": "order", "notifymesh.traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


async def test_message_status_shows_the_trace_id_instead_of_the_context():
    gateway, storage, _ = make_gateway(topics={TOPIC: 1})
    [message_id] = MessageId.new_batch(TOPIC, 0, 1, 1_700_000_000_000)
    storage.replies[("GetMessageStatus", TOPIC, 0)] = pubsub_pb2.MessageStatus(
        topic=TOPIC, message=pubsub_pb2.PubsubMessage(data=b"x", attributes=TRACED))
    status = await gateway.message_status(message_id)
    assert status.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert dict(status.message.attributes) == {"kind": "order"}


async def test_dead_letters_are_listed_without_the_trace_context():
    gateway, storage, _ = make_gateway(partitions=1)
    storage.replies[("ListDeadLetters", TOPIC, 0)] = storage_pb2.StorageListDeadLettersResponse(
        dead_letters=[pubsub_pb2.DeadLetter(message=pubsub_pb2.PubsubMessage(data=b"x", attributes=TRACED))],
        seqs=[7])
    listed = await gateway.list_dead_letters(pubsub_pb2.ListDeadLettersRequest(subscription="sub-a"))
    assert [dict(d.message.attributes) for d in listed.dead_letters] == [{"kind": "order"}]
