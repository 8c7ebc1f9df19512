"""The sender process: a thin Sender servicer over the Dispatcher."""

import asyncio

from gen.notifymesh.internal.v1 import sender_pb2, sender_pb2_grpc
from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from notifymesh.server import egress, validation
from notifymesh.server.process import Context
from sender.dispatch import Dispatcher
from sender.notifications import ChannelProviders, NotificationPipeline
from sender.push import PushSubscriptions
from sender.relay import Relay


class SenderServicer(sender_pb2_grpc.SenderServicer):
    def __init__(self, dispatcher: Dispatcher, providers: ChannelProviders, node_id: str):
        self._dispatcher, self._providers, self._node_id = dispatcher, providers, node_id

    async def Relay(self, requests, context):
        relay = Relay(self._dispatcher)
        reader = asyncio.create_task(relay.read(requests))
        reader.add_done_callback(lambda _: relay.stop())  # the frontend half-closed (or the call broke)
        try:
            async for down in relay.downs():
                yield down
        finally:
            reader.cancel()
            await relay.close()

    async def Acknowledge(self, request, context):
        if request.subscription:
            validation.name("subscription", request.subscription)
        await self._dispatcher.acknowledge(request.subscription, list(request.ack_ids))
        return pubsub_pb2.AcknowledgeResponse()

    async def ModifyAckDeadline(self, request, context):
        await self._dispatcher.modify_ack_deadline(request.subscription, list(request.ack_ids),
                                                   request.ack_deadline.ToMilliseconds())
        return pubsub_pb2.ModifyAckDeadlineResponse()

    async def Nack(self, request, context):
        await self._dispatcher.nack(request)
        return pubsub_pb2.NackResponse()

    async def CountStreams(self, request, context):
        return sender_pb2.CountStreamsResponse(streams=self._dispatcher.count_streams(list(request.subscriptions)))

    async def Pull(self, request, context):
        validation.name("subscription", request.subscription)
        received = await self._dispatcher.pull(request.subscription, request.max_messages,
                                               request.wait.ToMilliseconds(), request.trace_context)
        return sender_pb2.SubscribeFrame(received_messages=received)

    async def GetProviderStatus(self, request, context):
        listed = self._providers.status(request.channel)
        for status in listed:
            status.sender = self._node_id
        return notify_pb2.GetProviderStatusResponse(providers=listed)


class SenderService:
    reflected = ()

    def __init__(self, ctx: Context):
        self.dispatcher = Dispatcher(ctx.cluster, ctx.config, ctx.node_id, lambda: ctx.registration)
        ctx.cluster.members.on_change(lambda _name: self.dispatcher.release_unowned())
        ctx.cluster.subscriptions.on_change(self.dispatcher.record_changed)
        self.push = PushSubscriptions(ctx.cluster, self.dispatcher, ctx.config.sender_max_push_in_flight,
                                      egress.networks_of(ctx.config))
        self.notifications = NotificationPipeline(ctx, self.dispatcher)
        self.servicers = [(sender_pb2_grpc.add_SenderServicer_to_server,
                           SenderServicer(self.dispatcher, self.notifications.providers, ctx.node_id))]

    def state(self) -> dict:
        """What SIGUSR1 logs (notifymesh.server.process.log_tasks)."""
        return self.dispatcher.state()

    async def start(self) -> None:
        self.push.start()
        await self.notifications.start()

    async def drain(self) -> None:
        await self.notifications.drain()  # takes no new task; finishes or hands back what it holds
        await self.push.stop()
        await self.dispatcher.close()

    async def close(self) -> None:
        pass


async def build(ctx: Context) -> SenderService:
    return SenderService(ctx)
