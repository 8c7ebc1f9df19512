"""StorageEngine on a real RocksDB in a temporary directory, without gRPC."""

import asyncio

import pytest

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.clock import now_ms, timestamp
from storage.engine import StorageEngine

DEDUP_MS = 60_000


def subscription(name: str, topic: str = "orders", created_ms: int = 0) -> pubsub_pb2.Subscription:
    return pubsub_pb2.Subscription(name=name, topic=topic, create_time=timestamp(created_ms))


def messages(*payloads: bytes, key: str = "") -> list[pubsub_pb2.PubsubMessage]:
    return [pubsub_pb2.PubsubMessage(data=p, idempotency_key=key) for p in payloads]


@pytest.fixture
async def engine(tmp_path):
    engine = StorageEngine(tmp_path / "node", "storage-1")
    engine.start()
    yield engine
    await engine.close()


async def reopen(engine: StorageEngine, tmp_path) -> StorageEngine:
    await engine.close()
    reopened = StorageEngine(tmp_path / "node", "storage-1")
    reopened.start()
    return reopened


async def test_append_pull_ack_and_collect(engine):
    engine.attach(subscription("audit"))
    ids = await engine.append("orders", messages(b"a", b"b", b"c"), DEDUP_MS)
    pulled = await engine.pull("orders", "audit", 10, 10_000, 0)
    assert [m.message.message_id for m in pulled] == ids
    assert [m.message.data for m in pulled] == [b"a", b"b", b"c"]
    assert all(m.message.HasField("publish_time") and m.delivery_attempt == 1 for m in pulled)
    assert await engine.pull("orders", "audit", 10, 10_000, 0) == []  # leased, not deliverable
    assert engine.collect({}) == 0  # in flight: kept
    assert engine.acknowledge("orders", "audit", [m.ack_id for m in pulled]) == 3
    assert engine.acknowledge("orders", "audit", [m.ack_id for m in pulled]) == 0
    assert engine.collect({}) == 3


async def test_message_is_kept_until_every_subscription_acked(engine):
    engine.attach(subscription("audit"))
    engine.attach(subscription("billing"))
    await engine.append("orders", messages(b"x"), DEDUP_MS)
    [audit] = await engine.pull("orders", "audit", 10, 10_000, 0)
    engine.acknowledge("orders", "audit", [audit.ack_id])
    assert engine.collect({}) == 0
    [billing] = await engine.pull("orders", "billing", 10, 10_000, 0)
    engine.acknowledge("orders", "billing", [billing.ack_id])
    assert engine.collect({}) == 1


async def test_expired_lease_is_redelivered_and_nack_is_immediate(engine):
    engine.attach(subscription("audit"))
    [message_id] = await engine.append("orders", messages(b"x"), DEDUP_MS)
    [first] = await engine.pull("orders", "audit", 10, 200, 0)
    [second] = await engine.pull("orders", "audit", 10, 60_000, 2000)  # waits for the 200 ms lease
    assert second.message.message_id == message_id and second.delivery_attempt == 2
    engine.modify_ack_deadline("orders", "audit", [second.ack_id], 0)
    [third] = await engine.pull("orders", "audit", 10, 60_000, 0)
    assert third.delivery_attempt == 3


async def test_waiting_pull_wakes_on_append(engine):
    engine.attach(subscription("audit"))
    waiting = asyncio.create_task(engine.pull("orders", "audit", 10, 10_000, 5000))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await engine.append("orders", messages(b"late"), DEDUP_MS)
    pulled = await asyncio.wait_for(waiting, 1)
    assert [m.message.data for m in pulled] == [b"late"]


async def test_state_survives_reopen(engine, tmp_path):
    engine.attach(subscription("audit"))
    ids = await engine.append("orders", messages(b"a", b"b", b"c", b"d"), DEDUP_MS)
    pulled = await engine.pull("orders", "audit", 2, 60_000, 0)
    engine.acknowledge("orders", "audit", [pulled[0].ack_id])
    engine = await reopen(engine, tmp_path)
    try:
        # b still leased for 60 s; c, d never delivered; a acked
        rest = await engine.pull("orders", "audit", 10, 60_000, 0)
        assert [m.message.message_id for m in rest] == ids[2:]
        engine.modify_ack_deadline("orders", "audit", [pulled[1].ack_id], 0)
        [again] = await engine.pull("orders", "audit", 10, 60_000, 0)
        assert again.message.message_id == ids[1] and again.delivery_attempt == 2
        more = await engine.append("orders", messages(b"e"), DEDUP_MS)
        assert more[0] not in ids
    finally:
        await engine.close()


async def test_subscription_starts_at_its_create_time(engine):
    await engine.append("orders", messages(b"old"), DEDUP_MS)
    await asyncio.sleep(0.01)
    created = now_ms()
    await asyncio.sleep(0.01)
    [new] = await engine.append("orders", messages(b"new"), DEDUP_MS)
    engine.attach(subscription("late", created_ms=created))
    assert [m.message.message_id for m in await engine.pull("orders", "late", 10, 10_000, 0)] == [new]


async def test_retention_expires_unacked_messages(engine):
    engine.attach(subscription("audit"))
    await engine.append("orders", messages(b"old"), DEDUP_MS)
    await engine.pull("orders", "audit", 10, 60_000, 0)  # in flight, never acked
    await asyncio.sleep(0.05)
    [fresh] = await engine.append("orders", messages(b"fresh"), DEDUP_MS)
    assert engine.collect({"orders": 30}) == 1
    engine.modify_ack_deadline("orders", "audit", ["0:storage-1"], 0)
    assert [m.message.message_id for m in await engine.pull("orders", "audit", 10, 60_000, 0)] == [fresh]


async def test_idempotency_key_within_and_across_batches(engine):
    engine.attach(subscription("audit"))
    first = await engine.append("orders", messages(b"a", b"a", key="k1"), DEDUP_MS)
    assert first[0] == first[1]
    assert await engine.append("orders", messages(b"a", key="k1"), DEDUP_MS) == first[:1]
    assert len(await engine.pull("orders", "audit", 10, 60_000, 0)) == 1
    expired = await engine.append("orders", messages(b"b", key="k2"), 1)
    await asyncio.sleep(0.01)
    assert await engine.append("orders", messages(b"b", key="k2"), DEDUP_MS) != expired
    await engine.append("orders", messages(b"c", key="k3"), 1)
    await asyncio.sleep(0.01)
    assert engine.collect_idempotency_keys() == 1  # k3; k2 has a fresh window


async def test_handoff_moves_only_what_each_subscription_still_needs(engine, tmp_path):
    engine.attach(subscription("audit"))
    engine.attach(subscription("billing"))
    ids = await engine.append("orders", messages(b"a", b"b"), DEDUP_MS)
    [audit_a] = await engine.pull("orders", "audit", 1, 60_000, 0)
    engine.acknowledge("orders", "audit", [audit_a.ack_id])
    chunk, upto = engine.handoff_chunk("orders", 100)
    assert [(m.message.message_id, sorted(m.only_subscriptions)) for m in chunk] == [
        (ids[0], ["billing"]), (ids[1], ["audit", "billing"])]
    engine.handed_off("orders", upto)
    assert await engine.pull("orders", "audit", 10, 60_000, 0) == []
    assert engine.collect({}) == 2

    other = StorageEngine(tmp_path / "other", "storage-2")
    other.start()
    try:
        other.attach(subscription("audit"))
        other.attach(subscription("billing"))
        await other.take_over("orders", chunk, DEDUP_MS)
        audit = await other.pull("orders", "audit", 10, 60_000, 0)
        billing = await other.pull("orders", "billing", 10, 60_000, 0)
        assert [m.message.message_id for m in audit] == [ids[1]]
        assert [m.message.message_id for m in billing] == ids
    finally:
        await other.close()


async def test_refuses_another_nodes_data_dir(engine, tmp_path):
    with pytest.raises(SystemExit, match="belongs to storage node 'storage-1'"):
        StorageEngine(tmp_path / "node", "storage-9")


async def test_unknown_subscription_and_bad_ack_id(engine):
    from notifymesh import errors
    with pytest.raises(errors.NotFound):
        await engine.pull("orders", "nobody", 1, 1000, 0)
    engine.attach(subscription("audit"))
    for bad in ("zz", "zz:storage-1", "1", "1:"):
        with pytest.raises(errors.InvalidArgument):
            engine.acknowledge("orders", "audit", [bad])
    # another node's ack id is not this node's seq 0
    engine.attach(subscription("audit"))
    await engine.append("orders", messages(b"x"), DEDUP_MS)
    [pulled] = await engine.pull("orders", "audit", 1, 60_000, 0)
    assert pulled.ack_id == "0:storage-1"
    assert engine.acknowledge("orders", "audit", ["0:storage-2"]) == 0
    assert engine.acknowledge("orders", "audit", [pulled.ack_id]) == 1
