"""Sending one recipient's notification on one channel: the handler of a channel
subscription's messages (ChannelTask), one per (channel, priority).

The steps, in order, each recorded in the notification log:
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
"""

import asyncio
import json
import logging
from collections import OrderedDict, deque
from typing import Any, Callable, NamedTuple, Protocol

from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from notifymesh import errors
from notifymesh.batching import Coalescer
from notifymesh.clock import now_ms
from notifymesh.log import fields
from notifymesh.server import devices, rows, tracing, validation
from notifymesh.server.internal_topics import channel_name
from notifymesh.server.notification_log import Event
from sender.fanout import task_key
from sender.pipeline import ACK, Outcome
from sender.preferences import contact

log = logging.getLogger(__name__)

NO_PROVIDER_DELAY_MS = 30_000  # a task whose channel has no provider looks again this much later
MAX_NACK_DELAY_MS = 600_000  # the longest nack delay storage takes; a longer rate-limit wait takes two
WAITING_NOTED = 100_000  # tasks remembered as logged waiting for a provider (the oldest forgotten first)
READS_PER_CALL = 1000  # tasks' reads merged into one read_many (2 rows each)


class ChannelTable(Protocol):
    """What a channel worker asks of the table (notifymesh.server.table.TableClient);
    write and scan: push's devices (notifymesh.server.devices.DeviceTable)."""

    async def write(self, partition_key: str, ops: list[storage_pb2.TableOp]) -> None: ...

    async def scan(self, partition_key: str, prefix: bytes, start_after: bytes = b"", limit: int = 1000,
                   reverse: bool = False): ...  # -> table.Scanned(keys, values, more)

    async def read_many(self, keys_by_partition_key: dict[str, list[bytes]]) -> dict[bytes, bytes | None]: ...

    async def scan_many(self, scans: list[tuple[str, bytes]], limit: int): ...  # -> list[table.Scanned]

    async def rate_acquire(self, partition_key: str, key: bytes, limit: int, period_ms: int, token: str,
                           force: bool = False): ...  # -> table.RateDecision(allowed, retry_after_ms, count)


class ChannelMetadata(Protocol):
    """The mirrors of etcd (notifymesh.server.cluster.Cluster): each raises NotFound."""

    async def category(self, name: str) -> notify_pb2.Category: ...

    async def template(self, name: str, version: int = 0) -> notify_pb2.Template: ...

    async def provider(self, channel: int) -> notify_pb2.Provider: ...

    async def subscription(self, name: str) -> pubsub_pb2.Subscription: ...


class Rendering(Protocol):
    """notifymesh.server.templating (Renderer.render, context) and the unsubscribe URL
    of notifymesh.server.unsubscribe."""

    def render(self, template: notify_pb2.Template, channel: int, locale: str,
               values: dict[str, Any]) -> notify_pb2.RenderedContent:
        """Raises errors.InvalidArgument (a missing variable, a render error) or
        errors.FailedPrecondition (no content for the channel)."""

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


class Sent(NamedTuple):
    provider: str
    provider_message_id: str


class Failed(NamedTuple):
    transient: bool
    reason: str
    provider: str = ""
    retry_after_s: float | None = None  # the provider's Retry-After
    dead: bool = False  # the address will never work (a push token unregistered): removed


class Providers(Protocol):
    """The channel's provider (sender.providers.provider_for of its record), its
    failures classified (TransientSendError, PermanentSendError)."""

    async def send(self, message: Outgoing) -> Sent | Failed: ...


class Recorder(Protocol):
    """notification_log.BatchedRecorder"""

    async def record(self, events: list[Event]) -> None: ...


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


class BatchedReads:
    """The reads of tasks under way at once (each a recipient's contact and override
    rows) share one read_many: one table call per partition for all of them, not
    one per task; so do push tasks' device lists (one scan_many)."""

    def __init__(self, table: ChannelTable, max_reads: int = READS_PER_CALL):
        self._table = table
        self._calls = Coalescer(self._read, max_items=max_reads)
        self._scans = Coalescer(self._scan, max_items=max_reads)

    async def _scan(self, _key, recipients: list[str]) -> list[list[notify_pb2.Device]]:
        scanned = await self._table.scan_many([(rid, rows.devices_prefix(rid)) for rid in recipients],
                                              devices.MAX_DEVICES + 1)
        return [devices.listed(found.values) for found in scanned]

    async def devices(self, recipient: str) -> list[notify_pb2.Device]:
        """The recipient's devices, as devices.Devices.list gives them."""
        (found,) = await self._scans.submit("", [recipient])
        return found

    async def _read(self, _key, reads: list[tuple[str, list[bytes]]]) -> list[list[bytes | None]]:
        wanted: dict[str, list[bytes]] = {}
        for partition_key, keys in reads:
            wanted.setdefault(partition_key, []).extend(keys)
        found = await self._table.read_many(wanted)
        return [[found.get(key) for key in keys] for _, keys in reads]

    def reading(self, partition_key: str, keys: list[bytes]) -> asyncio.Future:
        """The read under way: a future of [the keys' values, in order]."""
        return self._calls.request("", [(partition_key, keys)])


def scrub(reason: str, address: str) -> str:
    """A provider's reason without the recipient's address (the log keeps none)."""
    if address:
        reason = reason.replace(address, "<recipient>")
    return reason[:validation.MAX_REASON_BYTES]


class ChannelSender:
    def __init__(self, subscription: str, table: ChannelTable, metadata: ChannelMetadata, rendering: Rendering,
                 providers: Providers, recorder: Recorder, slots: PrioritySlots,
                 default_limit: Callable[[], notify_pb2.RateLimit] = notify_pb2.RateLimit,
                 reads: BatchedReads | None = None, inbox: Inbox | None = None):
        """default_limit(): the limit of a category without one (the cluster settings
        notify_default_rate_limit and notify_default_rate_period_s; limit 0: none).
        reads: shared by the sender's channel workers (by default this one's own)."""
        self.subscription, self._default_limit = subscription, default_limit
        self._reads = reads if reads is not None else BatchedReads(table)
        self._table, self._metadata, self._rendering = table, metadata, rendering
        self._providers, self._recorder, self._slots = providers, recorder, slots
        self._waiting_noted: OrderedDict[str, None] = OrderedDict()
        self._devices = devices.Devices(table)
        self._inbox = inbox  # the IN_APP channel's delivery (no provider record)

    async def handle(self, received: pubsub_pb2.ReceivedMessage) -> Outcome:
        task = internal_pb2.ChannelTask.FromString(received.message.data)
        events: list[Event] = []
        last_ms = 0

        def event(state: int, **kw) -> None:
            # Each of the task's events a millisecond after the one before at least: the
            # log orders a send's events by time, then state (rows.event_key), so a push
            # logging its devices' failure and then its sends must not share a ms.
            nonlocal last_ms
            last_ms = max(now_ms(), last_ms + 1)
            events.append(Event(task.notification_id, task.accepted_ms, task.recipient, task.channel, state,
                                last_ms, attempt=received.delivery_attempt, template=task.template,
                                category=task.category, **kw))

        async def flush() -> None:
            taken = events[:]
            events.clear()
            if taken:
                await self._recorder.record(taken)

        outcome = await self._send(task, received.delivery_attempt, event, flush)
        await flush()
        return outcome

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
            answers = [await self._provider_send(task, messages[0])]
        else:
            answers = await asyncio.gather(*(self._provider_send(task, message) for message in messages))
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

    async def _provider_send(self, task: internal_pb2.ChannelTask, message: Outgoing) -> Sent | Failed:
        """The provider's answer, within its concurrency (high priority first)."""
        await self._slots.acquire(task.priority == notify_pb2.HIGH)
        try:
            with tracing.child_span("notifymesh.provider.send", **{"notifymesh.recipient": task.recipient}) as span:
                result = await self._providers.send(message)
                if span is not None:
                    span.set_attribute("notifymesh.provider", result.provider)
                    span.set_attribute("notifymesh.outcome", "sent" if isinstance(result, Sent) else "failed")
                return result
        finally:
            self._slots.release()

    def _noted_waiting(self, key: str) -> bool:
        """Whether the task was logged as waiting for a provider already (else notes it)."""
        if key in self._waiting_noted:
            return True
        self._waiting_noted[key] = None
        if len(self._waiting_noted) > WAITING_NOTED:
            self._waiting_noted.popitem(last=False)
        return False

    async def _send(self, task: internal_pb2.ChannelTask, attempt: int, event, flush) -> Outcome:
        rid, channel, name = task.recipient, task.channel, channel_name(task.channel)
        key = task_key(task.notification_id, rid, channel)
        try:
            if channel != notify_pb2.IN_APP:  # in-app needs no provider record
                await self._metadata.provider(channel)
        except errors.NotFound:
            reason = f"no {name} provider is set; the notification waits for one"
            if not self._noted_waiting(key):
                event(notify_pb2.SEND_DELAYED, reason=reason)
                log.warning("no provider for a channel", extra=fields(channel=name, notification=task.notification_id))
            return Outcome(ack=False, delay_ms=NO_PROVIDER_DELAY_MS, deferred=True, reason=reason)
        self._waiting_noted.pop(key, None)

        try:
            category = await self._metadata.category(task.category)
        except errors.NotFound:  # deleted since the notification was accepted: no limit of its own
            category = notify_pb2.Category(name=task.category)
        # Push: its devices in the same round (batched with other tasks'); the read is a
        # future, not a task: a gather of the two was 3 % of the sender (its tasks and
        # the loop's lookup, a getpid call; docs/benchmarks.md, 2026-12-01, issue 16).
        reading = self._reads.reading(rid, [rows.contact_key(rid), rows.rate_limit_key(rid, task.category)])
        try:
            listed = await self._reads.devices(rid) if channel == notify_pb2.PUSH else []
            contact_raw, override_raw = (await reading)[0]
        except BaseException:
            reading.cancel()
            if not reading.cancelled():
                reading.exception()  # the devices' failure is the one raised; this one is seen
            raise
        limit = category.rate_limit if category.rate_limit.limit > 0 else self._default_limit()
        if override_raw is not None:
            override = internal_pb2.RateLimitRow.FromString(override_raw).rate_limit
            if override.limit > 0:
                limit = override
        if limit.limit > 0 and limit.period_seconds > 0:
            decision = await self._table.rate_acquire(rid, rows.rate_counter_key(rid, task.category), limit.limit,
                                                      limit.period_seconds * 1000, key,
                                                      force=task.priority == notify_pb2.HIGH)
            if not decision.allowed:
                what = f"over the rate limit of {limit.limit} per {limit.period_seconds}s of category {task.category}"
                if category.over_limit == notify_pb2.DELAY:
                    delay = min(max(decision.retry_after_ms, 1), MAX_NACK_DELAY_MS)
                    event(notify_pb2.SEND_DELAYED, reason=f"{what}; again in {delay / 1000:g}s")
                    return Outcome(ack=False, delay_ms=delay, deferred=True, reason=what)
                event(notify_pb2.SUPPRESSED_RATE_LIMITED, reason=what)
                return ACK

        recipient = notify_pb2.Recipient.FromString(contact_raw) if contact_raw is not None else None
        address = contact(recipient, channel)
        targets = listed if recipient is not None else []
        if not address and not targets:
            event(notify_pb2.SUPPRESSED_NO_CONTACT, reason="recipient not found" if recipient is None else
                  "no push device" if channel == notify_pb2.PUSH else f"no {name} contact")
            return ACK

        try:
            template = await self._metadata.template(task.template, task.template_version)
        except errors.NotFound:
            event(notify_pb2.SEND_FAILED, reason=f"template {task.template!r} version {task.template_version} "
                                                 "not found (deleted after the notification was accepted)")
            return ACK
        unsubscribe_url = self._rendering.unsubscribe_url(rid, task.category, name, task.notification_id,
                                                          task.accepted_ms) if channel == notify_pb2.EMAIL else ""
        try:
            values = self._rendering.context(recipient, json.loads(task.data or "{}"), task.notification_id,
                                             task.category, unsubscribe_url)
            with tracing.child_span("notifymesh.render", **{"notifymesh.channel": name}):
                rendered = self._rendering.render(template, channel, recipient.locale, values)
        except (errors.InvalidArgument, errors.FailedPrecondition) as e:  # this recipient's, for good
            event(notify_pb2.SEND_FAILED, reason=scrub(e.details, address))
            return ACK
        event(notify_pb2.SEND_RENDERED)
        # Logged before the provider sees it: a sender that dies after the send leaves the
        # attempt in the log, so a second send after redelivery is one the log accounts for.
        await flush()
        if channel == notify_pb2.IN_APP:
            sent = await self._inbox.deliver(task, rendered, attempt)
            event(notify_pb2.SEND_SENT, provider=sent.provider, provider_message_id=sent.provider_message_id)
            return ACK

        headers = {}
        if unsubscribe_url:  # RFC 8058 one-click unsubscribe
            headers = {"List-Unsubscribe": f"<{unsubscribe_url}>",
                       "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
        if targets:
            result = await self._send_devices(task, targets, rendered, key, event)
        else:
            if channel == notify_pb2.EMAIL and rendered.html:
                rendered.html = self._rendering.track_html(rendered.html, task.notification_id, rid,
                                                           task.accepted_ms)
            callback = self._rendering.status_callback_url(task.notification_id, rid, channel, task.accepted_ms) \
                if channel == notify_pb2.SMS else ""
            result = await self._provider_send(task, Outgoing(
                channel, address, rendered.subject, rendered.text, rendered.html, rendered.json_body, headers, key,
                task.notification_id, rid, callback))
        if isinstance(result, Sent):
            event(notify_pb2.SEND_SENT, provider=result.provider, provider_message_id=result.provider_message_id)
            return ACK
        reason = scrub(result.reason, address)
        event(notify_pb2.SEND_FAILED, reason=reason, provider=result.provider)
        if not result.transient:
            return ACK
        record = await self._metadata.subscription(self.subscription)
        if record.max_delivery_attempts and attempt >= record.max_delivery_attempts:
            event(notify_pb2.SEND_DEAD_LETTERED, reason=f"{attempt} attempts failed; the last: {reason}",
                  provider=result.provider)
            return Outcome(ack=False, terminal=bool(record.dead_letter_topic), reason=reason)
        delay = None if result.retry_after_s is None else min(int(result.retry_after_s * 1000), MAX_NACK_DELAY_MS)
        return Outcome(ack=False, delay_ms=delay, reason=reason)
