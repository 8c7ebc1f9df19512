"""Who may call which public RPC: one table (RULES), checked for every call by
AuthInterceptor before its handler runs.

Each rule names what a call needs: an action on a kind of name taken from the
request (principal.GRANTS says which role has which), or from what it names as
stored (Rule.stored: the topic of a subscription an update redirects). A public
method without a rule is refused (and tests/unit/test_auth_rules.py fails), so a
new RPC cannot go out unchecked. Internal services (INTERNAL_SERVICES) are not
checked here: the mesh's own processes call them, authenticated by mTLS (and
Inbox.Wake by its MAC); the frontend's own (notifymesh.internal.v1: Inbox, Node)
are served only on its mutual-TLS port (MTLS_ONLY). Health and reflection are
served on both ports (load balancers, grpcurl).

Callers are identified by Authenticator: an API key or an end user's token in
`authorization: Bearer ...`, else a client certificate mapped to a principal.
Keys and certificate mappings are mirrors of etcd (watched): a revoked key is
refused by every frontend as soon as its watch delivers the change, within about
two seconds (REVOCATION_BOUND_S, tested; typically milliseconds).
"""

import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, NamedTuple

import grpc

from frontend.audit import AuditLog
from frontend.limits import Limits
from gen.notifymesh.v1 import auth_pb2, notify_pb2
from notifymesh import errors
from notifymesh.clock import now_ms
from notifymesh.contracts import ack_ids_by_subscription
from notifymesh.server import principal as principal_mod
from notifymesh.server import validation
from notifymesh.server.cluster import PrefixMirror
from notifymesh.server.principal import KeyRecord, Principal
from notifymesh.server.unsubscribe import InvalidToken, TokenSigner

log = logging.getLogger(__name__)

REVOCATION_BOUND_S = 2.0  # typically milliseconds: one etcd watch event
TOKEN_PREFIX = "nmr_"
DEFAULT_TOKEN_TTL_S, MIN_TOKEN_TTL_S, MAX_TOKEN_TTL_S = 3600, 60, 24 * 3600
MISS_MEMORY = 10_000  # unknown key ids remembered (not read from etcd again for MISS_RETRY_S)
MISS_RETRY_S = 1.0
MAX_VERIFIED = 10_000  # keys whose check is remembered (all forgotten when full)
REDACTED = "[redacted]"
INTERNAL_SERVICES = ("notifymesh.internal.v1.", "grpc.health.v1.", "grpc.reflection.")
# Calls by the mesh itself when auth is off (config auth_enabled 0): every check passes.
ANONYMOUS = Principal("anonymous", "anonymous", "admin")


class SizedRequest(NamedTuple):
    """A parsed Publish request and its size on the wire."""
    request: Any
    size: int


class Check(NamedTuple):
    action: str
    kind: str
    name: str | None  # None: any name of the kind


@dataclass(frozen=True)
class Rule:
    checks: Callable[[Any], list[Check]]
    # Applied to the response when the caller may not see personal data.
    redact: Callable[[Any], None] | None = None
    # Counted against the key's admin calls/s and written to the audit log.
    admin: bool = False
    # Checks on what the request names as stored (the topic of a subscription it names),
    # looked up once the request's own checks pass: (request, topic_of) -> checks.
    stored: Callable[[Any, "TopicOf"], Awaitable[list[Check]]] | None = None


# The topic of the named subscription as stored; NotFound for an unknown one.
TopicOf = Callable[[str], Awaitable[str]]


def _field(request, path: str) -> str:
    for part in path.split("."):
        request = getattr(request, part)
    return request


def on(action: str, kind: str, path: str | None = None, redact=None) -> Rule:
    """action on the kind named by the request's field at path (None: any name)."""
    return Rule(lambda r: [Check(action, kind, None if path is None else _field(r, path))], redact)


ADMIN = Rule(lambda r: [Check("admin", "cluster", None)], admin=True)
READ_CLUSTER = on("read", "cluster")


def _redact_recipient(recipient: notify_pb2.Recipient) -> None:
    for name in ("email", "phone", "webhook_url"):
        if getattr(recipient, name):
            setattr(recipient, name, REDACTED)


def _redact_devices(response: notify_pb2.ListDevicesResponse) -> None:
    for device in response.devices:
        device.token = REDACTED


def _new_subscription(request) -> list[Check]:
    """Only registered subscribers receive: a subscription (or push endpoint) needs a
    key allowed on its topic as well as on its own name."""
    subscription = request.subscription
    return [Check("manage", "subscription", subscription.name), Check("read", "topic", subscription.topic)]


# UpdateSubscription fields that change where the subscription's messages go: a push
# endpoint, a dead-letter topic its failed messages move to.
REDIRECTING = ("push_config", "dead_letter_topic")


async def _redirected(request, topic_of: TopicOf) -> list[Check]:
    """Sending a subscription's messages elsewhere is as making one: read on its topic
    too (_new_subscription), the topic it was stored with."""
    if not any(path.split(".")[0] in REDIRECTING for path in request.update_mask.paths):
        return []
    return [Check("read", "topic", await topic_of(request.subscription.name))]


SUBSCRIBE = on("subscribe", "subscription", "subscription")


def _settled(request) -> list[Check]:
    """Acks, deadline changes and nacks: of the subscription named, or (a merged call,
    subscription "") of each subscription its ack ids name."""
    if request.subscription:
        return [Check("subscribe", "subscription", request.subscription)]
    return [Check("subscribe", "subscription", name) for name in ack_ids_by_subscription(request.ack_ids)]


SETTLE = Rule(_settled)
SELF = on("self", "recipient", "recipient")

RULES: dict[str, Rule] = {
    "/notifymesh.v1.Publisher/CreateTopic": ADMIN,
    "/notifymesh.v1.Publisher/GetTopic": on("read", "topic", "name"),
    "/notifymesh.v1.Publisher/ListTopics": READ_CLUSTER,
    "/notifymesh.v1.Publisher/UpdateTopic": ADMIN,
    "/notifymesh.v1.Publisher/DeleteTopic": ADMIN,
    "/notifymesh.v1.Publisher/Publish": on("publish", "topic", "topic"),
    # A message id does not name its topic: any topic the key may read.
    "/notifymesh.v1.Publisher/GetMessageStatus": on("read", "topic"),
    "/notifymesh.v1.Publisher/DescribeTopic": on("read", "topic", "name"),
    "/notifymesh.v1.Subscriber/CreateSubscription": Rule(_new_subscription),
    "/notifymesh.v1.Subscriber/GetSubscription": on("read", "subscription", "name"),
    "/notifymesh.v1.Subscriber/ListSubscriptions": READ_CLUSTER,
    "/notifymesh.v1.Subscriber/DeleteSubscription": on("manage", "subscription", "name"),
    "/notifymesh.v1.Subscriber/UpdateSubscription": Rule(
        lambda r: [Check("manage", "subscription", r.subscription.name)], stored=_redirected),
    # A new signing secret: audited, as the admin calls are.
    "/notifymesh.v1.Subscriber/RotatePushSecret": Rule(
        lambda r: [Check("manage", "subscription", r.subscription)], admin=True),
    "/notifymesh.v1.Subscriber/Subscribe": SUBSCRIBE,
    "/notifymesh.v1.Subscriber/Acknowledge": SETTLE,
    "/notifymesh.v1.Subscriber/ModifyAckDeadline": SETTLE,
    "/notifymesh.v1.Subscriber/Nack": SETTLE,
    "/notifymesh.v1.Subscriber/ListDeadLetters": SUBSCRIBE,
    "/notifymesh.v1.Subscriber/RedriveDeadLetters": SUBSCRIBE,
    "/notifymesh.v1.Subscriber/DescribeSubscription": on("read", "subscription", "name"),
    "/notifymesh.v1.Subscriber/Seek": SUBSCRIBE,
    "/notifymesh.v1.Subscriber/Pull": SUBSCRIBE,
    "/notifymesh.v1.ClusterAdmin/GetClusterStatus": READ_CLUSTER,
    "/notifymesh.v1.ClusterAdmin/GetConfig": READ_CLUSTER,
    "/notifymesh.v1.ClusterAdmin/SetConfig": ADMIN,
    "/notifymesh.v1.ClusterAdmin/RotateKeys": ADMIN,
    "/notifymesh.v1.ClusterAdmin/DrainNode": ADMIN,
    "/notifymesh.v1.Analytics/GetStats": READ_CLUSTER,
    "/notifymesh.v1.Notifications/UpsertRecipient": ADMIN,
    "/notifymesh.v1.Notifications/UpsertRecipients": ADMIN,
    "/notifymesh.v1.Notifications/GetRecipient": on("read", "recipient", "id", _redact_recipient),
    "/notifymesh.v1.Notifications/DeleteRecipient": ADMIN,
    "/notifymesh.v1.Notifications/GetPreferences": on("read", "recipient", "recipient"),
    "/notifymesh.v1.Notifications/UpdatePreferences": SELF,
    "/notifymesh.v1.Notifications/CreateCategory": ADMIN,
    "/notifymesh.v1.Notifications/GetCategory": on("read", "category", "name"),
    "/notifymesh.v1.Notifications/ListCategories": READ_CLUSTER,
    "/notifymesh.v1.Notifications/UpdateCategory": ADMIN,
    "/notifymesh.v1.Notifications/DeleteCategory": ADMIN,
    "/notifymesh.v1.Notifications/CreateTemplate": ADMIN,
    "/notifymesh.v1.Notifications/GetTemplate": READ_CLUSTER,
    "/notifymesh.v1.Notifications/ListTemplates": READ_CLUSTER,
    "/notifymesh.v1.Notifications/DeleteTemplate": ADMIN,
    "/notifymesh.v1.Notifications/PreviewTemplate": READ_CLUSTER,
    "/notifymesh.v1.Notifications/CreateAudience": ADMIN,
    "/notifymesh.v1.Notifications/GetAudience": READ_CLUSTER,
    "/notifymesh.v1.Notifications/DeleteAudience": ADMIN,
    "/notifymesh.v1.Notifications/AddAudienceMembers": ADMIN,
    "/notifymesh.v1.Notifications/RemoveAudienceMembers": ADMIN,
    "/notifymesh.v1.Notifications/ListAudienceMembers": READ_CLUSTER,
    "/notifymesh.v1.Notifications/SetProvider": ADMIN,
    "/notifymesh.v1.Notifications/GetProvider": READ_CLUSTER,
    "/notifymesh.v1.Notifications/ListProviders": READ_CLUSTER,
    "/notifymesh.v1.Notifications/DeleteProvider": ADMIN,
    "/notifymesh.v1.Notifications/GetProviderStatus": READ_CLUSTER,
    "/notifymesh.v1.Notifications/Notify": on("notify", "category", "category"),
    # A notification's id does not name its category: any category the key may read.
    "/notifymesh.v1.Notifications/GetNotification": on("read", "category"),
    "/notifymesh.v1.Notifications/ListNotifications": on("read", "recipient", "recipient"),
    "/notifymesh.v1.Notifications/AddDevice": SELF,
    "/notifymesh.v1.Notifications/RemoveDevice": SELF,
    "/notifymesh.v1.Notifications/ListDevices": on("read", "recipient", "recipient", _redact_devices),
    "/notifymesh.v1.Notifications/SubscribeInbox": SELF,
    "/notifymesh.v1.Notifications/AckInbox": SELF,
    "/notifymesh.v1.Notifications/MarkRead": SELF,
    "/notifymesh.v1.Notifications/ListInbox": SELF,
    "/notifymesh.v1.Auth/CreateApiKey": ADMIN,
    "/notifymesh.v1.Auth/RevokeApiKey": ADMIN,
    "/notifymesh.v1.Auth/ListApiKeys": ADMIN,
    "/notifymesh.v1.Auth/SetApiKeyLimits": ADMIN,
    "/notifymesh.v1.Auth/MapCertificate": ADMIN,
    "/notifymesh.v1.Auth/CreateRecipientToken": on("mint", "recipient", "recipient"),
}
STREAMS = frozenset({"/notifymesh.v1.Subscriber/Subscribe", "/notifymesh.v1.Notifications/SubscribeInbox"})
PUBLISH = "/notifymesh.v1.Publisher/Publish"


def refusal(principal: Principal, check: Check) -> errors.PermissionDenied:
    """e.g. key billing-svc (publisher) may not publish on topic 'ops.alerts': needs publish on topic ops.alerts"""
    on_what = f"{check.kind} {check.name!r}" if check.name is not None else f"any {check.kind}"
    needs = f"{check.action} on {check.kind} {check.name}" if check.name is not None else \
        f"{check.action} on some {check.kind}"
    if check.action == "admin":
        return errors.PermissionDenied(f"{principal.describe()} may not do this: needs the admin role")
    return errors.PermissionDenied(f"{principal.describe()} may not {check.action} {on_what}: needs {needs}")


def authorize(principal: Principal, rule: Rule, request) -> list[Check]:
    """The rule's checks; PermissionDenied naming the first one the caller lacks."""
    checks = rule.checks(request)
    for check in checks:
        if not principal.allows(*check):
            raise refusal(principal, check)
    return checks


async def authorize_stored(principal: Principal, rule: Rule, request, topic_of: TopicOf) -> None:
    """The rule's checks on stored records (after authorize); PermissionDenied naming
    the first one the caller lacks."""
    for check in await rule.stored(request, topic_of):
        if not principal.allows(*check):
            raise refusal(principal, check)


class RecipientTokens:
    """End users' tokens: nmr_ + a TokenSigner token of (recipient, expiry seconds),
    signed with a cluster key derived for this purpose only."""

    def __init__(self):
        self._signer: TokenSigner | None = None  # the cluster's key, read at start

    def start(self, key: bytes) -> None:
        self._signer = TokenSigner(key)

    def mint(self, recipient: str, ttl_s: float) -> auth_pb2.RecipientToken:
        if self._signer is None:
            raise errors.Unavailable("the frontend is starting")
        validation.recipient_id(recipient, "recipient")
        expires_s = int(time.time() + ttl_s)
        reply = auth_pb2.RecipientToken(token=TOKEN_PREFIX + self._signer.sign((recipient, str(expires_s))))
        reply.expire_time.FromSeconds(expires_s)
        return reply

    def verify(self, token: str) -> Principal:
        if self._signer is None:
            raise errors.Unavailable("the frontend is starting")
        try:
            (recipient, expires), _ = self._signer.open(token[len(TOKEN_PREFIX):], (2,), max_age_s=MAX_TOKEN_TTL_S,
                                                        what="a recipient token")
            expires_s = int(expires)
        except (InvalidToken, ValueError) as e:
            raise errors.Unauthenticated(f"recipient token refused: {e}") from None
        if time.time() > expires_s:
            raise errors.Unauthenticated("recipient token expired")
        return Principal(f"recipient:{recipient}", recipient, principal_mod.RECIPIENT_ROLE)


def token_ttl_s(request: auth_pb2.CreateRecipientTokenRequest) -> float:
    if not request.HasField("ttl"):
        return DEFAULT_TOKEN_TTL_S
    ttl = request.ttl.ToMilliseconds() / 1000
    if not MIN_TOKEN_TTL_S <= ttl <= MAX_TOKEN_TTL_S:
        raise errors.InvalidArgument(
            f"token ttl {ttl:g}s: {MIN_TOKEN_TTL_S} seconds to {MAX_TOKEN_TTL_S // 3600} hours")
    return ttl


def cert_principal(record: auth_pb2.CertificatePrincipal) -> Principal:
    g = record.grants
    return Principal(f"cert:{record.common_name}", record.common_name, g.role, tuple(g.topics),
                     tuple(g.subscriptions), tuple(g.categories), g.personal_data)


class Authenticator:
    """The caller of a call, from its metadata or its TLS peer certificate."""

    def __init__(self, keys: PrefixMirror, certs: PrefixMirror, tokens: RecipientTokens):
        self._keys, self._certs, self._tokens = keys, certs, tokens
        self._misses: dict[str, float] = {}  # key id -> when etcd last said it does not exist
        # key -> (the mirror's record it was verified against, its principal): a call
        # with a known key costs no hash; a changed record (revoked) is checked again.
        self._verified: dict[str, tuple[KeyRecord, Principal]] = {}

    async def principal(self, context) -> Principal:
        bearer = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                bearer = value
                break
        if bearer is not None:
            scheme, _, credential = bearer.partition(" ")
            if scheme.lower() != "bearer" or not credential:
                raise errors.Unauthenticated("authorization metadata: expected 'Bearer <API key or token>'")
            if credential.startswith(TOKEN_PREFIX):
                return self._tokens.verify(credential)
            return await self._key(credential.strip())
        common_name = _peer_common_name(context)
        if common_name is not None:
            record = self._certs.items.get(common_name)
            if record is None:
                raise errors.Unauthenticated(f"client certificate CN {common_name!r} is not mapped to a principal "
                                             "(notifymesh auth cert map)")
            return cert_principal(record)
        raise errors.Unauthenticated("no credentials: send 'authorization: Bearer <API key>' (notifymesh auth key "
                                     "create) or a client certificate")

    async def _key(self, key: str) -> Principal:
        cached = self._verified.get(key)
        if cached is not None and self._keys.items.get(cached[0].key_id) is cached[0]:
            record, principal = cached  # checked against this very record before
        else:
            key_id, secret = principal_mod.parse_key(key)
            record = self._keys.items.get(key_id)
            if record is None:
                record = await self._read(key_id)
            if not record.verifies(secret):
                raise errors.Unauthenticated(f"API key {key_id}: wrong secret")
            principal = record.principal()
            if len(self._verified) >= MAX_VERIFIED:
                self._verified.clear()
            self._verified[key] = (record, principal)
        key_id = record.key_id
        if record.revoked_ms:
            raise errors.Unauthenticated(f"API key {key_id} ({record.name}) was revoked")
        if record.expires_ms and now_ms() > record.expires_ms:
            raise errors.Unauthenticated(f"API key {key_id} ({record.name}) has expired")
        return principal

    async def _read(self, key_id: str) -> KeyRecord:
        """A key not in the mirror yet (made a moment ago through another frontend):
        read from etcd, at most once a MISS_RETRY_S per unknown id."""
        missed = self._misses.get(key_id)
        if missed is None or time.monotonic() - missed > MISS_RETRY_S:
            try:
                return await self._keys.get("API key", key_id)
            except errors.NotFound:
                pass
            if len(self._misses) >= MISS_MEMORY:
                self._misses.clear()
            self._misses[key_id] = time.monotonic()
        raise errors.Unauthenticated(f"unknown API key {key_id}")


# Every internal service the frontend serves (Inbox.Wake from senders and frontends,
# Node.Describe from the local mesh and tools): only on its mutual-TLS port (the client
# certificate verified by the handshake, process.py); the public port, TLS without
# client certificates, refuses them whatever API key comes along. All are unary.
MTLS_ONLY = ("/notifymesh.internal.v1.",)


def _mtls_only(method: str, handler):
    inner = handler.unary_unary

    async def unary_unary(request, context):
        security = context.auth_context()
        # A plaintext mesh (--plaintext: TLS off, for a comparison or behind a proxy that
        # ends it) has one port and no mutual-TLS one, like every other service's internal
        # port then: its network is trusted, and internal RPCs are served as before.
        if security.get("transport_security_type") == [b"ssl"] and not security.get("x509_common_name"):
            raise errors.PermissionDenied(f"{method} is internal: served only on the frontend's mutual-TLS port "
                                          "(a client certificate of the cluster CA)")
        return await inner(request, context)

    return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer, handler.response_serializer)


def _peer_common_name(context) -> str | None:
    """The subject CN of the peer's certificate, verified by the TLS handshake."""
    try:
        names = context.auth_context().get("x509_common_name")
    except Exception:  # a plaintext port has no auth context
        return None
    return names[0].decode() if names else None


def peer_of(context) -> str:
    try:
        return context.peer() or ""
    except Exception:
        return ""


def _resource(rule: Rule, request) -> str:
    """The names a call is about, for the audit log: topic:orders"""
    try:
        checks = rule.checks(request)
    except errors.InvalidArgument:  # malformed ack ids of an unauthenticated call: refused for that anyway
        return ""
    return ",".join(f"{check.kind}:{check.name}" for check in checks if check.name is not None)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates and authorizes every public call (RULES), applies the caller's
    limits (frontend/limits.py), audits refusals and admin calls, and redacts
    personal data the caller may not see. Placed after process.ErrorInterceptor,
    which parses requests and maps the errors raised here."""

    def __init__(self, authenticator: Authenticator, limits: Limits, audit: AuditLog,
                 enabled: Callable[[], bool], topic_of: TopicOf):
        self._auth, self._limits, self._audit, self._enabled = authenticator, limits, audit, enabled
        self._topic_of = topic_of  # for Rule.stored
        # method -> (the handler served, its checked wrapper): made once per method,
        # not per call. Bounded by the server's methods (an unknown one has no handler).
        self._wrapped: dict[str, tuple] = {}

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        if handler is not None:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler):
        if handler is not None and method.startswith(MTLS_ONLY):
            return _mtls_only(method, handler)
        if handler is None or method.lstrip("/").startswith(INTERNAL_SERVICES):
            return handler
        rule = RULES.get(method)
        if method == PUBLISH:
            return self._publish(handler, rule)
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                principal = await self._admit(method, rule, request, context)
                if not rule.admin:
                    response = await inner(request, context)
                else:  # audited with its outcome
                    outcome = "OK"
                    try:
                        response = await inner(request, context)
                    except errors.NotifymeshError as e:
                        outcome = e.code.name
                        raise
                    except Exception:
                        outcome = "FAILED"
                        raise
                    finally:
                        self._audit.record(principal, method, _resource(rule, request), peer_of(context), outcome)
                if rule.redact is not None and response is not None and not principal.sees_personal_data():
                    rule.redact(response)
                return response

            return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                principal = await self._admit(method, rule, request, context)
                with self._limits.stream(principal, method):
                    async for response in inner_stream(request, context):
                        yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, handler.request_deserializer,
                                                        handler.response_serializer)
        return handler  # no public client-streaming calls

    def _publish(self, handler, rule: Rule):
        """Publish: its bytes/s limit counts the request's size as received (measuring
        the parsed request, ByteSize(), cost 0.1 ms per 1,000 messages)."""
        inner, deserialize = handler.unary_unary, handler.request_deserializer

        async def publish(sized: SizedRequest, context):
            if self._enabled():
                principal = await self._admit(PUBLISH, rule, sized.request, context)
                self._limits.publish(principal, len(sized.request.messages), sized.size)
            return await inner(sized.request, context)

        return grpc.unary_unary_rpc_method_handler(publish, lambda raw: SizedRequest(deserialize(raw), len(raw)),
                                                   handler.response_serializer)

    async def _admit(self, method: str, rule: Rule | None, request, context) -> Principal:
        """The caller, allowed this call; raises (and audits) a refusal."""
        if rule is None:  # a public RPC nobody said who may call
            raise errors.PermissionDenied(f"{method} has no permission rule (frontend/auth.py RULES): refused")
        if not self._enabled():
            principal_mod.set_current(ANONYMOUS)
            return ANONYMOUS
        principal = None
        try:
            principal = await self._auth.principal(context)
            authorize(principal, rule, request)
            if rule.stored is not None:
                await authorize_stored(principal, rule, request, self._topic_of)
            if rule.admin:
                self._limits.admin_call(principal)
        except (errors.Unauthenticated, errors.PermissionDenied) as e:
            self._audit.record(principal, method, _resource(rule, request), peer_of(context), e.code.name,
                               str(e.details))
            raise
        principal_mod.set_current(principal)
        return principal
