"""The frontend process: thin public servicers over the Gateway, with server reflection."""

import logging

from frontend.analytics import Analytics, AnalyticsServicer
from frontend.audit import AuditLog
from frontend.auth import AuthInterceptor, Authenticator, RecipientTokens, token_ttl_s
from frontend.limits import Limits
from frontend.gateway import Gateway
from frontend.inbox import FrontendInbox, InboxStreams
from frontend.ended_sessions import EndedSessions
from frontend.erasure_hook import ErasureHook
from frontend.dashboard import Dashboard, GatewayLookups, GatewaySource, RecentErrors, Sessions, SnapshotBuilder, \
    SnapshotHub
from frontend.http import CallbackAuth, HttpServer, TrackingEndpoint, UnsubscribeEndpoint, application
from frontend.tracking import SendRecorder
from frontend.notifications import Notifications, NotificationsServicer
from gen.notifymesh.internal.v1 import inbox_pb2, inbox_pb2_grpc
from gen.notifymesh.v1 import cluster_pb2, cluster_pb2_grpc, notify_pb2, notify_pb2_grpc, pubsub_pb2, pubsub_pb2_grpc
from gen.notifymesh.v1 import auth_pb2, auth_pb2_grpc, events_pb2, events_pb2_grpc
from notifymesh import errors
from notifymesh.clock import now_ms
from notifymesh.contracts import API_KEYS, CERT_PRINCIPALS
from notifymesh.server import egress, templating, tracing, tracking, unsubscribe, validation
from notifymesh.server.clients import StorageClient
from notifymesh.server.cluster import PrefixMirror
from notifymesh.server.principal import KeyRecord
from notifymesh.server.inbox import InboxStore, InboxWaker, wake_changes, wake_key
from notifymesh.server.internal_topics import channel_name
from notifymesh.server.notification_log import NotificationLog
from notifymesh.server.process import Context
from notifymesh.server.publishing import InternalPublisher
from notifymesh.server.table import TableClient


class PublisherServicer(pubsub_pb2_grpc.PublisherServicer):
    def __init__(self, gateway: Gateway):
        self._gateway = gateway

    async def CreateTopic(self, request, context):
        return await self._gateway.admin("CreateTopic", request)

    async def GetTopic(self, request, context):
        return await self._gateway.admin("GetTopic", request)

    async def ListTopics(self, request, context):
        return await self._gateway.admin("ListTopics", request)

    async def UpdateTopic(self, request, context):
        return await self._gateway.admin("UpdateTopic", request)

    async def DeleteTopic(self, request, context):
        return await self._gateway.admin("DeleteTopic", request)

    async def Publish(self, request, context):
        validation.not_reserved("topic", request.topic)
        with tracing.publish_span(context, request.topic, len(request.messages)):
            ids = await self._gateway.publish(request.topic, request.messages)
        return pubsub_pb2.PublishResponse(message_ids=ids)

    async def GetMessageStatus(self, request, context):
        return await self._gateway.message_status(request.message_id)

    async def DescribeTopic(self, request, context):
        return await self._gateway.describe_topic(request.name)


def _without_push_secret(subscription: pubsub_pb2.Subscription) -> pubsub_pb2.Subscription:
    """A subscription as read back: whether its push config has a secret, never the secret
    (only CreateSubscription and RotatePushSecret return it, once)."""
    if subscription.HasField("push_config"):
        subscription.push_config.secret_set = bool(subscription.push_config.secret)
        subscription.push_config.secret = ""
        subscription.push_config.previous_secret = ""  # never shown; its expiry says it signs while it lasts
        if subscription.push_config.previous_secret_expire_time.ToMilliseconds() <= now_ms():
            subscription.push_config.ClearField("previous_secret_expire_time")
    return subscription


class SubscriberServicer(pubsub_pb2_grpc.SubscriberServicer):
    def __init__(self, gateway: Gateway):
        self._gateway = gateway

    async def CreateSubscription(self, request, context):
        return await self._gateway.admin("CreateSubscription", request)

    async def GetSubscription(self, request, context):
        return _without_push_secret(await self._gateway.admin("GetSubscription", request))

    async def ListSubscriptions(self, request, context):
        listed = await self._gateway.admin("ListSubscriptions", request)
        for subscription in listed.subscriptions:
            _without_push_secret(subscription)
        return listed

    async def DeleteSubscription(self, request, context):
        return await self._gateway.admin("DeleteSubscription", request)

    async def Subscribe(self, request, context):
        validation.not_reserved("subscription", request.subscription)
        async for frame in self._gateway.subscribe(request.subscription, request.max_outstanding_messages,
                                                   request.trace_context):
            yield frame

    async def Acknowledge(self, request, context):
        validation.not_reserved("subscription", request.subscription)
        await self._gateway.acknowledge(request.subscription, request.ack_ids)
        return pubsub_pb2.AcknowledgeResponse()

    async def ModifyAckDeadline(self, request, context):
        validation.not_reserved("subscription", request.subscription)
        await self._gateway.modify_ack_deadline(request.subscription, request.ack_ids, request.ack_deadline)
        return pubsub_pb2.ModifyAckDeadlineResponse()

    async def Nack(self, request, context):
        validation.not_reserved("subscription", request.subscription)
        await self._gateway.nack(request)
        return pubsub_pb2.NackResponse()

    async def ListDeadLetters(self, request, context):
        return await self._gateway.list_dead_letters(request)

    async def RedriveDeadLetters(self, request, context):
        redriven = await self._gateway.redrive_dead_letters(request.subscription)
        return pubsub_pb2.RedriveDeadLettersResponse(redriven=redriven)

    async def DescribeSubscription(self, request, context):
        return await self._gateway.describe_subscription(request.name)

    async def Seek(self, request, context):
        validation.not_reserved("subscription", request.subscription)
        return await self._gateway.seek(request)

    async def UpdateSubscription(self, request, context):
        return await self._gateway.admin("UpdateSubscription", request)  # a secret only when it made one

    async def RotatePushSecret(self, request, context):
        return await self._gateway.admin("RotatePushSecret", request)

    async def Pull(self, request, context):
        validation.not_reserved("subscription", request.subscription)
        return await self._gateway.pull(request)


class ClusterAdminServicer(cluster_pb2_grpc.ClusterAdminServicer):
    def __init__(self, gateway: Gateway):
        self._gateway = gateway

    async def GetClusterStatus(self, request, context):
        return await self._gateway.cluster_status()

    async def GetConfig(self, request, context):
        return await self._gateway.admin("GetConfig", request)

    async def SetConfig(self, request, context):
        return await self._gateway.admin("SetConfig", request)

    async def RotateKeys(self, request, context):
        return await self._gateway.admin("RotateKeys", request)

    async def DrainNode(self, request, context):
        return await self._gateway.admin("DrainNode", request)


class InboxWakeServicer(inbox_pb2_grpc.InboxServicer):
    """Internal: senders hand over new items, frontends name those acknowledged."""

    def __init__(self, streams: InboxStreams):
        self._streams = streams
        self.key: bytes | None = None  # the cluster's wake key, read at start

    async def Wake(self, request, context):
        if self.key is None:
            raise errors.Unavailable("the frontend is starting")
        self._streams.wake(wake_changes(self.key, request))
        return inbox_pb2.WakeInboxResponse()


class AuthServicer(auth_pb2_grpc.AuthServicer):
    """Keys and certificate mappings are the metadata service's (etcd); recipient
    tokens are signed here. Who may call which: frontend/auth.py RULES."""

    def __init__(self, gateway: Gateway, tokens: RecipientTokens):
        self._gateway, self._tokens = gateway, tokens

    async def CreateApiKey(self, request, context):
        return await self._gateway.admin("CreateApiKey", request)

    async def RevokeApiKey(self, request, context):
        return await self._gateway.admin("RevokeApiKey", request)

    async def ListApiKeys(self, request, context):
        return await self._gateway.admin("ListApiKeys", request)

    async def SetApiKeyLimits(self, request, context):
        return await self._gateway.admin("SetApiKeyLimits", request)

    async def MapCertificate(self, request, context):
        return await self._gateway.admin("MapCertificate", request)

    async def CreateRecipientToken(self, request, context):
        return self._tokens.mint(request.recipient, token_ttl_s(request))


class Auth:
    """The frontend's identity parts: mirrors of keys and certificate mappings,
    recipient tokens, limits, the audit log, and the interceptor over them."""

    def __init__(self, ctx: Context):
        self.keys = PrefixMirror(ctx.cluster.etcd, API_KEYS, KeyRecord.decode)
        self.certs = PrefixMirror(ctx.cluster.etcd, CERT_PRINCIPALS, auth_pb2.CertificatePrincipal.FromString)
        self.ended_sessions = EndedSessions(ctx.cluster.etcd)  # dashboard logouts
        self.tokens = RecipientTokens()
        self.audit = AuditLog(InternalPublisher(ctx.cluster, StorageClient(ctx.cluster)).publish, ctx.node_id)
        limits = Limits(ctx.config, lambda: len(ctx.cluster.live("frontend")))

        async def topic_of(subscription: str) -> str:  # from the mirror; NOT_FOUND for an unknown one
            return (await ctx.cluster.subscription(validation.name("subscription", subscription))).topic

        self.interceptor = AuthInterceptor(Authenticator(self.keys, self.certs, self.tokens), limits, self.audit,
                                           lambda: bool(ctx.config.auth_enabled), topic_of)

    async def start(self, etcd) -> None:
        self.tokens.start(await unsubscribe.derived_key(etcd, "recipient-token"))
        await self.keys.start()
        await self.certs.start()
        await self.ended_sessions.start()
        self.audit.start()

    async def close(self) -> None:
        await self.audit.close()
        await self.keys.stop()
        await self.certs.stop()
        await self.ended_sessions.stop()


def _inbox(ctx: Context, table: TableClient) -> FrontendInbox:
    def retention_ms() -> int:  # a live setting
        return round(ctx.config.notification_log_retention_s * 1000)

    store = InboxStore(table, retention_ms)
    return FrontendInbox(store, InboxStreams(store), NotificationLog(table, retention_ms), InboxWaker(ctx.cluster))


def _notifications(ctx: Context, gateway: Gateway, table: TableClient, hook: ErasureHook) -> Notifications:
    """Over the table, the gateway (metadata calls, publishing), the cluster's mirrors
    of categories and templates, the notification log, the renderer and the erasure hook."""
    return Notifications(table, gateway, ctx.cluster, gateway,
                         NotificationLog(table, round(ctx.config.notification_log_retention_s * 1000)),
                         templating.Renderer(), templating.context, hook, egress.networks_of(ctx.config))


class FrontendService:
    reflected = tuple(s.full_name for d in (pubsub_pb2.DESCRIPTOR, cluster_pb2.DESCRIPTOR, notify_pb2.DESCRIPTOR,
                                            events_pb2.DESCRIPTOR, auth_pb2.DESCRIPTOR)
                      for s in d.services_by_name.values())

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.http: HttpServer | None = None
        self.gateway = Gateway(ctx.cluster, ctx.config)
        self.table = TableClient(ctx.cluster)
        self.erasure_hook = ErasureHook(lambda: ctx.config.erasure_hook_url, egress.networks_of(ctx.config))
        self.inbox = _inbox(ctx, self.table)
        self.wake = InboxWakeServicer(self.inbox.streams)
        self.auth = Auth(ctx)
        self.notifications = _notifications(ctx, self.gateway, self.table, self.erasure_hook)
        self.recent_errors = RecentErrors()  # for the dashboard: this process's last warnings and errors
        logging.getLogger().addHandler(self.recent_errors)
        self.dashboard_hub: SnapshotHub | None = None
        self.interceptors = (self.auth.interceptor,)
        self.servicers = [(pubsub_pb2_grpc.add_PublisherServicer_to_server, PublisherServicer(self.gateway)),
                          (pubsub_pb2_grpc.add_SubscriberServicer_to_server, SubscriberServicer(self.gateway)),
                          (cluster_pb2_grpc.add_ClusterAdminServicer_to_server, ClusterAdminServicer(self.gateway)),
                          (notify_pb2_grpc.add_NotificationsServicer_to_server,
                           NotificationsServicer(self.notifications, self.inbox)),
                          (events_pb2_grpc.add_AnalyticsServicer_to_server,
                           AnalyticsServicer(Analytics(ctx.cluster, self.table))),
                          (inbox_pb2_grpc.add_InboxServicer_to_server, self.wake),
                          (auth_pb2_grpc.add_AuthServicer_to_server, AuthServicer(self.gateway, self.auth.tokens))]

    async def start(self) -> None:
        self.http = await start_http(self.ctx, self.table, await self._dashboard())
        self.wake.key = await wake_key(self.ctx.cluster.etcd)
        await self.auth.start(self.ctx.cluster.etcd)

    async def _dashboard(self) -> Dashboard:
        """frontend/dashboard.py over the gateway and notifications, its logins checked
        as the API's calls are (Authenticator over the same mirrors of etcd)."""
        ctx, auth = self.ctx, self.auth
        sessions = Sessions(await unsubscribe.derived_key(ctx.cluster.etcd, "dashboard"),
                            lambda key_id: auth.keys.items.get(key_id),
                            Authenticator(auth.keys, auth.certs, auth.tokens), lambda: bool(ctx.config.auth_enabled),
                            auth.ended_sessions)
        builder = SnapshotBuilder(GatewaySource(self.gateway, lambda: list(ctx.cluster.topics.items)),
                                  self.recent_errors)
        self.dashboard_hub = SnapshotHub(builder.build)
        # Behind a proxy that ends TLS (public_base_url https://) the browser's side is https.
        return Dashboard(sessions, self.dashboard_hub, GatewayLookups(self.gateway, self.notifications),
                         secure=lambda request: request.secure or ctx.config.public_base_url.startswith("https://"))

    async def drain(self) -> None:
        if self.dashboard_hub is not None:
            self.dashboard_hub.close()
        self.gateway.close_streams()
        self.inbox.streams.close()

    async def close(self) -> None:
        await self.http.stop()
        await self.erasure_hook.close()
        await self.inbox.waker.close()
        await self.auth.close()
        logging.getLogger().removeHandler(self.recent_errors)


async def start_http(ctx: Context, table: TableClient, dashboard: Dashboard | None = None) -> HttpServer:
    """The HTTP server (frontend/http.py) at the gRPC port + frontend_http_port_offset
    (any free port when the gRPC one is): unsubscribe and tracking, whose events are
    recorded in the notification log and published on the events topic."""
    host, _, port = ctx.args.listen.rpartition(":")
    signer = await unsubscribe.signer(ctx.cluster.etcd)
    recorder = SendRecorder(NotificationLog(table, lambda: round(ctx.config.notification_log_retention_s * 1000),
                                            InternalPublisher(ctx.cluster, StorageClient(ctx.cluster))))
    endpoint = UnsubscribeEndpoint(table, signer, recorder)
    sms = channel_name(notify_pb2.SMS)
    auth = CallbackAuth(lambda: [p.secret for p in ctx.cluster.providers.groups.get(sms, {}).values()
                                 if p.kind == "sms_http"], lambda: ctx.config.public_base_url)
    tracked = TrackingEndpoint(tracking.Tracking(signer), recorder, lambda: ctx.config.notification_log_retention_s,
                               auth)
    server = HttpServer(application(endpoint, tracked, dashboard), host or "127.0.0.1",
                        int(port) + ctx.config.frontend_http_port_offset if int(port) else 0)
    await server.start()
    return server


async def build(ctx: Context) -> FrontendService:
    return FrontendService(ctx)
