"""The client's notification helpers without a server: channel names, and an
import sent in batches whose refusals keep their place in the whole import."""

import asyncio

import pytest

from gen.notifymesh.v1 import notify_pb2
from notifymesh import errors
from notifymesh.client import Client, channel_of


def test_channels_by_enum_or_name():
    assert channel_of("email") == channel_of("EMAIL") == channel_of(notify_pb2.EMAIL) == notify_pb2.EMAIL
    assert channel_of("sms") == notify_pb2.SMS
    for bad in ("fax", "", 0, 9):
        with pytest.raises(errors.InvalidArgument, match="email, sms, webhook"):
            channel_of(bad)


async def test_an_import_goes_in_batches_of_at_most_1000_with_refusals_indexed_in_the_whole():
    calls = []

    async def upsert_recipients(batch):
        calls.append([r.id for r in batch])
        refused = [notify_pb2.RecipientError(index=i, id=r.id, reason="bad") for i, r in enumerate(batch)
                   if r.id.endswith("7")]
        return notify_pb2.UpsertRecipientsResponse(stored=len(batch) - len(refused), errors=refused)

    def people_again():
        return (notify_pb2.Recipient(id=f"r{i}") for i in range(50))

    client = Client("127.0.0.1:1")
    client.upsert_recipients = upsert_recipients
    try:
        people = (notify_pb2.Recipient(id=f"r{i}") for i in range(2501))
        batches = [b async for b in client.import_recipients(people)]
        assert [len(c) for c in calls] == [1000, 1000, 501]
        assert [(b.start, b.count) for b in batches] == [(0, 1000), (1000, 1000), (2000, 501)]
        refused = [e for b in batches for e in b.errors]
        assert len(refused) == 250 and all(e.id == f"r{e.index}" for e in refused)
        assert sum(b.stored for b in batches) == 2251
        assert [b async for b in client.import_recipients([])] == []
        for in_flight in (1, 3):
            calls.clear()
            batches = [b async for b in client.import_recipients(people_again(), batch_size=7, in_flight=in_flight)]
            assert [b.start for b in batches] == list(range(0, 50, 7)) and sum(b.count for b in batches) == 50
        with pytest.raises(errors.InvalidArgument):
            [b async for b in client.import_recipients([], batch_size=1001)]
    finally:
        await client.close()


async def test_an_import_keeps_calls_in_flight_and_cancels_them_when_one_fails():
    running, most, tasks = 0, 0, []

    async def upsert_recipients(batch):
        nonlocal running, most
        tasks.append(asyncio.current_task())
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(0.01)
            if batch[0].id == "r8":
                raise errors.Unavailable("frontend gone")
            return notify_pb2.UpsertRecipientsResponse(stored=len(batch))
        finally:
            running -= 1

    client = Client("127.0.0.1:1")
    client.upsert_recipients = upsert_recipients
    try:
        seen = []
        with pytest.raises(errors.Unavailable):
            async for batch in client.import_recipients((notify_pb2.Recipient(id=f"r{i}") for i in range(40)),
                                                        batch_size=2, in_flight=3):
                seen.append(batch.start)
        assert seen == [0, 2, 4, 6] and most == 3
        await asyncio.sleep(0)
        assert all(task.done() for task in tasks)  # none left running after the failure
    finally:
        await client.close()
