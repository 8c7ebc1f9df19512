"""The metadata process: a thin Metadata servicer over MetadataStore; at start it
creates the notification layer's internal topics (metadata/bootstrap.py)."""

import asyncio

from gen.notifymesh.internal.v1 import metadata_pb2_grpc
from gen.notifymesh.v1 import cluster_pb2, notify_pb2, pubsub_pb2
from metadata.bootstrap import bootstrap
from metadata.drains import EtcdDrainStore, NodeDrains
from metadata.keys import KeyStore
from metadata.notify_store import NotifyMetadataStore
from metadata.settings import ClusterSettings
from metadata.store import MetadataStore, Page
from notifymesh.clock import timestamp
from notifymesh.server import egress, sealing, validation
from notifymesh.server.clients import StorageClient
from notifymesh.server.process import Context


_not_reserved = validation.not_reserved


class MetadataServicer(metadata_pb2_grpc.MetadataServicer):
    def __init__(self, store: MetadataStore, settings: ClusterSettings, notify: NotifyMetadataStore,
                 keys: KeyStore, data_keys: sealing.KeyAdmin | None = None, drains: NodeDrains | None = None):
        self._store, self._settings, self._notify, self._keys = store, settings, notify, keys
        self._data_keys, self._drains = data_keys, drains

    async def CreateTopic(self, request, context):
        _not_reserved("topic", request.topic.name)
        return await self._store.create_topic(request.topic)

    async def GetTopic(self, request, context):
        return await self._store.get_topic(request.name)

    async def ListTopics(self, request, context):
        topics, next_token = await self._store.list_topics(Page.of("topic", request.page_size, request.page_token))
        return pubsub_pb2.ListTopicsResponse(topics=topics, next_page_token=next_token)

    async def UpdateTopic(self, request, context):
        _not_reserved("topic", request.name)
        return await self._store.update_topic(request.name, request.partition_count,
                                              request.retain_acked if request.HasField("retain_acked") else None)

    async def DeleteTopic(self, request, context):
        _not_reserved("topic", request.name)
        await self._store.delete_topic(request.name)
        return pubsub_pb2.DeleteTopicResponse()

    async def CreateSubscription(self, request, context):
        subscription = request.subscription
        _not_reserved("subscription", subscription.name)
        validation.subscribable(subscription.topic)
        _not_reserved("topic", subscription.dead_letter_topic)
        return await self._store.create_subscription(request.subscription)

    async def GetSubscription(self, request, context):
        return await self._store.get_subscription(request.name)

    async def ListSubscriptions(self, request, context):
        subscriptions, next_token = await self._store.list_subscriptions(
            request.topic, Page.of("subscription", request.page_size, request.page_token))
        return pubsub_pb2.ListSubscriptionsResponse(subscriptions=subscriptions, next_page_token=next_token)

    async def DeleteSubscription(self, request, context):
        _not_reserved("subscription", request.name)
        await self._store.delete_subscription(request.name)
        return pubsub_pb2.DeleteSubscriptionResponse()

    async def UpdateSubscription(self, request, context):
        if list(request.update_mask.paths) != ["redrive_rules"]:  # the one change notifymesh's own take
            _not_reserved("subscription", request.subscription.name)
        _not_reserved("topic", request.subscription.dead_letter_topic)
        return await self._store.update_subscription(request.subscription, list(request.update_mask.paths))

    async def RotatePushSecret(self, request, context):
        _not_reserved("subscription", request.subscription)
        ttl = request.previous_secret_ttl
        return await self._store.rotate_push_secret(
            request.subscription, ttl.ToMilliseconds() / 1000 if request.HasField("previous_secret_ttl") else None)

    async def GetConfig(self, request, context):
        return cluster_pb2.ClusterConfig(settings=await self._settings.get(request.key))

    async def SetConfig(self, request, context):
        return await self._settings.set(request.key, request.value, request.reset)

    async def RotateKeys(self, request, context):
        done = await self._data_keys.rotate(request.master)
        return cluster_pb2.RotateKeysResponse(data_key=done.data_key, active_time=timestamp(done.active_ms),
                                              rewrapped=done.rewrapped, master_key_id=done.master_key_id)

    async def CreateCategory(self, request, context):
        return await self._notify.create_category(request.category)

    async def GetCategory(self, request, context):
        return await self._notify.get_category(request.name)

    async def ListCategories(self, request, context):
        return notify_pb2.ListCategoriesResponse(categories=await self._notify.list_categories())

    async def UpdateCategory(self, request, context):
        return await self._notify.update_category(request.category)

    async def DeleteCategory(self, request, context):
        await self._notify.delete_category(request.name)
        return notify_pb2.DeleteCategoryResponse()

    async def CreateTemplate(self, request, context):
        return await self._notify.create_template(request.template)

    async def GetTemplate(self, request, context):
        return await self._notify.get_template(request.name, request.version)

    async def ListTemplates(self, request, context):
        return notify_pb2.ListTemplatesResponse(templates=await self._notify.list_templates())

    async def DeleteTemplate(self, request, context):
        await self._notify.delete_template(request.name)
        return notify_pb2.DeleteTemplateResponse()

    async def SetProvider(self, request, context):
        ttl = request.previous_secret_ttl.ToMilliseconds() / 1000 if request.HasField("previous_secret_ttl") else None
        return await self._notify.set_provider(request.provider, request.keep_secret, ttl)

    async def GetProvider(self, request, context):
        return await self._notify.get_provider(request.channel, request.name)

    async def ListProviders(self, request, context):
        return notify_pb2.ListProvidersResponse(providers=await self._notify.list_providers())

    async def DeleteProvider(self, request, context):
        await self._notify.delete_provider(request.channel, request.name)
        return notify_pb2.DeleteProviderResponse()

    async def CreateApiKey(self, request, context):
        return await self._keys.create(request)

    async def RevokeApiKey(self, request, context):
        return await self._keys.revoke(request.key_id)

    async def ListApiKeys(self, request, context):
        return await self._keys.list()

    async def SetApiKeyLimits(self, request, context):
        return await self._keys.set_limits(request.key_id, request.limits)

    async def MapCertificate(self, request, context):
        return await self._keys.map_certificate(request)

    async def DrainNode(self, request, context):
        return await self._drains.drain(request.node_id, request.undrain)


class MetadataService:
    reflected = ()

    def __init__(self, ctx: Context):
        self._store = MetadataStore(ctx.cluster, ctx.config, StorageClient(ctx.cluster))
        self.servicers = [(metadata_pb2_grpc.add_MetadataServicer_to_server,
                           MetadataServicer(self._store, ClusterSettings(ctx.cluster.etcd, ctx.config),
                                            NotifyMetadataStore(ctx.cluster, egress.networks_of(ctx.config)), KeyStore(ctx.cluster.etcd),
                                            sealing.KeyAdmin(ctx.cluster.etcd, sealing.ring()),
                                            NodeDrains(ctx.cluster, EtcdDrainStore(ctx.cluster.etcd))))]
        self._bootstrap: asyncio.Task | None = None
        self._cluster, self._replication_factor = ctx.cluster, ctx.config.default_replication_factor
        self._keys, self._admin_key_file = KeyStore(ctx.cluster.etcd), ctx.args.admin_key_file

    async def start(self) -> None:
        if self._admin_key_file is not None:  # before serving: a client given the key finds it registered
            await self._keys.ensure_bootstrap(self._admin_key_file.read_text().strip())
        self._bootstrap = asyncio.create_task(bootstrap(
            self._store, lambda: len(self._cluster.rings["storage"].nodes), self._replication_factor))

    async def drain(self) -> None:
        if self._bootstrap is not None:
            self._bootstrap.cancel()
            await asyncio.gather(self._bootstrap, return_exceptions=True)

    async def close(self) -> None:
        pass


async def build(ctx: Context) -> MetadataService:
    return MetadataService(ctx)
