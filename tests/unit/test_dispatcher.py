"""The sender's dispatcher: acks and nacks split by partition, room accounting per
stream and per sender, streams handing back what they had not acknowledged,
driven with a fake storage client and cluster view."""

import asyncio
import time
from typing import NamedTuple

import pytest

from fakes import FakeCluster, FakeDispatchStorage, FakeRegistration, eventually, received, settle, subscribed
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.batching import Coalescer
from notifymesh.contracts import AckId, shard_name
from notifymesh.server.config import Config
from sender.dispatch import Budget, Dispatcher, Stream, SubscriptionDispatcher

SUB, TOPIC, NODE = "orders-sub", "orders", "sender-1"


def ack_id(partition: int, seq: int, subscription: str = SUB) -> str:
    return AckId(partition, seq, subscription).encode()


def make_dispatcher(partitions: int = 2, sender_max_outstanding: int = 100_000, **cluster_args):
    storage = FakeDispatchStorage()
    cluster = FakeCluster(topics={TOPIC: partitions, "audit": 1},
                          subscriptions={SUB: TOPIC, "audit-sub": "audit"}, sender_owner=NODE, **cluster_args)
    registration = FakeRegistration()
    dispatcher = Dispatcher(cluster, Config(sender_max_outstanding=sender_max_outstanding), NODE,
                            lambda: registration, storage=storage)
    return dispatcher, storage, cluster


class SubscriptionFixture:
    """One SubscriptionDispatcher with its collaborators."""

    def __init__(self, ack_deadline_ms: int = 10_000, budget: int = 100):
        self.storage = FakeDispatchStorage()
        self.budget = Budget(budget)
        self.room_freed = 0
        subscription = pubsub_pb2.Subscription(name=SUB, topic=TOPIC)
        subscription.ack_deadline.FromMilliseconds(ack_deadline_ms)
        acks = Coalescer(lambda shard, ids: self.storage.acknowledge(*shard, "", ids))
        given_back = Coalescer(lambda shard, ids: self.storage.modify_ack_deadline(*shard, "", ids, 0))
        self.sub = SubscriptionDispatcher(subscription, self.storage, self.budget, acks, lambda partition=None: True,
                                          self._freed, given_back)

    def _freed(self) -> None:
        self.room_freed += 1

    async def hand_out(self, *ack_ids: str) -> None:
        await self.sub.hand_out([received(a).SerializeToString() for a in ack_ids], list(ack_ids))


def queued(stream: Stream) -> list[str]:
    """The ack ids of the batches queued to a stream."""
    ids = []
    while not stream.queue.empty():
        ids += [pubsub_pb2.ReceivedMessage.FromString(raw).ack_id for raw in stream.queue.get_nowait()]
    return ids


# -- acks, nacks and deadlines: one storage call per partition ----------------------------


async def test_acks_go_to_storage_grouped_by_partition():
    dispatcher, storage, _ = make_dispatcher()
    await dispatcher.acknowledge(SUB, [ack_id(0, 1), ack_id(1, 2), ack_id(0, 3)])
    assert sorted(storage.acks) == [(TOPIC, 0, "", [ack_id(0, 1), ack_id(0, 3)]), (TOPIC, 1, "", [ack_id(1, 2)])]
    await dispatcher.close()


async def test_acks_of_several_subscriptions_are_split_by_the_subscription_each_names():
    dispatcher, storage, _ = make_dispatcher()
    await dispatcher.acknowledge("", [ack_id(1, 1), ack_id(0, 7, "audit-sub"), ack_id(1, 2),
                                      ack_id(0, 9, "deleted-sub")])  # of a subscription gone: dropped
    assert sorted(storage.acks) == [("audit", 0, "", [ack_id(0, 7, "audit-sub")]),
                                    (TOPIC, 1, "", [ack_id(1, 1), ack_id(1, 2)])]
    with pytest.raises(errors.InvalidArgument):
        await dispatcher.acknowledge("", ["not-an-ack-id"])
    await dispatcher.close()


async def test_merged_acks_of_a_subscription_with_no_stream_here_keep_no_state_for_it():
    # A unary pull's messages are acked through their owner like any: the sender kept a
    # dispatcher for each subscription so acked, for good.
    dispatcher, storage, _ = make_dispatcher()
    await dispatcher.acknowledge("", [ack_id(0, 7, "audit-sub"), ack_id(1, 1)])
    assert sorted(storage.acks) == [("audit", 0, "", [ack_id(0, 7, "audit-sub")]), (TOPIC, 1, "", [ack_id(1, 1)])]
    assert dispatcher.subscriptions == {}
    await dispatcher.close()


async def test_a_topic_is_served_for_its_own_subscriptions_with_streams_only():
    dispatcher, _, cluster = make_dispatcher()
    stream, audit_stream = Stream(10), Stream(10)
    sub = await dispatcher.connect(SUB, stream)
    audit = await dispatcher.connect("audit-sub", audit_stream)
    assert dispatcher.serving(TOPIC) == [sub] and dispatcher.serving("audit") == [audit]
    await dispatcher.disconnect(SUB, sub, stream)
    assert dispatcher.serving(TOPIC) == []
    cluster.add_subscription("audit-sub", TOPIC)  # deleted and made anew on another topic
    moved = await dispatcher.connect("audit-sub", Stream(10))
    assert dispatcher.serving(TOPIC) == [moved] and dispatcher.serving("audit") == []
    await dispatcher.close()


async def test_nacks_go_to_storage_grouped_by_partition_with_their_delay():
    dispatcher, storage, _ = make_dispatcher(partitions=3)
    request = pubsub_pb2.NackRequest(subscription=SUB, ack_ids=[ack_id(2, 1), ack_id(0, 1), ack_id(2, 5)])
    request.delay.FromSeconds(2)
    await dispatcher.nack(request)
    assert sorted(storage.nacks) == [(TOPIC, 0, SUB, [ack_id(0, 1)], 2000, False),
                                     (TOPIC, 2, SUB, [ack_id(2, 1), ack_id(2, 5)], 2000, False)]
    await dispatcher.close()


async def test_a_deferred_nack_reaches_storage_as_one():
    """The notification pipeline's rate-limit delay: storage counts no attempt for it."""
    f = SubscriptionFixture()
    request = pubsub_pb2.NackRequest(subscription=SUB, ack_ids=[ack_id(1, 4)])
    request.delay.FromSeconds(30)
    await f.sub.nack(request, deferred=True)
    await f.sub.nack(pubsub_pb2.NackRequest(subscription=SUB, ack_ids=[ack_id(1, 5)]))
    assert f.storage.nacks == [(TOPIC, 1, SUB, [ack_id(1, 4)], 30_000, True),
                               (TOPIC, 1, SUB, [ack_id(1, 5)], None, False)]


async def test_deadline_changes_go_to_storage_grouped_by_partition():
    dispatcher, storage, _ = make_dispatcher()
    await dispatcher.modify_ack_deadline(SUB, [ack_id(1, 4), ack_id(0, 4)], 30_000)
    assert sorted(storage.deadlines) == [(TOPIC, 0, SUB, [ack_id(0, 4)], 30_000),
                                         (TOPIC, 1, SUB, [ack_id(1, 4)], 30_000)]
    await dispatcher.close()


# -- room: per stream and per sender -------------------------------------------------------

MERGED = ""  # messages given back go to storage merged by shard: the ack ids name their subscription


async def test_handing_out_fills_streams_with_room_and_hands_back_the_rest():
    f = SubscriptionFixture()
    one, two, three = Stream(2), Stream(2), Stream(1)
    for stream in (one, two, three):
        f.sub.add(stream)
    await f.hand_out(ack_id(0, 1), ack_id(0, 2), ack_id(1, 3), ack_id(1, 4))
    assert (queued(one), queued(two), queued(three)) == ([ack_id(0, 1), ack_id(0, 2)], [ack_id(1, 3), ack_id(1, 4)], [])
    assert f.budget.used == 4 and f.sub.room() == 1
    await f.hand_out(ack_id(0, 5), ack_id(0, 6), ack_id(1, 7))  # room for one: the rest goes back at once
    assert queued(three) == [ack_id(0, 5)]
    assert sorted(f.storage.deadlines) == [(TOPIC, 0, MERGED, [ack_id(0, 6)], 0), (TOPIC, 1, MERGED, [ack_id(1, 7)], 0)]
    assert f.budget.used == 5 and f.sub.room() == 0


async def test_competing_streams_take_turns():
    f = SubscriptionFixture()
    one, two = Stream(10), Stream(10)
    f.sub.add(one)
    f.sub.add(two)
    for seq in range(4):
        await f.hand_out(ack_id(0, seq))
    assert queued(one) == [ack_id(0, 0), ack_id(0, 2)]
    assert queued(two) == [ack_id(0, 1), ack_id(0, 3)]


async def test_acks_nacks_and_zero_deadlines_free_room_and_budget():
    f = SubscriptionFixture()
    stream = Stream(4)
    f.sub.add(stream)
    await f.hand_out(*(ack_id(0, seq) for seq in range(4)))
    assert (stream.room(), f.budget.used) == (0, 4)
    freed = f.room_freed
    await f.sub.acknowledge([ack_id(0, 0)])
    await f.sub.nack(pubsub_pb2.NackRequest(subscription=SUB, ack_ids=[ack_id(0, 1)]))
    await f.sub.modify_ack_deadline([ack_id(0, 2)], 0)
    await f.sub.modify_ack_deadline([ack_id(0, 3)], 60_000)  # extended: still out
    assert (stream.room(), f.budget.used) == (3, 1)
    assert stream.outstanding == {ack_id(0, 3)}
    assert f.room_freed == freed + 3  # each woke the pulls
    await f.sub.acknowledge([ack_id(0, 0)])  # again: nothing more to free
    assert f.budget.used == 1


async def test_messages_past_their_ack_deadline_free_their_room():
    f = SubscriptionFixture(ack_deadline_ms=20)
    stream = Stream(2)
    f.sub.add(stream)
    await f.hand_out(ack_id(0, 1), ack_id(0, 2))
    assert f.sub.expire() is not None and stream.room() == 0
    await asyncio.sleep(0.03)
    assert f.sub.expire() is None
    assert (stream.room(), f.budget.used) == (2, 0)


async def test_a_redelivery_still_counted_is_counted_once():
    f = SubscriptionFixture()
    stream = Stream(5)
    f.sub.add(stream)
    await f.hand_out(ack_id(0, 1))
    await f.hand_out(ack_id(0, 1))
    assert (stream.room(), f.budget.used) == (4, 1)


async def test_a_removed_stream_hands_its_unacked_messages_back_for_redelivery_now():
    f = SubscriptionFixture()
    leaving, staying = Stream(3), Stream(3)
    f.sub.add(leaving)
    f.sub.add(staying)
    await f.hand_out(ack_id(0, 1), ack_id(1, 2), ack_id(0, 3), ack_id(1, 4))  # 3 to leaving, 1 to staying
    assert queued(leaving) == [ack_id(0, 1), ack_id(1, 2), ack_id(0, 3)]
    await f.sub.acknowledge([ack_id(1, 2)])
    await f.sub.remove(leaving)
    # (a stream's outstanding ids are a set: their order is not kept)
    assert [(t, p, s, sorted(ids), ms) for t, p, s, ids, ms in f.storage.deadlines] == [
        (TOPIC, 0, MERGED, [ack_id(0, 1), ack_id(0, 3)], 0)]
    assert f.sub.streams == [staying] and leaving.outstanding == set()
    assert staying.outstanding == {ack_id(1, 4)} and f.budget.used == 1
    assert not f.sub.idle()
    await f.sub.remove(staying)
    assert f.sub.idle() and f.budget.used == 0


# -- the whole path: subscribe, pull, deliver, ack, go away -------------------------------


async def test_a_subscriber_gets_what_the_long_polls_of_every_partition_pull():
    dispatcher, storage, _ = make_dispatcher(partitions=2)
    frames = subscribed(dispatcher, SUB, 3)
    first = asyncio.ensure_future(anext(frames))
    await eventually(lambda: {p.partition for p in storage.pulls} == {0, 1})  # one long poll per shard
    for pull in storage.pulls:
        assert pull.topic == TOPIC
        [asked] = pull.subscriptions
        assert (asked.name, asked.ack_deadline_ms) == (SUB, 10_000)
        assert asked.max_messages == 0 and pull.wait_ms > 0  # waits for messages, holding no room
    assert sum(p.subscriptions[0].max_messages for p in storage.pulls) <= 3  # no more than the stream's room

    storage.respond_ready(0, SUB)  # partition 0 has messages: they are leased at once
    await eventually(lambda: len(storage.waiting(0)) == 2)
    lease = storage.waiting(0)[1]
    assert lease.wait_ms == 0 and 1 <= lease.subscriptions[0].max_messages <= 3
    storage.respond(0, SUB, [received(ack_id(0, 1))])
    frame = await asyncio.wait_for(first, 1)
    assert [pubsub_pb2.ReceivedMessage.FromString(raw).ack_id for raw in frame.received_messages] == [ack_id(0, 1)]
    await dispatcher.acknowledge(SUB, [ack_id(0, 1)])
    assert storage.acks == [(TOPIC, 0, "", [ack_id(0, 1)])]
    assert dispatcher.budget.used == 0

    storage.respond_ready(1, SUB)
    await eventually(lambda: len(storage.waiting(1)) == 2)
    storage.respond(1, SUB, [received(ack_id(1, 1))])
    await asyncio.wait_for(anext(frames), 1)
    assert dispatcher.budget.used == 1
    await frames.aclose()  # the subscriber goes away with one unacked: it goes back now
    assert storage.deadlines == [(TOPIC, 1, MERGED, [ack_id(1, 1)], 0)]
    assert dispatcher.budget.used == 0
    assert SUB not in dispatcher.subscriptions  # nothing connected, nothing in flight: no state kept
    await dispatcher.close()


@pytest.mark.parametrize("stream_room, sender_room", [(2, 100), (10, 2)], ids=["stream", "sender"])
async def test_a_pull_asks_no_more_than_the_room_of_the_stream_and_of_the_sender(stream_room, sender_room):
    dispatcher, storage, _ = make_dispatcher(partitions=1, sender_max_outstanding=sender_room)
    frames = subscribed(dispatcher, SUB, stream_room)
    frame = asyncio.ensure_future(anext(frames))
    await eventually(lambda: storage.pulls)
    storage.respond_ready(0, SUB)  # answers the wait: leased next
    await eventually(lambda: len(storage.pulls) == 2)
    assert storage.pulls[1].subscriptions[0].max_messages == 2
    storage.respond(0, SUB, [received(ack_id(0, 1)), received(ack_id(0, 2))], ready=True)
    await asyncio.wait_for(frame, 1)
    await settle()
    assert len(storage.pulls) == 2  # no room: no pull
    await dispatcher.acknowledge(SUB, [ack_id(0, 1)])
    await eventually(lambda: len(storage.pulls) == 3)  # room freed wakes the pull
    assert storage.pulls[2].subscriptions[0].max_messages == 1
    await frames.aclose()
    await dispatcher.close()


async def test_only_the_owner_with_a_live_lease_serves_a_subscription():
    dispatcher, _, cluster = make_dispatcher()
    cluster.owners[SUB] = "sender-2"
    with pytest.raises(errors.Unavailable, match="sender-2"):
        await anext(subscribed(dispatcher, SUB, 0))

    dispatcher, _, _ = make_dispatcher()
    dispatcher._registration_of = lambda: FakeRegistration(valid_for_s=-1)
    with pytest.raises(errors.Unavailable):
        await anext(subscribed(dispatcher, SUB, 0))


async def test_close_ends_the_streams_and_hands_their_messages_back():
    dispatcher, storage, _ = make_dispatcher(partitions=1)
    frames = subscribed(dispatcher, SUB, 5)
    frame = asyncio.ensure_future(anext(frames))
    await eventually(lambda: storage.pulls)
    storage.respond_ready(0, SUB)
    await eventually(lambda: len(storage.pulls) == 2)
    storage.respond(0, SUB, [received(ack_id(0, 1))])
    await asyncio.wait_for(frame, 1)
    await asyncio.wait_for(dispatcher.close(), 1)
    assert storage.deadlines == [(TOPIC, 0, MERGED, [ack_id(0, 1)], 0)]
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(frames), 1)
    with pytest.raises(errors.Unavailable):
        await anext(subscribed(dispatcher, SUB, 0))


# -- expiry: deadlines in any order ---------------------------------------------------------


async def test_an_extended_deadline_does_not_hold_up_the_expiry_of_shorter_ones():
    f = SubscriptionFixture(ack_deadline_ms=10_000)
    stream = Stream(2)
    f.sub.add(stream)
    await f.hand_out(ack_id(0, 1), ack_id(0, 2))
    await f.sub.modify_ack_deadline([ack_id(0, 1)], 60_000)  # extended: due last
    await f.sub.modify_ack_deadline([ack_id(0, 2)], 20)  # shortened: due first
    await asyncio.sleep(0.03)
    next_due = f.sub.expire()
    assert stream.outstanding == {ack_id(0, 1)} and f.budget.used == 1  # the shorter one's room is free
    assert next_due is not None and next_due - time.monotonic() > 50  # the 60 s one is next


async def test_repeated_extensions_keep_the_expiry_queue_bounded():
    f = SubscriptionFixture(ack_deadline_ms=10_000)
    stream = Stream(10)
    f.sub.add(stream)
    await f.hand_out(*(ack_id(0, seq) for seq in range(10)))
    for _ in range(1000):  # a client extending its leases again and again
        await f.sub.modify_ack_deadline([ack_id(0, 0), ack_id(0, 1)], 30_000)
    await f.sub.acknowledge([ack_id(0, seq) for seq in range(2, 10)])
    for seq in range(10, 1000):  # and messages acknowledged long before their deadline
        await f.hand_out(ack_id(0, seq))
        await f.sub.acknowledge([ack_id(0, seq)])
    assert len(f.sub._expiry) <= 2 * len(stream.outstanding) + 64  # the bound the dispatcher states
    assert stream.outstanding == {ack_id(0, 0), ack_id(0, 1)}
    assert f.sub.expire() is not None and f.budget.used == 2


# -- room below the partition count: no wait holds it -----------------------------------


async def test_a_stream_with_less_room_than_partitions_gets_the_messages_of_whichever_partition_has_them():
    dispatcher, storage, _ = make_dispatcher(partitions=8)
    frames = subscribed(dispatcher, SUB, 1)
    frame = asyncio.ensure_future(anext(frames))
    await eventually(lambda: {p.partition for p in storage.pulls} == set(range(8)))
    assert all(p.subscriptions[0].max_messages == 0 for p in storage.pulls)  # every shard waits, none holds the room
    for partition in (5, 2):
        storage.respond_ready(partition, SUB)
        await eventually(lambda: len(storage.waiting(partition)) == 2)
        lease = storage.waiting(partition)[1]
        assert (lease.wait_ms, lease.subscriptions[0].max_messages) == (0, 1)
        storage.respond(partition, SUB, [received(ack_id(partition, 1))])
        got = await asyncio.wait_for(frame, 1)
        assert [pubsub_pb2.ReceivedMessage.FromString(raw).ack_id for raw in got.received_messages] == [
            ack_id(partition, 1)]
        await dispatcher.acknowledge(SUB, [ack_id(partition, 1)])
        frame = asyncio.ensure_future(anext(frames))
    frame.cancel()
    await frames.aclose()
    await dispatcher.close()


async def test_room_freed_cuts_short_a_wait_of_the_shard_that_holds_up_a_subscription_with_messages():
    dispatcher, storage, cluster = make_dispatcher(partitions=1)
    cluster.add_subscription("other-sub", TOPIC)
    frames, others = subscribed(dispatcher, SUB, 1), subscribed(dispatcher, "other-sub", 1)
    frame, other = asyncio.ensure_future(anext(frames)), asyncio.ensure_future(anext(others))
    await eventually(lambda: storage.pulls and len(storage.pulls[-1].subscriptions) == 2)
    storage.respond_ready(0, SUB)
    await eventually(lambda: any(s.max_messages for p in storage.pulls for s in p.subscriptions))
    storage.respond(0, SUB, [received(ack_id(0, 1))], ready=True)  # more waiting, but no room now
    await asyncio.wait_for(frame, 1)
    await eventually(lambda: [s.name for s in storage.pulls[-1].subscriptions] == ["other-sub"])
    waits = len(storage.pulls)
    await dispatcher.acknowledge(SUB, [ack_id(0, 1)])  # room: the wait for other-sub must not hold it up
    await eventually(lambda: len(storage.pulls) > waits)
    lease = storage.pulls[waits]
    assert lease.wait_ms == 0 and {s.name: s.max_messages for s in lease.subscriptions} == {SUB: 1, "other-sub": 0}
    other.cancel()
    await asyncio.gather(other, return_exceptions=True)
    await frames.aclose()
    await dispatcher.close()


async def watch_under_way(storage: FakeDispatchStorage, names: set[str], after: int = 0) -> int:
    """Waits until a pull after the first `after` watches exactly names; returns how
    many pulls came."""
    await eventually(lambda: len(storage.pulls) > after and storage.pulls[-1].wait_ms > 0
                     and {s.name for s in storage.pulls[-1].subscriptions} == names, timeout_s=5)
    return len(storage.pulls)


async def test_subscribers_attaching_one_by_one_share_the_cuts_of_the_watch():
    # Each cut sends every watched subscription again: one per newcomer made attaching
    # 7,000 streams quadratic (bench fanout_streams).
    dispatcher, storage, cluster = make_dispatcher(partitions=1)
    names = [f"sub-{i}" for i in range(1000)]
    for name in names:
        cluster.add_subscription(name, TOPIC)
    frames = []
    for name in names:
        frames.append(asyncio.ensure_future(anext(subscribed(dispatcher, name, 1))))
        await settle(2)
    pulls = await watch_under_way(storage, set(names))
    assert pulls < len(names) / 10, f"{pulls} pulls for {len(names)} subscribers attaching"
    for frame in frames:
        frame.cancel()
    await dispatcher.close()


async def test_a_new_leader_of_the_shard_cuts_the_watch_short():
    dispatcher, storage, cluster = make_dispatcher(partitions=1)
    frames = subscribed(dispatcher, SUB, 1)
    frame = asyncio.ensure_future(anext(frames))
    pulls = await watch_under_way(storage, {SUB})
    cluster.new_leader(shard_name(TOPIC, 0))
    assert await watch_under_way(storage, {SUB}, after=pulls) == pulls + 1  # asked again, of the new leader
    frame.cancel()
    await dispatcher.close()


async def test_deleting_a_subscription_ends_its_streams_at_once():
    dispatcher, storage, cluster = make_dispatcher(partitions=1)
    frames = subscribed(dispatcher, SUB, 1)
    frame = asyncio.ensure_future(anext(frames))
    await watch_under_way(storage, {SUB})
    del cluster.subscriptions.items[SUB]
    dispatcher.record_changed(SUB)
    with pytest.raises(errors.NotFound):
        await asyncio.wait_for(frame, 1)
    await dispatcher.close()


class AboutToLease(NamedTuple):
    dispatcher: Dispatcher
    storage: FakeDispatchStorage
    names: list[str]
    frames: list[asyncio.Future]  # each subscriber's next frame
    leased: storage_pb2.PullResponse  # one message for each: the answer to the lease pull under way


async def about_to_lease_one_each(count: int, more: bool = False) -> AboutToLease:
    """count subscriptions of one shard with a subscriber each (room for one), told
    ready by storage, and the sender's lease pull for all of them under way."""
    dispatcher, storage, cluster = make_dispatcher(partitions=1)
    names = [f"sub-{i}" for i in range(count)]
    for name in names:
        cluster.add_subscription(name, TOPIC)
    frames = [asyncio.ensure_future(anext(subscribed(dispatcher, name, 1))) for name in names]
    pulls = await watch_under_way(storage, set(names))
    ready = storage_pb2.PullResponse()
    for name in names:
        ready.subscriptions.add(name=name, ready=True)
    storage.answer(0, ready)
    await eventually(lambda: len(storage.pulls) > pulls and storage.pulls[-1].wait_ms == 0)
    leased = storage_pb2.PullResponse()
    for name in names:
        message = received(ack_id(0, 1, name))
        leased.subscriptions.add(name=name, received_messages=[message.SerializeToString()],
                                 ack_ids=[message.ack_id], ready=more)
    return AboutToLease(dispatcher, storage, names, frames, leased)


async def test_handing_out_to_thousands_of_subscriptions_lets_the_loop_run_between_slices():
    # A message handed to 45,000 subscriptions in one go held the loop for seconds:
    # the member lease's keep-alive starved and every stream ended.
    dispatcher, storage, names, frames, leased = await about_to_lease_one_each(1_200)
    seen = set()

    async def watch_progress():
        while True:
            seen.add(sum(bool(dispatcher.subscriptions[name].streams[0].outstanding) for name in names))
            await asyncio.sleep(0)

    progress = asyncio.ensure_future(watch_progress())
    storage.answer(0, leased)
    await asyncio.wait_for(asyncio.gather(*frames), 5)
    progress.cancel()
    assert any(0 < count < len(names) for count in seen), f"handed out all at once: {sorted(seen)}"
    await dispatcher.close()


async def test_acks_arriving_one_by_one_share_the_plans_of_a_shard_with_many_subscriptions():
    # Each ack frees room and wakes the shard's puller, whose plan looks at every
    # subscription of the topic: planning again at each of 45,000 acks kept the
    # sender at a full core for minutes after one message (bench fanout_streams).
    # One message each, and more waiting: each ack makes room for a lease.
    dispatcher, storage, names, frames, leased = await about_to_lease_one_each(3_000, more=True)
    storage.answer(0, leased)
    await asyncio.wait_for(asyncio.gather(*frames), 5)

    async def answer_leases():  # storage has nothing more after all
        answered = len(storage.pulls)
        while True:
            await storage.pull_arrived.wait()
            storage.pull_arrived.clear()
            for pull in storage.pulls[answered:]:
                if pull.wait_ms == 0:
                    storage.answer(0, storage_pb2.PullResponse())
            answered = len(storage.pulls)

    answering = asyncio.ensure_future(answer_leases())
    before = len(storage.pulls)
    for name in names:
        await dispatcher.acknowledge(name, [ack_id(0, 1, name)])
        await asyncio.sleep(0)
    await settle(50)
    plans = len(storage.pulls) - before
    answering.cancel()
    assert plans < len(names) / 20, f"{plans} pulls for {len(names)} acks"
    await dispatcher.close()


async def test_streams_of_many_subscriptions_gone_at_once_give_their_messages_back_in_few_calls():
    """Mass disconnect: 25,000 streams closing at once made a nack call each (14,292 of
    them timed out); now one per shard at a time, merged (subscription "")."""
    storage, budget = FakeDispatchStorage(), Budget(1000)
    acks = Coalescer(lambda shard, ids: storage.acknowledge(*shard, "", ids))
    given_back = Coalescer(lambda shard, ids: storage.modify_ack_deadline(*shard, "", ids, 0))
    subs, streams = [], []
    for i in range(100):
        sub = SubscriptionDispatcher(pubsub_pb2.Subscription(name=f"s{i}", topic=TOPIC), storage, budget, acks,
                                     lambda partition=None: True, lambda: None, given_back)
        stream = Stream(1)
        sub.add(stream)
        await sub.hand_out([received(ack_id(0, 1, f"s{i}")).SerializeToString()], [ack_id(0, 1, f"s{i}")])
        subs.append(sub)
        streams.append(stream)
    await asyncio.gather(*(sub.remove(stream) for sub, stream in zip(subs, streams)))
    assert len(storage.deadlines) <= 2 and budget.used == 0
    assert {(t, p, s, ms) for t, p, s, _, ms in storage.deadlines} == {(TOPIC, 0, "", 0)}
    assert sorted(a for *_, ids, _ in storage.deadlines for a in ids) == sorted(ack_id(0, 1, f"s{i}")
                                                                                for i in range(100))
