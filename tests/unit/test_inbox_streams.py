"""frontend.inbox.InboxStreams over an in-memory store of J rows: catch-up,
items handed by a wake-up with no table call, flow control, room freed by
acknowledgements, and the re-scan that makes up for a lost wake-up."""

import asyncio

import pytest

from frontend.inbox import InboxStreams
from gen.notifymesh.internal.v1 import inbox_pb2
from gen.notifymesh.v1 import notify_pb2
from notifymesh import errors
from notifymesh.server import rows
from notifymesh.server.inbox import RecipientLocks, wake_changes, wake_mac
from notifymesh.server.table import Scanned

RID = "alice"


class FakeStore:
    """The J rows of one recipient, and the scans asked of them."""

    def __init__(self):
        self.unacked_rows: dict[bytes, bytes] = {}
        self.scans = 0

    def add(self, ms: int) -> inbox_pb2.InboxDelivery:
        item = notify_pb2.InboxItem(notification_id=f"n{ms}", body=f"item {ms}")
        self.unacked_rows[rows.inbox_key(rows.INBOX_UNACKED, RID, ms, item.notification_id)] = \
            item.SerializeToString()
        return inbox_pb2.InboxDelivery(recipient=RID, accepted_ms=ms, item=item)

    def ack(self, ms: int) -> None:
        del self.unacked_rows[rows.inbox_key(rows.INBOX_UNACKED, RID, ms, f"n{ms}")]

    async def unacked(self, recipient: str, limit: int) -> Scanned:
        self.scans += 1
        keys = sorted(self.unacked_rows)[:limit]
        return Scanned(keys, [self.unacked_rows[k] for k in keys], len(self.unacked_rows) > limit)


class Reader:
    def __init__(self, streams: InboxStreams, max_outstanding: int):
        self.ids: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.create_task(self._read(streams.stream(RID, max_outstanding)))

    async def _read(self, frames):
        async for frame in frames:
            for item in frame.items:
                self.ids.put_nowait(item.notification_id)

    async def take(self, count: int) -> list[str]:
        return [await asyncio.wait_for(self.ids.get(), 2) for _ in range(count)]

    async def none(self) -> None:
        await asyncio.sleep(0.05)
        assert self.ids.empty()

    async def close(self):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_catch_up_then_live_items_without_a_table_call():
    store = FakeStore()
    store.add(1), store.add(2)
    streams = InboxStreams(store)
    reader = Reader(streams, 10)
    assert await reader.take(2) == ["n1", "n2"]
    scans = store.scans
    streams.wake(inbox_pb2.InboxChanges(items=[store.add(3)]))
    assert await reader.take(1) == ["n3"]
    streams.wake(inbox_pb2.InboxChanges(items=[store.add(4)]))
    assert await reader.take(1) == ["n4"]
    assert store.scans == scans  # handed over, not read
    streams.wake(inbox_pb2.InboxChanges(items=[store.add(5)]))  # not for another recipient's stream
    streams.wake(inbox_pb2.InboxChanges(items=[inbox_pb2.InboxDelivery(
        recipient="bob", accepted_ms=9, item=notify_pb2.InboxItem(notification_id="n9"))]))
    assert await reader.take(1) == ["n5"]
    await reader.none()
    await reader.close()
    assert streams.count == 0


async def test_at_most_max_outstanding_and_acks_make_room_for_what_waits():
    store = FakeStore()
    for ms in range(1, 4):
        store.add(ms)
    streams = InboxStreams(store)
    reader = Reader(streams, 2)
    assert await reader.take(2) == ["n1", "n2"]
    streams.wake(inbox_pb2.InboxChanges(items=[store.add(4)]))  # no room: left in the table
    await reader.none()
    store.ack(1)
    streams.wake(inbox_pb2.InboxChanges(acked=[inbox_pb2.InboxAcked(recipient=RID, notification_ids=["n1"])]))
    assert await reader.take(1) == ["n3"]
    await reader.none()
    store.ack(2), store.ack(3)
    streams.acked(RID, ["n2", "n3"])
    assert await reader.take(1) == ["n4"]
    await reader.close()


async def test_a_rescan_learns_of_acknowledgements_a_lost_wake_up_did_not_bring():
    store = FakeStore()
    store.add(1), store.add(2)
    streams = InboxStreams(store, rescan_s=0.1)
    reader = Reader(streams, 1)
    assert await reader.take(1) == ["n1"]
    store.ack(1)  # acknowledged elsewhere; its wake-up lost
    assert await reader.take(1) == ["n2"]
    await reader.close()


async def test_stream_bounds():
    store = FakeStore()
    streams = InboxStreams(store, max_streams=1)
    reader = Reader(streams, 1)
    await asyncio.sleep(0.01)
    with pytest.raises(errors.ResourceExhausted):
        await anext(streams.stream("bob", 1))
    streams.close()
    await asyncio.sleep(0.01)
    with pytest.raises(errors.Unavailable):
        await anext(streams.stream("bob", 1))
    await reader.close()


async def test_recipient_locks_serialize_one_recipient_and_forget_it_after():
    locks, order = RecipientLocks(), []

    async def change(tag: str) -> None:
        async with locks.hold(RID):
            order.append(f"{tag}+")
            await asyncio.sleep(0.01)
            order.append(f"{tag}-")

    await asyncio.gather(change("a"), change("b"))
    assert order == ["a+", "a-", "b+", "b-"]
    assert locks._locks == {}


def test_a_wake_call_without_the_clusters_mac_is_refused():
    key = b"k" * 32
    changes = inbox_pb2.InboxChanges(items=[inbox_pb2.InboxDelivery(
        recipient=RID, accepted_ms=1, item=notify_pb2.InboxItem(notification_id="forged"))]).SerializeToString()
    assert wake_changes(key, inbox_pb2.WakeInboxRequest(changes=changes, mac=wake_mac(key, changes))).items
    with pytest.raises(errors.PermissionDenied):
        wake_changes(key, inbox_pb2.WakeInboxRequest(changes=changes, mac=wake_mac(b"x" * 32, changes)))
    with pytest.raises(errors.PermissionDenied):
        wake_changes(key, inbox_pb2.WakeInboxRequest(changes=changes))
