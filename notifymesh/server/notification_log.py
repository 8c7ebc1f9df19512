"""The notification log: what happened to each recipient of a notification on
each channel, as rows of the replicated table (rows.py):

  N nid                              the header (NotificationRecord), written once accepted
  E nid rid channel event_ms state   one SendEvent per step (partition key: the notification id)
  G nid channel group event_ms writer
                                     the events of a channel task's recipients written together
  R rid accepted_ms nid              the recipient's index by time (partition key: the recipient id)

A recipient's events on a channel are its E rows and, when its SEND_QUEUED row
names a log group (the fan-out's task for it: ChannelTask.log_group), its
events in that group's G rows: the channel workers write a task's events a row
a write (its parts' too), not a row an event. Four of a recipient's six event
rows on two channels written a row an event cost 24-31 % of the sink
pipeline's CPU (docs/benchmarks.md 2026-12-03 18:38). Readers merge both in
time order.

Every row of a notification expires at accepted_ms + the retention, so a
notification's rows go together. Each batch of events recorded is then also
published on internal_topics.EVENTS_TOPIC (notifymesh.v1.NotificationEvents, at
most EVENTS_PER_MESSAGE a message), after its rows are written: a record that
fails is retried by its caller (the same rows written again), so every event
written reaches the stream at least once. The fan-out and the channel workers write it
(accepted, index_ops, page, record); the frontend reads it (notification, by_recipient).
Events hold no address or phone number: reasons are scrubbed by their writers.
"""

import asyncio
import base64
import binascii
from typing import Callable, Iterable, NamedTuple, Protocol, Sequence

from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import events_pb2, notify_pb2, pubsub_pb2
from notifymesh import errors
from notifymesh.batching import Coalescer
from notifymesh.clock import timestamp
from notifymesh.server import rows, validation
from notifymesh.server.internal_topics import EVENTS_TOPIC, channel_name, parse_channel

SENDS_PAGE, MAX_SENDS_PAGE = 1000, 1000  # GetNotification: sends per page
NOTIFICATIONS_PAGE, MAX_NOTIFICATIONS_PAGE = 100, 1000  # ListNotifications
SCAN_ROWS = 1000  # rows per table scan while a page is gathered
# A recipient's event rows of one notification that sends_events reads in its one
# scan (a few per channel and attempt; more are read apart): 100 recipients a
# TableScanMany call (table.MAX_SCAN_ROWS).
RECIPIENT_EVENT_ROWS = 100
PARALLEL_READS = 32  # a ListNotifications page reads its notifications this many at a time
_LAST_MS, _LAST_STATE = 10 ** 13 - 1, 99  # the highest event_ms and state an event key can hold
# Events in one message of the events topic: one message per event would add a
# write to the mesh per event, one per batch adds a fraction of one.
EVENTS_PER_MESSAGE = 1000
PUBLISH_MAX_EVENTS = 5 * EVENTS_PER_MESSAGE  # events of concurrent records merged into one publish call


class LogTable(Protocol):
    """What the log asks of the table (notifymesh.server.table.TableClient)."""

    async def write_many(self, ops_by_partition_key: dict[str, list[storage_pb2.TableOp]]) -> None: ...

    async def read(self, partition_key: str, keys: list[bytes]) -> list[bytes | None]: ...

    async def read_many(self, keys_by_partition_key: dict[str, list[bytes]]) -> dict[bytes, bytes | None]: ...

    async def scan(self, partition_key: str, prefix: bytes, start_after: bytes = b"", limit: int = 1000,
                   reverse: bool = False): ...  # -> table.Scanned(keys, values, more)

    async def scan_many(self, scans: list[tuple[str, bytes]], limit: int): ...  # -> list[table.Scanned]


class EventPublisher(Protocol):
    """notifymesh.server.publishing.InternalPublisher"""

    async def publish(self, topic: str, messages: list[pubsub_pb2.PubsubMessage]) -> list[str]: ...


class Event(NamedTuple):
    """One step of one recipient's notification on one channel."""
    notification_id: str
    accepted_ms: int  # the notification's: its rows expire together
    recipient: str
    channel: int
    state: int  # notify_pb2.SendState
    time_ms: int
    reason: str = ""
    provider: str = ""
    provider_message_id: str = ""
    attempt: int = 0
    template: str = ""  # the notification's: carried on the events stream, not in the row
    category: str = ""
    # The recipient's task's log group (ChannelTask.log_group): its SEND_QUEUED row
    # names it; its channel worker's events are written in the group's rows, one a
    # write of a task (log_writer: what wrote them, unique to the write).
    log_group: str = ""
    log_writer: str = ""


class _SendRows(NamedTuple):
    """A send's event rows (E), as read, in key order."""
    notification_id: str
    recipient: str
    channel: str  # its name, as in event keys
    rows: list[tuple[rows.EventKey, bytes]]


class PageToken(NamedTuple):
    """Where a page of the log ends, opaque to clients: for GetNotification the last
    (recipient, channel) listed; for ListNotifications the last index row listed."""
    kind: str  # "sends" or "recipient"
    owner: str  # the notification id, or the recipient id: a token is good for its own listing only
    fields: tuple[str, ...]

    def encode(self) -> str:
        return base64.urlsafe_b64encode("\0".join((self.kind, self.owner, *self.fields)).encode()).decode()

    @classmethod
    def parse(cls, value: str, kind: str, owner: str, count: int) -> "PageToken":
        """Raises InvalidArgument for anything encode() did not make for this listing."""
        try:
            parts = base64.urlsafe_b64decode(value.encode()).decode().split("\0")
            if parts[:2] != [kind, owner] or len(parts) != 2 + count:
                raise ValueError
            return cls(kind, owner, tuple(parts[2:]))
        except (binascii.Error, UnicodeError, ValueError):
            raise errors.InvalidArgument(f"page_token {value[:40]!r} is not one of this listing") from None


def _put(key: bytes, message, expire_ms: int) -> storage_pb2.TableOp:
    return storage_pb2.TableOp(key=key, value=message.SerializeToString(), expire_ms=expire_ms)


class NotificationLog:
    def __init__(self, table: LogTable, retention_ms: int | Callable[[], int],
                 publisher: EventPublisher | None = None):
        """retention_ms: how long a notification's rows are kept, or a function giving
        it (a live setting: read at each write). publisher: where recorded events
        are published (None: a reader's log, which records nothing)."""
        self._table, self._publisher = table, publisher
        self._publishes = Coalescer(self._publish, max_items=PUBLISH_MAX_EVENTS)
        self._retention_ms = retention_ms if callable(retention_ms) else (lambda: retention_ms)

    def expire_ms(self, accepted_ms: int) -> int:
        return accepted_ms + self._retention_ms()

    # -- writing -------------------------------------------------------------------------

    async def accepted(self, record: internal_pb2.NotificationRecord) -> None:
        """The header row."""
        await self.page(record.id, [], header=record)

    def index_ops(self, notification_id: str, accepted_ms: int,
                  recipients: Sequence[str]) -> dict[str, list[storage_pb2.TableOp]]:
        """The recipients' index rows (by partition key: the recipient id), which their
        writer writes with other rows of their partitions (the fan-out, with its
        duplicate checks)."""
        expire = self.expire_ms(accepted_ms)
        return {rid: [storage_pb2.TableOp(key=rows.recipient_notification_key(rid, accepted_ms, notification_id),
                                          expire_ms=expire)] for rid in recipients}

    async def record(self, events: Iterable[Event]) -> None:
        """Writes the events' rows, then publishes them on the events topic."""
        await self.publish(await self.write_rows(events))

    async def page(self, notification_id: str, events: Iterable[Event],
                   header: internal_pb2.NotificationRecord | None = None) -> None:
        """A fan-out page's rows in one write (a call per partition): the events'
        rows and, on the first page, the header; then the events published. Written
        apart, a one-recipient notification's header and events were two calls to
        its partition."""
        ops: dict[str, list[storage_pb2.TableOp]] = {}
        if header is not None:
            ops.setdefault(header.id, []).append(
                _put(rows.notification_key(header.id), header, self.expire_ms(header.accepted_ms)))
        published = self._event_ops(events, ops)
        await self._table.write_many(ops)
        await self.publish(published)

    async def write_rows(self, events: Iterable[Event]) -> list[events_pb2.NotificationEvent]:
        """Writes the events, one table write per partition (the table client also
        merges concurrent writes to a partition into one call); returns them as the
        events topic carries them, in order."""
        ops: dict[str, list[storage_pb2.TableOp]] = {}
        published = self._event_ops(events, ops)
        if ops:
            await self._table.write_many(ops)
        return published

    def _event_ops(self, events: Iterable[Event], ops: dict[str, list[storage_pb2.TableOp]]
                   ) -> list[events_pb2.NotificationEvent]:
        """Adds the events' rows to ops (by partition key): a row an event, or one
        row a task's write of them (Event.log_group); returns them as the events
        topic carries them, in order."""
        published: list[events_pb2.NotificationEvent] = []
        logged: dict[tuple[str, int, str, str], tuple[int, int, internal_pb2.LoggedEvents]] = {}
        for e in events:
            # The SendEvent set in place in its NotificationEvent rather than made apart and
            # copied in: an event's rows and publishing 11.4 -> 9.3 us (best of 30 rounds).
            event = events_pb2.NotificationEvent(notification_id=e.notification_id, recipient=e.recipient,
                                                 channel=e.channel, template=e.template, category=e.category)
            value = event.event
            value.state, value.attempt, value.reason = e.state, e.attempt, e.reason
            value.provider, value.provider_message_id = e.provider, e.provider_message_id
            value.time.FromMilliseconds(e.time_ms)
            published.append(event)
            if e.log_group and e.state != notify_pb2.SEND_QUEUED:
                write = (e.notification_id, e.channel, e.log_group, e.log_writer)
                if write not in logged:
                    logged[write] = (e.time_ms, self.expire_ms(e.accepted_ms), internal_pb2.LoggedEvents())
                logged[write][2].events.add(recipient=e.recipient, event=value)
                continue
            row = value.SerializeToString()
            if e.log_group:
                row += internal_pb2.LogGroupTag(log_group=e.log_group).SerializeToString()
            key = rows.event_key(e.notification_id, e.recipient, channel_name(e.channel), e.time_ms, e.state)
            ops.setdefault(e.notification_id, []).append(
                storage_pb2.TableOp(key=key, value=row, expire_ms=self.expire_ms(e.accepted_ms)))
        for (notification_id, channel, group, writer), (first_ms, expire_ms, written) in logged.items():
            key = rows.logged_events_key(notification_id, channel_name(channel), group, first_ms, writer)
            ops.setdefault(notification_id, []).append(_put(key, written, expire_ms))
        return published

    async def publish(self, published: list[events_pb2.NotificationEvent]) -> None:
        """Publishes events whose rows are written; concurrent calls share one publish
        (fewer, fuller messages)."""
        if published and self._publisher is not None:
            await self._publishes.submit("", published)

    async def _publish(self, _key, published: list[events_pb2.NotificationEvent]) -> None:
        await self._publisher.publish(EVENTS_TOPIC, [
            pubsub_pb2.PubsubMessage(data=events_pb2.NotificationEvents(
                events=published[i:i + EVENTS_PER_MESSAGE]).SerializeToString())
            for i in range(0, len(published), EVENTS_PER_MESSAGE)])

    # -- reading -------------------------------------------------------------------------

    async def header(self, notification_id: str) -> internal_pb2.NotificationRecord | None:
        (raw,) = await self._table.read(notification_id, [rows.notification_key(notification_id)])
        return None if raw is None else internal_pb2.NotificationRecord.FromString(raw)

    async def notification(self, notification_id: str, page_size: int = 0,
                           page_token: str = "") -> notify_pb2.Notification:
        """The header and a page of sends (per recipient and channel, in recipient
        order). NotFound when no header row is written (yet, or any more)."""
        size = validation.page_size(page_size, SENDS_PAGE, MAX_SENDS_PAGE)
        start_after = b""
        if page_token:
            rid, channel = PageToken.parse(page_token, "sends", notification_id, 2).fields
            # Past every event of that send, even ones written since the page was read.
            start_after = rows.event_key(notification_id, rid, channel, _LAST_MS, _LAST_STATE)
        record = await self.header(notification_id)
        if record is None:
            raise errors.NotFound(f"notification {notification_id!r} not found")
        prefix, more = rows.events_prefix(notification_id), False
        page: list[_SendRows] = []
        while True:
            scanned = await self._table.scan(notification_id, prefix, start_after, limit=SCAN_ROWS)
            for key, value in zip(scanned.keys, scanned.values):
                parsed = rows.parse_event_key(key)
                if not page or (page[-1].recipient, page[-1].channel) != (parsed.recipient, parsed.channel):
                    if len(page) == size:  # the page is full and its last send complete
                        more = True
                        break
                    page.append(_SendRows(notification_id, parsed.recipient, parsed.channel, []))
                page[-1].rows.append((parsed, value))
            if more or not scanned.more or not scanned.keys:
                break
            start_after = scanned.keys[-1]
        result = _header(record)
        result.sends.extend(await self._sends(page))
        if more:
            last = page[-1]
            result.next_page_token = PageToken("sends", notification_id, (last.recipient, last.channel)).encode()
        return result

    async def by_recipient(self, recipient: str, start_ms: int = 0, end_ms: int = 0, page_size: int = 0,
                           page_token: str = "") -> notify_pb2.ListNotificationsResponse:
        """The recipient's notifications accepted within [start_ms, end_ms] (end 0:
        up to now), newest first, each with this recipient's sends only."""
        size = validation.page_size(page_size, NOTIFICATIONS_PAGE, MAX_NOTIFICATIONS_PAGE)
        if page_token:
            ms, nid = PageToken.parse(page_token, "recipient", recipient, 2).fields
            start_after = rows.recipient_notification_key(recipient, int(ms), nid)
        else:  # a reverse scan lists the keys below start_after: those accepted up to end_ms
            start_after = rows.recipient_notifications_from(recipient, end_ms + 1) if end_ms else b""
        scanned = await self._table.scan(recipient, rows.recipient_notifications_prefix(recipient), start_after,
                                         limit=size + 1, reverse=True)
        listed = [rows.parse_recipient_notification_key(key) for key in scanned.keys]
        in_range = [k for k in listed if k.accepted_ms >= start_ms]
        page = in_range[:size]
        more = len(in_range) > size or (scanned.more and len(in_range) == len(listed) and bool(page))
        slots = asyncio.Semaphore(PARALLEL_READS)

        async def one(key: rows.RecipientNotificationKey) -> notify_pb2.Notification | None:
            async with slots:
                return await self._recipient_sends(key.notification_id, recipient)

        found = await asyncio.gather(*(one(k) for k in page))
        response = notify_pb2.ListNotificationsResponse(notifications=[n for n in found if n is not None])
        if more:
            last = page[-1]
            response.next_page_token = PageToken("recipient", recipient,
                                                 (str(last.accepted_ms), last.notification_id)).encode()
        return response

    async def _recipient_sends(self, notification_id: str, recipient: str) -> notify_pb2.Notification | None:
        """The notification with one recipient's sends (None: its header expired)."""
        record, events = await asyncio.gather(self.header(notification_id),
                                              self._scan_all(notification_id, rows.events_prefix(notification_id,
                                                                                                  recipient)))
        if record is None:
            return None
        by_channel: list[_SendRows] = []
        for key, value in events:
            parsed = rows.parse_event_key(key)
            if not by_channel or by_channel[-1].channel != parsed.channel:
                by_channel.append(_SendRows(notification_id, recipient, parsed.channel, []))
            by_channel[-1].rows.append((parsed, value))
        result = _header(record)
        result.sends.extend(await self._sends(by_channel))
        return result

    async def headers(self, notification_ids: Iterable[str]) -> dict[str, internal_pb2.NotificationRecord | None]:
        """header() of each notification, in one read (a table call per partition)."""
        keys = {nid: rows.notification_key(nid) for nid in notification_ids}
        found = await self._table.read_many({nid: [key] for nid, key in keys.items()})
        return {nid: None if found.get(key) is None else internal_pb2.NotificationRecord.FromString(found[key])
                for nid, key in keys.items()}

    async def sends_events(self, sends: list[tuple[str, str, int]]) -> list[list[notify_pb2.SendEvent]]:
        """Each send's events (notification id, recipient, channel), oldest first (a few
        per attempt), in one scan (a table call per partition) and one more of their
        tasks' rows; a recipient with more rows than one scan gives is read to its end
        apart."""
        scans = [(nid, rows.events_prefix(nid, recipient)) for nid, recipient, _ in sends]
        scanned = await self._table.scan_many(scans, RECIPIENT_EVENT_ROWS) if scans else []
        found: list[_SendRows] = []
        for (nid, recipient, channel), (partition_key, prefix), rows_found in zip(sends, scans, scanned):
            found_rows = list(zip(rows_found.keys, rows_found.values)) if not rows_found.more else \
                await self._scan_all(partition_key, prefix)
            name = channel_name(channel)
            parsed_rows = [(rows.parse_event_key(key), value) for key, value in found_rows]
            found.append(_SendRows(nid, recipient, name, [(p, v) for p, v in parsed_rows if p.channel == name]))
        return [list(send.timeline) for send in await self._sends(found)]

    async def _sends(self, sends: list[_SendRows]) -> list[notify_pb2.RecipientSend]:
        """Each send with its events: its own rows' and, when its SEND_QUEUED row names
        a log group, the events for it in the group's rows (read in one scan, a table
        call per partition), oldest first."""
        groups: dict[tuple[str, str, str], list[int]] = {}  # (nid, channel, group) -> the sends in it
        for i, send in enumerate(sends):
            for parsed, value in send.rows:
                if parsed.state == notify_pb2.SEND_QUEUED:
                    group = internal_pb2.LogGroupTag.FromString(value).log_group
                    if group:
                        groups.setdefault((send.notification_id, send.channel, group), []).append(i)
                        break
        logged: list[list[tuple[int, int, notify_pb2.SendEvent]]] = [[] for _ in sends]
        if groups:
            scans = [(nid, rows.logged_events_prefix(nid, channel, group)) for nid, channel, group in groups]
            scanned = await self._table.scan_many(scans, RECIPIENT_EVENT_ROWS)
            for scan, found, members in zip(scans, scanned, groups.values()):
                values = found.values if not found.more else [value for _, value in await self._scan_all(*scan)]
                wanted = {sends[i].recipient: i for i in members}
                for value in values:
                    for item in internal_pb2.LoggedEvents.FromString(value).events:
                        i = wanted.get(item.recipient)
                        if i is not None:
                            logged[i].append((item.event.time.ToMilliseconds(), item.event.state, item.event))
        result = []
        for send, more in zip(sends, logged):
            events = [(parsed.event_ms, parsed.state, value) for parsed, value in send.rows]
            if more:  # both in time order, then state's (as event keys sort)
                events = sorted(events + more, key=lambda e: (e[0], e[1]))
            one = notify_pb2.RecipientSend(recipient=send.recipient, channel=parse_channel(send.channel))
            for _, _, event in events:
                _add_event(one, event)
            result.append(one)
        return result

    async def _scan_all(self, partition_key: str, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every row under prefix: for one recipient of one notification, a few per
        channel and attempt (at most max_delivery_attempts of each)."""
        found, start_after = [], b""
        while True:
            scanned = await self._table.scan(partition_key, prefix, start_after, limit=SCAN_ROWS)
            found += zip(scanned.keys, scanned.values)
            if not scanned.more or not scanned.keys:
                return found
            start_after = scanned.keys[-1]


class BatchedRecorder:
    """Events recorded concurrently (a sender's many sends under way) share one
    NotificationLog.write_rows (one table write per partition for all of them),
    then one publish. The two are separate stages, each one call at a time, so a
    batch publishes while the next one's rows are written: publishing adds work,
    not a round trip, to each batch's turn."""

    def __init__(self, notification_log: NotificationLog, max_events: int = 5000):
        self._log = notification_log
        self._writes = Coalescer(lambda _key, events: notification_log.write_rows(events), max_items=max_events)

    async def record(self, events: list[Event]) -> None:
        await self._log.publish(await self._writes.submit("", events))

    async def sends_events(self, sends: list[tuple[str, str, int]]) -> list[list[notify_pb2.SendEvent]]:
        """NotificationLog.sends_events: reads are not batched."""
        return await self._log.sends_events(sends)


def _header(record: internal_pb2.NotificationRecord) -> notify_pb2.Notification:
    request = record.request
    return notify_pb2.Notification(
        id=record.id, template=request.template, template_version=record.template_version,
        category=request.category, priority=request.priority or notify_pb2.NORMAL,
        create_time=timestamp(record.accepted_ms), recipient_count=record.recipient_count,
        audience=request.audience, trace_id=record.trace_id)


def _add_event(send: notify_pb2.RecipientSend, event: bytes | notify_pb2.SendEvent) -> None:
    """Appends an event (they come oldest first) and makes it the send's latest,
    with two exceptions. A queued event after others is a fan-out page written
    again (its sender died before its checkpoint: the page's tasks were sent
    already): it stays in the timeline but does not take the send back to queued.
    An event without a provider (a delivery receipt, an open) keeps the provider
    of the send before it, even when it carries the provider's message id: an SMS
    status callback recorded before the sender's SEND_SENT row was written found no
    provider to name (frontend/tracking.py), but its message is the same send's."""
    if isinstance(event, bytes):  # a row's (a SEND_QUEUED one's log group tag dropped)
        raw, event = event, send.timeline.add()
        event.MergeFromString(raw)
        event.DiscardUnknownFields()
    else:
        send.timeline.append(event)
        event = send.timeline[-1]
    if event.state == notify_pb2.SEND_QUEUED and len(send.timeline) > 1:
        return
    send.state, send.reason = event.state, event.reason
    if event.provider:
        send.provider, send.provider_message_id = event.provider, event.provider_message_id
    elif event.provider_message_id:
        send.provider_message_id = event.provider_message_id
