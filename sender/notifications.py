"""The notification pipeline of a sender, put together from the real parts: the
table client, the cluster's mirrors of categories, templates, providers and
subscriptions, the renderer, signed unsubscribe links, and the channel
providers (sender/providers). It runs the fan-out worker and a worker per
channel and priority for the internal subscriptions this sender owns.
"""

import asyncio
import logging

from gen.notifymesh.v1 import notify_pb2
from notifymesh.log import fields
from notifymesh.server import templating, unsubscribe
from notifymesh.server.clients import StorageClient
from notifymesh.server.inbox import InboxStore, InboxWaker
from notifymesh.server.internal_topics import CHANNELS, FANOUT_SUBSCRIPTION, channel_name, channel_subscription
from notifymesh.server.notification_log import BatchedRecorder, NotificationLog
from notifymesh.server.process import Context
from notifymesh.server.publishing import InternalPublisher
from notifymesh.server.table import TableClient
from sender.channel_worker import BatchedReads, ChannelSender, Failed, Outgoing, PrioritySlots, Sent
from sender.dispatch import Dispatcher
from sender.fanout import Fanout
from sender.in_app import InAppDelivery
from sender.pipeline import PipelineWorkers, WorkerSpec
from sender.providers import (ChannelProvider, OutgoingMessage, PermanentSendError, TransientSendError,
                              provider_for)

log = logging.getLogger(__name__)

# Notifications fanned out at once by one sender, each holding one page (at most
# fanout.PAGE_BYTES of task data: 64 MiB in all). A small notification's fan-out
# is a few table round trips, so at 4 at once a sender fanned out ~50 a second.
FANOUT_JOBS = 16
DEFAULT_CONCURRENCY = 32  # a provider's max_concurrency when unset
DRAIN_GRACE_S = 5.0  # a stopping sender lets sends under way finish this long, then hands them back
# A channel worker holds at least this many tasks, whatever its provider's
# max_concurrency (PrioritySlots bounds the sends): the reads and log writes of the
# tasks under way batch into fewer table calls. At a window of 32, storage spent
# 4x the CPU per send (bench/notify.py, docs/benchmarks.md).
MIN_WINDOW = 256


def window(max_concurrency: int) -> int:
    """The tasks a channel worker holds for a provider of that max_concurrency."""
    return max(max_concurrency, MIN_WINDOW)


class ChannelProviders:
    """One sender.providers adapter per channel, made from the channel's record in
    the mirror and made again when that record changes; failures become Failed."""

    def __init__(self, ctx: Context):
        self._cluster = ctx.cluster
        self._made: dict[int, tuple[notify_pb2.Provider, ChannelProvider]] = {}
        self._closing: set[asyncio.Task] = set()

    def _provider(self, channel: int) -> ChannelProvider | None:
        record = self._cluster.providers.items.get(channel_name(channel))
        if record is None:
            return None
        made = self._made.get(channel)
        if made is None or made[0] != record:
            if made is not None:  # its sends under way finish on their own connections first
                task = asyncio.create_task(made[1].close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            made = self._made[channel] = (record, provider_for(record))
        return made[1]

    async def send(self, message: Outgoing) -> Sent | Failed:
        try:
            provider = self._provider(message.channel)
        except ValueError as e:  # a kind no adapter has (metadata refuses those)
            return Failed(True, str(e))
        if provider is None:  # removed since the task looked
            return Failed(True, f"no {channel_name(message.channel)} provider is set")
        try:
            result = await provider.send(OutgoingMessage(*message))
        except TransientSendError as e:
            return Failed(True, e.reason, provider.name, e.retry_after_s)
        except PermanentSendError as e:
            return Failed(False, e.reason, provider.name)
        return Sent(result.provider, result.provider_message_id)

    async def close(self) -> None:
        providers = [provider for _, provider in self._made.values()]
        self._made.clear()
        await asyncio.gather(*(p.close() for p in providers), *self._closing, return_exceptions=True)


class TemplateRendering:
    """templating.Renderer and context, and the email's signed unsubscribe link to
    the frontends' HTTP server."""

    def __init__(self, ctx: Context, signer: unsubscribe.TokenSigner):
        self._ctx, self._signer = ctx, signer
        self._renderer = templating.Renderer()
        self.render = self._renderer.render
        self.context = templating.context

    def unsubscribe_url(self, recipient: str, category: str, channel: str) -> str:
        config = self._ctx.config
        base = unsubscribe.public_base_url(config.public_base_url, sorted(self._ctx.cluster.live("frontend").values()),
                                           config.frontend_http_port_offset)
        return unsubscribe.unsubscribe_url(base, self._signer.issue(recipient, category, channel)) if base else ""


class NotificationPipeline:
    def __init__(self, ctx: Context, dispatcher: Dispatcher):
        self._ctx, self._dispatcher = ctx, dispatcher
        self._workers: PipelineWorkers | None = None
        self._providers = ChannelProviders(ctx)
        self._waker: InboxWaker | None = None

    async def start(self) -> None:
        ctx, config = self._ctx, self._ctx.config
        table = TableClient(ctx.cluster)
        notification_log = NotificationLog(table, lambda: round(config.notification_log_retention_s * 1000))
        recorder = BatchedRecorder(notification_log)
        rendering = TemplateRendering(ctx, await unsubscribe.signer(ctx.cluster.etcd))
        publisher = InternalPublisher(ctx.cluster, StorageClient(ctx.cluster))
        fanout = Fanout(table, notification_log, ctx.cluster, publisher)
        slots = {channel: PrioritySlots(DEFAULT_CONCURRENCY) for channel in CHANNELS}

        def default_limit() -> notify_pb2.RateLimit:
            return notify_pb2.RateLimit(limit=config.notify_default_rate_limit,
                                        period_seconds=round(config.notify_default_rate_period_s))

        reads = BatchedReads(table)
        self._waker = InboxWaker(ctx.cluster)
        inbox = InAppDelivery(InboxStore(table, lambda: round(config.notification_log_retention_s * 1000)),
                              self._waker)
        senders = {(channel, priority): ChannelSender(
            channel_subscription(channel, priority), table, ctx.cluster, rendering, self._providers, recorder,
            slots[channel], default_limit, reads, inbox)
            for channel in CHANNELS for priority in (notify_pb2.NORMAL, notify_pb2.HIGH)}

        def specs() -> dict[str, WorkerSpec]:
            wanted = {FANOUT_SUBSCRIPTION: WorkerSpec(fanout, FANOUT_JOBS)}
            for channel in CHANNELS:
                record = ctx.cluster.providers.items.get(channel_name(channel))
                concurrency = (record.max_concurrency if record is not None else 0) or DEFAULT_CONCURRENCY
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
