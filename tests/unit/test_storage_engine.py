"""StorageEngine on a real RocksDB in a temporary directory, without gRPC."""

import asyncio

import pytest

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms, timestamp
from notifymesh.contracts import Shard
from storage import keys, log as log_module, wire
from storage.delivery import Pull, SubscriptionState
from storage.engine import StorageEngine
from storage.log import Entries, SeqWindow

DEDUP_MS = 60_000
SHARD = "orders/0"


def subscription(name: str, topic: str = "orders", created_ms: int = 0) -> pubsub_pb2.Subscription:
    return pubsub_pb2.Subscription(name=name, topic=topic, create_time=timestamp(created_ms))


def messages(*payloads: bytes, key: str = "") -> list[pubsub_pb2.PubsubMessage]:
    return [pubsub_pb2.PubsubMessage(data=p, idempotency_key=key) for p in payloads]


async def append(engine: StorageEngine, shard: str, msgs, dedup_ms: int = DEDUP_MS, epoch: int = 1,
                 retry: bool = False, by_payload: bool = False) -> list[str]:
    """What a leader does: prepare, write (synced), and commit (a single replica here)."""
    ids, entries = engine.prepare(shard, msgs, epoch, dedup_ms, retry, by_payload)
    await engine.write_entries(shard, engine.shard(shard).end, entries)
    engine.advance_commit(shard, engine.shard(shard).end)
    return ids


async def pull(engine: StorageEngine, shard: str, subscription: str, max_messages: int, ack_deadline_ms: int,
               wait_ms: int) -> list[pubsub_pb2.ReceivedMessage]:
    """One subscription's pull, its messages decoded (as a subscriber sees them)."""
    pulled = await engine.pull(shard, [Pull(subscription, max_messages, ack_deadline_ms)], wait_ms)
    got = pulled.get(subscription)
    received, ack_ids = (got.received, got.ack_ids) if got else ([], [])
    messages = [pubsub_pb2.ReceivedMessage.FromString(raw) for raw in received]
    assert [m.ack_id for m in messages] == ack_ids
    return messages


async def reopen(engine: StorageEngine, tmp_path) -> StorageEngine:
    await engine.close()
    reopened = StorageEngine(tmp_path / "node", "storage-1")
    reopened.start()
    return reopened


async def test_append_pull_ack_and_collect(engine):
    engine.attach(SHARD, subscription("audit"))
    ids = await append(engine, SHARD, messages(b"a", b"b", b"c"), DEDUP_MS)
    pulled = await pull(engine, SHARD, "audit", 10, 10_000, 0)
    assert [m.message.message_id for m in pulled] == ids
    assert [m.message.data for m in pulled] == [b"a", b"b", b"c"]
    assert all(m.message.HasField("publish_time") and m.delivery_attempt == 1 for m in pulled)
    assert await pull(engine, SHARD, "audit", 10, 10_000, 0) == []  # leased, not deliverable
    assert engine.collect(SHARD, None) == 0  # in flight: kept
    assert engine.acknowledge(SHARD, "audit", [m.ack_id for m in pulled]) == 3
    assert engine.acknowledge(SHARD, "audit", [m.ack_id for m in pulled]) == 0
    assert engine.collect(SHARD, None) == 3


async def test_message_is_kept_until_every_subscription_acked(engine):
    engine.attach(SHARD, subscription("audit"))
    engine.attach(SHARD, subscription("billing"))
    await append(engine, SHARD, messages(b"x"), DEDUP_MS)
    [audit] = await pull(engine, SHARD, "audit", 10, 10_000, 0)
    engine.acknowledge(SHARD, "audit", [audit.ack_id])
    assert engine.collect(SHARD, None) == 0
    [billing] = await pull(engine, SHARD, "billing", 10, 10_000, 0)
    engine.acknowledge(SHARD, "billing", [billing.ack_id])
    assert engine.collect(SHARD, None) == 1


async def test_expired_lease_is_redelivered_and_nack_is_immediate(engine):
    engine.attach(SHARD, subscription("audit"))
    [message_id] = await append(engine, SHARD, messages(b"x"), DEDUP_MS)
    [first] = await pull(engine, SHARD, "audit", 10, 200, 0)
    [second] = await pull(engine, SHARD, "audit", 10, 60_000, 2000)  # waits for the 200 ms lease
    assert second.message.message_id == message_id and second.delivery_attempt == 2
    engine.modify_ack_deadline(SHARD, "audit", [second.ack_id], 0)
    [third] = await pull(engine, SHARD, "audit", 10, 60_000, 0)
    assert third.delivery_attempt == 3


async def test_waiting_pull_wakes_on_append(engine):
    engine.attach(SHARD, subscription("audit"))
    waiting = asyncio.create_task(pull(engine, SHARD, "audit", 10, 10_000, 5000))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await append(engine, SHARD, messages(b"late"), DEDUP_MS)
    pulled = await asyncio.wait_for(waiting, 1)
    assert [m.message.data for m in pulled] == [b"late"]


async def test_a_pull_of_max_messages_0_leases_nothing_and_returns_once_there_is_something(engine):
    """What a sender with no room to hold asks (sender/dispatch.py ShardPuller)."""
    engine.attach(SHARD, subscription("audit"))
    watch = [Pull("audit", 0, 10_000)]
    assert await engine.pull(SHARD, watch, 0) == {}  # nothing: not listed
    waiting = asyncio.create_task(engine.pull(SHARD, watch, 5000))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await append(engine, SHARD, messages(b"a", b"b"), DEDUP_MS)
    got = (await asyncio.wait_for(waiting, 1))["audit"]
    assert (got.received, got.ack_ids, got.ready) == ([], [], True)
    leased = (await engine.pull(SHARD, [Pull("audit", 1, 10_000)], 0))["audit"]
    assert len(leased.received) == 1 and leased.ready  # one more left
    leased = (await engine.pull(SHARD, [Pull("audit", 5, 200)], 0))["audit"]
    assert len(leased.received) == 1 and not leased.ready  # none left: both leased
    got = (await engine.pull(SHARD, watch, 2000))["audit"]  # the 200 ms lease expires: ready again
    assert (got.received, got.ready) == ([], True)
    [again] = await pull(engine, SHARD, "audit", 10, 10_000, 0)
    assert again.delivery_attempt == 2  # the waits counted no delivery attempt


async def test_state_survives_reopen(engine, tmp_path):
    engine.attach(SHARD, subscription("audit"))
    ids = await append(engine, SHARD, messages(b"a", b"b", b"c", b"d"), DEDUP_MS)
    pulled = await pull(engine, SHARD, "audit", 2, 60_000, 0)
    engine.acknowledge(SHARD, "audit", [pulled[0].ack_id])
    engine = await reopen(engine, tmp_path)
    try:
        assert engine.shard(SHARD).commit == 0  # unknown until a leader establishes it
        engine.advance_commit(SHARD, engine.shard(SHARD).end)
        # b still leased for 60 s; c, d never delivered; a acked
        rest = await pull(engine, SHARD, "audit", 10, 60_000, 0)
        assert [m.message.message_id for m in rest] == ids[2:]
        engine.modify_ack_deadline(SHARD, "audit", [pulled[1].ack_id], 0)
        [again] = await pull(engine, SHARD, "audit", 10, 60_000, 0)
        assert again.message.message_id == ids[1] and again.delivery_attempt == 2
        more = await append(engine, SHARD, messages(b"e"), DEDUP_MS)
        assert more[0] not in ids
    finally:
        await engine.close()


async def test_subscription_after_an_epoch_marker_starts_at_its_create_time(engine):
    await append(engine, SHARD, messages(b"old"))
    await asyncio.sleep(0.01)
    created = now_ms()
    await asyncio.sleep(0.01)
    [new] = await append(engine, SHARD, messages(b"new"))
    log_ = engine.shard(SHARD)
    marker = storage_pb2.StoredMessage(epoch=2, append_ms=now_ms())
    await engine.write_entries(SHARD, log_.end, Entries.of([marker]))
    [newer] = await append(engine, SHARD, messages(b"newer"), epoch=2)
    engine.attach(SHARD, subscription("late", created_ms=created))
    assert [m.message.message_id for m in await pull(engine, SHARD, "late", 10, 10_000, 0)] == [new, newer]
    assert Shard.parse(SHARD) == ("orders", 0)


async def test_subscription_starts_at_its_create_time(engine):
    await append(engine, SHARD, messages(b"old"), DEDUP_MS)
    await asyncio.sleep(0.01)
    created = now_ms()
    await asyncio.sleep(0.01)
    [new] = await append(engine, SHARD, messages(b"new"), DEDUP_MS)
    engine.attach(SHARD, subscription("late", created_ms=created))
    assert [m.message.message_id for m in await pull(engine, SHARD, "late", 10, 10_000, 0)] == [new]


async def test_retention_expires_unacked_messages(engine):
    engine.attach(SHARD, subscription("audit"))
    await append(engine, SHARD, messages(b"old"), DEDUP_MS)
    await pull(engine, SHARD, "audit", 10, 60_000, 0)  # in flight, never acked
    await asyncio.sleep(0.05)
    [fresh] = await append(engine, SHARD, messages(b"fresh"), DEDUP_MS)
    assert engine.collect(SHARD, 30) == 1
    engine.modify_ack_deadline(SHARD, "audit", ["0:0:audit"], 0)
    assert [m.message.message_id for m in await pull(engine, SHARD, "audit", 10, 60_000, 0)] == [fresh]


async def test_idempotency_key_within_and_across_batches(engine):
    engine.attach(SHARD, subscription("audit"))
    first = await append(engine, SHARD, messages(b"a", b"a", key="k1"), DEDUP_MS)
    assert first[0] == first[1]
    assert await append(engine, SHARD, messages(b"a", key="k1"), DEDUP_MS) == first[:1]
    assert len(await pull(engine, SHARD, "audit", 10, 60_000, 0)) == 1
    expired = await append(engine, SHARD, messages(b"b", key="k2"), 1)
    await asyncio.sleep(0.01)
    assert await append(engine, SHARD, messages(b"b", key="k2"), DEDUP_MS) != expired
    await append(engine, SHARD, messages(b"c", key="k3"), 1)
    await asyncio.sleep(0.01)
    assert engine.collect_idempotency_keys() == 1  # k3; k2 has a fresh window


async def test_follower_write_replaces_a_diverged_tail_and_keeps_seqs(engine, tmp_path):
    leader_ids = await append(engine, SHARD, messages(b"a", b"b", b"c"))
    follower = StorageEngine(tmp_path / "follower", "storage-2")
    follower.start()
    try:
        # the follower got a and b from epoch 1, then an entry of a deposed leader
        entries = engine.entries_from(SHARD, 0, 10)
        assert [storage_pb2.StoredMessage.FromString(e).message.message_id for e in entries.raw] == leader_ids
        assert entries.ids == leader_ids
        await follower.write_replicated(SHARD, 0, Entries.parsed(entries.raw[:2]))
        stale = storage_pb2.StoredMessage(message=pubsub_pb2.PubsubMessage(data=b"stale", message_id="x"), epoch=1)
        await follower.write_entries(SHARD, 2, Entries.of([stale]))
        assert follower.shard(SHARD).end == 3
        # the new leader (epoch 2) sends its marker at 2: the stale entry goes
        await follower.write_entries(SHARD, 2, Entries.of([storage_pb2.StoredMessage(epoch=2)]))
        log_ = follower.shard(SHARD)
        assert (log_.end, log_.last_epoch) == (3, 2)
        assert [follower.epoch_at(SHARD, seq) for seq in range(3)] == [1, 1, 2]
        follower.trim(SHARD, 2)  # below commit only
        assert follower.shard(SHARD).first == 0
        follower.advance_commit(SHARD, 3)
        assert follower.trim(SHARD, 2) == 2
        assert follower.entries_from(SHARD, 2, 10).last_epoch == 2
        follower.reset(SHARD, 10)
        assert (follower.shard(SHARD).first, follower.shard(SHARD).end) == (10, 10)
    finally:
        await follower.close()


@pytest.mark.parametrize("index", ["as sent", "mismatched"])
async def test_a_follower_indexes_replicated_entries_by_the_leaders_index(engine, tmp_path, index):
    """As the next leader, a follower finds repeats and message ids of what it was sent,
    whether it took the leader's index or (index not matching) parsed the entries."""
    ids = await append(engine, SHARD, messages(b"a", key="k1") + messages(b"b"))
    sent = engine.entries_from(SHARD, 0, 10)
    batch = storage_pb2.ShardEntries(entries=sent.raw, message_ids=sent.ids, dedup_keys=sent.dedup_keys,
                                     dedup_until_ms=sent.dedup_until_ms, last_entry_epoch=sent.last_epoch)
    if index == "mismatched":
        del batch.message_ids[1:]
    follower = StorageEngine(tmp_path / "follower", "storage-2")
    follower.start()
    try:
        await follower.write_replicated(SHARD, 0, Entries.replicated(batch))
        assert follower.shard(SHARD).last_epoch == 1
        repeat_ids, entries = follower.prepare(SHARD, messages(b"a again", key="k1"), 2, DEDUP_MS, retry=False)
        assert repeat_ids == [ids[0]] and not entries.raw
        follower.advance_commit(SHARD, 2)
        assert follower.message_status(SHARD, ids[1]).message.data == b"b"
    finally:
        await follower.close()


async def test_delivery_state_moves_to_a_follower(engine, tmp_path):
    engine.attach(SHARD, subscription("audit"))
    ids = await append(engine, SHARD, messages(b"a", b"b", b"c"))
    [first] = await pull(engine, SHARD, "audit", 1, 60_000, 0)
    engine.acknowledge(SHARD, "audit", [first.ack_id])
    await pull(engine, SHARD, "audit", 1, 60_000, 0)  # b in flight
    follower = StorageEngine(tmp_path / "follower", "storage-2")
    follower.start()
    try:
        await follower.write_replicated(SHARD, 0, engine.entries_from(SHARD, 0, 10))
        update = engine.state_since(SHARD, -1)
        follower.import_states(SHARD, update)
        assert follower.shard(SHARD).state_stamp == update.stamp
        follower.advance_commit(SHARD, 3)
        # as the new leader: c is next, b comes back when its lease is nacked
        [c] = await pull(follower, SHARD, "audit", 10, 60_000, 0)
        assert c.message.message_id == ids[2]
        follower.modify_ack_deadline(SHARD, "audit", ["0:1:audit"], 0)
        [b] = await pull(follower, SHARD, "audit", 10, 60_000, 0)
        assert b.message.message_id == ids[1] and b.delivery_attempt == 2
    finally:
        await follower.close()


async def test_retry_skips_messages_already_in_the_log(engine):
    engine.attach(SHARD, subscription("audit"))
    msgs = messages(b"a", b"b")
    for m in msgs:
        m.message_id = f"id-{m.data.decode()}"
    assert await append(engine, SHARD, msgs) == ["id-a", "id-b"]
    again = messages(b"a", b"b", b"c")
    for m in again:
        m.message_id = f"id-{m.data.decode()}"
    assert await append(engine, SHARD, again, retry=True) == ["id-a", "id-b", "id-c"]
    assert [m.message.data for m in await pull(engine, SHARD, "audit", 10, 60_000, 0)] == [b"a", b"b", b"c"]
    # the ids read at the first retry are kept current: later appends count too
    later = messages(b"d")
    later[0].message_id = "id-d"
    await append(engine, SHARD, later)
    retried = messages(b"d")
    retried[0].message_id = "id-d"
    assert await append(engine, SHARD, retried, retry=True) == ["id-d"]
    assert [m.message.data for m in await pull(engine, SHARD, "audit", 10, 60_000, 0)] == [b"d"]


async def test_only_committed_entries_are_delivered(engine):
    engine.attach(SHARD, subscription("audit"))
    ids, entries = engine.prepare(SHARD, messages(b"a", b"b"), 1, DEDUP_MS, False)
    await engine.write_entries(SHARD, 0, entries)
    assert await pull(engine, SHARD, "audit", 10, 60_000, 0) == []
    engine.advance_commit(SHARD, 1)
    assert [m.message.message_id for m in await pull(engine, SHARD, "audit", 10, 60_000, 0)] == ids[:1]


async def test_messages_kept_in_memory_are_never_served_after_their_entries_were_replaced(engine):
    engine.attach(SHARD, subscription("audit"))
    ids = await append(engine, SHARD, messages(b"a", b"b", b"c"))
    # deposed: a new leader's entry replaces b and c, then this node leads again
    replacement = storage_pb2.StoredMessage(message=pubsub_pb2.PubsubMessage(data=b"x", message_id="x"), epoch=2)
    await engine.write_replicated(SHARD, 1, Entries.of([replacement]))
    engine.advance_commit(SHARD, 2)
    delivered = await pull(engine, SHARD, "audit", 10, 60_000, 0)
    assert [(m.message.message_id, m.message.data) for m in delivered] == [(ids[0], b"a"), ("x", b"x")]


def test_seq_window_keeps_consecutive_seqs():
    window = SeqWindow(columns=2)
    window.put(10, [["a", "b", "c"], [1, 2, 3]], limit=10, max_bytes=100)
    assert [window.get(seq) for seq in (9, 10, 12, 13)] == [None, "a", "c", None]
    window.put(11, [["B"], [20]], limit=10, max_bytes=100)  # replaces from 11 on
    assert (window.start, window.columns) == (10, [["a", "B"], [1, 20]])
    window.put(20, [["z"], [0]], limit=10, max_bytes=100)  # not adjoining: starts over
    assert (window.start, window.columns) == (20, [["z"], [0]])
    window.put(21, [list("abcdefghijk"), list(range(11))], limit=10, max_bytes=100)  # the newest 10
    assert (window.start, window.slice(25, 3)) == (22, [["e", "f", "g"], [4, 5, 6]])
    assert window.slice(40, 3) == [[], []]
    window.drop_below(30)
    assert (window.start, window.columns) == (30, [["j", "k"], [9, 10]])


def test_seq_window_is_bounded_by_bytes():
    window = SeqWindow()
    window.put(0, [[b"x" * 400, None, b"y" * 400]], limit=100, max_bytes=1000)
    assert (window.start, window.bytes) == (0, 800)
    window.put(3, [[b"z" * 300]], limit=100, max_bytes=1000)  # 1,100 bytes: the oldest goes
    assert (window.start, window.bytes, window.get(2)) == (1, 700, b"y" * 400)
    window.put(2, [[b"w" * 10]], limit=100, max_bytes=1000)  # replacing gives back what it replaced
    assert (window.start, len(window), window.bytes) == (1, 2, 10)
    window.put(3, [[b"big" * 1000]], limit=100, max_bytes=1000)  # the newest stays, however big
    assert (window.start, len(window), window.bytes) == (3, 1, 3000)
    window.drop_below(4)
    assert (len(window), window.bytes) == (0, 0)


async def test_corrupted_entry_is_never_delivered(engine, tmp_path):
    from storage import keys
    engine.attach(SHARD, subscription("audit"))
    ids = await append(engine, SHARD, messages(b"good", b"bad", b"fine"))
    key = keys.message(SHARD, 1)
    value = bytearray(engine.db.rdict[key])
    value[-1] ^= 0xFF  # flip bits of the stored entry
    engine.db.rdict[key] = bytes(value)
    engine = await reopen(engine, tmp_path)  # read from disk, not from what was kept in memory
    try:
        engine.advance_commit(SHARD, 3)
        delivered = await pull(engine, SHARD, "audit", 10, 60_000, 0)
        assert [m.message.message_id for m in delivered] == [ids[0], ids[2]]
    finally:
        await engine.close()


async def test_refuses_another_nodes_data_dir(engine, tmp_path):
    with pytest.raises(SystemExit, match="belongs to storage node 'storage-1'"):
        StorageEngine(tmp_path / "node", "storage-9")


async def test_unknown_subscription_and_bad_ack_id(engine):

    with pytest.raises(errors.NotFound):
        await pull(engine, SHARD, "nobody", 1, 1000, 0)
    engine.attach(SHARD, subscription("audit"))
    for bad in ("zz", "0:zz:audit", "1", "x:1:audit", "0:1"):
        with pytest.raises(errors.InvalidArgument):
            engine.acknowledge(SHARD, "audit", [bad])
    with pytest.raises(errors.InvalidArgument, match="not of 'audit' partition 0"):
        engine.acknowledge(SHARD, "audit", ["1:0:audit"])
    with pytest.raises(errors.InvalidArgument, match="not of 'audit' partition 0"):
        engine.acknowledge(SHARD, "audit", ["0:0:billing"])
    await append(engine, SHARD, messages(b"x"))
    [pulled] = await pull(engine, SHARD, "audit", 1, 60_000, 0)
    assert pulled.ack_id == "0:0:audit"  # partition 0, seq 0, subscription
    assert engine.acknowledge(SHARD, "audit", [pulled.ack_id]) == 1


async def test_payload_hash_dedup_within_the_window(engine):
    engine.attach(SHARD, subscription("audit"))

    def msg(data: bytes, **attributes):
        return pubsub_pb2.PubsubMessage(data=data, attributes=attributes)

    [first] = await append(engine, SHARD, [msg(b"charge", a="1", b="2")], by_payload=True)
    # same data and attributes (order does not matter): the original id
    assert await append(engine, SHARD, [msg(b"charge", b="2", a="1")], by_payload=True) == [first]
    # other attributes, other data, or no payload dedup on the topic: new messages
    assert await append(engine, SHARD, [msg(b"charge", a="1")], by_payload=True) != [first]
    assert await append(engine, SHARD, [msg(b"charge!", a="1", b="2")], by_payload=True) != [first]
    assert await append(engine, SHARD, [msg(b"charge", a="1", b="2")]) != [first]
    assert len(await pull(engine, SHARD, "audit", 10, 60_000, 0)) == 4
    # past the window it is new again
    [short] = await append(engine, SHARD, [msg(b"brief")], dedup_ms=1, by_payload=True)
    await asyncio.sleep(0.01)
    assert await append(engine, SHARD, [msg(b"brief")], by_payload=True) != [short]


def dead_letter_subscription(name: str) -> pubsub_pb2.Subscription:
    record = subscription(name)
    record.max_delivery_attempts, record.dead_letter_topic = 5, "orders-dead"
    return record


async def test_terminal_nack_dead_letters_then_redrive(engine, tmp_path):
    engine.attach(SHARD, dead_letter_subscription("audit"))
    engine.attach(SHARD, subscription("billing"))
    [poison, fine] = await append(engine, SHARD, messages(b"poison", b"fine"))
    with pytest.raises(errors.FailedPrecondition, match="no dead-letter topic"):
        [b] = await pull(engine, SHARD, "billing", 1, 60_000, 0)
        engine.nack(SHARD, "billing", [b.ack_id], terminal=True)
    first, second = await pull(engine, SHARD, "audit", 10, 60_000, 0)
    engine.nack(SHARD, "audit", [first.ack_id], terminal=True, reason="unparseable")
    engine.acknowledge(SHARD, "audit", [second.ack_id])
    dead = engine.dead_letters.get_nowait()
    assert (dead.message_id, dead.attempts, dead.error, dead.topic) == (poison, 1, "unparseable", "orders-dead")
    engine.bury(dead, "dlq-copy-id")
    [listed] = engine.list_dead_letters(SHARD, "audit", 10).dead_letters
    assert (listed.message.message_id, listed.last_error, listed.dead_letter_message_id) == \
        (poison, "unparseable", "dlq-copy-id")
    assert await pull(engine, SHARD, "audit", 10, 60_000, 0) == []

    status = engine.message_status(SHARD, poison)
    by_sub = {d.subscription: d for d in status.deliveries}
    assert by_sub["audit"].state == pubsub_pb2.DEAD_LETTERED and by_sub["audit"].delivery_attempts == 1
    assert [a.outcome for a in by_sub["audit"].attempts] == [pubsub_pb2.DEAD_LETTER]
    assert by_sub["billing"].state == pubsub_pb2.DELIVERED
    assert engine.message_status(SHARD, fine).deliveries[0].state == pubsub_pb2.ACKNOWLEDGED

    # the dead letter survives a restart and keeps its entry from being collected
    assert engine.collect(SHARD, None) == 0
    await engine.close()
    engine = StorageEngine(tmp_path / "node", "storage-1")
    engine.start()
    try:
        engine.attach(SHARD, dead_letter_subscription("audit"))
        assert [d.message.message_id for d in engine.list_dead_letters(SHARD, "audit", 10).dead_letters] == [poison]
        assert engine.redrive(SHARD, "audit") == 1
        [again] = await pull(engine, SHARD, "audit", 10, 60_000, 0)
        assert again.message.message_id == poison and again.delivery_attempt == 1
        assert not engine.list_dead_letters(SHARD, "audit", 10).dead_letters
        engine.acknowledge(SHARD, "audit", [again.ack_id])
        status = {d.subscription: d for d in engine.message_status(SHARD, poison).deliveries}
        assert status["audit"].state == pubsub_pb2.ACKNOWLEDGED
    finally:
        await engine.close()


async def test_delivery_log_records_each_attempt(engine):
    engine.attach(SHARD, subscription("audit"))
    [message_id] = await append(engine, SHARD, messages(b"x"))
    [first] = await pull(engine, SHARD, "audit", 1, 60_000, 0)
    engine.nack(SHARD, "audit", [first.ack_id], delay_ms=0, reason="HTTP 500")
    [second] = await pull(engine, SHARD, "audit", 1, 1, 0)  # its 1 ms ack deadline passes
    await asyncio.sleep(0.01)
    [third] = await pull(engine, SHARD, "audit", 1, 60_000, 0)
    [delivery] = engine.message_status(SHARD, message_id).deliveries
    assert delivery.state == pubsub_pb2.DELIVERED and delivery.delivery_attempts == 3
    engine.acknowledge(SHARD, "audit", [third.ack_id])
    [delivery] = engine.message_status(SHARD, message_id).deliveries
    assert delivery.state == pubsub_pb2.ACKNOWLEDGED
    assert [(a.attempt, a.outcome, a.error) for a in delivery.attempts] == [
        (1, pubsub_pb2.NACKED, "HTTP 500"), (2, pubsub_pb2.EXPIRED, ""), (3, pubsub_pb2.ACKED, "")]
    # the delivery log outlives the message, until it expires too
    assert engine.collect(SHARD, None) == 1
    [delivery] = engine.message_status(SHARD, message_id).deliveries
    assert delivery.state == pubsub_pb2.ACKNOWLEDGED and len(delivery.attempts) == 3
    assert engine.collect_delivery_log(SHARD, now_ms() - 60_000) == 0
    assert engine.collect_delivery_log(SHARD, now_ms() + 1) == 3
    with pytest.raises(errors.NotFound):
        engine.message_status(SHARD, message_id)


async def test_one_pull_serves_several_subscriptions(engine):
    engine.attach(SHARD, subscription("audit"))
    engine.attach(SHARD, subscription("billing"))
    ids = await append(engine, SHARD, messages(b"a", b"b", b"c"))
    pulled = await engine.pull(SHARD, [("audit", 2, 60_000), ("billing", 10, 60_000)], 0)
    decoded = {name: [pubsub_pb2.ReceivedMessage.FromString(raw) for raw in raws] for name, (raws, *_) in pulled.items()}
    assert [m.message.message_id for m in decoded["audit"]] == ids[:2]
    assert [m.message.message_id for m in decoded["billing"]] == ids
    assert [m.ack_id for m in decoded["billing"]] == pulled["billing"][1]
    pulled = await engine.pull(SHARD, [("audit", 10, 60_000), ("billing", 10, 60_000)], 0)
    assert list(pulled) == ["audit"]  # billing has nothing more


def test_wire_format_matches_the_generated_classes():
    message = pubsub_pb2.PubsubMessage(data=b"x" * 300, attributes={"k": "v"}, message_id="id-1")
    raw = wire.received_message("0:1f:audit", message.SerializeToString(), 300)
    assert pubsub_pb2.ReceivedMessage.FromString(raw) == pubsub_pb2.ReceivedMessage(
        ack_id="0:1f:audit", message=message, delivery_attempt=300)
    stored = storage_pb2.StoredMessage(message=message, append_ms=5, epoch=2).SerializeToString()
    assert wire.message_of(stored) == message.SerializeToString()
    # fields in another order (valid protobuf): decoded the slow way, same answer
    reordered = storage_pb2.StoredMessage(epoch=2).SerializeToString() + \
        storage_pb2.StoredMessage(message=message).SerializeToString()
    assert wire.message_of(reordered) == message.SerializeToString()
    assert wire.message_of(storage_pb2.StoredMessage(epoch=2).SerializeToString()) is None
    for value in (1, 127, 128, 300, 16_383, 16_384, 2 ** 21 + 5, 2 ** 31 - 1):  # each length of varint
        assert wire.varint(value) == pubsub_pb2.ReceivedMessage(delivery_attempt=value).SerializeToString()[1:]


def test_a_messages_identity_is_sliced_as_the_generated_classes_make_it():
    """keys.collected_value (wire.without_data): the message without its data, sliced
    when data comes first (as serialized), else decoded; the same message either way."""
    def identity(message: pubsub_pb2.PubsubMessage) -> pubsub_pb2.PubsubMessage:
        return keys.parse_collected_value(keys.collected_value(message.SerializeToString()))

    message = pubsub_pb2.PubsubMessage(data=b"x" * 300, attributes={"k": "v"}, message_id="id-1", ordering_key="o")
    message.publish_time.FromMilliseconds(1_700_000_000_123)
    expected = pubsub_pb2.PubsubMessage()
    expected.CopyFrom(message)
    expected.ClearField("data")
    assert identity(message) == expected
    assert identity(expected) == expected  # no data
    assert identity(pubsub_pb2.PubsubMessage(data=b"only")) == pubsub_pb2.PubsubMessage()
    data_last = pubsub_pb2.PubsubMessage(message_id="id-2").SerializeToString() + \
        pubsub_pb2.PubsubMessage(data=b"last").SerializeToString()  # valid protobuf, not our serializers' order
    assert keys.parse_collected_value(keys.collected_value(data_last)) == pubsub_pb2.PubsubMessage(message_id="id-2")


async def test_written_trails_end_until_the_write_is_synced(engine):
    """A leader counts itself towards a majority only with what it has synced."""
    _, entries = engine.prepare(SHARD, messages(b"a"), 1, DEDUP_MS, False)
    writing = engine.write_entries(SHARD, 0, entries)
    log_ = engine.shard(SHARD)
    assert (log_.end, log_.written) == (1, 0)
    await writing
    assert log_.written == 1


async def test_a_repeat_arriving_while_the_first_write_syncs_is_recognised(engine):
    engine.attach(SHARD, subscription("audit"))
    first_ids, entries = engine.prepare(SHARD, messages(b"a", key="k1"), 1, DEDUP_MS, False)
    writing = engine.write_entries(SHARD, 0, entries)  # staged, not yet in RocksDB
    repeat_ids, repeat = engine.prepare(SHARD, messages(b"a again", key="k1"), 1, DEDUP_MS, False)
    assert repeat_ids == first_ids and repeat.raw == []
    await writing
    assert engine.shard(SHARD).staged_keys == {}
    assert engine.prepare(SHARD, messages(b"a", key="k1"), 1, DEDUP_MS, False)[0] == first_ids


async def test_leader_commits_only_what_it_has_synced_itself(engine):
    """Followers write a leader's entries while it syncs them; a majority of followers
    must not make it deliver entries it cannot read from its own disk yet."""
    from storage.replication import Leadership, Progress, Replication
    replication = Replication(engine, None, None, "storage-1", None)
    engine.attach(SHARD, subscription("audit"))
    engine.lead(SHARD, 1)
    lead = replication.led[SHARD] = Leadership(SHARD, 1, ["storage-1", "storage-2", "storage-3"], marker=0)
    ids, entries = engine.prepare(SHARD, messages(b"a", b"b", b"c"), 1, DEDUP_MS, False)
    writing = engine.write_entries(SHARD, 0, entries)
    lead.progress = {node: Progress(next=3, match=3) for node in ("storage-2", "storage-3")}
    replication._advance_commit(lead)  # both followers have all three; this node has none synced
    assert engine.shard(SHARD).commit == 0
    assert await pull(engine, SHARD, "audit", 10, 60_000, 0) == []
    await writing
    replication._advance_commit(lead)
    assert engine.shard(SHARD).commit == 3
    assert [m.message.message_id for m in await pull(engine, SHARD, "audit", 10, 60_000, 0)] == ids


async def test_acks_of_several_subscriptions_in_one_call(engine):
    for name in ("audit", "billing"):
        engine.attach(SHARD, subscription(name))
    await append(engine, SHARD, messages(b"a", b"b"))
    audit = [m.ack_id for m in await pull(engine, SHARD, "audit", 10, 60_000, 0)]
    billing = [m.ack_id for m in await pull(engine, SHARD, "billing", 10, 60_000, 0)]
    engine.detach(SHARD, "billing")  # deleted meanwhile: its acks are dropped, not an error
    assert engine.acknowledge(SHARD, "", audit + billing) == 2
    assert engine.acknowledge(SHARD, "", audit) == 0  # acked already
    with pytest.raises(errors.InvalidArgument):
        engine.acknowledge(SHARD, "", ["7:0:audit"])  # another partition
    engine.modify_ack_deadline(SHARD, "audit", audit, 0)
    assert await pull(engine, SHARD, "audit", 10, 60_000, 0) == []


async def test_a_stuck_lease_pins_its_own_message_not_every_later_one(engine, tmp_path):
    """Below the lowest cursor what no subscription needs becomes a stub: the log
    cannot be trimmed past the lease, but the acknowledged messages' data goes."""
    engine.attach(SHARD, subscription("audit"))
    ids = await append(engine, SHARD, messages(b"stuck", b"b", b"c", b"d"))
    stuck, *rest = await pull(engine, SHARD, "audit", 10, 60_000, 0)
    engine.acknowledge(SHARD, "audit", [m.ack_id for m in rest])
    assert engine.collect(SHARD, None) == 0  # the lease keeps the log from being trimmed
    engine.stub(SHARD)
    assert [engine.log.entry(SHARD, seq).HasField("message") for seq in range(4)] == [True, False, False, False]
    status = engine.message_status(SHARD, ids[2])  # a stub's message keeps its identity and history
    assert (status.message.message_id, [d.state for d in status.deliveries]) == (ids[2], [pubsub_pb2.ACKNOWLEDGED])
    engine.nack(SHARD, "audit", [stuck.ack_id], delay_ms=0)
    [again] = await pull(engine, SHARD, "audit", 10, 60_000, 0)
    assert (again.message.data, again.delivery_attempt) == (b"stuck", 2)

    # a follower stubs by the delivery state it received, and keeps what it names
    follower = await reopen(engine, tmp_path)
    try:
        follower.import_states(SHARD, follower.state_since(SHARD, -1))  # as a follower has it
        for seq in range(4):  # as replicated: whole entries
            entry = storage_pb2.StoredMessage(message=pubsub_pb2.PubsubMessage(data=b"x", message_id=f"m{seq}"),
                                              epoch=1)
            follower.db.rdict[follower.log.shard(SHARD).layout.message(seq)] = keys.sealed(entry.SerializeToString())
        follower.advance_commit(SHARD, 4)  # as the leader tells it
        follower.stub(SHARD)
        assert [follower.log.entry(SHARD, seq).HasField("message") for seq in range(4)] == [True, False, False, False]
    finally:
        await follower.close()


async def test_stubbing_waits_for_what_was_settled_a_round_before(engine):
    """The storage service stubs only below the lowest cursor of its previous round
    (settled_below): what the leader trims meanwhile is never stubbed first."""
    engine.attach(SHARD, subscription("audit"))
    await append(engine, SHARD, messages(b"a", b"b", b"c", b"d"))
    settled = engine.lowest_cursor(SHARD)  # a round ago: nothing delivered yet
    received = await pull(engine, SHARD, "audit", 10, 60_000, 0)
    engine.acknowledge(SHARD, "audit", [m.ack_id for m in received[1:3]])  # a and d still leased
    assert (settled, engine.lowest_cursor(SHARD)) == (0, 4)
    assert engine.stub(SHARD, settled_below=settled) == 0
    assert [engine.log.entry(SHARD, seq).HasField("message") for seq in range(4)] == [True] * 4
    assert engine.stub(SHARD, settled_below=engine.lowest_cursor(SHARD)) == 4  # the next round
    assert [engine.log.entry(SHARD, seq).HasField("message") for seq in range(4)] == [True, False, False, True]


async def test_dead_letters_are_listed_after_a_seq_lowest_first(engine):
    engine.attach(SHARD, dead_letter_subscription("audit"))
    ids = await append(engine, SHARD, messages(*(b"poison-%d" % i for i in range(5))))
    for received in await pull(engine, SHARD, "audit", 10, 60_000, 0):
        engine.nack(SHARD, "audit", [received.ack_id], terminal=True)
    while not engine.dead_letters.empty():
        engine.bury(engine.dead_letters.get_nowait(), "copy")

    first = engine.list_dead_letters(SHARD, "audit", 2)
    assert [d.message.message_id for d in first.dead_letters] == ids[:2] and first.more
    rest = engine.list_dead_letters(SHARD, "audit", 2, after_seq=first.seqs[-1])
    assert [d.message.message_id for d in rest.dead_letters] == ids[2:4] and rest.more
    last = engine.list_dead_letters(SHARD, "audit", 2, after_seq=rest.seqs[-1])
    assert [d.message.message_id for d in last.dead_letters] == ids[4:] and not last.more
    everything = engine.list_dead_letters(SHARD, "audit", 5)
    assert len(everything.dead_letters) == 5 and not everything.more  # exactly all: nothing after them


async def test_a_pull_for_thousands_of_subscriptions_lets_the_loop_run_between_slices(engine):
    # One pull leasing for 45,000 subscriptions held the loop (and the member lease's
    # keep-alive) for seconds; each subscription still gets its message once.
    names = [f"sub-{i}" for i in range(2_500)]
    for name in names:
        engine.attach(SHARD, subscription(name))
    ids = await append(engine, SHARD, messages(b"one"))
    turns = 0

    async def other_work():
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.ensure_future(other_work())
    await asyncio.sleep(0)
    started = turns
    pulled = await engine.pull(SHARD, [Pull(name, 10, 60_000) for name in names], 0)
    ran_meanwhile = turns - started
    other.cancel()
    assert ran_meanwhile >= 2, "the pull never let the loop run"
    assert sorted(pulled) == sorted(names)
    assert {pubsub_pb2.ReceivedMessage.FromString(raw).message.message_id
            for raws, *_ in pulled.values() for raw in raws} == set(ids)
    assert await engine.pull(SHARD, [Pull(name, 10, 60_000) for name in names], 0) == {}  # leased: none again


async def test_attaching_the_known_subscriptions_again_attaches_none_until_one_is_new_or_the_leader_is(engine):
    known = {f"audit-{i}": subscription(f"audit-{i}") for i in range(1000)}
    engine.lead(SHARD, 7)
    engine.attach_known(SHARD, known)
    attached = []
    attach = engine.deliveries.attach
    engine.deliveries.attach = lambda shard, record: attached.append(record.name) or attach(shard, record)
    engine.attach_known(SHARD, known)  # the GC round, each second
    assert attached == []
    known["audit-new"] = subscription("audit-new")
    engine.attach_known(SHARD, known)
    assert "audit-new" in engine.shard(SHARD).subscriptions
    attached.clear()
    engine.attach_known(SHARD, known, every=True)  # etcd read again: every record taken
    assert len(attached) == len(known)
    attached.clear()
    engine.lead(SHARD, 8)  # a new leadership restores the state saved: its records are taken again
    engine.attach_known(SHARD, known)
    assert len(attached) == len(known)


async def test_a_collect_round_with_nothing_changed_since_one_that_freed_nothing_looks_at_no_subscription(
        engine, monkeypatch):
    for i in range(100):
        engine.attach(SHARD, subscription(f"audit-{i}"))
    await append(engine, SHARD, messages(b"a"))
    looked = []
    low_watermark = SubscriptionState.low_watermark
    monkeypatch.setattr(SubscriptionState, "low_watermark", lambda state: looked.append(state.name)
                        or low_watermark(state))
    assert engine.collect(SHARD, None) == 0  # not delivered yet
    looked.clear()
    assert engine.collect(SHARD, None) == 0  # a second later, nothing changed
    assert looked == []
    for i in range(100):  # each subscription gets it and acks it: the entry is freed
        (received,) = await pull(engine, SHARD, f"audit-{i}", 1, 10_000, 0)
        engine.acknowledge(SHARD, f"audit-{i}", [received.ack_id])
    assert engine.collect(SHARD, None) == 1
    assert len(looked) == 100


async def test_merged_nacks_give_each_subscriptions_messages_back_and_drop_those_not_attached(engine):
    """A sender's nacks of streams gone (subscription "": each ack id names its own),
    one request per shard instead of one per subscription (issue 19)."""
    engine.attach(SHARD, subscription("audit"))
    engine.attach(SHARD, subscription("billing"))
    await append(engine, SHARD, messages(b"x"), DEDUP_MS)
    [audit] = await pull(engine, SHARD, "audit", 10, 60_000, 0)
    [billing] = await pull(engine, SHARD, "billing", 10, 60_000, 0)
    gone = audit.ack_id.replace(":audit", ":deleted")  # of a subscription not attached (deleted meanwhile)
    engine.modify_ack_deadline(SHARD, "", [audit.ack_id, billing.ack_id, gone], 0)
    [again] = await pull(engine, SHARD, "audit", 10, 60_000, 0)
    [billing_again] = await pull(engine, SHARD, "billing", 10, 60_000, 0)
    assert (again.delivery_attempt, billing_again.delivery_attempt) == (2, 2)
    with pytest.raises(errors.NotFound):  # a deadline moved needs its subscription named
        engine.modify_ack_deadline(SHARD, "", [again.ack_id], 30_000)


class CountedGets:
    """The log's Rdict, counting its point reads."""

    def __init__(self, rdict):
        self._rdict, self.gets = rdict, 0

    def get(self, *args, **kwargs):
        self.gets += 1
        return self._rdict.get(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._rdict, name)


async def test_the_epoch_before_what_followers_lack_is_known_without_reading_the_entry_back(engine):
    """The next Replicate request names the epoch of the entry before the first it
    carries (prev_epoch): the tail keeps it once every follower has the entry."""
    await append(engine, SHARD, messages(b"a", b"b"), epoch=3)
    await append(engine, SHARD, messages(b"c"), epoch=4)
    engine.release_tail(SHARD, 3)  # every follower has all three
    counted = engine.log._rdict = CountedGets(engine.log._rdict)
    assert engine.epoch_at(SHARD, 2) == 4
    assert counted.gets == 0
    assert engine.epoch_at(SHARD, 1) == 3  # released: read back
    assert counted.gets == 1


async def test_a_followers_last_epoch_is_known_without_reading_its_entry_back(engine):
    """A follower checks each batch against the epoch of its last entry (prev_epoch)."""
    leader_entries = Entries.of([storage_pb2.StoredMessage(message=pubsub_pb2.PubsubMessage(data=b"a"), epoch=5),
                                 storage_pb2.StoredMessage(message=pubsub_pb2.PubsubMessage(data=b"b"), epoch=6)])
    await engine.write_replicated(SHARD, 0, leader_entries)
    counted = engine.log._rdict = CountedGets(engine.log._rdict)
    assert engine.epoch_at(SHARD, 1) == 6
    assert counted.gets == 0
    assert engine.epoch_at(SHARD, 0) == 5
    assert counted.gets == 1


async def test_a_truncation_without_entries_leaves_the_epoch_of_the_entry_before_as_the_last(engine):
    await engine.write_replicated(SHARD, 0, Entries.of([storage_pb2.StoredMessage(epoch=epoch) for epoch in (5, 6, 7)]))
    await engine.write_replicated(SHARD, 2, Entries())  # a leader's log ends at 2: ours is cut there
    log_ = engine.shard(SHARD)
    assert (log_.end, log_.last_epoch, engine.epoch_at(SHARD, 1)) == (2, 6, 6)


def _identity(engine: StorageEngine, seq: int) -> pubsub_pb2.PubsubMessage | None:
    """The identity engine recorded of entry seq (in the chunk keys.ShardKeys.identities), opened."""
    layout = engine.shard(SHARD).layout
    for key, value in engine.db.prefixed(layout.identities_prefix, layout.identities(seq)):
        found = keys.parse_identities_value(keys.open_value(engine.db.ring, key, value), keys.seq_of(key)).get(seq)
        return keys.parse_collected_value(found) if found is not None else None
    return None


async def test_what_is_trimmed_or_collected_leaves_its_identity_without_being_read_back(engine, tmp_path):
    """Each replica keeps the identities of the entries it writes (a replaced tail's
    replaced too): a follower's trim and the leader's collect record them without
    reading an entry back and opening it."""
    follower = StorageEngine(tmp_path / "follower", "storage-2")
    follower.start()
    try:
        stale = storage_pb2.StoredMessage(epoch=1, message=pubsub_pb2.PubsubMessage(data=b"x", message_id="stale"))
        await follower.write_replicated(SHARD, 0, Entries.of([storage_pb2.StoredMessage(epoch=1), stale]))
        await follower.write_replicated(SHARD, 1, Entries.of([storage_pb2.StoredMessage(epoch=2, message=(
            pubsub_pb2.PubsubMessage(data=b"pay", message_id="id-1", attributes={"order": "9"})))]))
        follower.advance_commit(SHARD, 2)
        counted = follower.log._rdict = CountedGets(follower.log._rdict)
        assert follower.trim(SHARD, 2) == 2
        assert counted.gets == 0
        assert _identity(follower, 0) is None  # an epoch marker has none
        assert _identity(follower, 1) == pubsub_pb2.PubsubMessage(message_id="id-1", attributes={"order": "9"})
    finally:
        await follower.close()
    engine.attach(SHARD, subscription("audit"))
    [message_id] = await append(engine, SHARD, [pubsub_pb2.PubsubMessage(data=b"a", attributes={"k": "v"})])
    [received] = await pull(engine, SHARD, "audit", 10, 60_000, 0)
    engine.acknowledge(SHARD, "audit", [received.ack_id])
    counted = engine.log._rdict = CountedGets(engine.log._rdict)
    assert engine.collect(SHARD, None) == 1
    assert counted.gets == 0
    assert (_identity(engine, 0).message_id, dict(_identity(engine, 0).attributes)) == (message_id, {"k": "v"})


async def test_identities_beyond_the_kept_window_are_read_back(engine, monkeypatch):
    monkeypatch.setattr(log_module, "MAX_IDENTITIES", 2)
    ids = await append(engine, SHARD, messages(b"a", b"b", b"c", b"d"))
    counted = engine.log._rdict = CountedGets(engine.log._rdict)
    assert engine.collect(SHARD, None) == 4  # no subscription
    assert counted.gets == 2, "the two oldest fell out of the window"
    assert [_identity(engine, seq).message_id for seq in range(4)] == ids


def test_a_message_without_data_is_sliced_out_of_its_entry_as_in_two_steps():
    """wire.message_without_data(entry) == wire.without_data(wire.message_of(entry)),
    whatever the entry's shape."""
    shapes = [storage_pb2.StoredMessage(epoch=1),
              storage_pb2.StoredMessage(epoch=1, message=pubsub_pb2.PubsubMessage()),
              storage_pb2.StoredMessage(epoch=1, message=pubsub_pb2.PubsubMessage(message_id="no data")),
              storage_pb2.StoredMessage(epoch=1, append_ms=5, message=pubsub_pb2.PubsubMessage(
                  data=b"x" * 300, message_id="id", attributes={"a": "b"}, ordering_key="o"))]
    raws = [shape.SerializeToString() for shape in shapes]
    data_last = pubsub_pb2.PubsubMessage(message_id="id-2").SerializeToString() + wire.field(1, b"payload")
    raws.append(wire.field(1, data_last) + wire.field(6, b"k:x"))  # its data last, a dedup key after the message
    for raw in raws:
        message = wire.message_of(raw)
        assert wire.message_without_data(raw) == (wire.without_data(message) if message is not None else None)
