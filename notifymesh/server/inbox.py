"""The in-app inbox: rows of the replicated table under the recipient's id
(rows.py), written by the senders' IN_APP channel worker, read and changed by the
frontends.

  I rid accepted_ms nid -> InboxItem   every item, kept for the notification log's retention
  J rid accepted_ms nid -> InboxItem   while not acknowledged: what an inbox stream (re)delivers
  W rid accepted_ms nid -> b""         while unread: the unread listing and count

A stream scans J only (its unacknowledged items), so a recipient's old,
acknowledged items cost it nothing. All three rows expire with the
notification's log rows.

Wake-ups: whoever changes a recipient's items tells every live frontend
(Inbox.Wake; merged per frontend while a call is in flight): a sender the new
item itself, once written; a frontend the ids it acknowledged. A frontend hands
them to its streams of that recipient, with no table call. A lost wake-up delays
an item until that stream's next scan (frontend/inbox.py), never loses it: the J
row stays until acknowledged.
"""

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections import deque
from typing import Callable, NamedTuple, Protocol, Sequence

import grpc

from gen.notifymesh.internal.v1 import inbox_pb2, inbox_pb2_grpc
from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import notify_pb2
from notifymesh import errors
from notifymesh.backoff import Backoff, BackoffPolicy
from notifymesh.log import fields
from notifymesh.server import rows, unsubscribe, validation
from notifymesh.server.notification_log import PageToken

log = logging.getLogger(__name__)

PROVIDER = "in_app"  # the provider name the log records for an in-app send
LIST_PAGE, MAX_LIST_PAGE = 50, 1000
MAX_UNREAD_COUNTED = 10_000  # one scan of keys: the unread count stops there
MAX_IDS = 1000  # notification ids in one AckInbox or MarkRead
WAKE_TIMEOUT_S = 10.0  # one Wake call; a failed one is tried again
WAKE_MAX_CHANGES = 5000  # items and acknowledgements in one Wake call
WAKE_MAX_PENDING = 100_000  # changes queued for one frontend (a few hundred bytes each)
WAKE_BACKOFF = BackoffPolicy(first_s=0.1, max_s=5.0)


class InboxTable(Protocol):
    """What the inbox asks of the table (notifymesh.server.table.TableClient)."""

    async def write(self, partition_key: str, ops: list[storage_pb2.TableOp]) -> None: ...

    async def read(self, partition_key: str, keys: list[bytes]) -> list[bytes | None]: ...

    async def read_many(self, keys_by_partition_key: dict[str, list[bytes]]) -> dict[bytes, bytes | None]: ...

    async def scan(self, partition_key: str, prefix: bytes, start_after: bytes = b"", limit: int = 1000,
                   reverse: bool = False): ...  # -> table.Scanned(keys, values, more)


class Changed(NamedTuple):
    """An item an AckInbox or MarkRead changed (for its log event)."""
    notification_id: str
    accepted_ms: int


def _put(key: bytes, value: bytes, expire_ms: int) -> storage_pb2.TableOp:
    return storage_pb2.TableOp(key=key, value=value, expire_ms=expire_ms)


def _delete(key: bytes) -> storage_pb2.TableOp:
    return storage_pb2.TableOp(key=key, delete=True)


def _ids(notification_ids: Sequence[str]) -> list[str]:
    if not notification_ids:
        raise errors.InvalidArgument("name at least one notification id")
    if len(notification_ids) > MAX_IDS:
        raise errors.InvalidArgument(f"{len(notification_ids)} notification ids; at most {MAX_IDS}")
    if not all(notification_ids):
        raise errors.InvalidArgument("a notification id is empty")
    return list(dict.fromkeys(notification_ids))


class InboxStore:
    def __init__(self, table: InboxTable, retention_ms: Callable[[], int]):
        """retention_ms(): the notification log's retention (a live setting)."""
        self._table, self._retention_ms = table, retention_ms

    async def add(self, recipient: str, accepted_ms: int, item: notify_pb2.InboxItem, again: bool) -> bool:
        """Writes the item, unread and unacknowledged. again (the task's attempt
        after a first): unless it is there already, so an item acknowledged or read
        does not come back. Returns whether it wrote."""
        nid = item.notification_id
        key = rows.inbox_key(rows.INBOX_ITEM, recipient, accepted_ms, nid)
        if again and (await self._table.read(recipient, [key]))[0] is not None:
            return False
        expire, value = accepted_ms + self._retention_ms(), item.SerializeToString()
        await self._table.write(recipient, [
            _put(key, value, expire),
            _put(rows.inbox_key(rows.INBOX_UNACKED, recipient, accepted_ms, nid), value, expire),
            _put(rows.inbox_key(rows.INBOX_UNREAD, recipient, accepted_ms, nid), b"", expire)])
        return True

    async def unacked(self, recipient: str, limit: int):
        """The oldest unacknowledged items: table.Scanned of J rows (keys, InboxItem values, more)."""
        return await self._table.scan(recipient, rows.inbox_prefix(rows.INBOX_UNACKED, recipient), limit=limit)

    async def _accepted(self, notification_ids: list[str]) -> dict[str, int]:
        """When each notification was accepted (its log header; those expired or
        unknown are left out): an item's rows are keyed by it."""
        found = await self._table.read_many({nid: [rows.notification_key(nid)] for nid in notification_ids})
        accepted = {}
        for nid in notification_ids:
            raw = found.get(rows.notification_key(nid))
            if raw is not None:
                accepted[nid] = internal_pb2.NotificationRecord.FromString(raw).accepted_ms
        return accepted

    async def ack(self, recipient: str, notification_ids: Sequence[str],
                  known: dict[str, int] | None = None) -> list[Changed]:
        """Acknowledges the items not acknowledged yet; returns those. known: the
        accepted_ms of some (a stream here sent them), the rest read from their
        notifications' headers. Callers serialize the changes of one recipient
        (RecipientLocks)."""
        return await self._change(recipient, _ids(notification_ids), rows.INBOX_UNACKED, "acked", known or {})

    async def mark_read(self, recipient: str, notification_ids: Sequence[str]) -> list[Changed]:
        """Marks read the items not read yet; returns those."""
        return await self._change(recipient, _ids(notification_ids), rows.INBOX_UNREAD, "read", {})

    async def _change(self, recipient: str, notification_ids: list[str], marker: bytes, flag: str,
                      known: dict[str, int]) -> list[Changed]:
        """Sets flag on the items whose marker row (J: unacknowledged, W: unread) is
        there, and deletes that row; the J copy of an unacknowledged item read
        gets the flag too."""
        unknown = [nid for nid in notification_ids if nid not in known]
        accepted = {**{nid: known[nid] for nid in notification_ids if nid in known},
                    **(await self._accepted(unknown) if unknown else {})}
        items = [Changed(nid, ms) for nid, ms in accepted.items()]
        kinds = (rows.INBOX_ITEM, rows.INBOX_UNACKED, rows.INBOX_UNREAD)
        keys = [rows.inbox_key(kind, recipient, c.accepted_ms, c.notification_id) for c in items for kind in kinds]
        values = await self._table.read(recipient, keys)
        ops, changed = [], []
        expire_base = self._retention_ms()
        for index, c in enumerate(items):
            item_raw, unacked_raw, unread_raw = values[3 * index:3 * index + 3]
            marker_raw = unacked_raw if marker == rows.INBOX_UNACKED else unread_raw
            if item_raw is None or marker_raw is None:
                continue
            expire = c.accepted_ms + expire_base
            item = notify_pb2.InboxItem.FromString(item_raw)
            setattr(item, flag, True)
            ops += [_put(keys[3 * index], item.SerializeToString(), expire),
                    _delete(rows.inbox_key(marker, recipient, c.accepted_ms, c.notification_id))]
            if marker == rows.INBOX_UNREAD and unacked_raw is not None:
                ops.append(_put(keys[3 * index + 1], item.SerializeToString(), expire))
            changed.append(c)
        if ops:
            await self._table.write(recipient, ops)
        return changed

    async def list(self, recipient: str, unread_only: bool, page_size: int,
                   page_token: str) -> notify_pb2.ListInboxResponse:
        """Newest first, with the unread count."""
        size = validation.page_size(page_size, LIST_PAGE, MAX_LIST_PAGE)
        kind = rows.INBOX_UNREAD if unread_only else rows.INBOX_ITEM
        start_after = b""
        if page_token:
            ms, nid = PageToken.parse(page_token, "inbox-unread" if unread_only else "inbox", recipient, 2).fields
            start_after = rows.inbox_key(kind, recipient, int(ms), nid)
        # The count first, then the page: an item's rows are written in one batch, so
        # every item counted is in a page read after (read together, a new item could
        # be counted and missing from the page).
        unread = await self._table.scan(recipient, rows.inbox_prefix(rows.INBOX_UNREAD, recipient),
                                        limit=MAX_UNREAD_COUNTED)
        scanned = await self._table.scan(recipient, rows.inbox_prefix(kind, recipient), start_after, limit=size,
                                         reverse=True)
        values = scanned.values
        if unread_only and scanned.keys:
            values = await self._table.read(recipient, [rows.INBOX_ITEM + key[1:] for key in scanned.keys])
        response = notify_pb2.ListInboxResponse(
            items=[notify_pb2.InboxItem.FromString(v) for v in values if v is not None],
            unread_count=len(unread.keys))
        if scanned.more and scanned.keys:
            last = rows.parse_inbox_key(scanned.keys[-1])
            response.next_page_token = PageToken("inbox-unread" if unread_only else "inbox", recipient,
                                                 (str(last.accepted_ms), last.notification_id)).encode()
        return response


async def wake_key(etcd) -> bytes:
    """The cluster's key for Inbox.Wake's MACs."""
    return await unsubscribe.derived_key(etcd, "inbox-wake")


def wake_mac(key: bytes, changes: bytes) -> bytes:
    return hmac.new(key, changes, hashlib.sha256).digest()


def wake_changes(key: bytes, request: inbox_pb2.WakeInboxRequest) -> inbox_pb2.InboxChanges:
    """The changes of a Wake call; PermissionDenied when its MAC is not the cluster's."""
    if not hmac.compare_digest(wake_mac(key, request.changes), request.mac):
        raise errors.PermissionDenied("Inbox.Wake is internal to the mesh")
    return inbox_pb2.InboxChanges.FromString(request.changes)


class InboxWaker:
    """Tells every live frontend of new and acknowledged items, in the background:
    per frontend a queue of changes (at most WAKE_MAX_PENDING; past it the oldest
    are dropped: their streams get them at their next scan) and one Inbox.Wake
    call at a time carrying up to WAKE_MAX_CHANGES of them. A failed call is
    tried again (backoff) while the frontend is live: a busy frontend gets its
    wake-ups late, not never."""

    def __init__(self, cluster):
        """cluster: notifymesh.server.cluster.Cluster (its live frontends and channels)."""
        self._cluster = cluster
        self._key: bytes | None = None
        self._pending: dict[str, deque] = {}
        self._drains: dict[str, asyncio.Task] = {}

    def delivered(self, recipient: str, accepted_ms: int, item: notify_pb2.InboxItem) -> None:
        self._tell(inbox_pb2.InboxDelivery(recipient=recipient, accepted_ms=accepted_ms, item=item))

    def acked(self, recipient: str, notification_ids: Sequence[str]) -> None:
        self._tell(inbox_pb2.InboxAcked(recipient=recipient, notification_ids=notification_ids))

    def _tell(self, change) -> None:
        for addr in set(self._cluster.internal("frontend").values()):
            pending = self._pending.setdefault(addr, deque(maxlen=WAKE_MAX_PENDING))
            if len(pending) == WAKE_MAX_PENDING:
                log.warning("inbox wake-up dropped: the frontend is behind", extra=fields(frontend=addr))
            pending.append(change)
            if addr not in self._drains:
                self._drains[addr] = asyncio.create_task(self._drain(addr))

    async def _drain(self, addr: str) -> None:
        pending, backoff = self._pending[addr], Backoff(WAKE_BACKOFF)
        try:
            while pending:
                batch = [pending.popleft() for _ in range(min(len(pending), WAKE_MAX_CHANGES))]
                changes = inbox_pb2.InboxChanges(
                    items=[c for c in batch if isinstance(c, inbox_pb2.InboxDelivery)],
                    acked=[c for c in batch if isinstance(c, inbox_pb2.InboxAcked)]).SerializeToString()
                try:
                    if self._key is None:
                        self._key = await wake_key(self._cluster.etcd)
                    request = inbox_pb2.WakeInboxRequest(changes=changes, mac=wake_mac(self._key, changes))
                    await inbox_pb2_grpc.InboxStub(self._cluster.channel(addr)).Wake(request, timeout=WAKE_TIMEOUT_S)
                    backoff.reset()
                except (grpc.aio.AioRpcError, errors.NotifymeshError, OSError) as e:  # etcd too
                    if addr not in self._cluster.internal("frontend").values():
                        log.info("inbox wake-ups dropped: the frontend left", extra=fields(frontend=addr))
                        pending.clear()
                        return
                    log.warning("inbox wake-up failed; again", extra=fields(frontend=addr, error=repr(e)))
                    pending.extendleft(reversed(batch))
                    await backoff.sleep()
        finally:
            del self._drains[addr]
            if not pending:
                del self._pending[addr]

    async def close(self) -> None:
        for task in list(self._drains.values()):
            task.cancel()
        await asyncio.gather(*self._drains.values(), return_exceptions=True)


class RecipientLocks:
    """One lock per recipient while anyone holds or waits for it (then dropped, so
    the dict holds only recipients with a change under way): a recipient's
    acknowledgements on this frontend are applied one after the other, so each
    item's SEND_DELIVERED is logged once."""

    def __init__(self):
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, recipient: str):
        lock, users = self._locks.setdefault(recipient, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[recipient]
