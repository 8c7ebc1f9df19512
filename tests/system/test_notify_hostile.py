"""The public API as an attacker sees it, on a real mesh of its own: every RPC of
every public service (enumerated from the protos, so a new one is fuzzed too), and
the Notifications API at length, with generated hostile requests (control characters, NUL, huge values, unicode,
out-of-range enums, bad page sizes and tokens, wrong or deeply nested JSON,
templates that do not compile or try to escape or to burn CPU, E.164 edge cases)
answers OK or a precise status, never UNKNOWN, INTERNAL or UNAVAILABLE, and in a
bounded time. Then the same service seen without the Python stubs (reflection and
raw bytes), and the public data plane kept off the internal topics."""

import asyncio
import concurrent.futures
import importlib
import json
import pkgutil
import time

import grpc
import pytest
from google.protobuf import descriptor, duration_pb2, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import frontend_channel, unique
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gen.notifymesh.v1
from gen.notifymesh.v1 import notify_pb2 as pb
from gen.notifymesh.v1 import cluster_pb2, cluster_pb2_grpc, notify_pb2_grpc, pubsub_pb2, pubsub_pb2_grpc
from notifymesh import errors
from notifymesh.server import internal_topics
from notifymesh.server.config import FIELDS as CONFIG_KEYS

PRECISE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.OUT_OF_RANGE}
CALL_SECONDS = 10  # each answer within this; a hung call shows as DEADLINE_EXCEEDED, a failure
NOTIFICATIONS = pb.DESCRIPTOR.services_by_name["Notifications"]

# Strings that break naive code: empty, NUL, separators of row keys and paths, control
# characters, direction overrides, huge ones, reserved names, Jinja, E.164 edge cases.
HOSTILE_STRINGS = [
    "", "\0", "a\0b", "a/b", "/", "../../etc/passwd", "\n", "\r\n", "\x7f", "\x1b[31m", " ", "\u202e",
    "\ufeff", "😀" * 70, "x" * 256, "x" * 70_000, "notifymesh.table", "notifymesh.notify.fanout", "email", "EMAIL",
    "{{ 7*7 }}", "{% for %}", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ x", "{% raw %}",
    "{% for i in range(10**9) %}{% endfor %}", "{{ 'x' * 10**9 }}", "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}",
    "+", "+0", "+1", "+14155550100", "+1 415 555 0100", "+999999999999999999999", "00 1 415 555 0100",
    "+1415555010０", "tel:+14155550100", "a@b", "@", "a@b.c" * 100, "ünïcödé@exämple.com", "http://", "https://x",
    "Europe/Berlin", "../zoneinfo", "de-CH", "x-" * 40, "AAAA", "=", "%00", "AAAAAAAAAAAA====",
]
JSON_DATA = [
    "", "{}", "[]", "null", "1", '"x"', "{", "{'a': 1}", '{"a": NaN}', '{"a": 1e999}', '{"a":"\\ud800"}',
    '{"items": ' + json.dumps(list(range(2000))) + "}", '{"a": "' + "x" * 70_000 + '"}',
    "[" * 30_000 + "]" * 30_000, '{"a":' * 1000 + "1" + "}" * 1000, '{"a":' * 30 + "1" + "}" * 30,
]
INT32 = st.one_of(st.sampled_from([0, 1, -1, 2, 3, 4, 99, 1000, 1001, 2**31 - 1, -2**31]),
                  st.integers(-2**31, 2**31 - 1))
INT64 = st.one_of(INT32, st.sampled_from([2**63 - 1, -2**63]))
TEXT = st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(st.characters(exclude_categories=["Cs"]), max_size=40))
# Names that exist (the `known` fixture), so a request gets past NOT_FOUND to the deeper checks.
KNOWN = st.sampled_from(["alice", "billing", "invoice", "beta", "orders", "orders-sub", "orders-push"])


def scalar(field: descriptor.FieldDescriptor) -> st.SearchStrategy:
    kind = field.type
    if kind == field.TYPE_STRING:
        if field.name == "key" and field.containing_type.name.endswith("ConfigRequest"):
            return st.one_of(st.sampled_from(sorted(CONFIG_KEYS)), TEXT)
        return st.one_of(TEXT, st.sampled_from(JSON_DATA)) if field.name == "data" else st.one_of(KNOWN, TEXT)
    if kind == field.TYPE_BOOL:
        return st.booleans()
    if kind == field.TYPE_ENUM:  # proto3 keeps numbers it does not know
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), INT32)
    if kind in (field.TYPE_INT64, field.TYPE_SINT64, field.TYPE_SFIXED64):
        return INT64
    if kind == field.TYPE_BYTES:
        return st.binary(max_size=40)
    return INT32


def request_of(message: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy:
    """Any request of this type: each field absent or hostile, nested messages too."""
    cls = message_factory.GetMessageClass(message)
    fields = {}
    for field in message.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            fields[field.name] = st.dictionaries(scalar(key), scalar(value), max_size=3)
        elif field.message_type is not None:
            if field.message_type.full_name.startswith("google.protobuf") or depth > 2:
                continue
            inner = request_of(field.message_type, depth + 1)
            fields[field.name] = st.lists(inner, max_size=3) if field.is_repeated else inner
        elif field.is_repeated:
            fields[field.name] = st.lists(scalar(field), max_size=4)
        else:
            fields[field.name] = scalar(field)
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: cls(**values))


CALLS = st.sampled_from(sorted(NOTIFICATIONS.methods_by_name)).flatmap(
    lambda name: st.tuples(st.just(name), request_of(NOTIFICATIONS.methods_by_name[name].input_type)))


@pytest.fixture(scope="module")
def hostile_mesh(tmp_path_factory):
    """A mesh of its own: a generated SetProvider or DeleteCategory that succeeds must
    not change what other tests' mesh does."""
    from helpers import new_mesh
    mesh = new_mesh(tmp_path_factory.mktemp("hostile"))
    yield mesh
    mesh.stop()


@pytest.fixture(scope="module")
def channel(hostile_mesh):
    with frontend_channel(hostile_mesh, sync=True) as channel:
        yield channel


@pytest.fixture(scope="module")
def known(channel):
    """A template, category and recipient that exist, so generated requests that name
    them go deeper than NOT_FOUND."""
    stub = notify_pb2_grpc.NotificationsStub(channel)
    for _ in range(300):  # the table topic is created once metadata serves
        try:
            stub.GetRecipient(pb.GetRecipientRequest(id="nobody-at-all"), timeout=CALL_SECONDS)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                break
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e.details()
            time.sleep(0.1)
    # The fuzzer may delete the names it knows: the tests that need a name to stay use the steady- ones.
    for prefix in ("", "steady-"):
        stub.CreateCategory(pb.CreateCategoryRequest(category=pb.Category(name=f"{prefix}billing")),
                            timeout=CALL_SECONDS)
        stub.CreateTemplate(pb.CreateTemplateRequest(template=pb.Template(name=f"{prefix}invoice", contents=[
            pb.TemplateContent(channel=pb.SMS, text="{{ data.amount }} due"),
            pb.TemplateContent(channel=pb.EMAIL, subject="Due", text="{{ data.amount }}")])), timeout=CALL_SECONDS)
        stub.UpsertRecipient(pb.UpsertRecipientRequest(recipient=pb.Recipient(id=f"{prefix}alice",
                                                                              phone="+14155550100")),
                             timeout=CALL_SECONDS)
    stub.CreateAudience(pb.CreateAudienceRequest(audience=pb.Audience(name="beta")), timeout=CALL_SECONDS)
    publisher, subscriber = pubsub_pb2_grpc.PublisherStub(channel), pubsub_pb2_grpc.SubscriberStub(channel)
    publisher.CreateTopic(pubsub_pb2.CreateTopicRequest(topic=pubsub_pb2.Topic(name="orders")), timeout=CALL_SECONDS)
    subscriber.CreateSubscription(pubsub_pb2.CreateSubscriptionRequest(subscription=pubsub_pb2.Subscription(
        name="orders-sub", topic="orders")), timeout=CALL_SECONDS)
    subscriber.CreateSubscription(pubsub_pb2.CreateSubscriptionRequest(subscription=pubsub_pb2.Subscription(
        name="orders-push", topic="orders", push_config=pubsub_pb2.PushConfig(endpoint="http://127.0.0.1:9/"))),
        timeout=CALL_SECONDS)
    publisher.Publish(pubsub_pb2.PublishRequest(topic="orders", messages=[pubsub_pb2.PubsubMessage(data=b"x")] * 5),
                      timeout=CALL_SECONDS)
    return stub


def answer(stub, method: str, request) -> tuple[grpc.StatusCode, str, float]:
    started = time.monotonic()
    try:
        getattr(stub, method)(request, timeout=CALL_SECONDS)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
    return code, details, time.monotonic() - started


@settings(max_examples=600, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(CALLS)
def test_every_rpc_answers_generated_hostile_requests_precisely(known, call):
    method, request = call
    code, details, seconds = answer(known, method, request)
    assert code in PRECISE, f"{method}({request!r:.300}) -> {code.name}: {details}"
    assert code == grpc.StatusCode.OK or details, f"{method}: {code.name} without a message"


def _public_methods() -> list[descriptor.MethodDescriptor]:
    """Every RPC of every service in the public protos (gen/notifymesh/v1/*_pb2.py)."""
    modules = [importlib.import_module(f"gen.notifymesh.v1.{m.name}")
               for m in pkgutil.iter_modules(gen.notifymesh.v1.__path__) if m.name.endswith("_pb2")]
    return [method for module in modules for service in module.DESCRIPTOR.services_by_name.values()
            for method in service.methods]


PUBLIC_METHODS = _public_methods()
EXAMPLES_PER_RPC = 250
STREAM_OPEN_S = 0.3  # a stream that answered nothing by then is open: fine, and cancelled
_STREAMS = concurrent.futures.ThreadPoolExecutor(2)


def answer_raw(channel, method: descriptor.MethodDescriptor, request) -> tuple[grpc.StatusCode, str]:
    """Any public RPC by its descriptor: a unary one's status; a stream's first frame or
    status (an open stream with nothing to send yet is OK)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    decode = message_factory.GetMessageClass(method.output_type).FromString
    try:
        if not method.server_streaming:
            channel.unary_unary(path, request_serializer=type(request).SerializeToString,
                                response_deserializer=decode)(request, timeout=CALL_SECONDS)
            return grpc.StatusCode.OK, ""
        call = channel.unary_stream(path, request_serializer=type(request).SerializeToString,
                                    response_deserializer=decode)(request, timeout=CALL_SECONDS)
        first = _STREAMS.submit(next, call, None)
        try:
            first.result(STREAM_OPEN_S)
        except concurrent.futures.TimeoutError:
            call.cancel()
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


def mesh_serves(hostile_mesh, channel) -> None:
    """Every process still the one started (none died), and a publish goes through and
    is pulled."""
    dead = [name for name, process in hostile_mesh.processes.items() if not process.alive() or process.restarts]
    assert not dead, f"processes died: {dead}"
    publisher, subscriber = pubsub_pb2_grpc.PublisherStub(channel), pubsub_pb2_grpc.SubscriberStub(channel)
    topic = unique("after")
    publisher.CreateTopic(pubsub_pb2.CreateTopicRequest(topic=pubsub_pb2.Topic(name=topic)), timeout=CALL_SECONDS)
    subscriber.CreateSubscription(pubsub_pb2.CreateSubscriptionRequest(subscription=pubsub_pb2.Subscription(
        name=topic + "-sub", topic=topic)), timeout=CALL_SECONDS)
    publisher.Publish(pubsub_pb2.PublishRequest(topic=topic, messages=[pubsub_pb2.PubsubMessage(data=b"alive")]),
                      timeout=CALL_SECONDS)
    pulled = subscriber.Pull(pubsub_pb2.PullRequest(subscription=topic + "-sub", max_messages=1,
                                                    wait=duration_pb2.Duration(seconds=5)), timeout=CALL_SECONDS)
    assert [m.message.data for m in pulled.received_messages] == [b"alive"]


@pytest.mark.parametrize("method", PUBLIC_METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_every_public_rpc_answers_generated_hostile_requests_precisely(hostile_mesh, known, channel, method):
    """Each RPC of every public service (Publisher, Subscriber, ClusterAdmin,
    Notifications with the inbox, Analytics, and whatever a proto adds) with generated
    requests: a precise status with a message, no process dies, the mesh serves after."""
    @settings(max_examples=EXAMPLES_PER_RPC, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request_of(method.input_type))
    def fuzz(request):
        code, details = answer_raw(channel, method, request)
        assert code in PRECISE, f"{method.name}({request!r:.300}) -> {code.name}: {details}"
        assert code == grpc.StatusCode.OK or details, f"{method.name}: {code.name} without a message"

    try:
        fuzz()
    finally:
        if method.name == "SetConfig":  # what the fuzz set goes back to its default
            stub = cluster_pb2_grpc.ClusterAdminStub(channel)
            for key in CONFIG_KEYS:
                stub.SetConfig(cluster_pb2.SetConfigRequest(key=key, reset=True), timeout=CALL_SECONDS)
    mesh_serves(hostile_mesh, channel)


def test_the_fuzz_covers_every_public_service_the_frontend_serves(channel):
    """A public service added in a proto outside gen/notifymesh/v1, or served and not
    fuzzed, fails here."""
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    [listed] = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=CALL_SECONDS)
    served = {s.name for s in listed.list_services_response.service
              if s.name.startswith("notifymesh.") and ".internal." not in s.name}
    fuzzed = {m.containing_service.full_name for m in PUBLIC_METHODS}
    assert served == fuzzed and {"notifymesh.v1.Publisher", "notifymesh.v1.Subscriber", "notifymesh.v1.ClusterAdmin",
                                 "notifymesh.v1.Notifications", "notifymesh.v1.Analytics"} <= fuzzed


TARGETED = [
    ("Notify", pb.NotifyRequest(template="invoice", category="billing", recipients=["alice"],
                                data='{"a": "' + "x" * 65_536 + '"}')),
    ("Notify", pb.NotifyRequest(template="invoice", category="billing", recipients=["alice"],
                                data="[" * 30_000 + "]" * 30_000)),
    ("Notify", pb.NotifyRequest(template="invoice", category="billing", recipients=["alice"],
                                data='{"a":' * 33 + "1" + "}" * 33)),
    ("Notify", pb.NotifyRequest(template="invoice", category="billing", recipients=["alice\0"])),
    ("Notify", pb.NotifyRequest(template="invoice", category="billing", recipients=["alice"] * 1001)),
    ("Notify", pb.NotifyRequest(template="invoice", category="billing", recipients=["alice"], channels=[77])),
    ("Notify", pb.NotifyRequest(template="invoice", category="billing", recipients=["alice"], priority=-5)),
    ("Notify", pb.NotifyRequest(template="invoice", category="billing", recipients=["alice"], template_version=-1)),
    ("PreviewTemplate", pb.PreviewTemplateRequest(name="invoice", channel=pb.SMS, data="[" * 30_000 + "]" * 30_000)),
    ("CreateTemplate", pb.CreateTemplateRequest(template=pb.Template(name="deep", contents=[
        pb.TemplateContent(channel=pb.SMS, text="{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}")]))),
    ("ListAudienceMembers", pb.ListAudienceMembersRequest(audience="beta", page_size=-1)),
    ("ListAudienceMembers", pb.ListAudienceMembersRequest(audience="beta", page_token="!!!not base64")),
    ("ListNotifications", pb.ListNotificationsRequest(recipient="alice", page_size=2**31 - 1)),
    ("ListNotifications", pb.ListNotificationsRequest(recipient="alice", page_token="garbage\0")),
    ("GetNotification", pb.GetNotificationRequest(id="x" * 10_000)),
    ("GetNotification", pb.GetNotificationRequest(id="notifymesh.table/0/1", page_token="\0")),
]


@pytest.mark.parametrize("method,request_", TARGETED, ids=[f"{m}-{i}" for i, (m, _) in enumerate(TARGETED)])
def test_targeted_hostile_requests_are_refused_precisely(known, method, request_):
    code, details, _ = answer(known, method, request_)
    assert code in PRECISE - {grpc.StatusCode.OK}, f"{method} -> {code.name}: {details}"


def test_data_over_64_kib_and_deep_nesting_are_invalid_argument(known):
    base = dict(template="steady-invoice", category="steady-billing", recipients=["steady-alice"])
    big = '{"a": "' + "x" * (64 * 1024) + '"}'
    code, details, _ = answer(known, "Notify", pb.NotifyRequest(data=big, **base))
    assert (code, "at most 65536" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)
    code, details, _ = answer(known, "Notify", pb.NotifyRequest(data='{"a":' * 33 + "1" + "}" * 33, **base))
    assert (code, "over 32 deep" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)
    code, _, _ = answer(known, "Notify", pb.NotifyRequest(data='{"a":' * 31 + "1" + "}" * 31, **base))
    assert code == grpc.StatusCode.OK


def test_raw_bytes_unknown_fields_and_truncated_messages(known, channel):
    """What a client of another language may send: unknown fields are kept out of the
    way (proto3), a truncated message or invalid UTF-8 in a string is refused, and the
    service is found through reflection, with no Python stubs."""
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    [listed] = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=CALL_SECONDS)
    assert "notifymesh.v1.Notifications" in {s.name for s in listed.list_services_response.service}

    raw = channel.unary_unary("/notifymesh.v1.Notifications/Notify")
    valid = pb.NotifyRequest(template="steady-invoice", category="steady-billing", recipients=["steady-alice"],
                             data='{"amount": 1}').SerializeToString()
    unknown_field = valid + bytes([0xF8, 0x07, 0x01])  # field 127, varint 1
    reply = pb.NotifyResponse.FromString(raw(unknown_field, timeout=CALL_SECONDS))
    assert reply.notification_id
    for broken in (valid[:-3], b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x02\xc3\x28", b"\xff" * 20):
        with pytest.raises(grpc.RpcError) as failed:
            raw(broken, timeout=CALL_SECONDS)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (broken, failed.value.details())


def test_the_public_data_plane_cannot_touch_internal_topics(known, channel):
    """Publishing to a reserved topic and consuming, acking or seeking a reserved
    subscription are refused; reading their state stays open to operators."""
    publisher, subscriber = pubsub_pb2_grpc.PublisherStub(channel), pubsub_pb2_grpc.SubscriberStub(channel)
    fanout, sms = internal_topics.FANOUT_SUBSCRIPTION, internal_topics.channel_subscription(pb.SMS, pb.NORMAL)
    refused = [
        (publisher.Publish, pubsub_pb2.PublishRequest(topic=internal_topics.NOTIFY_TOPIC,
                                                      messages=[pubsub_pb2.PubsubMessage(data=b"forged job")])),
        (publisher.Publish, pubsub_pb2.PublishRequest(topic=internal_topics.TABLE_TOPIC,
                                                      messages=[pubsub_pb2.PubsubMessage(data=b"forged row")])),
        (subscriber.Pull, pubsub_pb2.PullRequest(subscription=fanout, max_messages=1)),
        (subscriber.Acknowledge, pubsub_pb2.AcknowledgeRequest(subscription=sms, ack_ids=["0/1/1"])),
        # merged acks (no subscription named): a guessed ack id of an internal subscription
        (subscriber.Acknowledge, pubsub_pb2.AcknowledgeRequest(ack_ids=[f"0:1:{sms}"])),
        (subscriber.ModifyAckDeadline, pubsub_pb2.ModifyAckDeadlineRequest(subscription=sms, ack_ids=["0/1/1"])),
        (subscriber.Nack, pubsub_pb2.NackRequest(subscription=fanout, ack_ids=["0/1/1"])),
        (subscriber.Seek, pubsub_pb2.SeekRequest(subscription=sms, to_end=True)),
    ]
    for call, request in refused:
        with pytest.raises(grpc.RpcError) as failed:
            call(request, timeout=CALL_SECONDS)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (call, failed.value.details())
        assert "reserved" in failed.value.details()
    stream = subscriber.Subscribe(pubsub_pb2.SubscribeRequest(subscription=fanout), timeout=CALL_SECONDS)
    with pytest.raises(grpc.RpcError) as failed:
        next(iter(stream))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    for _ in range(300):  # metadata creates the internal subscriptions once it serves
        try:
            subscriber.GetSubscription(pubsub_pb2.GetSubscriptionRequest(name=sms), timeout=CALL_SECONDS)
            break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND
            time.sleep(0.1)
    assert subscriber.GetSubscription(pubsub_pb2.GetSubscriptionRequest(name=fanout), timeout=CALL_SECONDS).name == fanout
    subscriber.DescribeSubscription(pubsub_pb2.DescribeSubscriptionRequest(name=sms), timeout=CALL_SECONDS)
    subscriber.ListDeadLetters(pubsub_pb2.ListDeadLettersRequest(subscription=sms), timeout=CALL_SECONDS)
    subscriber.RedriveDeadLetters(pubsub_pb2.RedriveDeadLettersRequest(subscription=sms), timeout=CALL_SECONDS)
    # The public topic of a user with the same look stays usable.
    own = unique("notifymeshy")
    publisher.CreateTopic(pubsub_pb2.CreateTopicRequest(topic=pubsub_pb2.Topic(name=own)), timeout=CALL_SECONDS)
    publisher.Publish(pubsub_pb2.PublishRequest(topic=own, messages=[pubsub_pb2.PubsubMessage(data=b"x")]),
                      timeout=CALL_SECONDS)


async def test_an_expensive_template_fails_its_recipient_and_stalls_nobody(client):
    """Nested loops over a big list in data: the send fails with the render's reason
    in about templating.MAX_RENDER_SECONDS, and a notification behind it on the same
    channel is sent at once (the channel worker and the sender process go on)."""
    for _ in range(300):  # a new mesh's table topic is created once metadata serves
        try:
            await client.get_recipient("nobody-at-all")
        except errors.NotFound:
            break
        except errors.Unavailable:
            await asyncio.sleep(0.1)
    hostile, fine, category = unique("burn"), unique("fine"), unique("alerts")
    await client.create_category(category)
    await client.create_template(pb.Template(name=hostile, contents=[pb.TemplateContent(
        channel=pb.SMS, text="{% for a in data.l %}{% for b in data.l %}{% for c in data.l %}{% endfor %}"
                             "{% endfor %}{% endfor %}done")]))
    await client.create_template(pb.Template(name=fine, contents=[pb.TemplateContent(channel=pb.SMS, text="hello")]))
    victim, bystander = unique("victim"), unique("bystander")
    await client.upsert_recipient(victim, phone="+14155550111")
    await client.upsert_recipient(bystander, phone="+14155550112")
    started = time.monotonic()
    burning = await client.notify(hostile, category, [victim], data=json.dumps({"l": list(range(3000))}))
    sent = await client.notify(fine, category, [bystander])

    async def final(nid: str) -> pb.RecipientSend:
        while time.monotonic() - started < 30:
            sends = (await client.get_notification(nid)).sends
            if sends and sends[0].state in (pb.SEND_SENT, pb.SEND_DELIVERED, pb.SEND_FAILED, pb.SEND_DEAD_LETTERED):
                return sends[0]
            await asyncio.sleep(0.2)
        raise AssertionError(f"{nid} not settled in 30 s")

    failed, delivered = await final(burning), await final(sent)
    assert failed.state == pb.SEND_FAILED and delivered.state in (pb.SEND_SENT, pb.SEND_DELIVERED), (failed, delivered)
    assert "rendering took over" in failed.reason
    assert time.monotonic() - started < 20
