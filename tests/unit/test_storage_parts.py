"""The storage engine's parts, each driven through its interfaces
(storage/interfaces.py) over in-memory fakes (tests/unit/storage_fakes.py):
no RocksDB. The engine as a whole is in test_storage_engine.py."""

import time

import pytest
from rocksdict import Options, Rdict

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms, timestamp
from notifymesh.server.sealing import KeyRing
from storage import keys
from storage.db import Database
from storage import dead_letters as dead_letters_module, delivery
from storage.dead_letters import DeadLetters
from storage.dedup import Dedup
from storage.delivery import Deliveries, Pull
from storage.delivery_log import DeliveryLog
from storage.group_commit import GroupCommit
from storage.interfaces import LogStore, Records, SubscriptionStore
from storage.log import Entries, ShardLogs
from storage.retention import COLLECT_CHUNK, Retention
from tests.unit.storage_fakes import MemoryBatch, MemoryLog, MemoryRecords

CLEAR = KeyRing(None, enabled=False)  # encryption at rest off (tests/unit/test_sealing.py has it on)

SHARD = "orders/3"


def subscription(name: str, created_ms: int = 0, **fields) -> pubsub_pb2.Subscription:
    return pubsub_pb2.Subscription(name=name, topic="orders", create_time=timestamp(created_ms), **fields)


@pytest.fixture
def log_():
    return MemoryLog()


@pytest.fixture
def records():
    return MemoryRecords()


@pytest.fixture
def deliveries(log_, records):
    return Deliveries(log_, records)


async def pull(deliveries: Deliveries, name: str, max_messages: int = 10, ack_deadline_ms: int = 60_000):
    got = (await deliveries.pull(SHARD, [Pull(name, max_messages, ack_deadline_ms)], 0)).get(name)
    return [pubsub_pb2.ReceivedMessage.FromString(raw) for raw in got.received] if got else []


def test_fakes_and_real_parts_implement_the_interfaces(tmp_path, log_, records, deliveries):
    db = Database(tmp_path / "rocksdb")
    try:
        assert isinstance(records, Records) and isinstance(db, Records)
        assert isinstance(log_, LogStore) and isinstance(ShardLogs(db, GroupCommit(db)), LogStore)
        assert isinstance(deliveries, SubscriptionStore)
    finally:
        db.close()


def test_the_database_files_carry_bloom_filters_so_a_missing_key_is_not_read_from_them(tmp_path):
    """Most point reads miss (the row a table write supersedes, unset preferences):
    RocksDB's filter answers them without reading a table file's blocks."""
    before = Options(raw_mode=True)  # a database made before the filters: its table file has none
    before.create_if_missing(True)
    old = Rdict(str(tmp_path / "db"), before)
    old[b"row"] = b"value"
    old.flush()
    old.close()
    assert "filter_policy=bloomfilter" not in sorted((tmp_path / "db").glob("OPTIONS-*"))[-1].read_text()
    db = Database(tmp_path / "db")  # opens it with the filters: its old file still reads, new files get them
    assert db.get(b"row") == b"value" and db.get(b"other") is None
    db.put(b"new", b"value")
    db.rdict.flush()
    assert "filter_policy=bloomfilter" in sorted((tmp_path / "db").glob("OPTIONS-*"))[-1].read_text()
    assert db.get(b"new") == b"value" and db.get(b"row") == b"value"
    db.close()
    restarted = Database(tmp_path / "db")  # and keeps them when opened again (a restart)
    restarted.put(b"after", b"value")
    restarted.rdict.flush()
    assert "filter_policy=bloomfilter" in sorted((tmp_path / "db").glob("OPTIONS-*"))[-1].read_text()
    assert [restarted.get(k) for k in (b"row", b"new", b"after")] == [b"value"] * 3
    restarted.close()


async def test_delivery_state_over_a_fake_log(log_, records, deliveries):
    log_.append(SHARD, b"old", append_ms=10)
    log_.append(SHARD, b"a", b"b", append_ms=20)
    log_.append(SHARD, b"uncommitted", append_ms=30, commit=False)
    deliveries.attach(SHARD, subscription("audit", created_ms=20))  # starts at its create time
    first = await pull(deliveries, "audit")
    assert [(m.message.data, m.ack_id, m.delivery_attempt) for m in first] == [
        (b"a", "3:1:audit", 1), (b"b", "3:2:audit", 1)]
    assert await pull(deliveries, "audit") == []  # leased; the uncommitted entry is not delivered
    assert deliveries.acknowledge(SHARD, "audit", [first[0].ack_id]) == 1
    deliveries.nack(SHARD, "audit", [first[1].ack_id], delay_ms=0, reason="HTTP 503")
    [again] = await pull(deliveries, "audit", ack_deadline_ms=1)
    assert (again.message.data, again.delivery_attempt) == (b"b", 2)
    assert [(d.subscription, d.attempt, d.outcome, d.error) for d in records.deliveries(SHARD)] == [
        ("audit", 1, pubsub_pb2.ACKED, ""), ("audit", 1, pubsub_pb2.NACKED, "HTTP 503")]
    with pytest.raises(errors.InvalidArgument):
        deliveries.acknowledge(SHARD, "audit", ["4:1:audit"])  # another partition
    with pytest.raises(errors.NotFound):
        deliveries.subscription(SHARD, "billing")


async def test_snapshot_moves_delivery_state_to_another_node(log_, records, deliveries):
    log_.append(SHARD, b"a", b"b", b"c")
    deliveries.attach(SHARD, subscription("audit"))
    a, b = await pull(deliveries, "audit", max_messages=2)
    deliveries.acknowledge(SHARD, "audit", [a.ack_id])
    deliveries.nack(SHARD, "audit", [b.ack_id], delay_ms=60_000, reason="later")
    deliveries.save_state(SHARD)
    update = deliveries.state_since(SHARD, -1)
    layout = keys.ShardKeys(SHARD)
    assert [keys.parse_subscription_state(records.get(layout.subscription_state("audit")))] == update.states

    follower_log = MemoryLog()
    follower_log.append(SHARD, b"a", b"b", b"c")
    follower = Deliveries(follower_log, MemoryRecords())
    follower.import_states(SHARD, update)
    assert follower_log.shard(SHARD).state_stamp == update.stamp and follower_log.shard(SHARD).subscriptions == {}
    follower.lead(SHARD, 2)  # as the new leader: the saved form comes back into memory
    state = follower.subscription(SHARD, "audit")
    assert (state.cursor, list(state.leases), state.leases[1].last_error) == (2, [1], "later")
    follower.attach(SHARD, subscription("audit"))
    [c] = await pull(follower, "audit")
    assert c.message.data == b"c"


async def test_dead_letters_over_fakes(log_, records, deliveries):
    dead_letters = DeadLetters(log_, deliveries, records)
    log_.append(SHARD, b"poison")
    deliveries.attach(SHARD, subscription("audit", max_delivery_attempts=1, dead_letter_topic="dlq"))
    await pull(deliveries, "audit")
    log_.shard(SHARD).subscriptions["audit"].leases[0].deadline_ms = 0  # its deadline passed
    dead_letters.sweep(SHARD)
    dead = deliveries.dead_letters.get_nowait()
    assert (dead.seq, dead.attempts, dead.topic, dead_letters.message(dead).data) == (0, 1, "dlq", b"poison")
    dead_letters.bury(dead, "copy-1")
    [listed] = dead_letters.list(SHARD, "audit", 10).dead_letters
    assert (listed.message.data, listed.dead_letter_message_id, listed.delivery_attempts) == (b"poison", "copy-1", 1)
    assert records.deliveries(SHARD)[-1].outcome == pubsub_pb2.DEAD_LETTER
    assert dead_letters.redrive(SHARD, "audit") == 1
    [again] = await pull(deliveries, "audit")
    assert (again.message.data, again.delivery_attempt) == (b"poison", 1)


async def test_redrive_rules_send_matching_dead_letters_back_after_their_delay_at_most_max_times(
        log_, records, deliveries):
    dead_letters = DeadLetters(log_, deliveries, records)
    log_.append(SHARD, b"transient")
    log_.append(SHARD, b"unknown")
    rule = pubsub_pb2.RedriveRule(reason="^provider unavailable", max_redrives=2)
    rule.after.FromSeconds(600)
    deliveries.attach(SHARD, subscription("audit", max_delivery_attempts=1, dead_letter_topic="dlq",
                                          redrive_rules=[pubsub_pb2.RedriveRule(reason="^never"), rule]))
    state = log_.shard(SHARD).subscriptions["audit"]

    async def die() -> None:
        """Each message delivered now fails for good with its reason, and is buried."""
        for received in await pull(deliveries, "audit"):
            reason = "provider unavailable: sms-a open" if received.message.data == b"transient" else "HTTP 400"
            deliveries.nack(SHARD, "audit", [received.ack_id], terminal=True, reason=reason)
            dead_letters.bury(deliveries.dead_letters.get_nowait(), "copy")

    await die()
    assert sorted(state.dead_letters) == [0, 1]
    assert dead_letters.redrive_by_rules(SHARD) == 0  # not dead for 10 minutes yet
    for round_ in (1, 2):
        for record in state.dead_letters.values():
            record.dead_ms -= 600_000
        assert dead_letters.redrive_by_rules(SHARD) == 1
        assert sorted(state.dead_letters) == [1] and state.redrives == {0: round_}
        await die()
        [listed, _] = dead_letters.list(SHARD, "audit", 10).dead_letters
        assert (listed.message.data, listed.redrives, listed.delivery_attempts) == (b"transient", round_, 1)
    for record in state.dead_letters.values():
        record.dead_ms -= 600_000
    assert dead_letters.redrive_by_rules(SHARD) == 0  # twice at most; the unknown reason waits for a person
    saved = delivery.Deliveries._saved_form(state)
    assert [r.redrives for r in saved.dead_letters] == [0, 2]

    # A redriven message acknowledged: its count goes with its lease.
    state.dead_letters[0].redrives = 0
    state.dead_letters[0].dead_ms -= 600_000
    assert dead_letters.redrive_by_rules(SHARD) == 1
    [again] = await pull(deliveries, "audit")
    assert again.delivery_attempt == 1
    deliveries.acknowledge(SHARD, "audit", [again.ack_id])
    dead_letters.redrive_by_rules(SHARD)
    assert state.redrives == {}


async def test_each_dead_lettering_moves_once(log_, records, deliveries):
    """A retried move of one dead-lettering has its key; a redriven message's next
    dead-lettering another; an acknowledged one none."""
    dead_letters = DeadLetters(log_, deliveries, records)
    log_.append(SHARD, b"poison")
    deliveries.attach(SHARD, subscription("audit", max_delivery_attempts=1, dead_letter_topic="dlq"))
    leases = log_.shard(SHARD).subscriptions["audit"].leases
    [first] = await pull(deliveries, "audit")
    deliveries.nack(SHARD, "audit", [first.ack_id], terminal=True)
    dead = deliveries.dead_letters.get_nowait()
    leases[0].deadline_ms = 0  # the move failed: the sweep queues it again
    dead_letters.sweep(SHARD)
    retried = deliveries.dead_letters.get_nowait()
    first_key = dead_letters.move_key(dead)
    assert first_key == dead_letters.move_key(retried) is not None
    dead_letters.bury(retried, "copy-1")
    assert dead_letters.redrive(SHARD, "audit") == 1
    time.sleep(0.002)  # the next delivery is a later millisecond
    [second] = await pull(deliveries, "audit")
    deliveries.nack(SHARD, "audit", [second.ack_id], terminal=True)
    again = deliveries.dead_letters.get_nowait()
    assert dead_letters.move_key(again) not in (None, first_key)
    deliveries.acknowledge(SHARD, "audit", [second.ack_id])
    assert dead_letters.move_key(again) is None


async def test_a_full_dead_letter_queue_holds_messages_back_and_refuses_terminal_nacks(log_, records):
    """Back-pressure, not growth: what does not fit waits in its lease, is not
    delivered again, and is queued once there is room."""
    deliveries = Deliveries(log_, records, max_queued_dead_letters=2)
    dead_letters = DeadLetters(log_, deliveries, records)
    for data in (b"a", b"b", b"c"):
        log_.append(SHARD, data)
    deliveries.attach(SHARD, subscription("audit", max_delivery_attempts=1, dead_letter_topic="dlq"))
    received = await pull(deliveries, "audit")
    leases = log_.shard(SHARD).subscriptions["audit"].leases
    for lease in leases.values():
        lease.deadline_ms = 0  # every deadline passed
    dead_letters.sweep(SHARD)
    assert deliveries.dead_letters.qsize() == 2
    assert await pull(deliveries, "audit") == []  # the third waits in its lease, not redelivered
    with pytest.raises(errors.ResourceExhausted, match="nothing was nacked"):
        deliveries.nack(SHARD, "audit", [received[2].ack_id], terminal=True)
    assert leases[2].attempt == 1 and leases[2].deadline_ms <= now_ms() + 1_000
    moved = [deliveries.dead_letters.get_nowait() for _ in range(2)]
    for dead in moved:
        dead_letters.bury(dead, "copy")
    leases[2].deadline_ms = 0
    dead_letters.sweep(SHARD)
    assert [d.seq for d in moved] + [deliveries.dead_letters.get_nowait().seq] == [0, 1, 2]


async def test_retention_over_fakes(log_, deliveries):
    retention = Retention(log_, deliveries, MemoryRecords())
    log_.append(SHARD, b"a", b"b", append_ms=1)
    log_.append(SHARD, b"c", append_ms=now_ms() + 60_000)
    deliveries.attach(SHARD, subscription("audit"))
    [a, _, _] = await pull(deliveries, "audit")
    deliveries.acknowledge(SHARD, "audit", [a.ack_id])
    assert retention.collect(SHARD, None) == 1  # b and c in flight
    assert retention.collect(SHARD, 1000) == 1  # b past retention: expired for the subscription
    assert list(deliveries.subscription(SHARD, "audit").leases) == [2]
    assert retention.collect("other/0", None) == 0


async def test_delivery_log_over_fakes(log_, records, deliveries):
    delivery_log = DeliveryLog(log_, deliveries, records)
    [seq] = log_.append(SHARD, b"a")
    records.put(keys.ShardKeys(SHARD).index("id-0"), keys.index_value(seq))
    deliveries.attach(SHARD, subscription("audit"))
    [a] = await pull(deliveries, "audit")
    [status] = delivery_log.message_status(SHARD, "id-0").deliveries
    assert (status.state, [t.outcome for t in status.attempts]) == (pubsub_pb2.DELIVERED, [pubsub_pb2.IN_FLIGHT])
    deliveries.acknowledge(SHARD, "audit", [a.ack_id])
    [status] = delivery_log.message_status(SHARD, "id-0").deliveries
    assert (status.state, [t.outcome for t in status.attempts]) == (pubsub_pb2.ACKNOWLEDGED, [pubsub_pb2.ACKED])
    log_.trim(SHARD, 1)
    assert delivery_log.collect(SHARD, now_ms() + 1) == 1
    with pytest.raises(errors.NotFound):
        delivery_log.message_status(SHARD, "id-0")


def identities(records: MemoryRecords) -> set[int]:
    """The seqs whose identities retention recorded (keys.ShardKeys.identities and .collected)."""
    layout, seqs = keys.ShardKeys(SHARD), set()
    for key, value in records.prefixed(layout.identities_prefix):
        seqs.update(keys.parse_identities_value(value, keys.seq_of(key)))
    return seqs | {keys.seq_of(key) for key, _ in records.prefixed(layout.collected_prefix)}


async def test_a_collected_message_keeps_its_identity_while_its_delivery_log_is_kept(log_, records, deliveries):
    delivery_log, retention = DeliveryLog(log_, deliveries, records), Retention(log_, deliveries, records)
    [seq] = log_.append(SHARD, b"payload")
    log_.entries[SHARD][seq].message.attributes["order"] = "42"
    log_.entries[SHARD][seq].message.publish_time.FromMilliseconds(1234)
    records.put(keys.ShardKeys(SHARD).index("id-0"), keys.index_value(seq))
    deliveries.attach(SHARD, subscription("audit"))
    [a] = await pull(deliveries, "audit")
    deliveries.acknowledge(SHARD, "audit", [a.ack_id])
    assert retention.collect(SHARD, None) == 1
    status = delivery_log.message_status(SHARD, "id-0")
    assert (status.message.message_id, status.message.publish_time.ToMilliseconds(), dict(status.message.attributes),
            status.message.data) == ("id-0", 1234, {"order": "42"}, b"")
    assert [d.state for d in status.deliveries] == [pubsub_pb2.ACKNOWLEDGED]
    assert delivery_log.collect(SHARD, now_ms() - 60_000) == 0  # delivered since: both stay
    assert identities(records) == {seq}
    assert delivery_log.collect(SHARD, now_ms() + 1) == 1
    assert identities(records) == set(), "collected with its delivery log"


async def test_a_chunk_of_identities_stays_while_the_delivery_log_of_any_of_its_messages_does(
        log_, records, deliveries, monkeypatch):
    delivery_log, retention = DeliveryLog(log_, deliveries, records), Retention(log_, deliveries, records)
    seqs = log_.append(SHARD, b"a", b"b", b"c")
    for seq in seqs:
        records.put(keys.ShardKeys(SHARD).index(f"id-{seq}"), keys.index_value(seq))
    deliveries.attach(SHARD, subscription("audit"))
    for seq, at in zip(seqs, (1_000, 2_000, 2_000)):  # delivered at these times
        monkeypatch.setattr(delivery, "now_ms", lambda: at)
        [received] = await pull(deliveries, "audit", max_messages=1)
        deliveries.acknowledge(SHARD, "audit", [received.ack_id])
    assert retention.collect(SHARD, None) == 3
    assert delivery_log.collect(SHARD, 1_500) == 1  # the first message's record: its chunk holds the others'
    assert identities(records) == set(seqs)
    assert delivery_log.message_status(SHARD, "id-1").message.message_id == "id-1"
    assert delivery_log.collect(SHARD, 2_500) == 2
    assert identities(records) == set()


def test_retention_collects_a_chunk_at_a_time(log_, records, deliveries):
    retention = Retention(log_, deliveries, records)
    log_.append(SHARD, *[b"x"] * (COLLECT_CHUNK + 5))
    assert retention.collect(SHARD, None) == COLLECT_CHUNK
    assert retention.collect(SHARD, None) == 5
    assert identities(records) == set(range(COLLECT_CHUNK + 5))
    assert len(list(records.prefixed(keys.ShardKeys(SHARD).identities_prefix))) == 2, "a value a chunk"


def test_dedup_finds_stored_idempotency_keys(log_, records):
    dedup = Dedup(log_, records)
    layout = keys.ShardKeys(SHARD)
    records.put(layout.idempotency("k:once"), keys.idempotency_value(now_ms() + 60_000, "original"))
    records.put(layout.idempotency("k:expired"), keys.idempotency_value(now_ms() - 1, "gone"))
    messages = [pubsub_pb2.PubsubMessage(data=b"x", idempotency_key=key) for key in ("once", "expired", "expired")]
    ids, entries = dedup.prepare(SHARD, messages, 1, 60_000, retry=False)
    assert ids[0] == "original" and ids[1] == ids[2] != "gone"
    assert entries.ids == [ids[1]] and entries.dedup_keys == ["k:expired"]
    assert dedup.collect_idempotency_keys() == 1
    log_.append(SHARD, b"a")
    retried = pubsub_pb2.PubsubMessage(data=b"a", message_id="id-0")
    assert dedup.prepare(SHARD, [retried], 1, 60_000, retry=True) == (["id-0"], Entries())  # in the log already


def test_keys_encode_and_parse_in_pairs():
    layout = keys.ShardKeys(SHARD)
    key = layout.delivery(7, "audit", 123, 4)
    assert keys.parse_delivery_key(key) == keys.DeliveryKey(SHARD, 7, "audit", 123, 4)
    assert key.startswith(layout.deliveries(7)) and key.startswith(layout.deliveries())
    assert keys.parse_delivery(key, keys.delivery_record(456, pubsub_pb2.NACKED, "HTTP 500"), CLEAR) == keys.Delivery(
        "audit", 4, 123, 456, pubsub_pb2.NACKED, "HTTP 500")
    assert keys.parse_message(layout.message(9)) == keys.MessageKey(SHARD, 9) == (SHARD, 9)
    assert keys.message(SHARD, 9) == layout.message(9)
    assert keys.shard_of(layout.first) == keys.shard_of(layout.state) == keys.shard_of(layout.index("x")) == SHARD
    assert keys.parse_idempotency_value(keys.idempotency_value(5, "id")) == keys.Idempotency(5, "id")
    assert [keys.live_message_id(keys.idempotency_value(5, "id"), now) for now in (4, 5)] == ["id", None]
    assert keys.parse_index_value(keys.index_value(2 ** 40)) == 2 ** 40
    assert keys.parse_first_value(keys.first_value(3)) == keys.FirstKept(3, 0)
    assert keys.parse_first_value(keys.first_value(3, 1_700_000_000_000)) == (3, 1_700_000_000_000)
    assert keys.seq_of(keys.first_value(3, 1_700_000_000_000)) == 3  # as a version before trimmed_ms reads it
    packed = keys.lease_state(1, 2, 3, 4) + keys.lease_state(5, 6, 7, 8)
    assert list(keys.parse_lease_states(packed)) == [keys.LeaseState(1, 2, 3, 4), keys.LeaseState(5, 6, 7, 8)]
    assert keys.unsealed(keys.sealed(b"entry")) == b"entry" and keys.unsealed(b"\0" + keys.sealed(b"x")[1:]) is None
    batch = MemoryRecords()
    writes = batch.batch()
    layout.put_entry(writes, 9, b"entry", "id-9", CLEAR)
    layout.put_idempotency(writes, "k:a", 5, "id-9")
    batch.write(writes)
    assert batch.values == {layout.message(9): keys.sealed(b"entry"), layout.index("id-9"): keys.index_value(9),
                            layout.idempotency("k:a"): keys.idempotency_value(5, "id-9")}


# -- the delivery log is replicated (issue "Never lost", finding 10) ---------------------------


class _NotLeading:
    led: dict = {}

    async def step_down(self, shard, reason, resign=False):
        pass


class _Candidacy:
    async def withdraw(self, shard, leader_epoch=None):
        return True


def _open(path, node: str):
    from storage.engine import StorageEngine
    engine = StorageEngine(path, node)
    engine.start()
    return engine


async def _replicate(leader, follower, node: str = "storage-2") -> storage_pb2.ReplicateRequest:
    """One Replicate exchange between a Leader and a Follower, without gRPC."""
    outgoing = leader.request_for(node)
    await leader._handle_results(node, await follower.replicate(outgoing.request), outgoing.sent)
    return outgoing.request


async def test_delivery_records_and_identities_reach_a_follower_and_outlive_the_leader(tmp_path):
    """Attempts recorded on the leader (a nack with its reason, an ack) go to the
    follower with the next request and are not sent again once answered; the
    follower records the identity of what it trims; as the new leader it answers
    message status with both attempts."""
    from storage.follower import Follower
    from storage.leader import Leader, Leadership, Progress
    stored = [storage_pb2.StoredMessage(epoch=1), storage_pb2.StoredMessage(
        epoch=1, message=pubsub_pb2.PubsubMessage(data=b"pay", message_id="id-1", attributes={"order": "9"}))]
    a, b = _open(tmp_path / "a", "storage-1"), _open(tmp_path / "b", "storage-2")
    try:
        await a.write_replicated(SHARD, 0, Entries.of(stored))
        a.advance_commit(SHARD, 2)
        a.lead(SHARD, 1)
        a.attach(SHARD, subscription("audit"))
        [first] = (await a.pull(SHARD, [Pull("audit", 10, 60_000)], 0))["audit"].ack_ids
        a.nack(SHARD, "audit", [first], delay_ms=0, reason="card declined")
        [second] = (await a.pull(SHARD, [Pull("audit", 10, 60_000)], 0))["audit"].ack_ids
        assert a.acknowledge(SHARD, "audit", [second]) == 1
        leader = Leader(a, None, None, "storage-1", None, {})
        leader.led[SHARD] = Leadership(SHARD, 1, ["storage-1", "storage-2"], marker=0,
                                       progress={"storage-2": Progress(next=0)})
        follower = Follower(b, _NotLeading(), _Candidacy(), {}, {})
        follower.open()
        [sent] = (await _replicate(leader, follower)).shards
        assert len(sent.delivery_keys) == len(sent.delivery_records) == 2
        assert not (await _replicate(leader, follower)).shards, "answered: not sent again"
        leader.state_due()
        assert a.shard(SHARD).layout.written == [], "released once every follower has them"
        assert a.collect(SHARD, None) == 2  # acknowledged: collected on the leader
        await _replicate(leader, follower)  # its new first: the follower trims, keeping the identity
        assert b.shard(SHARD).first == 2
        b.lead(SHARD, 2)
        status = b.message_status(SHARD, "id-1")
        assert (status.message.message_id, dict(status.message.attributes), status.message.data) == (
            "id-1", {"order": "9"}, b"")
        [delivery] = status.deliveries
        assert [(t.attempt, t.outcome, t.error) for t in delivery.attempts] == [
            (1, pubsub_pb2.NACKED, "card declined"), (2, pubsub_pb2.ACKED, "")]
        b.store_replicated(SHARD, [keys.ShardKeys("other/0").delivery(1, "x", 1, 1)], [b"x" * 9])
        assert list(b.db.prefixed(keys.ShardKeys("other/0").deliveries())) == [], "another shard's key is refused"
    finally:
        await a.close()
        await b.close()


def test_the_delivery_keys_kept_for_followers_are_bounded(monkeypatch):
    monkeypatch.setattr(keys, "WRITTEN_KEPT", 10)
    layout = keys.ShardKeys(SHARD)
    made = [layout.delivery(seq, "audit", 1, 1) for seq in range(25)]
    record = keys.delivery_record(2, pubsub_pb2.ACKED)
    for key in made:
        layout.put_delivery(MemoryBatch(), key, record)
    assert len(layout.written) <= 20 and layout.written_end == 25
    assert layout.written == made[layout.written_from:] and layout.written_records == [record] * len(layout.written)
    layout.release_written(23)
    assert (layout.written, layout.written_records, layout.written_from) == (made[23:], [record] * 2, 23)
    layout.release_written(5)  # behind the window: nothing
    assert layout.written_end == 25


def test_records_without_an_error_go_to_followers_without_being_read_back(log_, records, deliveries):
    """The leader keeps what it put of a record without an error (a few bytes, shared)
    and reads back only those with an error (which may be long)."""
    delivery_log, layout = DeliveryLog(log_, deliveries, records), log_.shard(SHARD).layout
    acked, nacked = keys.delivery_record(5, pubsub_pb2.ACKED), keys.delivery_record(6, pubsub_pb2.NACKED, "HTTP 503")
    batch = records.batch()
    for seq, record in enumerate((acked, nacked, acked)):
        layout.put_delivery(batch, layout.delivery(seq, "audit", 1, 1), record)
    records.write(batch)
    read = []
    records.get_many = lambda keys_: (read.append(keys_), MemoryRecords.get_many(records, keys_))[1]
    sent = delivery_log.written_since(SHARD, 0, 10, 1 << 20)
    assert (sent.keys, sent.values, sent.end) == (layout.written, [acked, nacked, acked], 3)
    assert read == [[layout.delivery(1, "audit", 1, 1)]]


def test_a_follower_records_identities_a_chunk_at_a_time(log_, records, deliveries):
    delivery_log = DeliveryLog(log_, deliveries, records)
    log_.append(SHARD, *[b"x"] * (COLLECT_CHUNK + 5))
    assert delivery_log.keep_identities(SHARD, COLLECT_CHUNK + 5) == COLLECT_CHUNK
    log_.trim(SHARD, COLLECT_CHUNK)
    assert delivery_log.keep_identities(SHARD, COLLECT_CHUNK + 5) == COLLECT_CHUNK + 5
    assert identities(records) == set(range(COLLECT_CHUNK + 5))


async def test_delivery_records_go_within_the_request_bound(tmp_path):
    """Many records for a follower: each request stays under the leader's byte bound
    and carries some, until all went."""
    from storage.leader import Leader, Leadership, Progress
    a = _open(tmp_path / "a", "storage-1")
    try:
        stored = [storage_pb2.StoredMessage(epoch=1, message=pubsub_pb2.PubsubMessage(data=b"x", message_id=f"m{i}"))
                  for i in range(3000)]
        await a.write_replicated(SHARD, 0, Entries.of(stored))
        a.advance_commit(SHARD, 3000)
        a.lead(SHARD, 1)
        a.attach(SHARD, subscription("audit"))
        a.acknowledge(SHARD, "audit", list((await a.pull(SHARD, [Pull("audit", 3000, 60_000)], 0))["audit"].ack_ids))
        leader = Leader(a, None, None, "storage-1", None, {}, max_request_bytes=20_000)
        progress = Progress(next=3000, match=3000, first=0)
        leader.led[SHARD] = Leadership(SHARD, 1, ["storage-1", "storage-2"], marker=0,
                                       progress={"storage-2": progress})
        sent, requests = set(), 0
        while progress.records < a.shard(SHARD).layout.written_end and requests < 100:
            outgoing, requests = leader.request_for("storage-2"), requests + 1
            assert outgoing.request.ByteSize() <= 20_000
            [batch] = outgoing.request.shards
            assert batch.delivery_keys
            sent.update(batch.delivery_keys)
            progress.records = outgoing.sent[SHARD].records_end  # as if the follower took them
        assert len(sent) == 3000 and requests > 5  # ~57 bytes a record: ~170 kB in all
    finally:
        await a.close()


async def test_leases_and_dead_letter_records_are_bounded(log_, records, monkeypatch):
    """At MAX_LEASES nothing new is delivered (nor announced ready) until a lease
    ends; past MAX_DEAD_LETTER_RECORDS the oldest record goes."""
    monkeypatch.setattr(delivery, "MAX_LEASES", 2)
    monkeypatch.setattr(dead_letters_module, "MAX_DEAD_LETTER_RECORDS", 1)
    deliveries = Deliveries(log_, records)
    dead_letters = DeadLetters(log_, deliveries, records)
    log_.append(SHARD, b"a", b"b", b"c", b"d")
    deliveries.attach(SHARD, subscription("audit", max_delivery_attempts=1, dead_letter_topic="dlq"))
    a, b = await pull(deliveries, "audit")
    assert await pull(deliveries, "audit") == []
    assert await deliveries.pull(SHARD, [Pull("audit", 0, 60_000)], 0) == {}  # not ready: a sender waits
    deliveries.acknowledge(SHARD, "audit", [a.ack_id])
    [c] = await pull(deliveries, "audit")
    assert c.message.data == b"c"
    for ack_id in (b.ack_id, c.ack_id):
        deliveries.nack(SHARD, "audit", [ack_id], terminal=True)
        dead_letters.bury(deliveries.dead_letters.get_nowait(), "copy")
    assert [d.message.data for d in dead_letters.list(SHARD, "audit", 10).dead_letters] == [b"c"]


async def test_the_delivery_state_goes_by_what_changed(log_, records, deliveries, monkeypatch):
    """A tick saves and sends the subscriptions changed since, not every one; a
    detached subscription goes too; a follower further behind than the leader
    remembers detaches gets everything."""
    log_.append(SHARD, b"a", b"b")
    for name in ("audit", "billing", "crm"):
        deliveries.attach(SHARD, subscription(name))
    deliveries.lead(SHARD, 1)
    follower_records = MemoryRecords()
    follower = Deliveries(MemoryLog(), follower_records)
    follower.import_states(SHARD, full := deliveries.state_since(SHARD, -1))
    assert (sorted(s.name for s in full.states), full.delta) == (["audit", "billing", "crm"], False)
    deliveries.save_state(SHARD)

    [a] = await pull(deliveries, "audit", max_messages=1)
    deliveries.detach(SHARD, "crm")
    update = deliveries.state_since(SHARD, full.stamp[1])
    assert ([s.name for s in update.states], update.removed, update.delta) == (["audit"], ["crm"], True)
    follower.import_states(SHARD, update)
    held = {name: state.cursor for name, state in follower._logs.shard(SHARD).saved.items()}
    assert held == {"audit": 1, "billing": 0}
    deliveries.save_state(SHARD)
    layout = keys.ShardKeys(SHARD)
    assert records.get(layout.subscription_state("crm")) is None
    assert keys.parse_subscription_state(records.get(layout.subscription_state("audit"))).cursor == 1
    assert follower_records.get(layout.subscription_state("crm")) is None

    monkeypatch.setattr(delivery, "MAX_REMOVED", 2)
    for name in ("d1", "d2", "d3"):
        deliveries.attach(SHARD, subscription(name))
        deliveries.detach(SHARD, name)
    assert deliveries.state_since(SHARD, update.stamp[1]).delta is False  # its detaches are forgotten
