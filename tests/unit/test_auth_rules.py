"""The permission table (frontend/auth.py RULES) and the roles (principal.py)."""

import pytest

from frontend import auth
from frontend.service import FrontendService
from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from notifymesh import errors
from notifymesh.server.principal import KeyRecord, Principal, hash_secret, new_key, parse_key


def _public_methods() -> set[str]:
    from google.protobuf import descriptor_pool
    pool = descriptor_pool.Default()
    return {f"/{name}/{method.name}" for name in FrontendService.reflected
            for method in pool.FindServiceByName(name).methods}


def test_every_public_rpc_has_a_rule():
    missing = _public_methods() - set(auth.RULES)
    assert not missing, f"public RPCs without a permission rule (frontend/auth.py RULES): {sorted(missing)}"
    assert not set(auth.RULES) - _public_methods(), "rules for methods that do not exist"


def _key(role, **patterns):
    return Principal("key:abc", "svc", role, **patterns)


def _allowed(principal, method, request) -> bool:
    try:
        auth.authorize(principal, auth.RULES[method], request)
        return True
    except errors.PermissionDenied:
        return False


PUBLISH = "/notifymesh.v1.Publisher/Publish"
SUBSCRIBE = "/notifymesh.v1.Subscriber/Subscribe"
CREATE_SUB = "/notifymesh.v1.Subscriber/CreateSubscription"


def test_publisher_on_matching_and_other_topics():
    key = _key("publisher", topics=("billing.*",), categories=("billing",))
    assert _allowed(key, PUBLISH, pubsub_pb2.PublishRequest(topic="billing.invoices"))
    assert not _allowed(key, PUBLISH, pubsub_pb2.PublishRequest(topic="ops.alerts"))
    assert not _allowed(key, SUBSCRIBE, pubsub_pb2.SubscribeRequest(subscription="billing.invoices"))
    assert not _allowed(key, "/notifymesh.v1.Publisher/CreateTopic", pubsub_pb2.CreateTopicRequest())
    assert _allowed(key, "/notifymesh.v1.Notifications/Notify", notify_pb2.NotifyRequest(category="billing"))
    assert not _allowed(key, "/notifymesh.v1.Notifications/Notify", notify_pb2.NotifyRequest(category="promo"))


def test_refusal_names_the_missing_permission():
    key = _key("publisher", topics=("billing.*",))
    with pytest.raises(errors.PermissionDenied) as refused:
        auth.authorize(key, auth.RULES[PUBLISH], pubsub_pb2.PublishRequest(topic="ops.alerts"))
    assert "key svc (publisher) may not publish topic 'ops.alerts': needs publish on topic ops.alerts" in str(refused.value)


def test_subscriber_needs_the_topic_for_a_new_subscription():
    key = _key("subscriber", subscriptions=("billing-*",), topics=("billing.*",))
    new = pubsub_pb2.Subscription(name="billing-audit", topic="billing.invoices")
    assert _allowed(key, CREATE_SUB, pubsub_pb2.CreateSubscriptionRequest(subscription=new))
    new.topic = "ops.alerts"
    assert not _allowed(key, CREATE_SUB, pubsub_pb2.CreateSubscriptionRequest(subscription=new))
    assert _allowed(key, SUBSCRIBE, pubsub_pb2.SubscribeRequest(subscription="billing-x"))
    assert not _allowed(key, SUBSCRIBE, pubsub_pb2.SubscribeRequest(subscription="ops-x"))
    assert not _allowed(key, PUBLISH, pubsub_pb2.PublishRequest(topic="billing.invoices"))


UPDATE_SUB = "/notifymesh.v1.Subscriber/UpdateSubscription"


async def test_redirecting_a_subscription_needs_its_stored_topic_too():
    key = _key("subscriber", subscriptions=("subs.*",), topics=("billing.*",))
    looked_up = []

    async def topic_of(name):
        looked_up.append(name)
        return {"subs.ops": "ops.alerts", "subs.billing": "billing.invoices"}[name]

    def update(name, *paths):
        request = pubsub_pb2.UpdateSubscriptionRequest(subscription=pubsub_pb2.Subscription(name=name))
        request.update_mask.paths.extend(paths)
        return request

    async def allowed(request) -> bool:
        try:
            auth.authorize(key, auth.RULES[UPDATE_SUB], request)
            await auth.authorize_stored(key, auth.RULES[UPDATE_SUB], request, topic_of)
            return True
        except errors.PermissionDenied as e:
            assert "needs read on topic ops.alerts" in str(e)
            return False

    assert await allowed(update("subs.ops", "ack_deadline", "retry_policy.minimum_backoff"))
    assert looked_up == []  # nothing stored to check
    assert not await allowed(update("subs.ops", "push_config.endpoint"))
    assert not await allowed(update("subs.ops", "push_config"))
    assert not await allowed(update("subs.ops", "ack_deadline", "dead_letter_topic"))
    assert await allowed(update("subs.billing", "push_config.endpoint"))
    assert looked_up == ["subs.ops"] * 3 + ["subs.billing"]


def test_viewer_reads_only():
    key = _key("viewer", topics=("*",), subscriptions=("*",))
    assert _allowed(key, "/notifymesh.v1.Publisher/GetTopic", pubsub_pb2.GetTopicRequest(name="a"))
    assert not _allowed(key, PUBLISH, pubsub_pb2.PublishRequest(topic="a"))
    assert not _allowed(key, "/notifymesh.v1.ClusterAdmin/SetConfig", None)


def test_reserved_names_need_patterns_naming_them():
    key = _key("viewer", topics=("*",))
    assert not _allowed(key, "/notifymesh.v1.Publisher/GetTopic", pubsub_pb2.GetTopicRequest(name="notifymesh.audit"))


def test_recipient_token_reaches_only_its_own_inbox():
    end_user = Principal("recipient:alice", "alice", "recipient")
    inbox = "/notifymesh.v1.Notifications/SubscribeInbox"
    assert _allowed(end_user, inbox, notify_pb2.SubscribeInboxRequest(recipient="alice"))
    assert not _allowed(end_user, inbox, notify_pb2.SubscribeInboxRequest(recipient="bob"))
    assert not _allowed(end_user, "/notifymesh.v1.Notifications/GetRecipient", notify_pb2.GetRecipientRequest(id="alice"))


def test_keys_are_stored_as_salted_hashes():
    key_id, secret, full = new_key()
    assert parse_key(full) == (key_id, secret)
    record = KeyRecord(key_id, "svc", "admin", salt="00" * 16, hash=hash_secret(bytes(16), secret).hex(), created_ms=1)
    assert secret not in record.encode().decode()
    assert KeyRecord.decode(record.encode()).verifies(secret)
    assert not record.verifies(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    with pytest.raises(errors.Unauthenticated):
        parse_key("nm_nothex_" + secret)
