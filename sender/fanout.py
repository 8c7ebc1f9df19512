"""The notification fan-out: turns one accepted notification (a NotificationJob on
internal_topics.NOTIFY_TOPIC, whose message id is the notification id) into
ChannelTasks of up to 25 recipients on each channel, on the channel topics
(sender/channel_tasks.py).

Recipients are expanded a page at a time (the request's list, or an audience's
members in id order; at most PAGE, fewer when the data is big), so memory holds
a few pages whatever the audience's size. Per page: the recipients' contact, unsubscribe and preference
rows are read in one batched read (grouped by table partition), the channels
decided (sender/preferences.py), the duplicates checked (below; the recipients'
index rows written with the checks, a write a recipient partition), the log
written (suppressions, SEND_QUEUED; the header with the first page) and the tasks published with
the idempotency key "nid/first recipient/channel/count" (a page's tasks are the
same each time it is expanded). Up to PAGES_IN_FLIGHT pages of a
job are expanded at once (listed in order, each once the one before is listed),
and at most PAGE_SLOTS pages of all jobs of the sender; the checkpoint row (K)
is written once a page and every page before it are done, unless the request
lists no more than a page of recipients.

A recipient to be sent something is first checked for a duplicate: a hash of
the template, category and data is counted for it (Storage.RateAcquire, limit 1
over the notify topic's dedup window, the notification id as the token), so
the same request repeated without its idempotency key notifies nobody twice
(SUPPRESSED_DUPLICATE), while the same notification fanned out again after a
crash is let through again. A crash
delivers the job again: it resumes after the checkpoint, and the pages published
again (those in flight beyond it: PAGES_IN_FLIGHT at most) are recognised by
storage as repeats of their tasks' keys.
"""

import asyncio
import hashlib
import logging
from collections import deque
from typing import NamedTuple, Protocol

from google.protobuf.message import DecodeError

from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms
from notifymesh.log import fields
from notifymesh.server import rows, tracing
from notifymesh.server.internal_topics import CHANNELS, NOTIFY_TOPIC, channel_name, channel_topic
from notifymesh.server.notification_log import Event, NotificationLog
from notifymesh.server.table import Acquire
from sender import channel_tasks
from sender.pipeline import ACK, Outcome
from sender.preferences import Action, Preference, decide

log = logging.getLogger(__name__)

PAGE = 1000  # recipients expanded at a time
PAGE_BYTES = 4 * 1024 * 1024  # and a page's tasks' data at most (a request's data is up to 64 KiB)
# A page is a chain of table and publish round trips (~1 s on the local mesh under
# load), the CPU mostly elsewhere: a page at a time, one audience of 20,000 fanned
# out at 1,050-1,190 recipients/s while 20 lists of 1,000 (16 jobs at once) went at
# 3,300-4,400/s; four at once, 2,100-2,450/s (bench/notify.py --audience,
# docs/benchmarks.md, 2026-12-03 06:00). Not tuned against other counts.
PAGES_IN_FLIGHT = 4
# Pages under way in all jobs of a sender: the memory bound (16 x PAGE_BYTES of
# task data: 64 MiB), whatever the jobs and their pages in flight.
PAGE_SLOTS = 16
PUBLISH_MAX_MESSAGES = 1000  # channel tasks in one publish
PUBLISH_MAX_BYTES = 4 * 1024 * 1024  # and their data (a task carries the request's data, up to 64 KiB)
_SUPPRESSED = {Action.OPTED_OUT: notify_pb2.SUPPRESSED_OPTED_OUT, Action.NO_CONTACT: notify_pb2.SUPPRESSED_NO_CONTACT}
DEFAULT_DEDUP_WINDOW_MS = 24 * 3600 * 1000  # a topic's default dedup window (Topic.dedup_window)


class FanoutTable(Protocol):
    """What the fan-out asks of the table (notifymesh.server.table.TableClient)."""

    async def write(self, partition_key: str, ops: list[storage_pb2.TableOp]) -> None: ...

    async def read(self, partition_key: str, keys: list[bytes]) -> list[bytes | None]: ...

    async def read_many(self, keys_by_partition_key: dict[str, list[bytes]]) -> dict[bytes, bytes | None]: ...

    async def scan(self, partition_key: str, prefix: bytes, start_after: bytes = b"", limit: int = 1000,
                   reverse: bool = False): ...  # -> table.Scanned(keys, values, more)

    async def rate_acquire_many(self, acquires: list[Acquire], writes: dict[str, list[storage_pb2.TableOp]] | None
                                = None): ...  # -> [table.RateDecision], in order


class FanoutMetadata(Protocol):
    """The metadata mirrors (notifymesh.server.cluster.Cluster): each raises NotFound."""

    async def category(self, name: str) -> notify_pb2.Category: ...

    async def template(self, name: str, version: int = 0) -> notify_pb2.Template: ...

    async def topic(self, name: str) -> pubsub_pb2.Topic: ...


class Publisher(Protocol):
    """notifymesh.server.publishing.InternalPublisher"""

    async def publish(self, topic: str, messages: list[pubsub_pb2.PubsubMessage]) -> list[str]: ...


class Job(NamedTuple):
    """What every page of one notification needs."""
    notification_id: str
    job: internal_pb2.NotificationJob
    category: notify_pb2.Category
    requested: list[int]  # the request's channels (none: the template's, as the recipient has them)
    template_channels: list[int]
    scopes: list[tuple[str, str]]  # the (category, channel) preference rows that can apply
    payload_hash: str  # of template, category and data: what a repeat is recognised by
    dedup_window_ms: int


def page_size(request: notify_pb2.NotifyRequest) -> int:
    """Recipients per page: PAGE, fewer when their tasks would carry over PAGE_BYTES of data."""
    per_recipient = (len(request.data) + 256) * max(1, len(request.channels) or len(CHANNELS))
    return max(1, min(PAGE, PAGE_BYTES // per_recipient))


def payload_hash(request: notify_pb2.NotifyRequest, template_version: int) -> str:
    """What a repeated request has in common with the first, whatever its key."""
    parts = (request.template, str(template_version), request.category, request.data)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


class Fanout:
    def __init__(self, table: FanoutTable, notification_log: NotificationLog, metadata: FanoutMetadata,
                 publisher: Publisher, page_slots: int = PAGE_SLOTS):
        self._table, self._log, self._metadata, self._publisher = table, notification_log, metadata, publisher
        self._page_slots = asyncio.Semaphore(page_slots)

    async def handle(self, received: pubsub_pb2.ReceivedMessage) -> Outcome:
        """A job of the fan-out subscription (a pipeline.Handler)."""
        notification_id = received.message.message_id
        try:
            job = internal_pb2.NotificationJob.FromString(received.message.data)
        except DecodeError:  # nothing anyone can send: set aside for a person to look at
            log.error("not a notification job", extra=fields(message=notification_id))
            return Outcome(ack=False, terminal=True, reason="not a NotificationJob")
        done = await self.run(notification_id, job)
        log.info("notification fanned out", extra=fields(notification=notification_id, recipients=done))
        return ACK

    async def _job(self, notification_id: str, job: internal_pb2.NotificationJob) -> Job:
        request = job.request
        try:
            category = await self._metadata.category(request.category)
        except errors.NotFound:  # deleted since the notification was accepted: no opt-out exemption
            category = notify_pb2.Category(name=request.category)
        try:
            template = await self._metadata.template(request.template, job.template_version)
            template_channels = list(dict.fromkeys(c.channel for c in template.contents))
        except errors.NotFound:  # its tasks fail, each logged, when they find it gone
            template_channels = []
        requested = list(dict.fromkeys(request.channels))
        names = [channel_name(c) for c in (requested or template_channels or CHANNELS)]
        scopes = [(request.category, ""), ("", "")] + [(cat, ch) for ch in names for cat in (request.category, "")]
        try:
            window = (await self._metadata.topic(NOTIFY_TOPIC)).dedup_window.ToMilliseconds()
        except errors.NotFound:
            window = 0
        return Job(notification_id, job, category, requested, template_channels, scopes,
                   payload_hash(request, job.template_version), window or DEFAULT_DEDUP_WINDOW_MS)

    async def _duplicates(self, job: Job, recipients: list[str], page: list[str]) -> set[str]:
        """The recipients the same template, category and data reached within the
        window through another notification; the page's index rows are written in the
        same writes (a replicated write a recipient partition, not two: at 100
        notifications of 10 recipients a second, TableWrite calls 0.25 a recipient
        against 0.46 and the mesh's CPU 8.4-9.1 against 10.5-11.8 CPU-s a 1,000,
        docs/benchmarks.md 2026-12-03 22:05)."""
        decisions = await self._table.rate_acquire_many(
            [Acquire(rid, rows.duplicate_key(rid, job.payload_hash), 1, job.dedup_window_ms, job.notification_id)
             for rid in recipients], self._log.index_ops(job.notification_id, job.job.accepted_ms, page))
        return {rid for rid, decision in zip(recipients, decisions) if not decision.allowed}

    async def run(self, notification_id: str, job: internal_pb2.NotificationJob) -> int:
        """Expands the job from its checkpoint on; returns the recipients done in all."""
        request, accepted_ms = job.request, job.accepted_ms
        size = page_size(request)
        # A list of one page keeps no checkpoint: delivered again, it is expanded again,
        # which its tasks' keys and the duplicate check's token make harmless (as after
        # a crash before a checkpoint). That is a read and a write of a one-recipient
        # notification's 24-27 storage calls at 20/s (bench/notify.py calls_per_recipient).
        listed = list(dict.fromkeys(request.recipients))  # a recipient named twice is notified once
        paged = bool(request.audience) or len(listed) > size
        checkpoint = None
        if paged:
            (raw,) = await self._table.read(notification_id, [rows.checkpoint_key(notification_id)])
            checkpoint = internal_pb2.FanoutCheckpoint.FromString(raw) if raw is not None else None
        record = internal_pb2.NotificationRecord(
            id=notification_id, request=request, template_version=job.template_version, accepted_ms=accepted_ms,
            recipient_count=len(request.recipients), trace_id=tracing.current_trace_id())
        header = None  # the header, while it waits to go with the first page's rows
        if checkpoint is None:
            checkpoint, header = internal_pb2.FanoutCheckpoint(), record
        else:
            log.info("fan-out resumes", extra=fields(notification=notification_id, after=checkpoint.recipients_done))
        context = await self._job(notification_id, job)
        # Pages under way, oldest first, each with the checkpoint it completes.
        in_flight: deque[tuple[internal_pb2.FanoutCheckpoint, asyncio.Task]] = deque()
        listed_to, more = checkpoint, True
        try:
            while more or in_flight:
                # Another page while this job has fewer than PAGES_IN_FLIGHT and a slot is
                # free; else (or with none under way, a slot once one is) the oldest's end.
                if more and len(in_flight) < PAGES_IN_FLIGHT and (not self._page_slots.locked() or not in_flight):
                    page, more = await self._page(request, listed, listed_to, size)
                    if page:
                        await self._page_slots.acquire()
                        listed_to = internal_pb2.FanoutCheckpoint(
                            after_recipient=page[-1], recipients_done=listed_to.recipients_done + len(page))
                        expanding = asyncio.create_task(self._expand_page(context, page, header))
                        # A done callback, as a task cancelled before it started runs none of its code.
                        expanding.add_done_callback(lambda _: self._page_slots.release())
                        in_flight.append((listed_to, expanding))
                        header = None
                    continue
                done, expanding = in_flight.popleft()
                await expanding
                checkpoint = done
                if paged:
                    await self._table.write(notification_id, [storage_pb2.TableOp(
                        key=rows.checkpoint_key(notification_id), value=checkpoint.SerializeToString(),
                        expire_ms=self._log.expire_ms(accepted_ms))])
        finally:  # a page failed (the job goes back, to resume at the checkpoint) or the worker stops
            for _, expanding in in_flight:
                expanding.cancel()
            await asyncio.gather(*(expanding for _, expanding in in_flight), return_exceptions=True)
        if request.audience:  # its size is known now
            record.recipient_count = checkpoint.recipients_done
        if request.audience or header is not None:  # (or no page carried the header: no recipients)
            await self._log.accepted(record)
        return checkpoint.recipients_done

    async def _expand_page(self, job: Job, recipients: list[str],
                           header: internal_pb2.NotificationRecord | None) -> None:
        with tracing.child_span("notifymesh.fanout.page", **{"notifymesh.recipients": len(recipients)}):
            await self._expand(job, recipients, header)

    async def _page(self, request: notify_pb2.NotifyRequest, listed: list[str],
                    checkpoint: internal_pb2.FanoutCheckpoint, size: int) -> tuple[list[str], bool]:
        """The next page of recipients after the checkpoint, and whether more follow;
        listed: the request's recipients, each once (none for an audience)."""
        if not request.audience:
            start = checkpoint.recipients_done
            return listed[start:start + size], start + size < len(listed)
        start_after = rows.member_key(request.audience, checkpoint.after_recipient) \
            if checkpoint.after_recipient else b""
        scanned = await self._table.scan(request.audience, rows.members_prefix(request.audience), start_after,
                                         limit=size)
        return [rows.parse_member_key(key)[1] for key in scanned.keys], scanned.more and bool(scanned.keys)

    async def _expand(self, job: Job, recipients: list[str], header: internal_pb2.NotificationRecord | None) -> None:
        """One page; header: the notification's header row, written with its log rows."""
        nid, request, accepted_ms = job.notification_id, job.job.request, job.job.accepted_ms
        keys = {rid: [rows.contact_key(rid), rows.unsubscribed_key(rid), rows.has_devices_key(rid),
                      *(rows.preference_key(rid, cat, ch) for cat, ch in job.scopes)] for rid in recipients}
        found = await self._table.read_many(keys)
        decisions = {}
        for rid in recipients:
            contact_raw, unsubscribed_raw, devices_raw, *preference_raws = (found.get(key) for key in keys[rid])
            recipient = notify_pb2.Recipient.FromString(contact_raw) if contact_raw is not None else None
            unsubscribed = unsubscribed_raw is not None and not internal_pb2.PreferenceRow.FromString(
                unsubscribed_raw).enabled
            preferences = [Preference(cat, ch, internal_pb2.PreferenceRow.FromString(raw).enabled)
                           for (cat, ch), raw in zip(job.scopes, preference_raws) if raw is not None]
            decisions[rid] = decide(recipient, unsubscribed, preferences, job.category, job.requested,
                                    job.template_channels, has_devices=devices_raw is not None)
        duplicates = await self._duplicates(
            job, [rid for rid, decided in decisions.items() if any(d.action is Action.SEND for d in decided)],
            recipients)
        ms = now_ms()
        events: list[Event] = []
        sends: dict[int, list[str]] = {}  # channel -> its recipients to send to, in order
        for rid, decided in decisions.items():
            for decision in decided:
                if decision.action is Action.SEND and rid in duplicates:
                    events.append(Event(nid, accepted_ms, rid, decision.channel, notify_pb2.SUPPRESSED_DUPLICATE,
                                        ms, reason="the same template, category and data reached this recipient "
                                                   "through another notification within the dedup window",
                                        template=request.template, category=request.category))
                elif decision.action is Action.SEND:
                    sends.setdefault(decision.channel, []).append(rid)
                else:
                    events.append(Event(nid, accepted_ms, rid, decision.channel, _SUPPRESSED[decision.action], ms,
                                        reason=decision.reason, template=request.template,
                                        category=request.category))
        for channel, rids in sends.items():  # queued: each names its task's log group
            events += [Event(nid, accepted_ms, rid, channel, notify_pb2.SEND_QUEUED, ms, template=request.template,
                             category=request.category, log_group=group)
                       for rid, group in zip(rids, channel_tasks.log_groups(rids))]
        tasks = {channel_topic(channel, request.priority): channel_tasks.grouped(internal_pb2.ChannelTask(
            notification_id=nid, channel=channel, template=request.template,
            template_version=job.job.template_version, category=request.category,
            priority=request.priority or notify_pb2.NORMAL, data=request.data, accepted_ms=accepted_ms), rids)
            for channel, rids in sends.items()}
        # The log first: a task may be sent (and logged) before this call returns.
        await self._log.page(nid, events, header)
        await asyncio.gather(*(self._publisher.publish(topic, chunk)
                               for topic, messages in tasks.items() for chunk in _chunks(messages)))


def _chunks(messages: list[pubsub_pb2.PubsubMessage]) -> list[list[pubsub_pb2.PubsubMessage]]:
    """Publish calls of at most PUBLISH_MAX_MESSAGES and PUBLISH_MAX_BYTES each (at least one message)."""
    chunks: list[list[pubsub_pb2.PubsubMessage]] = []
    size = 0
    for message in messages:
        if not chunks or len(chunks[-1]) == PUBLISH_MAX_MESSAGES or size + len(message.data) > PUBLISH_MAX_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(message)
        size += len(message.data)
    return chunks
