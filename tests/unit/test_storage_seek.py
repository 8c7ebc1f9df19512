"""Seek and purge on one storage engine (real RocksDB, no gRPC), and how far back
a seek reaches: what retain_acked keeps, which collection and stubbing respect
on every replica."""

import asyncio

from test_storage_engine import SHARD, append, messages, pull, reopen, subscription

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.clock import now_ms
from storage import retention
from storage.retention import RETAIN_MARGIN_MS

HOUR_MS = 3_600_000


def data_of(received) -> list[bytes]:
    return [m.message.data for m in received]


def whole(engine, count: int) -> list[bool]:
    """Which of the first count entries still have their message (not stubs)."""
    return [engine.log.entry(SHARD, seq).HasField("message") for seq in range(count)]


async def consumed(engine, name: str, count: int) -> None:
    """The subscription is delivered and acknowledges count messages."""
    got = await pull(engine, SHARD, name, count, 60_000, 0)
    assert len(got) == count
    assert engine.acknowledge(SHARD, name, [m.ack_id for m in got]) == count


async def test_a_seek_back_within_retain_acked_redelivers_acknowledged_messages(engine):
    engine.attach(SHARD, subscription("audit"))
    await append(engine, SHARD, messages(b"a", b"b", b"c"))
    await consumed(engine, "audit", 3)
    seeked = engine.seek(SHARD, "audit", 0, None, HOUR_MS)
    assert (seeked.cursor, seeked.limited) == (0, False)
    assert data_of(await pull(engine, SHARD, "audit", 10, 60_000, 0)) == [b"a", b"b", b"c"]


async def test_without_retain_acked_a_seek_back_reaches_only_the_lowest_cursor(engine):
    engine.attach(SHARD, subscription("audit"))
    engine.attach(SHARD, subscription("billing"))
    await append(engine, SHARD, messages(b"a", b"b", b"c"))
    await consumed(engine, "audit", 3)
    await consumed(engine, "billing", 1)
    # billing has yet to take b and c, so every replica keeps them whole: audit may go back to them
    assert engine.seek(SHARD, "audit", 0, None, None) == (1, True)
    assert data_of(await pull(engine, SHARD, "audit", 10, 60_000, 0)) == [b"b", b"c"]
    await consumed(engine, "billing", 2)
    assert engine.seek(SHARD, "billing", 0, None, None) == (3, True)  # acknowledged by all: not kept
    assert await pull(engine, SHARD, "billing", 10, 60_000, 0) == []


async def test_a_seek_back_stopped_short_still_delivers_what_is_unacknowledged_since(engine):
    engine.attach(SHARD, subscription("audit"))
    await append(engine, SHARD, messages(b"unacked", b"b", b"c"))
    unacked, *rest = await pull(engine, SHARD, "audit", 3, 60_000, 0)
    engine.acknowledge(SHARD, "audit", [m.ack_id for m in rest])
    assert engine.seek(SHARD, "audit", 0, None, None) == (3, True)
    [again] = await pull(engine, SHARD, "audit", 10, 60_000, 0)
    assert (again.message.data, again.delivery_attempt) == (b"unacked", 1)


async def test_a_seek_forward_skips_what_was_published_before_and_ends_leases(engine):
    engine.attach(SHARD, subscription("audit"))
    await append(engine, SHARD, messages(b"old-1", b"old-2"))
    [in_flight] = await pull(engine, SHARD, "audit", 1, 60_000, 0)
    await asyncio.sleep(0.01)
    since = now_ms()
    await append(engine, SHARD, messages(b"new-1", b"new-2"))
    assert engine.seek(SHARD, "audit", since, None, None) == (2, False)
    assert data_of(await pull(engine, SHARD, "audit", 10, 60_000, 0)) == [b"new-1", b"new-2"]
    assert engine.acknowledge(SHARD, "audit", [in_flight.ack_id]) == 0  # its lease ended with the seek
    status = engine.message_status(SHARD, in_flight.message.message_id)
    [delivery] = status.deliveries
    assert (delivery.state, [a.outcome for a in delivery.attempts]) == (pubsub_pb2.ACKNOWLEDGED, [pubsub_pb2.SEEK])


async def test_purge_leaves_nothing_deliverable_but_what_comes_later(engine):
    engine.attach(SHARD, subscription("audit"))
    await append(engine, SHARD, messages(b"a", b"b", b"c", b"d"))
    await pull(engine, SHARD, "audit", 2, 1, 0)  # in flight, their deadline passes at once
    await asyncio.sleep(0.01)
    assert engine.seek(SHARD, "audit", None, None, None) == (4, False)
    assert await pull(engine, SHARD, "audit", 10, 60_000, 0) == []
    await append(engine, SHARD, messages(b"later"))
    assert data_of(await pull(engine, SHARD, "audit", 10, 60_000, 0)) == [b"later"]


async def test_a_seek_reaches_followers_with_the_delivery_state(engine):
    engine.attach(SHARD, subscription("audit"))
    await append(engine, SHARD, messages(b"a", b"b"))
    await consumed(engine, "audit", 2)
    version = engine.shard(SHARD).state_version
    engine.seek(SHARD, "audit", 0, None, HOUR_MS)
    update = engine.state_since(SHARD, version)
    assert [(s.name, s.cursor) for s in update.states] == [("audit", 0)]


async def test_stubbing_and_collection_keep_the_retain_acked_window(engine, tmp_path, monkeypatch):
    engine.attach(SHARD, subscription("audit"))
    await append(engine, SHARD, messages(b"a", b"b", b"c"))
    await consumed(engine, "audit", 3)
    assert engine.stub(SHARD, HOUR_MS) == 0 and engine.collect(SHARD, None, HOUR_MS) == 0
    assert whole(engine, 3) == [True, True, True]

    # a follower, by the delivery state it received, keeps the window as well
    follower = await reopen(engine, tmp_path)
    try:
        follower.import_states(SHARD, follower.state_since(SHARD, -1))
        follower.advance_commit(SHARD, 3)
        assert follower.stub(SHARD, HOUR_MS) == 0 and whole(follower, 3) == [True, True, True]
        assert follower.seek(SHARD, "audit", 0, None, HOUR_MS) == (0, False)  # as its leader, once it leads

        # past the window and its margin, what no subscription needs goes
        later = now_ms() + HOUR_MS + RETAIN_MARGIN_MS + 1_000
        monkeypatch.setattr(retention, "now_ms", lambda: later)
        follower.seek(SHARD, "audit", None, None, None)
        assert follower.stub(SHARD, HOUR_MS) == 3 and whole(follower, 3) == [False, False, False]
        assert follower.seek(SHARD, "audit", 0, None, HOUR_MS) == (3, True)  # stubs are out of reach
        assert follower.collect(SHARD, None, HOUR_MS) == 3
    finally:
        await follower.close()


async def test_without_retain_acked_acknowledged_messages_become_stubs_and_a_seek_stops_there(engine):
    """Enabling retain_acked later keeps what is acknowledged from then on: a seek
    does not reach entries this replica stubbed before."""
    engine.attach(SHARD, subscription("audit"))
    engine.attach(SHARD, subscription("stuck"))
    await append(engine, SHARD, messages(b"a", b"b", b"c"))
    await consumed(engine, "audit", 3)
    await pull(engine, SHARD, "stuck", 1, 60_000, 0)  # a lease keeps the log from being trimmed
    await consumed(engine, "stuck", 2)
    engine.stub(SHARD)
    assert whole(engine, 3) == [True, False, False]  # the leased one stays whole
    assert engine.seek(SHARD, "audit", 0, None, HOUR_MS) == (3, True)
    assert await pull(engine, SHARD, "audit", 10, 60_000, 0) == []


async def test_a_seek_does_not_go_back_past_retention(engine):
    engine.attach(SHARD, subscription("audit"))
    await append(engine, SHARD, messages(b"old"))
    await asyncio.sleep(0.05)
    await append(engine, SHARD, messages(b"fresh"))
    await consumed(engine, "audit", 2)
    assert engine.seek(SHARD, "audit", 0, 30, HOUR_MS) == (1, True)
    assert data_of(await pull(engine, SHARD, "audit", 10, 60_000, 0)) == [b"fresh"]


async def test_a_seek_back_past_collected_messages_says_it_stopped_short_also_after_a_restart(engine, tmp_path):
    """Without retain_acked, collection deletes what every subscription acknowledged:
    a seek back to before it lands on the first entry kept, and says that messages
    since that time are gone (the cursor does not move, so without that it would
    not tell)."""
    engine.attach(SHARD, subscription("audit"))
    since = now_ms()
    await append(engine, SHARD, messages(b"a", b"b", b"c"))
    await consumed(engine, "audit", 3)
    assert engine.collect(SHARD, None) == 3
    later = now_ms() + 1_000  # after every message deleted: nothing gone since
    assert engine.seek(SHARD, "audit", since, None, None) == (3, True)
    assert engine.seek(SHARD, "audit", later, None, None) == (3, False)
    engine = await reopen(engine, tmp_path)
    engine.attach(SHARD, subscription("audit"))
    engine.advance_commit(SHARD, 3)  # as when it leads again
    assert engine.seek(SHARD, "audit", since, None, None) == (3, True)
    assert engine.seek(SHARD, "audit", later, None, None) == (3, False)
    await engine.close()


async def test_a_seek_back_past_collected_stubs_says_it_stopped_short(engine):
    """The newest message deleted may have been a stub whose identity is no longer
    kept in memory: its append time is read back from the stub."""
    engine.attach(SHARD, subscription("audit"))
    engine.attach(SHARD, subscription("stuck"))
    since = now_ms()
    await append(engine, SHARD, messages(b"a", b"b", b"c"))
    engine.shard(SHARD).identities.clear()  # as after a restart
    await consumed(engine, "audit", 3)
    [leased] = await pull(engine, SHARD, "stuck", 1, 60_000, 0)
    await consumed(engine, "stuck", 2)
    engine.stub(SHARD)
    assert whole(engine, 3) == [True, False, False]
    engine.acknowledge(SHARD, "stuck", [leased.ack_id])
    assert engine.collect(SHARD, None) == 3
    assert engine.seek(SHARD, "audit", since, None, None) == (3, True)
