"""A unary pull on the sender (sender/unary_pull.py, Dispatcher.pull): partitions
asked in turn for no more than the pull has room for, a wait on all of them when
none has a message, driven with a fake storage client."""

import asyncio

import pytest

from fakes import FakeDispatchStorage, FakeRegistration, eventually, received, settle, subscribed
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.contracts import AckId
from sender.unary_pull import STORAGE_WAIT_MS, UnaryPull
from test_dispatcher import NODE, SUB, TOPIC, make_dispatcher


def ack_id(partition: int, seq: int) -> str:
    return AckId(partition, seq, SUB).encode()


def ack_ids(raws: list[bytes]) -> list[str]:
    return [pubsub_pb2.ReceivedMessage.FromString(raw).ack_id for raw in raws]


def asked(pull: storage_pb2.PullRequest) -> tuple[int, int, int]:
    """(partition, max_messages, wait_ms) of a storage pull of SUB."""
    [sub] = pull.subscriptions
    assert sub.name == SUB and pull.topic == TOPIC and not pull.sender_addr
    return pull.partition, sub.max_messages, pull.wait_ms


async def test_one_partition_leases_with_the_wait_as_its_long_poll():
    storage = FakeDispatchStorage()
    pull = asyncio.ensure_future(UnaryPull(storage, TOPIC, 1).run(SUB, 5, 10_000, 2_000))
    await eventually(lambda: storage.pulls)
    partition, max_messages, wait_ms = asked(storage.pulls[0])
    assert (partition, max_messages) == (0, 5) and 1_900 < wait_ms <= 2_000
    assert storage.pulls[0].subscriptions[0].ack_deadline_ms == 10_000
    storage.respond(0, SUB, [received(ack_id(0, 1)), received(ack_id(0, 2))])
    assert ack_ids(await asyncio.wait_for(pull, 1)) == [ack_id(0, 1), ack_id(0, 2)]
    assert len(storage.pulls) == 1  # returns at once with what it got


async def test_partitions_are_asked_in_turn_for_what_is_still_wanted():
    storage = FakeDispatchStorage()
    pull = asyncio.ensure_future(UnaryPull(storage, TOPIC, 3, first=1).run(SUB, 3, 10_000, 5_000))
    await eventually(lambda: storage.pulls)
    assert asked(storage.pulls[0]) == (1, 3, 0)  # the first partition asked rotates; no wait while leasing
    storage.respond(1, SUB, [received(ack_id(1, 1)), received(ack_id(1, 2))])
    await eventually(lambda: len(storage.pulls) == 2)
    assert asked(storage.pulls[1]) == (2, 1, 0)  # only the room left: never more than max_messages in all
    storage.respond(2, SUB, [received(ack_id(2, 1))])
    assert ack_ids(await asyncio.wait_for(pull, 1)) == [ack_id(1, 1), ack_id(1, 2), ack_id(2, 1)]
    await settle()
    assert len(storage.pulls) == 2  # full: partition 0 is not asked


async def test_with_nothing_ready_it_waits_on_every_partition_and_leases_from_the_first_ready():
    storage = FakeDispatchStorage()
    unary = UnaryPull(storage, TOPIC, 3)
    pull = asyncio.ensure_future(unary.run(SUB, 10, 10_000, 5_000))
    for partition in range(3):
        await eventually(lambda: len(storage.pulls) == partition + 1)
        storage.respond(partition, SUB, [])
    await eventually(lambda: len(storage.pulls) == 6)
    watches = [asked(p) for p in storage.pulls[3:]]
    assert sorted(w[:2] for w in watches) == [(0, 0), (1, 0), (2, 0)]  # max 0: they lease nothing
    assert all(0 < w[2] <= 5_000 for w in watches)
    storage.respond_ready(2, SUB)
    await eventually(lambda: len(storage.pulls) == 7)  # the lease round again
    storage.respond(0, SUB, [])
    await eventually(lambda: len(storage.pulls) == 8)
    storage.respond(1, SUB, [])
    await eventually(lambda: len(storage.pulls) == 9)
    assert asked(storage.pulls[8]) == (2, 10, 0)
    storage.respond(2, SUB, [received(ack_id(2, 7))])
    assert ack_ids(await asyncio.wait_for(pull, 1)) == [ack_id(2, 7)]
    assert all(stream.closed for stream in unary._streams.values())  # the watches' streams too


async def test_with_nothing_ready_and_no_wait_it_returns_at_once():
    storage = FakeDispatchStorage()
    for partition in range(2):
        storage.respond(partition, SUB, [])
    assert await asyncio.wait_for(UnaryPull(storage, TOPIC, 2).run(SUB, 10, 10_000, 0), 1) == []
    assert [asked(p) for p in storage.pulls] == [(0, 10, 0), (1, 10, 0)]


async def test_a_long_wait_is_a_series_of_storage_waits():
    storage = FakeDispatchStorage()
    pull = asyncio.ensure_future(UnaryPull(storage, TOPIC, 1).run(SUB, 1, 10_000, 25_000))
    await eventually(lambda: storage.pulls)
    assert asked(storage.pulls[0])[2] == STORAGE_WAIT_MS
    storage.respond(0, SUB, [])  # the storage wait ran out; the pull's did not
    await eventually(lambda: len(storage.pulls) == 2)
    assert 0 < asked(storage.pulls[1])[2] <= STORAGE_WAIT_MS
    pull.cancel()


async def test_a_deleted_subscription_is_not_found():
    storage = FakeDispatchStorage()
    response = storage_pb2.PullResponse()
    response.subscriptions.add(name=SUB, not_found=True)
    storage._queue(0).put_nowait(response)
    with pytest.raises(errors.NotFound):
        await UnaryPull(storage, TOPIC, 1).run(SUB, 1, 10_000, 0)


class FailingPartitions(FakeDispatchStorage):
    """Storage whose leaders of some partitions are away."""

    def __init__(self, away: set[int]):
        super().__init__()
        self.away = away

    async def pull(self, stream, request):
        if request.partition in self.away:
            raise errors.Unavailable(f"partition {request.partition} of topic {TOPIC!r} has no leader at the moment")
        return await super().pull(stream, request)


async def test_a_partition_without_its_leader_does_not_keep_the_others_messages_back():
    storage = FailingPartitions({0})
    storage.respond(1, SUB, [received(ack_id(1, 1))])
    assert ack_ids(await asyncio.wait_for(UnaryPull(storage, TOPIC, 2).run(SUB, 5, 10_000, 0), 1)) == [ack_id(1, 1)]


async def test_when_every_partition_fails_the_pull_fails():
    with pytest.raises(errors.Unavailable, match="no leader"):
        await UnaryPull(FailingPartitions({0, 1}), TOPIC, 2).run(SUB, 5, 10_000, 1_000)


# -- on the dispatcher -----------------------------------------------------------------------


async def test_the_dispatcher_pulls_with_the_subscriptions_ack_deadline_only_where_it_owns_it():
    dispatcher, storage, cluster = make_dispatcher(partitions=1)
    cluster.subscriptions.items[SUB].ack_deadline.FromSeconds(42)
    pull = asyncio.ensure_future(dispatcher.pull(SUB, 3, 0))
    await eventually(lambda: storage.pulls)
    assert storage.pulls[0].subscriptions[0].ack_deadline_ms == 42_000
    storage.respond(0, SUB, [received(ack_id(0, 1))])
    assert ack_ids(await asyncio.wait_for(pull, 1)) == [ack_id(0, 1)]
    assert dispatcher.budget.used == 0 and SUB not in dispatcher.subscriptions  # no stream's room taken

    cluster.owners[SUB] = "sender-2"
    dispatcher.release_unowned()  # what a ring change does
    with pytest.raises(errors.Unavailable, match="sender-2"):
        await dispatcher.pull(SUB, 3, 0)
    dispatcher._registration_of = lambda: FakeRegistration(valid_for_s=-1)
    cluster.owners[SUB] = NODE
    dispatcher.release_unowned()
    with pytest.raises(errors.Unavailable):
        await dispatcher.pull(SUB, 3, 0)
    await dispatcher.close()


async def test_streams_take_an_updated_ack_deadline_from_their_next_pull():
    dispatcher, storage, cluster = make_dispatcher(partitions=1)
    frames = subscribed(dispatcher, SUB, 5)
    frame = asyncio.ensure_future(anext(frames))
    await eventually(lambda: storage.pulls)
    assert storage.pulls[0].subscriptions[0].ack_deadline_ms == 10_000
    updated = pubsub_pb2.Subscription()
    updated.CopyFrom(cluster.subscriptions.items[SUB])
    updated.ack_deadline.FromSeconds(30)
    cluster.subscriptions.items[SUB] = updated  # as the mirror does: a new record
    dispatcher.record_changed(SUB)
    storage.respond_ready(0, SUB)
    await eventually(lambda: len(storage.pulls) == 2)
    assert storage.pulls[1].subscriptions[0].ack_deadline_ms == 30_000
    storage.respond(0, SUB, [received(ack_id(0, 1))])
    await asyncio.wait_for(frame, 1)
    await frames.aclose()
    await dispatcher.close()
