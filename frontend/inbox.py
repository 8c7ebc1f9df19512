"""In-app inbox streams on one frontend, and the inbox calls (ack, read, list).

A stream first scans the recipient's unacknowledged items (J rows,
notifymesh.server.inbox) and sends them, at most max_outstanding in flight;
then it waits. Inbox.Wake hands it new items (written by a sender, which sends
the item itself) and acknowledgements (from any frontend): a new item with room
goes out with no table call; one without room, an acknowledgement that frees
room while items wait, or the periodic re-scan (RESCAN_S, jittered: the safety
net for a lost wake-up) makes the stream scan again.

The bound: table calls per frontend = one scan per stream at connect, per
RESCAN_S (10,000 idle streams: 10,000 / 300 s = 33 scans/s) and per time its
room fills and frees again; none per live item, none per stream per poll.
Memory per stream: at most max_outstanding items (handed, not yet sent),
max_outstanding keys (sent, not acknowledged) and max_outstanding ids (the
latest acknowledged).
"""

import asyncio
import random
from collections import OrderedDict
from typing import AsyncIterator, Protocol

from gen.notifymesh.internal.v1 import inbox_pb2
from gen.notifymesh.v1 import notify_pb2
from notifymesh import errors
from notifymesh.clock import now_ms
from notifymesh.server import rows, validation
from notifymesh.server.inbox import InboxStore, InboxWaker, RecipientLocks
from notifymesh.server.notification_log import Event

MAX_STREAMS = 20_000  # inbox streams one frontend holds
MAX_STREAMS_PER_RECIPIENT = 32  # a user's tabs and devices
OUTSTANDING, MAX_OUTSTANDING = 100, 1000
RESCAN_S = 300.0  # each stream scans at least this often (±50%), woken or not


class Recorder(Protocol):
    """notifymesh.server.notification_log.NotificationLog"""

    async def record(self, events: list[Event]) -> None: ...


class _Stream:
    __slots__ = ("recipient", "max_outstanding", "outstanding", "handed", "acked", "scan", "woken")

    def __init__(self, recipient: str, max_outstanding: int):
        self.recipient, self.max_outstanding = recipient, max_outstanding
        self.outstanding: dict[str, bytes] = {}  # notification id -> J key: sent here, not acknowledged
        # Items a wake-up handed over, not sent yet (with outstanding, at most max_outstanding).
        self.handed: dict[str, tuple[bytes, notify_pb2.InboxItem]] = {}
        # The latest acknowledged here (at most max_outstanding): a wake-up that comes
        # after its item went out with a scan and was acknowledged does not send it again.
        self.acked: OrderedDict[str, None] = OrderedDict()
        self.scan = True  # the table may hold unacknowledged items not sent here: scan once there is room
        self.woken = asyncio.Event()

    def room(self) -> int:
        return self.max_outstanding - len(self.outstanding) - len(self.handed)


class InboxStreams:
    def __init__(self, store: InboxStore, max_streams: int = MAX_STREAMS, rescan_s: float = RESCAN_S):
        self._store, self._max_streams, self._rescan_s = store, max_streams, rescan_s
        self._by_recipient: dict[str, set[_Stream]] = {}
        self._count = 0
        self._closing = False

    @property
    def count(self) -> int:
        return self._count

    def wake(self, request: inbox_pb2.InboxChanges) -> None:
        for delivery in request.items:
            nid = delivery.item.notification_id
            key = rows.inbox_key(rows.INBOX_UNACKED, delivery.recipient, delivery.accepted_ms, nid)
            for stream in self._by_recipient.get(delivery.recipient, ()):
                if nid in stream.outstanding or nid in stream.handed or nid in stream.acked:
                    continue
                if stream.room() > 0:
                    stream.handed[nid] = (key, delivery.item)
                else:
                    stream.scan = True  # it comes with a scan once there is room
                stream.woken.set()
        for acked in request.acked:
            self.acked(acked.recipient, acked.notification_ids)

    def acked(self, recipient: str, notification_ids) -> None:
        for stream in self._by_recipient.get(recipient, ()):
            freed = False
            for nid in notification_ids:
                if stream.outstanding.pop(nid, None) is not None:
                    freed = True
                    stream.acked[nid] = None
                    if len(stream.acked) > stream.max_outstanding:
                        stream.acked.popitem(last=False)
            if freed:
                stream.woken.set()

    def accepted_ms(self, recipient: str, notification_ids) -> dict[str, int]:
        """When the items in flight on this frontend's streams were accepted (their
        keys hold it): an acknowledgement of those needs no header read."""
        known = {}
        for stream in self._by_recipient.get(recipient, ()):
            for nid in notification_ids:
                if (key := stream.outstanding.get(nid)) is not None:
                    known[nid] = rows.parse_inbox_key(key).accepted_ms
        return known

    def close(self) -> None:
        """Ends every stream with UNAVAILABLE: clients subscribe again, elsewhere,
        and get what they did not acknowledge."""
        self._closing = True
        for streams in self._by_recipient.values():
            for stream in streams:
                stream.woken.set()

    async def stream(self, recipient: str, max_outstanding: int) -> AsyncIterator[notify_pb2.SubscribeInboxResponse]:
        if self._closing:
            raise errors.Unavailable("frontend is shutting down; subscribe again")
        if self._count >= self._max_streams:
            raise errors.ResourceExhausted(f"this frontend holds {self._max_streams:,} inbox streams; "
                                           "subscribe again later or elsewhere")
        mine = self._by_recipient.setdefault(recipient, set())
        if len(mine) >= MAX_STREAMS_PER_RECIPIENT:
            raise errors.ResourceExhausted(f"recipient {recipient!r} has {MAX_STREAMS_PER_RECIPIENT} inbox streams "
                                           "on this frontend already")
        stream = _Stream(recipient, max_outstanding)
        mine.add(stream)
        self._count += 1
        try:
            rescan = False
            while True:
                stream.woken.clear()
                items = await self._next(stream, rescan)
                if self._closing:
                    raise errors.Unavailable("frontend is shutting down; subscribe again")
                if items:
                    yield notify_pb2.SubscribeInboxResponse(items=items)
                    rescan = False
                    continue
                try:
                    await asyncio.wait_for(stream.woken.wait(), self._rescan_s * random.uniform(0.5, 1.5))
                    rescan = False
                except TimeoutError:
                    rescan = True
        finally:
            self._count -= 1
            mine.discard(stream)
            if not mine and self._by_recipient.get(recipient) is mine:
                del self._by_recipient[recipient]

    async def _next(self, stream: _Stream, rescan: bool) -> list[notify_pb2.InboxItem]:
        """What to send now: a scan's items when one is due (rescan: even without
        room, to learn of acknowledgements a lost wake-up did not bring), then
        the items handed over, within the room."""
        items = []
        if rescan or (stream.scan and stream.max_outstanding > len(stream.outstanding)):
            stream.scan = False
            items = await self._scan(stream)
        handed, stream.handed = stream.handed, {}
        for nid, (key, item) in handed.items():
            if nid in stream.outstanding:
                continue
            if len(stream.outstanding) >= stream.max_outstanding:
                stream.scan = True
                break
            stream.outstanding[nid] = key
            items.append(item)
        return items

    async def _scan(self, stream: _Stream) -> list[notify_pb2.InboxItem]:
        """The oldest unacknowledged items not in flight, within the room. Items in
        flight that are gone from J were acknowledged: their room is free again."""
        room = stream.max_outstanding - len(stream.outstanding)
        # At most len(outstanding) of the rows are in flight: the rest can fill the room.
        scanned = await self._store.unacked(stream.recipient, len(stream.outstanding) + max(room, 1))
        seen = set(scanned.keys)
        last = scanned.keys[-1] if scanned.keys else b""
        stream.outstanding = {nid: key for nid, key in stream.outstanding.items()
                              if key in seen or (scanned.more and key > last)}
        in_flight = set(stream.outstanding.values())
        items = []
        for key, value in zip(scanned.keys, scanned.values):
            if key in in_flight:
                continue
            if len(stream.outstanding) >= stream.max_outstanding:
                stream.scan = True  # more than the room: the rest once there is room again
                break
            item = notify_pb2.InboxItem.FromString(value)
            stream.outstanding[item.notification_id] = key
            items.append(item)
        else:
            stream.scan = stream.scan or scanned.more
        return items


class FrontendInbox:
    """The inbox calls: validation, the rows (InboxStore), the log events, the wake-ups."""

    def __init__(self, store: InboxStore, streams: InboxStreams, recorder: Recorder, waker: InboxWaker):
        self._store, self.streams, self._recorder, self.waker = store, streams, recorder, waker
        self._locks = RecipientLocks()

    def subscribe(self, request: notify_pb2.SubscribeInboxRequest) -> AsyncIterator[notify_pb2.SubscribeInboxResponse]:
        rid = validation.recipient_id(request.recipient)
        size = validation.page_size(request.max_outstanding, OUTSTANDING, MAX_OUTSTANDING)
        return self.streams.stream(rid, size)

    async def ack(self, request: notify_pb2.AckInboxRequest) -> notify_pb2.AckInboxResponse:
        rid = validation.recipient_id(request.recipient)
        async with self._locks.hold(rid):
            changed = await self._store.ack(rid, request.notification_ids,
                                            self.streams.accepted_ms(rid, request.notification_ids))
            await self._record(rid, changed, notify_pb2.SEND_DELIVERED)
        if changed:  # the recipient's streams, here and on other frontends, have room again
            ids = [c.notification_id for c in changed]
            self.streams.acked(rid, ids)
            self.waker.acked(rid, ids)
        return notify_pb2.AckInboxResponse(acked=len(changed))

    async def mark_read(self, request: notify_pb2.MarkReadRequest) -> notify_pb2.MarkReadResponse:
        rid = validation.recipient_id(request.recipient)
        async with self._locks.hold(rid):
            changed = await self._store.mark_read(rid, request.notification_ids)
            await self._record(rid, changed, notify_pb2.SEND_OPENED)
        return notify_pb2.MarkReadResponse(marked=len(changed))

    async def list(self, request: notify_pb2.ListInboxRequest) -> notify_pb2.ListInboxResponse:
        rid = validation.recipient_id(request.recipient)
        return await self._store.list(rid, request.unread_only, request.page_size, request.page_token)

    async def _record(self, rid: str, changed, state: int) -> None:
        ms = now_ms()
        await self._recorder.record([Event(c.notification_id, c.accepted_ms, rid, notify_pb2.IN_APP, state, ms)
                                     for c in changed])
