"""The client's notification helpers without a server: channel names, and an
import sent in batches whose refusals keep their place in the whole import."""

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
        with pytest.raises(errors.InvalidArgument):
            [b async for b in client.import_recipients([], batch_size=1001)]
    finally:
        await client.close()
