"""notifymesh.server.inbox.InboxStore over the in-memory table: a listing's unread
count never names an item its page leaves out."""

from notify_fakes import FakeTable

from gen.notifymesh.v1 import notify_pb2
from notifymesh.server import rows
from notifymesh.server.inbox import InboxStore

RID = "alice"
DAY_MS = 86_400_000


class ItemArrivesMidListing(FakeTable):
    """A new item is written right after the first scan of the recipient's items
    (a sender's write landing between a listing's reads)."""

    def __init__(self):
        super().__init__()
        self.store: InboxStore | None = None
        self.arrived = False

    async def scan(self, partition_key, prefix, start_after=b"", limit=1000, reverse=False):
        scanned = await super().scan(partition_key, prefix, start_after, limit, reverse)
        if prefix == rows.inbox_prefix(rows.INBOX_ITEM, RID) and not self.arrived:
            self.arrived = True
            await self.store.add(RID, 3_000, notify_pb2.InboxItem(notification_id="n3"), again=False)
        return scanned


async def test_the_unread_count_never_names_an_item_the_page_leaves_out():
    table = ItemArrivesMidListing()
    store = table.store = InboxStore(table, lambda: DAY_MS)
    for n in (1, 2):
        await store.add(RID, n * 1_000, notify_pb2.InboxItem(notification_id=f"n{n}"), again=False)
    listed = await store.list(RID, unread_only=False, page_size=0, page_token="")
    assert (listed.unread_count, [i.notification_id for i in listed.items]) == (2, ["n2", "n1"])
    listed = await store.list(RID, unread_only=False, page_size=0, page_token="")
    assert (listed.unread_count, [i.notification_id for i in listed.items]) == (3, ["n3", "n2", "n1"])
