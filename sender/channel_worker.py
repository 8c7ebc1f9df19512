"""Sending recipients' notifications on one channel: the handler of a channel
subscription's messages (ChannelTask), one per (channel, priority), a batch of
tasks at a time (pipeline.BatchHandler), each step taken for the whole batch.

Each task's steps, in order, each recorded in the notification log:
1. a provider must be set for the channel, else the task waits (a deferred nack,
   logged once per task);
2. the rate limit: the recipient's override for the category, else the
   category's, else the cluster's default; over it, DROP suppresses (SUPPRESSED_RATE_LIMITED, ack) and DELAY
   puts the task back until the limit allows it (SEND_DELAYED, a deferred nack:
   no attempt counted). High priority is counted but never held back;
3. the contact, read again (erased meanwhile, or no address: SUPPRESSED_NO_CONTACT);
   push: the recipient's devices (none: SUPPRESSED_NO_CONTACT), each sent to (_send_devices);
4. rendering (a missing variable fails this recipient for good: SEND_FAILED);
5. the provider (at most its max_concurrency sends at once, high priority
   first): SEND_SENT; a transient failure SEND_FAILED and a nack (Retry-After as
   the delay when given), and on the subscription's last attempt
   SEND_DEAD_LETTERED and a nack to the dead-letter topic; a permanent one
   SEND_FAILED and an ack.
The task's events are written before its ack or nack, and SEND_RENDERED also
before the provider is called (every attempt that may have reached the provider
is in the log); reasons never hold the recipient's address.

A task of many recipients (sender/channel_tasks.py) takes these steps for each
recipient; its outcome is theirs when they share one (the task nacked whole,
as one recipient's would be), else the recipients not done go on as parts (a
task each retry wait or rate-limit second, with the attempts made) and the task
is acknowledged. Only a task of one recipient is dead-lettered.
"""

import asyncio
import json
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol

from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from notifymesh import errors
from notifymesh.backoff import retry_wait_ms
from notifymesh.batching import Coalescer
from notifymesh.clock import now_ms
from notifymesh.log import fields
from notifymesh.server import devices, rows, tracing, validation
from notifymesh.server.internal_topics import channel_name, channel_topic
from notifymesh.server.notification_log import Event
from notifymesh.server.table import Acquire
from sender import channel_tasks
from sender.pipeline import ACK, Outcome, failed
from sender.preferences import contact

log = logging.getLogger(__name__)

NO_PROVIDER_DELAY_MS = 30_000  # a task whose channel has no provider looks again this much later
MAX_NACK_DELAY_MS = 600_000  # the longest nack delay storage takes; a longer rate-limit wait takes two
WAITING_NOTED = 100_000  # tasks remembered as logged waiting for a provider (the oldest forgotten first)
READS_PER_CALL = 1000  # tasks' reads merged into one read_many (2 rows each)
# Recipients being prepared or waiting for a provider slot while a full batch is
# taken: what a channel worker's window (2,048 tasks) held when a task was one
# recipient. With room for one batch at a time the sink ran 1,003-1,276
# recipients/s against 1,468-1,707 (alternating, docs/benchmarks.md 2026-12-03 17:40).
PREPARED_AHEAD = 2048


class ChannelTable(Protocol):
    """What a channel worker asks of the table (notifymesh.server.table.TableClient);
    write and scan: push's devices (notifymesh.server.devices.DeviceTable)."""

    async def write(self, partition_key: str, ops: list[storage_pb2.TableOp]) -> None: ...

    async def scan(self, partition_key: str, prefix: bytes, start_after: bytes = b"", limit: int = 1000,
                   reverse: bool = False): ...  # -> table.Scanned(keys, values, more)

    async def read_many(self, keys_by_partition_key: dict[str, list[bytes]]) -> dict[bytes, bytes | None]: ...

    async def scan_many(self, scans: list[tuple[str, bytes]], limit: int): ...  # -> list[table.Scanned]

    async def rate_acquire_many(self, acquires: list[Acquire]): ...  # -> [table.RateDecision], in order


class ChannelMetadata(Protocol):
    """The mirrors of etcd (notifymesh.server.cluster.Cluster): each raises NotFound."""

    async def category(self, name: str) -> notify_pb2.Category: ...

    async def template(self, name: str, version: int = 0) -> notify_pb2.Template: ...

    async def provider(self, channel: int) -> notify_pb2.Provider: ...

    async def subscription(self, name: str) -> pubsub_pb2.Subscription: ...


class Rendering(Protocol):
    """notifymesh.server.templating (Renderer.render_lazily, context) and the unsubscribe URL
    of notifymesh.server.unsubscribe."""

    def render_lazily(self, template: notify_pb2.Template, channel: int, locale: str,
                      make_values: Callable[[], dict[str, Any]], notification_id: str) -> notify_pb2.RenderedContent:
        """Raises errors.InvalidArgument (a missing variable, a render error) or
        errors.FailedPrecondition (no content for the channel). A field of the
        notification's data alone is rendered once for all its recipients;
        make_values() is called only when a field is rendered."""

    def context(self, recipient: notify_pb2.Recipient | None, data: dict, notification_id: str, category: str,
                unsubscribe_url: str = "") -> dict[str, Any]: ...

    def unsubscribe_url(self, recipient: str, category: str, channel: str, notification_id: str = "",
                        accepted_ms: int = 0) -> str:
        """"" when the frontends' HTTP address is not known."""

    def track_html(self, html: str, notification_id: str, recipient: str, accepted_ms: int) -> str:
        """The email's HTML with links through the click redirect and an open pixel."""

    def status_callback_url(self, notification_id: str, recipient: str, channel: int, accepted_ms: int) -> str:
        """Where a provider reports the send delivered; "" when not known."""


class Outgoing(NamedTuple):
    """One rendered message to one address: the fields of sender.providers.OutgoingMessage."""
    channel: int
    to: str
    subject: str = ""
    text: str = ""
    html: str = ""
    json_body: str = ""
    headers: dict[str, str] = {}
    idempotency_key: str = ""
    notification_id: str = ""
    recipient: str = ""
    status_callback: str = ""
    platform: str = ""  # push: the device's (`to` is its token)


class Failed(NamedTuple):
    transient: bool
    reason: str
    provider: str = ""
    retry_after_s: float | None = None  # the provider's Retry-After
    dead: bool = False  # the address will never work (a push token unregistered): removed
    # Half-open breakers' trials that failed on the way to this result, in the order
    # tried: each is logged as a SEND_FAILED of its own before the result.
    trials_failed: tuple["Failed", ...] = ()


class Sent(NamedTuple):
    provider: str
    provider_message_id: str
    trials_failed: tuple[Failed, ...] = ()  # as Failed's


class Providers(Protocol):
    """The channel's provider (sender.providers.provider_for of its record), its
    failures classified (TransientSendError, PermanentSendError)."""

    async def send(self, message: Outgoing) -> Sent | Failed: ...


class Recorder(Protocol):
    """The notification log as a channel worker writes and reads it
    (notification_log.BatchedRecorder)."""

    async def record(self, events: list[Event]) -> None: ...

    async def sends_events(self, sends: list[tuple[str, str, int]]) -> list[list[notify_pb2.SendEvent]]: ...


class Requeue(Protocol):
    """Where the parts of a task split off go: its channel's topic
    (notifymesh.server.publishing.InternalPublisher)."""

    async def publish(self, topic: str, messages: list[pubsub_pb2.PubsubMessage]) -> list[str]: ...


class Inbox(Protocol):
    """The IN_APP channel's provider, inside the mesh (sender.in_app.InAppDelivery):
    writes the recipient's inbox item and wakes the frontends' streams."""

    async def deliver(self, task: internal_pb2.ChannelTask, rendered: notify_pb2.RenderedContent,
                      attempt: int) -> Sent: ...


class PrioritySlots:
    """The sends one channel's provider has in flight, at most limit: a freed slot
    goes to a waiting high priority send before any normal one."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._waiting: dict[bool, deque[asyncio.Future]] = {True: deque(), False: deque()}
        self._watchers: list[asyncio.Future] = []  # changed()'s callers

    def queued(self, high: bool) -> int:
        """The sends waiting for a slot that a send of this priority would wait behind."""
        return len(self._waiting[True]) + (0 if high else len(self._waiting[False]))

    async def changed(self) -> None:
        """Returns once a waiting send got its slot, or notify() was called."""
        future = asyncio.get_running_loop().create_future()
        self._watchers.append(future)
        try:
            await future
        finally:
            if future in self._watchers:
                self._watchers.remove(future)

    def notify(self) -> None:
        watchers, self._watchers = self._watchers, []
        for future in watchers:
            if not future.done():
                future.set_result(None)

    async def acquire(self, high: bool) -> None:
        if self.used < self.limit and not self._waiting[True] and (high or not self._waiting[False]):
            self.used += 1
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting[high].append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # handed a slot as it was cancelled
                self.release()
            elif future in self._waiting[high]:  # else wake() dropped it already
                self._waiting[high].remove(future)
            raise

    def release(self) -> None:
        self.used -= 1
        self.wake()

    def wake(self) -> None:
        """Hands free slots to waiters (also after limit grew)."""
        while self.used < self.limit:
            queue = self._waiting[True] or self._waiting[False]
            if not queue:
                return
            future = queue.popleft()
            if future.done():  # cancelled, its task not run yet: no slot for it
                continue
            self.used += 1
            future.set_result(None)
            if self._watchers:
                self.notify()


class BatchedReads:
    """The reads of batches under way at once (each task's recipient's contact and
    override rows) share one read_many: one table call per partition for all of
    them; so do push tasks' device lists (one scan_many)."""

    def __init__(self, table: ChannelTable, max_reads: int = READS_PER_CALL):
        self._table = table
        self._calls = Coalescer(self._read, max_items=max_reads)
        self._scans = Coalescer(self._scan, max_items=max_reads)

    async def _scan(self, _key, recipients: list[str]) -> list[list[notify_pb2.Device]]:
        scanned = await self._table.scan_many([(rid, rows.devices_prefix(rid)) for rid in recipients],
                                              devices.MAX_DEVICES + 1)
        return [devices.listed(found.values) for found in scanned]

    async def devices(self, recipients: list[str]) -> list[list[notify_pb2.Device]]:
        """Each recipient's devices, as devices.Devices.list gives them."""
        return await self._scans.submit("", recipients) if recipients else []

    async def _read(self, _key, reads: list[tuple[str, list[bytes]]]) -> list[list[bytes | None]]:
        wanted: dict[str, list[bytes]] = {}
        for partition_key, keys in reads:
            wanted.setdefault(partition_key, []).extend(keys)
        found = await self._table.read_many(wanted)
        return [[found.get(key) for key in keys] for _, keys in reads]

    async def read(self, reads: list[tuple[str, list[bytes]]]) -> list[list[bytes | None]]:
        """The values of each (partition key, keys), in order."""
        return await self._calls.submit("", reads) if reads else []


def scrub(reason: str, address: str) -> str:
    """A provider's reason without the recipient's address (the log keeps none)."""
    if address:
        reason = reason.replace(address, "<recipient>")
    return reason[:validation.MAX_REASON_BYTES]


@dataclass(eq=False)
class Sending:
    """One task of a batch under way: what its steps found, its events not yet
    recorded, and its outcome once decided (None: still under way)."""
    received: pubsub_pb2.ReceivedMessage
    task: internal_pb2.ChannelTask  # this recipient's alone (channel_tasks.one_recipient)
    key: str  # channel_tasks.task_key: the provider's idempotency key
    span: Any  # its message's handling span (tracing.begin_handle_span), None when not traced
    attempt: int = 1  # counting the attempts of the tasks it was split from
    alone: bool = True  # its task's only recipient
    data: str = ""  # the task's data (JSON object text): one str for all its recipients
    writes: int = 0  # its events' records so far (with its message's id and delivery attempt: a write's log name)
    events: list[Event] = field(default_factory=list)
    last_ms: int = 0
    outcome: Outcome | None = None
    recipient: notify_pb2.Recipient | None = None
    address: str = ""
    targets: list[notify_pb2.Device] = field(default_factory=list)  # push: its devices
    rendered: notify_pb2.RenderedContent | None = None
    unsubscribe_url: str = ""

    def event(self, state: int, **kw) -> None:
        # Each of the task's events a millisecond after the one before at least: the
        # log orders a send's events by time, then state (rows.event_key), so a push
        # logging its devices' failure and then its sends must not share a ms.
        task = self.task
        self.last_ms = max(now_ms(), self.last_ms + 1)
        self.events.append(Event(task.notification_id, task.accepted_ms, task.recipient, task.channel, state,
                                 self.last_ms, attempt=self.attempt, template=task.template,
                                 category=task.category, log_group=task.log_group,
                                 log_writer=f"{self.received.message.message_id}.{self.received.delivery_attempt}"
                                            f".{self.writes}", **kw))


class _Message(NamedTuple):
    """A message of a batch: its recipients' Sendings, or its outcome decided
    without any (a task not parsed, a part not due yet)."""
    received: pubsub_pb2.ReceivedMessage
    task: internal_pb2.ChannelTask
    span: Any
    sendings: list[Sending]
    outcome: Outcome | None = None
    data: str = ""  # the task's (cleared in task)


class ChannelSender:
    """A channel subscription's BatchHandler: a batch's tasks go through each step
    together (one provider and category lookup, one read, one log write of every
    SEND_RENDERED before any provider call, the provider calls at once within the
    provider's slots, one log write of their outcomes before the batch is
    answered) rather than a coroutine and a table call each. A profile of a task
    each spent about half the sender's samples on per-task steps
    (docs/benchmarks.md, 2026-12-01, issue 15 step 3)."""

    def __init__(self, subscription: str, table: ChannelTable, metadata: ChannelMetadata, rendering: Rendering,
                 providers: Providers, recorder: Recorder, requeue: Requeue, slots: PrioritySlots,
                 default_limit: Callable[[], notify_pb2.RateLimit] = notify_pb2.RateLimit,
                 reads: BatchedReads | None = None, inbox: Inbox | None = None, high_priority: bool = False):
        """default_limit(): the limit of a category without one (the cluster settings
        notify_default_rate_limit and notify_default_rate_period_s; limit 0: none).
        reads: shared by the sender's channel workers (by default this one's own).
        high_priority: the subscription's tasks are high priority (room() waits
        behind no normal send)."""
        self.subscription, self._default_limit, self._high = subscription, default_limit, high_priority
        self._preparing = 0  # tasks of batches in steps 1 to 4
        self._reads = reads if reads is not None else BatchedReads(table)
        self._table, self._metadata, self._rendering = table, metadata, rendering
        self._providers, self._recorder, self._requeue, self._slots = providers, recorder, requeue, slots
        self._waiting_noted: OrderedDict[str, None] = OrderedDict()
        self._devices = devices.Devices(table)
        self._inbox = inbox  # the IN_APP channel's delivery (no provider record)

    async def handle(self, received: pubsub_pb2.ReceivedMessage) -> Outcome:
        """One task alone (a batch of one)."""
        (outcome,) = await self.handle_batch([received])
        return outcome

    async def room(self, full: bool) -> None:
        """Returns once the provider is short of work: fewer than its concurrency of
        sends (of this priority or higher) waiting for a slot or being prepared. The
        tasks arriving meanwhile go in the next batch together. Taking each frame as
        it came, a slow provider's batches were of about 9 tasks (SMS, 20,000 tasks:
        2,224 acks), each step's table call paid for a few tasks. A full batch
        waiting (full) goes while fewer than PREPARED_AHEAD are."""
        limit = max(self._slots.limit, PREPARED_AHEAD) if full else self._slots.limit
        while self._preparing + self._slots.queued(self._high) >= limit:
            await self._slots.changed()

    def weight(self, received: pubsub_pb2.ReceivedMessage) -> int:
        """The recipients of a message's task (a batch holds at most pipeline.BATCH)."""
        try:
            return len(internal_pb2.ChannelTask.FromString(received.message.data).recipients) or 1
        except Exception:  # answered by handle_batch
            return 1

    async def handle_batch(self, batch: list[pubsub_pb2.ReceivedMessage]) -> list[Outcome]:
        messages = [self._begin(received) for received in batch]
        try:
            sendings = [s for m in messages for s in m.sendings]
            if sendings:
                await self._handle(sendings)
            return list(await asyncio.gather(*(self._answer(m) for m in messages)))
        finally:
            for m in messages:
                tracing.end(m.span)

    async def _handle(self, sendings: list[Sending]) -> None:
        self._preparing += len(sendings)
        preparing = True
        try:
            await self._prepare([s for s in sendings if s.outcome is None])
            # Logged before the provider sees them: a sender that dies after a send leaves
            # the attempt in the log, so a second send after redelivery is one the log accounts for.
            await self._record(sendings)
            delivering = asyncio.gather(*(self._deliver(s) for s in sendings if s.outcome is None))
            # After the sends' tasks were scheduled: room() looks again once they wait for their slots.
            self._prepared(len(sendings))
            preparing = False
            await delivering
            await self._record(sendings)
        finally:
            if preparing:
                self._prepared(len(sendings))

    def _prepared(self, count: int) -> None:
        self._preparing -= count
        self._slots.notify()

    def _begin(self, received: pubsub_pb2.ReceivedMessage) -> "_Message":
        span = tracing.begin_handle_span(self.subscription, received)
        try:
            task = internal_pb2.ChannelTask.FromString(received.message.data)
        except Exception as e:  # retried by the subscription's policy, then dead-lettered
            return _Message(received, internal_pb2.ChannelTask(), span, [], failed(e))
        wait_ms = task.not_before_ms - now_ms()
        if wait_ms > 0:  # a part whose retry or rate-limit wait is not over
            return _Message(received, task, span, [], Outcome(
                ack=False, delay_ms=min(wait_ms, MAX_NACK_DELAY_MS), deferred=True, reason="waiting to be tried again"))
        attempt = task.attempts_before + received.delivery_attempt
        # The data once for the task's recipients: a copy each was up to 64 KiB a recipient.
        data = task.data
        task.ClearField("data")
        return _Message(received, task, span, [
            Sending(received, channel_tasks.one_recipient(task, rid) if task.recipients else task,
                    channel_tasks.task_key(task.notification_id, rid, task.channel), span, attempt,
                    alone=not task.recipients, data=data)
            for rid in channel_tasks.recipients(task)], data=data)

    async def _answer(self, message: "_Message") -> Outcome:
        """The message's outcome: its recipients' when they share one (the task goes
        on whole, or ends); else the recipients not done go on as parts (published
        before the task's ack) and the task is acknowledged. A task of many whose
        next attempt would be the last goes on as a task a recipient: only one
        recipient's send is dead-lettered (and redriven)."""
        if message.outcome is not None:
            return message.outcome
        sendings, task = message.sendings, message.task
        left = [s for s in sendings if not s.outcome.ack]
        if not left:
            return ACK
        attempt, first = sendings[0].attempt, left[0].outcome
        alone = len(sendings) > 1 and any(not s.outcome.deferred for s in left) and \
            await self._last_attempt_next(attempt)
        if len(left) == len(sendings) and not alone and all(
                (s.outcome.delay_ms, s.outcome.deferred) == (first.delay_ms, first.deferred) for s in left):
            if first.delay_ms is None and not first.terminal and task.attempts_before:
                # Storage's backoff counts this message's deliveries only, not the task's attempts.
                first = first._replace(delay_ms=await self._retry_wait_ms(attempt))
            return first
        now, by_part = now_ms(), {}
        for s in left:
            outcome = s.outcome
            if outcome.deferred:  # no attempt counted; a second's waits share a part
                part = channel_tasks.Part(attempt - 1, -(-(now + outcome.delay_ms) // 1000) * 1000)
            else:
                delay = outcome.delay_ms if outcome.delay_ms is not None else await self._retry_wait_ms(attempt)
                part = channel_tasks.Part(attempt, now + delay, alone)
            by_part.setdefault(part, []).append(s.task.recipient)
        split_from = f"{message.received.message.message_id}/{message.received.delivery_attempt}"
        try:
            await self._requeue.publish(channel_topic(task.channel, task.priority), [
                part_message for part, rids in by_part.items()
                for part_message in channel_tasks.parts(task, message.data, rids, part, split_from)])
        except Exception as e:  # the whole task again: its recipients sent are sent again, each attempt logged
            log.warning("a task's parts were not published", exc_info=True,
                        extra=fields(subscription=self.subscription, message=message.received.message.message_id))
            return failed(e)
        return ACK

    async def _last_attempt_next(self, attempt: int) -> bool:
        record = await self._metadata.subscription(self.subscription)
        return bool(record.max_delivery_attempts and record.dead_letter_topic
                    and attempt + 1 >= record.max_delivery_attempts)

    async def _attempts_counted(self, s: Sending) -> int:
        """The attempts that count toward the send's dead-lettering: the task's,
        carried from the tasks it was split from, until it is dead-lettered once;
        after a redrive storage's alone, which count from zero again. The log tells
        which, read only once the attempts carried reach the limit."""
        task = s.task
        if not task.attempts_before:
            return s.received.delivery_attempt
        record = await self._metadata.subscription(self.subscription)
        if s.attempt < record.max_delivery_attempts:
            return s.attempt
        (events,) = await self._recorder.sends_events([(task.notification_id, task.recipient, task.channel)])
        redriven = any(event.state == notify_pb2.SEND_DEAD_LETTERED for event in events)
        return s.received.delivery_attempt if redriven else s.attempt

    async def _retry_wait_ms(self, attempt: int) -> int:
        policy = (await self._metadata.subscription(self.subscription)).retry_policy
        return retry_wait_ms(policy.minimum_backoff.ToMilliseconds(), policy.maximum_backoff.ToMilliseconds(),
                             policy.multiplier or 1.0, attempt)

    async def _record(self, sendings: list[Sending]) -> None:
        """Every event of the batch not recorded yet, in one record."""
        events = [event for s in sendings for event in s.events]
        for s in sendings:
            s.events.clear()
            s.writes += 1
        if events:
            await self._recorder.record(events)

    async def _send_devices(self, task: internal_pb2.ChannelTask, targets: list[notify_pb2.Device],
                            rendered: notify_pb2.RenderedContent, key: str, event) -> Sent | Failed:
        """Push: the rendered notification to each of the recipient's devices at once;
        a dead token's device is removed. The result the caller logs last: Sent when
        every failure was permanent and a device got it (the failures logged before
        it), else one Failed for the failures (the sent ones logged before it). A
        transient failure has the task tried again, on every device: the collapse id
        makes a repeat replace what a device shows."""
        messages = [Outgoing(notify_pb2.PUSH, device.token, rendered.subject, rendered.text, "", rendered.json_body,
                             {}, key, task.notification_id, task.recipient, platform=device.platform)
                    for device in targets]
        if len(messages) == 1:  # most recipients' one device: no task and gather for it
            answers = [await self._provider_send(task, messages[0], event)]
        else:
            answers = await asyncio.gather(*(self._provider_send(task, message, event) for message in messages))
        results = list(zip(targets, answers))
        sent = [(d, r) for d, r in results if isinstance(r, Sent)]
        failed = [(d, r) for d, r in results if isinstance(r, Failed)]
        # Every provider that reached a device (an iPhone's through APNs, an Android's through FCM).
        sent_as = Sent(",".join(dict.fromkeys(r.provider for _, r in sent)),
                       ",".join(r.provider_message_id for _, r in sent)) if sent else None
        if not failed:
            return sent_as
        for device, result in failed:
            if result.dead:
                await self._devices.remove(task.recipient, device.platform, device.token)
                log.info("dead push token removed", extra=fields(recipient=task.recipient, platform=device.platform,
                                                                 notification=task.notification_id))
        reason = "; ".join(f"{devices.short(d)}: {r.reason}" + (" (token dead: device removed)" if r.dead else "")
                           for d, r in failed)
        transient = [r for _, r in failed if r.transient]
        waits = [r.retry_after_s for r in transient if r.retry_after_s is not None]
        result = Failed(bool(transient), reason, failed[0][1].provider, max(waits) if waits else None)
        if sent_as is None:
            return result
        if transient:
            event(notify_pb2.SEND_SENT, provider=sent_as.provider, provider_message_id=sent_as.provider_message_id,
                  reason=f"{len(sent)} of {len(targets)} devices")
        else:
            event(notify_pb2.SEND_FAILED, reason=scrub(reason, ""), provider=result.provider)
        return result if transient else sent_as

    async def _provider_send(self, task: internal_pb2.ChannelTask, message: Outgoing, event) -> Sent | Failed:
        """The provider's answer, within its concurrency (high priority first); the
        failed breaker trials before it logged (each may have reached its provider)."""
        await self._slots.acquire(task.priority == notify_pb2.HIGH)
        try:
            with tracing.child_span("notifymesh.provider.send", **{"notifymesh.recipient": task.recipient}) as span:
                result = await self._providers.send(message)
                if span is not None:
                    span.set_attribute("notifymesh.provider", result.provider)
                    span.set_attribute("notifymesh.outcome", "sent" if isinstance(result, Sent) else "failed")
        finally:
            self._slots.release()
        for trial in result.trials_failed:
            event(notify_pb2.SEND_FAILED, reason=scrub(trial.reason, message.to), provider=trial.provider)
        return result

    def _noted_waiting(self, key: str) -> bool:
        """Whether the task was logged as waiting for a provider already (else notes it)."""
        if key in self._waiting_noted:
            return True
        self._waiting_noted[key] = None
        if len(self._waiting_noted) > WAITING_NOTED:
            self._waiting_noted.popitem(last=False)
        return False

    async def _prepare(self, sendings: list[Sending]) -> None:
        """Steps 1 to 4 of each task (the module's doc), each for the whole batch:
        decides the outcome of those that go no further, renders the others and
        logs them SEND_RENDERED."""
        sendings = await self._with_provider(sendings)
        if not sendings:
            return
        categories = await self._categories(sendings)
        overrides = await self._read_recipients(sendings)
        await self._rate_limit(sendings, categories, overrides)
        await self._render_all([s for s in sendings if s.outcome is None])

    async def _with_provider(self, sendings: list[Sending]) -> list[Sending]:
        """Step 1: those whose channel has a provider (or needs none); the others wait."""
        has_provider: dict[int, bool] = {}
        for s in sendings:
            channel = s.task.channel
            if channel == notify_pb2.IN_APP:  # in-app needs no provider record
                continue
            if channel not in has_provider:
                try:
                    await self._metadata.provider(channel)
                    has_provider[channel] = True
                except errors.NotFound:
                    has_provider[channel] = False
            if has_provider[channel]:
                self._waiting_noted.pop(s.key, None)
                continue
            reason = f"no {channel_name(channel)} provider is set; the notification waits for one"
            if not self._noted_waiting(s.key):
                s.event(notify_pb2.SEND_DELAYED, reason=reason)
                log.warning("no provider for a channel",
                            extra=fields(channel=channel_name(channel), notification=s.task.notification_id))
            s.outcome = Outcome(ack=False, delay_ms=NO_PROVIDER_DELAY_MS, deferred=True, reason=reason)
        return [s for s in sendings if s.outcome is None]

    async def _categories(self, sendings: list[Sending]) -> dict[str, notify_pb2.Category]:
        """The batch's categories by name."""
        categories: dict[str, notify_pb2.Category] = {}
        for name in {s.task.category for s in sendings}:
            try:
                categories[name] = await self._metadata.category(name)
            except errors.NotFound:  # deleted since the notification was accepted: no limit of its own
                categories[name] = notify_pb2.Category(name=name)
        return categories

    async def _read_recipients(self, sendings: list[Sending]) -> list[bytes | None]:
        """Each task's recipient's contact (Sending.recipient) and, for push, devices
        (Sending.targets), in one round batched with other batches'; returns each
        task's rate limit override row (None: none)."""
        push = [s for s in sendings if s.task.channel == notify_pb2.PUSH]
        read, listed = await asyncio.gather(
            self._reads.read([(s.task.recipient, [rows.contact_key(s.task.recipient),
                                                  rows.rate_limit_key(s.task.recipient, s.task.category)])
                              for s in sendings]),
            self._reads.devices([s.task.recipient for s in push]))
        for s, targets in zip(push, listed):
            s.targets = targets
        for s, (contact_raw, _) in zip(sendings, read):
            s.recipient = notify_pb2.Recipient.FromString(contact_raw) if contact_raw is not None else None
        return [override_raw for _, override_raw in read]

    async def _rate_limit(self, sendings: list[Sending], categories: dict[str, notify_pb2.Category],
                          overrides: list[bytes | None]) -> None:
        """Step 2: the tasks over their limit are delayed or suppressed."""
        limited: list[tuple[Sending, notify_pb2.RateLimit]] = []
        default_limit = self._default_limit()  # once a batch: it makes a message
        for s, override_raw in zip(sendings, overrides):
            category = categories[s.task.category]
            limit = category.rate_limit if category.rate_limit.limit > 0 else default_limit
            if override_raw is not None:
                override = internal_pb2.RateLimitRow.FromString(override_raw).rate_limit
                if override.limit > 0:
                    limit = override
            if limit.limit > 0 and limit.period_seconds > 0:
                limited.append((s, limit))
        # One RateAcquire request per partition for the batch (merged with other batches').
        decisions = await self._table.rate_acquire_many([Acquire(
            s.task.recipient, rows.rate_counter_key(s.task.recipient, s.task.category), limit.limit,
            limit.period_seconds * 1000, s.key, force=s.task.priority == notify_pb2.HIGH)
            for s, limit in limited]) if limited else []
        for (s, limit), decision in zip(limited, decisions):
            if decision.allowed:
                continue
            what = f"over the rate limit of {limit.limit} per {limit.period_seconds}s of category {s.task.category}"
            if categories[s.task.category].over_limit == notify_pb2.DELAY:
                delay = min(max(decision.retry_after_ms, 1), MAX_NACK_DELAY_MS)
                s.event(notify_pb2.SEND_DELAYED, reason=f"{what}; again in {delay / 1000:g}s")
                s.outcome = Outcome(ack=False, delay_ms=delay, deferred=True, reason=what)
            else:
                s.event(notify_pb2.SUPPRESSED_RATE_LIMITED, reason=what)
                s.outcome = ACK

    async def _render_all(self, sendings: list[Sending]) -> None:
        """Steps 3 and 4: the contact (none: suppressed), the template version, the render."""
        templates: dict[tuple[str, int], notify_pb2.Template | None] = {}
        for s in sendings:
            task, channel = s.task, s.task.channel
            s.address = contact(s.recipient, channel)
            if s.recipient is None:
                s.targets = []
            if not s.address and not s.targets:
                s.event(notify_pb2.SUPPRESSED_NO_CONTACT, reason="recipient not found" if s.recipient is None else
                        "no push device" if channel == notify_pb2.PUSH else f"no {channel_name(channel)} contact")
                s.outcome = ACK
                continue
            version = (task.template, task.template_version)
            if version not in templates:
                try:
                    templates[version] = await self._metadata.template(*version)
                except errors.NotFound:
                    templates[version] = None
            template = templates[version]
            if template is None:
                s.event(notify_pb2.SEND_FAILED, reason=f"template {task.template!r} version {task.template_version} "
                                                       "not found (deleted after the notification was accepted)")
                s.outcome = ACK
                continue
            try:
                self._render(s, template)
            except (errors.InvalidArgument, errors.FailedPrecondition) as e:  # this recipient's, for good
                s.event(notify_pb2.SEND_FAILED, reason=scrub(e.details, s.address))
                s.outcome = ACK
            except Exception as e:
                log.warning("pipeline message failed", exc_info=True,
                            extra=fields(subscription=self.subscription, message=s.received.message.message_id))
                s.outcome = failed(e)

    def _render(self, s: Sending, template: notify_pb2.Template) -> None:
        task, channel = s.task, s.task.channel
        name = channel_name(channel)
        if channel == notify_pb2.EMAIL:
            s.unsubscribe_url = self._rendering.unsubscribe_url(task.recipient, task.category, name,
                                                                task.notification_id, task.accepted_ms)

        def values() -> dict[str, Any]:
            return self._rendering.context(s.recipient, json.loads(s.data or "{}"), task.notification_id,
                                           task.category, s.unsubscribe_url)

        # A task's handling span covers its recipients: each render names its own.
        with tracing.within(s.span), tracing.child_span("notifymesh.render", **{"notifymesh.channel": name,
                                                                                "notifymesh.recipient": task.recipient}):
            s.rendered = self._rendering.render_lazily(template, channel, s.recipient.locale, values,
                                                       task.notification_id)
        s.event(notify_pb2.SEND_RENDERED)

    async def _deliver(self, s: Sending) -> None:
        """Step 5: the rendered task to its provider; its outcome."""
        try:
            with tracing.within(s.span):
                s.outcome = await self._send(s)
            s.rendered = None  # not kept while the batch's other sends and its log write finish
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("pipeline message failed", exc_info=True,
                        extra=fields(subscription=self.subscription, message=s.received.message.message_id))
            s.outcome = failed(e)

    async def _send(self, s: Sending) -> Outcome:
        task, channel, rendered, rid = s.task, s.task.channel, s.rendered, s.task.recipient
        if channel == notify_pb2.IN_APP:
            sent = await self._inbox.deliver(task, rendered, s.attempt)
            s.event(notify_pb2.SEND_SENT, provider=sent.provider, provider_message_id=sent.provider_message_id)
            return ACK
        headers = {}
        if s.unsubscribe_url:  # RFC 8058 one-click unsubscribe
            headers = {"List-Unsubscribe": f"<{s.unsubscribe_url}>",
                       "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
        if s.targets:
            result = await self._send_devices(task, s.targets, rendered, s.key, s.event)
        else:
            if channel == notify_pb2.EMAIL and rendered.html:
                rendered.html = self._rendering.track_html(rendered.html, task.notification_id, rid,
                                                           task.accepted_ms)
            callback = self._rendering.status_callback_url(task.notification_id, rid, channel, task.accepted_ms) \
                if channel == notify_pb2.SMS else ""
            result = await self._provider_send(task, Outgoing(
                channel, s.address, rendered.subject, rendered.text, rendered.html, rendered.json_body, headers,
                s.key, task.notification_id, rid, callback), s.event)
        if isinstance(result, Sent):
            s.event(notify_pb2.SEND_SENT, provider=result.provider, provider_message_id=result.provider_message_id)
            return ACK
        reason = scrub(result.reason, s.address)
        s.event(notify_pb2.SEND_FAILED, reason=reason, provider=result.provider)
        if not result.transient:
            return ACK
        attempt = s.attempt
        record = await self._metadata.subscription(self.subscription)
        # A task of many is not dead-lettered: it goes on as a task a recipient (_answer).
        if s.alone and record.max_delivery_attempts and \
                await self._attempts_counted(s) >= record.max_delivery_attempts:
            s.event(notify_pb2.SEND_DEAD_LETTERED, reason=f"{attempt} attempts failed; the last: {reason}",
                    provider=result.provider)
            return Outcome(ack=False, terminal=bool(record.dead_letter_topic), reason=reason)
        delay = None if result.retry_after_s is None else min(int(result.retry_after_s * 1000), MAX_NACK_DELAY_MS)
        return Outcome(ack=False, delay_ms=delay, reason=reason)
