"""Describe's numbers: what a subscription owes on a shard, read off its delivery
state and a few entries (storage/stats.py, on a fake log and on the engine over
RocksDB), summed per subscription and topic by the frontend (frontend/stats.py,
through the Gateway with fakes), and the streams a sender counts."""

import asyncio

import pytest
from fakes import FakeCluster, FakeGatewayStorage, FakeSenders, FakeMetadata, eventually, subscribed

from frontend.gateway import Gateway
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms, timestamp
from notifymesh.server.config import Config
from sender.dispatch import Stream
from storage.delivery import DeliveryPolicy, Lease, SubscriptionState
from storage.log import Entries
from storage.stats import RATE_WINDOW_S, EntryInfo, RateWindow, markers_between, of_subscription
from test_dispatcher import SUB, make_dispatcher
from test_storage_engine import append, messages, pull

# -- the ring of per-second counts ----------------------------------------------------------


def test_the_rate_window_counts_the_last_minute_only():
    window = RateWindow()
    start = 1_700_000_000_000
    window.add(5, start)
    window.add(2, start + 999)  # the same second
    window.add(3, start + 30_000)
    assert window.total(start + 30_000) == 10
    assert window.total(start + (RATE_WINDOW_S - 1) * 1000) == 10
    assert window.total(start + RATE_WINDOW_S * 1000) == 3  # the first second fell out
    window.add(1, start + 10_000)  # the clock stepped back: counted now, not lost
    assert window.total(start + RATE_WINDOW_S * 1000) == 4
    assert window.total(start + 10 * RATE_WINDOW_S * 1000) == 0  # a long pause clears it all
    assert len(window.counts) == RATE_WINDOW_S


# -- markers, by bisection over the entries' epochs ------------------------------------------


class FakeLog:
    """Entries by seq: each epoch starts with a marker; counts the reads."""

    def __init__(self, epoch_lengths: list[int]):
        self.entries: list[EntryInfo] = []
        for epoch, length in enumerate(epoch_lengths, 1):
            self.entries.append(EntryInfo(epoch, False, 0))
            self.entries += [EntryInfo(epoch, True, 1000 * epoch) for _ in range(length - 1)]
        self.reads = 0

    def entry(self, seq: int) -> EntryInfo | None:
        self.reads += 1
        return self.entries[seq] if 0 <= seq < len(self.entries) else None


def test_markers_are_counted_exactly_in_every_range():
    log = FakeLog([3, 1, 1, 4, 2])  # markers at 0, 3, 4, 5, 9
    for start in range(len(log.entries)):
        for stop in range(start, len(log.entries) + 1):
            expected = sum(not e.is_message for e in log.entries[start:stop])
            assert markers_between(log.entry, start, stop) == expected, (start, stop)


def test_markers_cost_a_few_reads_per_leader_change_not_a_scan():
    log = FakeLog([400_000, 300_000, 300_000])  # a million entries, two leader changes among them
    assert markers_between(log.entry, 0, len(log.entries)) == 3
    assert log.reads <= 3 + 2 * (20 + 2)  # log2(1,000,000) bisection steps per change, and its two ends
    log.reads = 0
    assert markers_between(log.entry, 5, 399_000) == 0
    assert log.reads == 2  # no leader change in the range: the two ends


# -- one subscription on one shard, from its delivery state ----------------------------------


def test_numbers_of_a_subscription_from_its_cursor_leases_and_dead_letters():
    log = FakeLog([10, 10])  # seqs 0-9 epoch 1, 10-19 epoch 2; markers at 0 and 10; commit 20
    now = 60_000
    state = SubscriptionState("audit", cursor=8, policy=DeliveryPolicy(min_backoff_ms=5_000, max_backoff_ms=5_000))
    state.lease(3, Lease(now + 1_000 + 5_000, 1, now - 9_000))   # delivered, ack deadline in 1 s: in flight
    state.lease(4, Lease(now - 1, 2, now - 20_000))               # due for redelivery
    state.lease(5, Lease(now + 3_000, 1, now - 9_000))            # ack deadline passed, in its backoff
    state.lease(6, Lease(now + 30_000, 1, now - 9_000, "nacked"))  # nacked: waiting
    state.lease(7, Lease(now + 30_000, 0, 0))                      # redriven, not delivered again yet
    state.dead_letters[1] = storage_pb2.DeadLetterRecord(seq=1)
    state.delivered.add(7, now - 5_000)
    stats = of_subscription(state, 20, log.entry, now)
    # Undelivered 8..19 but the marker at 10: 11; plus 5 leases.
    assert stats.backlog == 16
    assert stats.in_flight == 1
    assert stats.oldest_unacked_age_ms == now - 1000  # seq 3, of epoch 1 (appended at 1000 ms)
    assert (stats.delivered_last_minute, stats.dead_letters) == (7, 1)

    caught_up = SubscriptionState("idle", cursor=10)  # a marker left undelivered: owes nothing
    assert of_subscription(caught_up, 11, log.entry, now)[1:] == (0, 0, None, 0, 0)


# -- the engine over RocksDB: a known backlog -------------------------------------------------

SHARD = "orders/0"


def dead_lettering(name: str) -> pubsub_pb2.Subscription:
    return pubsub_pb2.Subscription(name=name, topic="orders", create_time=timestamp(0), max_delivery_attempts=5,
                                   dead_letter_topic="orders-dead")


async def marker(engine, epoch: int) -> None:
    """What a new leader writes first: an entry of its epoch without a message."""
    log_ = engine.shard(SHARD)
    await engine.write_entries(SHARD, log_.end, Entries.of([storage_pb2.StoredMessage(epoch=epoch,
                                                                                      append_ms=now_ms())]))
    engine.advance_commit(SHARD, log_.end)


async def test_the_engine_describes_a_known_backlog(engine):
    engine.attach(SHARD, dead_lettering("audit"))
    engine.attach(SHARD, dead_lettering("idle"))
    await marker(engine, 1)
    await append(engine, SHARD, messages(*[b"first-%d" % i for i in range(10)]), epoch=1)
    await asyncio.sleep(0.3)
    await marker(engine, 2)  # a leader change
    await append(engine, SHARD, messages(*[b"second-%d" % i for i in range(5)]), epoch=2)
    got = await pull(engine, SHARD, "audit", 6, 60_000, 0)
    assert [m.message.data for m in got] == [b"first-%d" % i for i in range(6)]
    engine.acknowledge(SHARD, "audit", [got[0].ack_id, got[1].ack_id])
    engine.nack(SHARD, "audit", [got[2].ack_id], delay_ms=30_000)
    engine.nack(SHARD, "audit", [got[3].ack_id], terminal=True)
    engine.bury(engine.dead_letters.get_nowait(), "dead-letter-id")

    audit, idle = engine.describe(SHARD, ["audit", "idle", "not-attached"])
    assert (audit.subscription, audit.backlog, audit.in_flight, audit.delivered_last_minute, audit.dead_letters) \
        == ("audit", 15 - 2 - 1, 2, 6, 1)
    assert 300 <= audit.oldest_unacked_age_ms < 5_000  # the nacked one, of the first batch
    assert (idle.backlog, idle.in_flight, idle.delivered_last_minute, idle.dead_letters) == (15, 0, 0, 0)
    assert engine.backlogs(SHARD) == {"audit": 12, "idle": 15}

    rest = await pull(engine, SHARD, "audit", 100, 60_000, 0)
    engine.acknowledge(SHARD, "audit", [m.ack_id for m in rest + [got[4], got[5]]])
    engine.redrive(SHARD, "audit")  # the dead letter comes back: owed again, not delivered
    [audit] = engine.describe(SHARD, ["audit"])
    assert (audit.backlog, audit.in_flight, audit.dead_letters) == (2, 0, 0)  # the nacked one and the redriven


async def test_a_purge_empties_the_backlog_and_a_seek_back_refills_it(engine):
    """Seek moves the cursor and ends the leases: the numbers follow, being read off them."""
    engine.attach(SHARD, dead_lettering("audit"))
    await marker(engine, 1)
    await append(engine, SHARD, messages(*[b"m-%d" % i for i in range(5)]), epoch=1)
    got = await pull(engine, SHARD, "audit", 2, 60_000, 0)
    engine.acknowledge(SHARD, "audit", [got[0].ack_id])
    assert engine.describe(SHARD, ["audit"])[0][1:3] == (4, 1)
    engine.seek(SHARD, "audit", None, None, None)  # a purge
    [audit] = engine.describe(SHARD, ["audit"])
    assert (audit.backlog, audit.in_flight, audit.oldest_unacked_age_ms) == (0, 0, None)
    engine.seek(SHARD, "audit", 0, None, 3_600_000)  # back to the start, kept by retain_acked
    [audit] = engine.describe(SHARD, ["audit"])
    assert (audit.backlog, audit.in_flight) == (5, 0)  # the marker at the start not counted
    assert audit.oldest_unacked_age_ms is not None


# -- the frontend: per partition and in total --------------------------------------------------

TOPIC = "orders"


def stats(backlog: int, in_flight: int = 0, age_ms: int | None = None, rate: float = 0.0,
          dead: int = 0) -> pubsub_pb2.DeliveryStats:
    out = pubsub_pb2.DeliveryStats(backlog=backlog, in_flight=in_flight, delivery_rate=rate, dead_letters=dead)
    if age_ms is not None:
        out.oldest_unacked_age.FromMilliseconds(age_ms)
    return out


def make_gateway(partitions: int, subscriptions: dict[str, str], streams: dict[str, int]):
    cluster = FakeCluster(topics={TOPIC: partitions, "empty": 2}, subscriptions=subscriptions)
    storage, senders = FakeGatewayStorage(), FakeSenders({})
    senders.streams = streams
    return Gateway(cluster, Config(), storage=storage, senders=senders, metadata=FakeMetadata()), storage, senders


def answer(storage: FakeGatewayStorage, partition: int, **by_name: pubsub_pb2.DeliveryStats) -> None:
    storage.replies[("DescribeSubscriptions", TOPIC, partition)] = storage_pb2.DescribeSubscriptionsResponse(
        subscriptions=[storage_pb2.SubscriptionDeliveryStats(name=n, stats=s) for n, s in by_name.items()])


async def test_a_subscription_is_described_per_partition_and_in_total():
    gateway, storage, _ = make_gateway(2, {"audit": TOPIC}, {"audit": 3})
    answer(storage, 0, audit=stats(10, 2, 4_000, 1.5, 1))
    answer(storage, 1, audit=stats(5, 1, None, 0.5, 0))
    described = await gateway.describe_subscription("audit")
    assert [(call[0], call[2], list(call[3].subscriptions)) for call in storage.calls] == [
        ("DescribeSubscriptions", 0, ["audit"]), ("DescribeSubscriptions", 1, ["audit"])]
    assert (described.subscription, described.topic, described.streams) == ("audit", TOPIC, 3)
    assert described.total == stats(15, 3, 4_000, 2.0, 1)
    assert [(p.partition, p.stats) for p in described.partitions] == [(0, stats(10, 2, 4_000, 1.5, 1)),
                                                                      (1, stats(5, 1, None, 0.5, 0))]


async def test_a_topic_is_described_per_subscription_per_partition_and_in_total():
    gateway, storage, _ = make_gateway(2, {"audit": TOPIC, "billing": TOPIC}, {"billing": 2})
    answer(storage, 0, audit=stats(10, 2, 9_000), billing=stats(1, 1, 4_000))  # the oldest is not the last
    answer(storage, 1, audit=stats(5), billing=stats(0))
    described = await gateway.describe_topic(TOPIC)
    assert [s.subscription for s in described.subscriptions] == ["audit", "billing"]
    assert described.total == stats(16, 3, 9_000)
    assert [(p.partition, p.stats) for p in described.partitions] == [(0, stats(11, 3, 9_000)), (1, stats(5))]
    assert described.streams == 2

    empty = await gateway.describe_topic("empty")  # no subscriptions: no calls, every partition 0
    assert len(storage.calls) == 2
    assert [(p.partition, p.stats) for p in empty.partitions] == [(0, stats(0)), (1, stats(0))]
    assert (empty.total, list(empty.subscriptions)) == (stats(0), [])


async def test_a_subscription_a_leader_no_longer_has_is_left_out():
    gateway, storage, _ = make_gateway(2, {"audit": TOPIC, "billing": TOPIC}, {})
    answer(storage, 0, audit=stats(1), billing=stats(1))
    answer(storage, 1, billing=stats(1))  # audit deleted meanwhile
    assert [s.subscription for s in (await gateway.describe_topic(TOPIC)).subscriptions] == ["billing"]
    with pytest.raises(errors.NotFound):
        await gateway.describe_subscription("audit")
    with pytest.raises(errors.NotFound):
        await gateway.describe_subscription("nope")
    with pytest.raises(errors.InvalidArgument):
        await gateway.describe_topic("")


# -- the sender: its Subscribe streams, not its push workers ------------------------------------


async def test_a_sender_counts_its_subscribe_streams_per_subscription():
    dispatcher, _, _ = make_dispatcher(partitions=1)
    first, second = subscribed(dispatcher, SUB, 5), subscribed(dispatcher, SUB, 5)
    waits = [asyncio.ensure_future(anext(frames)) for frames in (first, second)]
    await eventually(lambda: SUB in dispatcher.subscriptions and len(dispatcher.subscriptions[SUB].streams) == 2)
    await dispatcher.attach(SUB, Stream(16))  # a push worker
    assert dispatcher.count_streams([SUB, "audit-sub"]) == {SUB: 2}
    waits[0].cancel()  # the first subscriber goes away
    await asyncio.gather(waits[0], return_exceptions=True)
    assert dispatcher.count_streams([SUB]) == {SUB: 1}
    waits[1].cancel()
    await asyncio.gather(waits[1], return_exceptions=True)
    await dispatcher.close()
