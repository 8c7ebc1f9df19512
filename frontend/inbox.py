"""In-app inbox streams on one frontend, and the inbox calls (ack, read, list).

A stream is a loop: scan the recipient's unacknowledged items (J rows,
notifymesh.server.inbox), send the ones not in flight on this stream, then
sleep until woken. Woken by: Inbox.Wake naming its recipient (a sender wrote an
item; some frontend acknowledged one), or its periodic re-scan (RESCAN_S,
jittered), the safety net for a wake-up lost on the way.

The bound: table calls per frontend = one scan per stream per wake-up of its
recipient (wake-ups that come while a scan is under way fold into one more
scan) + one scan per stream per RESCAN_S: 10,000 idle streams cost
10,000 / 300 s = 33 scans/s, never one per stream per poll. Memory per stream:
the keys of at most max_outstanding items in flight and one frame of items.
"""

import asyncio
import random
from typing import AsyncIterator, Protocol

from gen.notifymesh.v1 import notify_pb2
from notifymesh import errors
from notifymesh.clock import now_ms
from notifymesh.server import validation
from notifymesh.server.inbox import InboxStore, InboxWaker, RecipientLocks
from notifymesh.server.notification_log import Event

MAX_STREAMS = 20_000  # inbox streams one frontend holds
MAX_STREAMS_PER_RECIPIENT = 32  # a user's tabs and devices
OUTSTANDING, MAX_OUTSTANDING = 100, 1000
RESCAN_S = 300.0  # each stream looks again at least this often (±50%), woken or not


class Recorder(Protocol):
    """notifymesh.server.notification_log.NotificationLog"""

    async def record(self, events: list[Event]) -> None: ...


class _Stream:
    __slots__ = ("recipient", "max_outstanding", "outstanding", "woken")

    def __init__(self, recipient: str, max_outstanding: int):
        self.recipient, self.max_outstanding = recipient, max_outstanding
        self.outstanding: set[bytes] = set()  # J keys sent on this stream, not acknowledged
        self.woken = asyncio.Event()


class InboxStreams:
    def __init__(self, store: InboxStore, max_streams: int = MAX_STREAMS, rescan_s: float = RESCAN_S):
        self._store, self._max_streams, self._rescan_s = store, max_streams, rescan_s
        self._by_recipient: dict[str, set[_Stream]] = {}
        self._count = 0
        self._closing = False

    @property
    def count(self) -> int:
        return self._count

    def wake(self, recipients) -> None:
        for rid in recipients:
            for stream in self._by_recipient.get(rid, ()):
                stream.woken.set()

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
            while True:
                stream.woken.clear()
                items = await self._next(stream)
                if self._closing:
                    raise errors.Unavailable("frontend is shutting down; subscribe again")
                if items:
                    yield notify_pb2.SubscribeInboxResponse(items=items)
                    continue
                try:
                    await asyncio.wait_for(stream.woken.wait(), self._rescan_s * random.uniform(0.5, 1.5))
                except TimeoutError:
                    pass
        finally:
            self._count -= 1
            mine.discard(stream)
            if not mine and self._by_recipient.get(recipient) is mine:
                del self._by_recipient[recipient]

    async def _next(self, stream: _Stream) -> list[notify_pb2.InboxItem]:
        """The items to send now: unacknowledged, not in flight here, as many as
        there is room for. Items in flight that are gone from J were acknowledged
        (on any frontend): their room is free again."""
        room = stream.max_outstanding - len(stream.outstanding)
        # At most len(outstanding) of the scanned rows are in flight: the rest fill the room.
        scanned = await self._store.unacked(stream.recipient, len(stream.outstanding) + max(room, 1))
        seen = set(scanned.keys)
        last = scanned.keys[-1] if scanned.keys else b""
        stream.outstanding = {k for k in stream.outstanding if k in seen or (scanned.more and k > last)}
        room = stream.max_outstanding - len(stream.outstanding)
        items = []
        for key, value in zip(scanned.keys, scanned.values):
            if room <= 0:
                break
            if key not in stream.outstanding:
                stream.outstanding.add(key)
                items.append(notify_pb2.InboxItem.FromString(value))
                room -= 1
        return items


class FrontendInbox:
    """The inbox calls: validation, the rows (InboxStore), the log events, the wake-ups."""

    def __init__(self, store: InboxStore, streams: InboxStreams, recorder: Recorder, waker: InboxWaker):
        self._store, self.streams, self._recorder, self._waker = store, streams, recorder, waker
        self._locks = RecipientLocks()

    def subscribe(self, request: notify_pb2.SubscribeInboxRequest) -> AsyncIterator[notify_pb2.SubscribeInboxResponse]:
        rid = validation.recipient_id(request.recipient)
        size = validation.page_size(request.max_outstanding, OUTSTANDING, MAX_OUTSTANDING)
        return self.streams.stream(rid, size)

    async def ack(self, request: notify_pb2.AckInboxRequest) -> notify_pb2.AckInboxResponse:
        rid = validation.recipient_id(request.recipient)
        async with self._locks.hold(rid):
            changed = await self._store.ack(rid, request.notification_ids)
            await self._record(rid, changed, notify_pb2.SEND_DELIVERED)
        if changed:  # the recipient's streams, here and on other frontends, have room again
            self.streams.wake([rid])
            await self._waker.wake([rid])
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
