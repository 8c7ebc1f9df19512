"""The notification pipeline of a sender, put together from the real parts: the
table client, the cluster's mirrors of categories, templates, providers and
subscriptions, the renderer, signed unsubscribe links, and the channel
providers (sender/providers). It runs the fan-out worker, a worker per
channel and priority, and the stats consumer of the events topic, for the
internal subscriptions this sender owns.
"""

import asyncio
import functools
import logging
import time
from typing import Callable, NamedTuple

from gen.notifymesh.v1 import notify_pb2
from notifymesh.clock import now_ms, timestamp
from notifymesh.log import fields
from notifymesh.server import egress, telemetry, templating, tracking, unsubscribe
from notifymesh.server.clients import StorageClient
from notifymesh.server.cluster import Cluster
from notifymesh.server.config import LiveConfig
from notifymesh.server.event_stats import EventCounter
from notifymesh.server.internal_topics import (CHANNELS, EVENTS_STATS_SUBSCRIPTION, FANOUT_SUBSCRIPTION, channel_name,
                                               channel_subscription)
from notifymesh.server.inbox import InboxStore, InboxWaker
from notifymesh.server.notification_log import BatchedRecorder, NotificationLog
from notifymesh.server.process import Context
from notifymesh.server.publishing import InternalPublisher
from notifymesh.server.table import TableClient
from sender import breaker
from sender.breaker import Breaker, Permit
from sender.channel_worker import BatchedReads, ChannelSender, Failed, Outgoing, PrioritySlots, Sent
from sender import event_stats
from sender.dispatch import Dispatcher
from sender.fanout import Fanout
from sender.in_app import InAppDelivery
from sender.pipeline import PipelineWorkers, WorkerSpec
from sender.providers import (ChannelProvider, DeadAddressError, OutgoingMessage, PermanentSendError,
                              TransientSendError, provider_for)
from sender.providers.sink import SinkProvider

log = logging.getLogger(__name__)

# Notifications fanned out at once by one sender (their pages under way: at most
# fanout.PAGE_SLOTS of fanout.PAGE_BYTES of task data, 64 MiB in all). A small
# notification's fan-out is a few table round trips, so at 4 at once a sender
# fanned out ~50 a second.
FANOUT_JOBS = 16
DEFAULT_CONCURRENCY = 32  # a provider's max_concurrency when unset
DRAIN_GRACE_S = 5.0  # a stopping sender lets sends under way finish this long, then hands them back
# A channel worker holds at least this many tasks, whatever its provider's
# max_concurrency (PrioritySlots bounds the sends): the reads and log writes of the
# tasks under way batch into fewer table calls. At a window of 32, storage spent
# 4x the CPU per send, at 256 1.6x that of 2,048 (bench/notify.py, docs/benchmarks.md).
# Bound: 2,048 tasks of at most 64 KiB of data each (128 MiB; ~1 MiB at typical
# sizes) a worker, all workers within the sender's sender_max_outstanding; a
# task's data is held once for its up to 25 recipients, and rendered content
# only for the batch being prepared and the sends waiting or under way (room()).
MIN_WINDOW = 2048


def window(max_concurrency: int) -> int:
    """The tasks a channel worker holds for a provider of that max_concurrency."""
    return max(max_concurrency, MIN_WINDOW)


def provider_name(record: notify_pb2.Provider) -> str:
    """A record's name ("" before providers had names: "default")."""
    return record.name or "default"


def ordered(records) -> list[notify_pb2.Provider]:
    """The order a channel's providers are tried in: priority, then name."""
    return sorted(records, key=lambda record: (record.priority, provider_name(record)))


class Made(NamedTuple):
    record: notify_pb2.Provider
    adapter: ChannelProvider | None  # None: no adapter for the record's kind
    error: str  # why not
    breaker: Breaker


class ChannelProviders:
    """Each channel's providers from the mirror, tried by priority: one adapter
    (sender.providers) and one circuit breaker (sender/breaker.py) each, made again
    when its record changes. A send goes to the first provider whose breaker lets it
    through; transient failures count towards opening that breaker; a half-open
    breaker's trial that fails transiently passes the send on to the next provider
    (the failure returned with the result, to be logged); when every breaker is open
    the send fails transiently, naming them."""

    def __init__(self, cluster: Cluster, config: LiveConfig,
                 make: Callable[[notify_pb2.Provider], ChannelProvider] = provider_for,
                 clock: Callable[[], float] = time.monotonic):
        """cluster.providers: the mirror, grouped by channel name; config: live, for the
        breakers' settings; make: an adapter for a record (raises ValueError)."""
        self._cluster, self._make, self._clock = cluster, make, clock
        self._failures = lambda: config.provider_breaker_failures
        self._cooldown_s = lambda: config.provider_breaker_cooldown_s
        # (channel, provider name) -> Made: as many as the mirror has records.
        self._made: dict[tuple[int, str], Made] = {}
        self._ordered: dict[int, tuple[tuple[int, ...], list[Made]]] = {}  # per channel: (fingerprint, Mades)
        self._closing: set[asyncio.Task] = set()
        self._provider_calls = telemetry.histogram(
            "notifymesh.provider.send.duration", unit="s",
            description="provider sends, by channel, provider and outcome (sent, transient, permanent, dead_address)")

    def _close_later(self, made: Made) -> None:
        """Its sends under way finish on their own connections first."""
        if made.adapter is not None:
            task = asyncio.create_task(made.adapter.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def providers(self, channel: int) -> list[Made]:
        """The channel's providers in the order they are tried; worked out again only
        when the mirror holds other record objects for the channel (it decodes a new
        one at each change; the cached Mades keep the old ones alive, so no id is reused)."""
        group = self._cluster.providers.groups.get(channel_name(channel), {})
        fingerprint = tuple(map(id, group.values()))
        cached = self._ordered.get(channel)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        records = ordered(group.values())
        names = {provider_name(record) for record in records}
        for key in [key for key in self._made if key[0] == channel and key[1] not in names]:
            self._close_later(self._made.pop(key))
        found = []
        for record in records:
            key = (channel, provider_name(record))
            made = self._made.get(key)
            if made is None or made.record != record:
                if made is not None:
                    self._close_later(made)
                try:
                    adapter, error = self._make(record), ""
                except ValueError as e:  # a kind no adapter has (metadata refuses those)
                    adapter, error = None, str(e)
                made = self._made[key] = Made(record, adapter, error,
                                              Breaker(self._failures, self._cooldown_s, self._clock))
            found.append(made)
        self._ordered[channel] = (fingerprint, found)
        return found

    async def send(self, message: Outgoing) -> Sent | Failed:
        made = self.providers(message.channel)
        if message.platform:  # push: only providers of the device's platform (or the sink) can reach it
            made = [m for m in made if m.record.kind in (message.platform, SinkProvider.name)]
            if not made:
                return Failed(False, f"no push provider sends to {message.platform} devices")
        if not made:  # removed since the task looked
            return Failed(True, f"no {channel_name(message.channel)} provider is set")
        trials_failed = []
        for candidate in made:
            if candidate.adapter is None:
                continue
            permit = candidate.breaker.permit()
            if permit is None:
                continue
            result = await self._send(candidate, permit, message)
            if permit.trial and isinstance(result, Failed) and result.transient:
                # The trial is the breaker's probe, not this message's attempt: it goes on
                # to the next provider. Otherwise a lone message whose backoff outlasts the
                # cool-down is the trial at every retry, against a provider still down,
                # until it is dead-lettered while the next provider is healthy.
                trials_failed.append(result)
                continue
            return result._replace(trials_failed=tuple(trials_failed))
        passed = "; ".join(f"{provider_name(m.record)}: "
                           + (m.error or f"circuit open ({m.breaker.status().last_error or 'trial under way'})")
                           for m in made)
        reason = f"provider unavailable: no {channel_name(message.channel)} provider takes sends now ({passed})"
        # Again when the first breaker half-opens (at least a second later).
        retry = min((m.breaker.retry_in_s() for m in made if m.adapter is not None), default=0.0)
        return Failed(True, reason, "", max(retry, 1.0), trials_failed=tuple(trials_failed))

    async def _send(self, made: Made, permit: Permit, message: Outgoing) -> Sent | Failed:
        name, breaker = provider_name(made.record), made.breaker
        labels = {"channel": channel_name(made.record.channel), "provider": name}
        started = time.perf_counter()
        try:
            result = await made.adapter.send(OutgoingMessage(*message))
        except TransientSendError as e:
            breaker.failed(permit, e.reason)
            self._sent(labels, "transient", started)
            return Failed(True, e.reason, name, e.retry_after_s)
        except DeadAddressError as e:  # the provider answered: the address (a push token) is gone
            breaker.succeeded(permit)
            self._sent(labels, "dead_address", started)
            return Failed(False, e.reason, name, dead=True)
        except PermanentSendError as e:  # the provider answered: the message's fault, not its own
            breaker.succeeded(permit)
            self._sent(labels, "permanent", started)
            return Failed(False, e.reason, name)
        except BaseException:
            breaker.abandoned(permit)
            raise
        breaker.succeeded(permit)
        self._sent(labels, "sent", started)
        return Sent(name, result.provider_message_id)

    def _sent(self, labels: dict, outcome: str, started: float) -> None:
        self._provider_calls.record(time.perf_counter() - started, {**labels, "outcome": outcome})

    def status(self, channel: int = 0) -> list[notify_pb2.ProviderStatus]:
        """Every provider's breaker (of one channel, or all), as this sender sees it."""
        listed = []
        for each in CHANNELS:
            if channel and each != channel:
                continue
            for made in self.providers(each):
                status = made.breaker.status()
                shown = notify_pb2.ProviderStatus(
                    channel=each, name=provider_name(made.record), priority=made.record.priority,
                    state=BREAKER_STATES[status.state], sends=status.sends, failures=status.failures,
                    error_rate=status.error_rate, consecutive_failures=status.consecutive_failures,
                    last_error=made.error or status.last_error)
                if status.state == breaker.OPEN:
                    shown.retry_time.CopyFrom(timestamp(now_ms() + round(status.retry_in_s * 1000)))
                listed.append(shown)
        return listed

    async def close(self) -> None:
        providers = [made.adapter for made in self._made.values() if made.adapter is not None]
        self._made.clear()
        self._ordered.clear()
        await asyncio.gather(*(p.close() for p in providers), *self._closing, return_exceptions=True)


BREAKER_STATES = {breaker.CLOSED: notify_pb2.BREAKER_CLOSED, breaker.OPEN: notify_pb2.BREAKER_OPEN,
                  breaker.HALF_OPEN: notify_pb2.BREAKER_HALF_OPEN}


class TemplateRendering:
    """templating.Renderer and context, and the signed links to the frontends' HTTP
    server: the email's unsubscribe link, its tracked links and open pixel, the
    SMS status callback."""

    def __init__(self, ctx: Context, signer: unsubscribe.TokenSigner):
        self._ctx, self._signer = ctx, signer
        self._tracking = tracking.Tracking(signer)
        self._renderer = templating.Renderer()
        self.render_lazily = self._renderer.render_lazily
        self.context = templating.context
        # The links' base URL and the settings it was made from; None: made again at the
        # next use (a member changed). Made per email or SMS send, it walked every member
        # each time (bench/send_links.py).
        self._base: tuple[str, int, str] | None = None
        ctx.cluster.members.on_change(self._members_changed)

    def _members_changed(self, _name: str | None) -> None:
        self._base = None

    def _base_url(self) -> str:
        config = self._ctx.config
        made = self._base
        if made is None or made[:2] != (config.public_base_url, config.frontend_http_port_offset):
            base = unsubscribe.public_base_url(config.public_base_url,
                                               sorted(self._ctx.cluster.live("frontend").values()),
                                               config.frontend_http_port_offset)
            made = self._base = (config.public_base_url, config.frontend_http_port_offset, base)
        return made[2]

    def unsubscribe_url(self, recipient: str, category: str, channel: str, notification_id: str = "",
                        accepted_ms: int = 0) -> str:
        base = self._base_url()
        return unsubscribe.unsubscribe_url(base, self._signer.issue(
            recipient, category, channel, notification_id=notification_id, accepted_ms=accepted_ms)) if base else ""

    def tracker(self, notification_id: str, recipient: str, channel: int, accepted_ms: int) -> tracking.Tracker | None:
        """The send's tracked links; None while the frontends' address is not known."""
        base = self._base_url()
        send = tracking.Send(notification_id, recipient, channel_name(channel), accepted_ms)
        return tracking.Tracker(self._tracking, base, send) if base else None

    def track_html(self, html: str, notification_id: str, recipient: str, accepted_ms: int) -> str:
        """The email's HTML with its links tracked, unless email_tracking is 0."""
        tracker = self.tracker(notification_id, recipient, notify_pb2.EMAIL, accepted_ms) \
            if self._ctx.config.email_tracking else None
        return tracker.html(html) if tracker else html

    def status_callback_url(self, notification_id: str, recipient: str, channel: int, accepted_ms: int) -> str:
        """Where the provider reports delivery (an SMS status callback); "" while unknown."""
        tracker = self.tracker(notification_id, recipient, channel, accepted_ms)
        return tracker.status_callback() if tracker else ""


class NotificationPipeline:
    def __init__(self, ctx: Context, dispatcher: Dispatcher):
        self._ctx, self._dispatcher = ctx, dispatcher
        self._workers: PipelineWorkers | None = None
        self._providers = self.providers = ChannelProviders(
            ctx.cluster, ctx.config, functools.partial(provider_for, allowed=egress.networks_of(ctx.config)))
        self._waker: InboxWaker | None = None

    async def start(self) -> None:
        ctx, config = self._ctx, self._ctx.config
        table = TableClient(ctx.cluster)
        publisher = InternalPublisher(ctx.cluster, StorageClient(ctx.cluster))
        notification_log = NotificationLog(table, lambda: round(config.notification_log_retention_s * 1000),
                                           publisher)
        recorder = BatchedRecorder(notification_log)
        rendering = TemplateRendering(ctx, await unsubscribe.signer(ctx.cluster.etcd))
        fanout = Fanout(table, notification_log, ctx.cluster, publisher)
        slots = {channel: PrioritySlots(DEFAULT_CONCURRENCY) for channel in CHANNELS}

        def default_limit() -> notify_pb2.RateLimit:
            return notify_pb2.RateLimit(limit=config.notify_default_rate_limit,
                                        period_seconds=round(config.notify_default_rate_period_s))

        reads = BatchedReads(table)
        stats = event_stats.StatsConsumer(EventCounter(table, ctx.node_id))
        self._waker = InboxWaker(ctx.cluster)
        inbox = InAppDelivery(InboxStore(table, lambda: round(config.notification_log_retention_s * 1000)),
                              self._waker)
        senders = {(channel, priority): ChannelSender(
            channel_subscription(channel, priority), table, ctx.cluster, rendering, self._providers, recorder,
            publisher, slots[channel], default_limit, reads, inbox, high_priority=priority == notify_pb2.HIGH)
            for channel in CHANNELS for priority in (notify_pb2.NORMAL, notify_pb2.HIGH)}

        def specs() -> dict[str, WorkerSpec]:
            wanted = {FANOUT_SUBSCRIPTION: WorkerSpec(fanout, FANOUT_JOBS),
                      EVENTS_STATS_SUBSCRIPTION: WorkerSpec(stats, event_stats.WINDOW)}
            for channel in CHANNELS:
                # The most of any of the channel's providers: each adapter bounds its own.
                records = ctx.cluster.providers.groups.get(channel_name(channel), {}).values()
                concurrency = max((record.max_concurrency for record in records), default=0) or DEFAULT_CONCURRENCY
                if slots[channel].limit != concurrency:
                    log.info("provider concurrency", extra=fields(channel=channel_name(channel),
                                                                  concurrency=concurrency))
                    slots[channel].limit = concurrency
                    slots[channel].wake()
                for priority in (notify_pb2.NORMAL, notify_pb2.HIGH):
                    wanted[channel_subscription(channel, priority)] = WorkerSpec(senders[(channel, priority)],
                                                                                   window(concurrency))
            return wanted

        self._workers = PipelineWorkers(ctx.cluster, self._dispatcher, specs, DRAIN_GRACE_S)
        self._workers.start()

    async def drain(self) -> None:
        """Takes no new job or task; what is under way finishes within DRAIN_GRACE_S or goes back."""
        if self._workers is not None:
            await self._workers.stop()
        await self._providers.close()
        if self._waker is not None:
            await self._waker.close()
