"""The push channel's parts over fakes: the fan-out's decision by the device
marker, the channel worker sending to every device (a dead token removed and
logged, a transient failure retried), the devices' rows and their marker, the
push template variant and the fcm/apns provider records."""

import asyncio
import itertools

import pytest
from notify_fakes import FakeMetadata, FakeProviders, FakePublisher, FakeRendering, FakeTable

from deploy.push_fakes import new_ec_key, new_rsa_key
from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from metadata.notify_store import check_provider, check_template
from notifymesh import errors
from notifymesh.server import devices, rows
from notifymesh.server.internal_topics import channel_subscription
from notifymesh.server.notification_log import BatchedRecorder, NotificationLog
from notifymesh.server.table import put
from notifymesh.server.templating import Renderer, RenderError
from sender import channel_worker
from sender.channel_worker import ChannelSender, Failed, PrioritySlots, Sent
from sender.pipeline import ACK
from sender.preferences import Action, decide

PUSH = notify_pb2.PUSH
SUB = channel_subscription(PUSH, notify_pb2.NORMAL)
T0 = 1_700_000_000_000
TOKENS = ["tok-a", "tok-b", "tok-c"]


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    ticks = itertools.count(T0)
    monkeypatch.setattr(channel_worker, "now_ms", lambda: next(ticks))


class Parts:
    def __init__(self):
        self.table, self.metadata, self.providers = FakeTable(), FakeMetadata(), FakeProviders()
        self.requeue = FakePublisher()
        self.devices = devices.Devices(self.table)
        self.sender = ChannelSender(SUB, self.table, self.metadata, FakeRendering(), self.providers,
                                    BatchedRecorder(NotificationLog(self.table, 3_600_000)), self.requeue,
                                    PrioritySlots(4))
        self.metadata.categories["billing"] = notify_pb2.Category(name="billing")
        self.metadata.templates[("invoice", 1)] = notify_pb2.Template(name="invoice", version=1, contents=[
            notify_pb2.TemplateContent(channel=PUSH, subject="Invoice $number", text="is due")])
        self.metadata.providers[PUSH] = notify_pb2.Provider(channel=PUSH, kind="fcm")
        self.metadata.subscriptions[SUB] = pubsub_pb2.Subscription(name=SUB, max_delivery_attempts=5)

    async def alice(self, tokens=TOKENS) -> None:
        await self.table.write("alice", [put(rows.contact_key("alice"),
                                             notify_pb2.Recipient(id="alice").SerializeToString())])
        for token in tokens:
            await self.devices.add("alice", notify_pb2.Device(platform="fcm", token=token))

    async def handle(self):
        task = internal_pb2.ChannelTask(notification_id="n1", recipient="alice", channel=PUSH, template="invoice",
                                        template_version=1, category="billing", priority=notify_pb2.NORMAL,
                                        data='{"number": 17}', accepted_ms=T0)
        return await self.sender.handle(pubsub_pb2.ReceivedMessage(ack_id="a", delivery_attempt=1, message=(
            pubsub_pb2.PubsubMessage(message_id="m", data=task.SerializeToString()))))

    async def timeline(self) -> list[tuple[int, str]]:
        scanned = await self.table.scan("n1", rows.events_prefix("n1", "alice"))
        return [(rows.parse_event_key(k).state, notify_pb2.SendEvent.FromString(v).reason)
                for k, v in zip(scanned.keys, scanned.values)]


async def test_every_device_is_sent_to_and_a_dead_one_is_removed_and_logged_before_the_send():
    p = Parts()
    await p.alice()
    p.providers.script = [Sent("fcm", "m1"), Failed(False, "fcm HTTP 404 UNREGISTERED", "fcm", dead=True),
                          Sent("fcm", "m3")]
    assert await p.handle() == ACK
    assert [(m.to, m.platform, m.subject, m.idempotency_key) for m in p.providers.sent] == [
        (t, "fcm", "Invoice 17", "n1/alice/push") for t in TOKENS]
    timeline = await p.timeline()
    assert [s for s, _ in timeline] == [notify_pb2.SEND_RENDERED, notify_pb2.SEND_FAILED, notify_pb2.SEND_SENT]
    assert timeline[1][1] == "fcm device …tok-b: fcm HTTP 404 UNREGISTERED (token dead: device removed)"
    assert [d.token for d in await p.devices.list("alice")] == ["tok-a", "tok-c"]


async def test_a_transient_failure_retries_the_task_after_logging_the_devices_reached():
    p = Parts()
    await p.alice(TOKENS[:2])
    p.providers.script = [Sent("fcm", "m1"), Failed(True, "fcm HTTP 429 QUOTA_EXCEEDED", "fcm", 7.0)]
    outcome = await p.handle()
    assert not outcome.ack and outcome.delay_ms == 7000
    assert [(s, r) for s, r in await p.timeline()] == [
        (notify_pb2.SEND_RENDERED, ""), (notify_pb2.SEND_SENT, "1 of 2 devices"),
        (notify_pb2.SEND_FAILED, "fcm device …tok-b: fcm HTTP 429 QUOTA_EXCEEDED")]
    assert len(await p.devices.list("alice")) == 2  # throttled, not dead


async def test_the_last_dead_device_takes_the_marker_and_no_device_is_no_contact():
    p = Parts()
    await p.alice(TOKENS[:1])
    assert p.table.get("alice", rows.has_devices_key("alice")) is not None
    p.providers.script = [Failed(False, "apns HTTP 410 Unregistered", "apns", dead=True)]
    assert await p.handle() == ACK
    assert [s for s, _ in await p.timeline()][-1] == notify_pb2.SEND_FAILED
    assert await p.devices.list("alice") == [] and p.table.get("alice", rows.has_devices_key("alice")) is None
    assert await p.handle() == ACK  # again, now without a device
    assert (await p.timeline())[-1] == (notify_pb2.SUPPRESSED_NO_CONTACT, "no push device")


async def test_devices_are_bounded_and_refreshed_not_repeated():
    p = Parts()
    await p.alice([f"t{i}" for i in range(devices.MAX_DEVICES)])
    await p.devices.add("alice", notify_pb2.Device(platform="fcm", token="t3", app_id="com.x"))  # refreshed
    with pytest.raises(errors.ResourceExhausted):
        await p.devices.add("alice", notify_pb2.Device(platform="fcm", token="one-more"))
    assert await p.devices.remove("alice", "fcm", "t3") and not await p.devices.remove("alice", "fcm", "t3")
    assert p.table.get("alice", rows.has_devices_key("alice")) is not None  # others are left
    with pytest.raises(errors.InvalidArgument, match="hex digits"):
        devices.check(notify_pb2.Device(platform="apns", token="zz"))
    assert devices.check(notify_pb2.Device(platform="apns", token="AB" * 32)).token == "ab" * 32


async def test_device_rows_are_keyed_by_a_digest_and_rows_keyed_by_the_token_are_still_replaced_and_removed():
    p = Parts()
    await p.alice(["tok-new"])
    [key] = [k for k in p.table.rows[p.table.partition("alice")] if k.startswith(rows.devices_prefix("alice"))]
    assert b"tok-new" not in key and key == rows.device_key("alice", "fcm", "tok-new")
    assert len(key.rsplit(rows.SEP, 1)[1]) == rows.DEVICE_DIGEST_HEX
    # Rows written before keys were digests: the token in the key.
    for token in ("tok-old", "tok-gone"):
        legacy = rows.DEVICE + rows.SEP.join([b"alice", b"fcm", token.encode()])
        await p.table.write("alice", [put(legacy, notify_pb2.Device(platform="fcm", token=token).SerializeToString())])
    assert [d.token for d in await p.devices.list("alice")] == ["tok-gone", "tok-new", "tok-old"]
    await p.devices.add("alice", notify_pb2.Device(platform="fcm", token="tok-old", app_id="com.x"))  # refreshed
    stored = {k: notify_pb2.Device.FromString(p.table.get("alice", k)) for k in p.table.rows[p.table.partition("alice")]
              if k.startswith(rows.devices_prefix("alice"))}
    assert sorted(d.token for d in stored.values()) == ["tok-gone", "tok-new", "tok-old"]
    assert stored[rows.device_key("alice", "fcm", "tok-old")].app_id == "com.x"
    _, written = p.table.calls[-1]
    assert [op.key for op in written["alice"] if op.erase] == [rows.DEVICE + b"alice\0fcm\0tok-old"]  # compacted out
    assert await p.devices.remove("alice", "fcm", "tok-gone")
    assert not any(b"tok-" in k for k in p.table.rows[p.table.partition("alice")])
    assert [d.token for d in await p.devices.list("alice")] == ["tok-new", "tok-old"]


def test_the_fanout_decides_push_by_the_device_marker():
    recipient, category = notify_pb2.Recipient(id="a", email="a@x.org"), notify_pb2.Category(name="c")
    [with_device] = decide(recipient, False, [], category, [PUSH], [], has_devices=True)
    [without] = decide(recipient, False, [], category, [PUSH], [], has_devices=False)
    assert with_device.action is Action.SEND
    assert (without.action, without.reason) == (Action.NO_CONTACT, "no push device")
    template_channels = [notify_pb2.EMAIL, PUSH]
    assert [d.channel for d in decide(recipient, False, [], category, [], template_channels)] == [notify_pb2.EMAIL]
    assert [d.channel for d in decide(recipient, False, [], category, [], template_channels, has_devices=True)] == \
        template_channels


def test_a_push_template_renders_title_body_and_a_data_map_of_strings():
    template = check_template(notify_pb2.Template(name="promo", contents=[notify_pb2.TemplateContent(
        channel=PUSH, subject="Hi {{ data.name }}", text="{{ data.n }} new",
        json_body='{"n": {{ data.n }}, "name": "{{ data.name }}"}')]))
    out = Renderer().render(template, PUSH, "en", {"data": {"name": "Al", "n": 3}})
    assert (out.subject, out.text, out.json_body) == ("Hi Al", "3 new", '{"n":"3","name":"Al"}')
    with pytest.raises(RenderError, match="holds 4,096"):
        Renderer().render(template, PUSH, "en", {"data": {"name": "x" * 5000, "n": 1}})
    listed = check_template(notify_pb2.Template(name="bad", contents=[notify_pb2.TemplateContent(
        channel=PUSH, text="t", json_body="[{{ data.n }}]")]))
    with pytest.raises(RenderError, match="not an object"):
        Renderer().render(listed, PUSH, "en", {"data": {"n": 1}})
    with pytest.raises(errors.InvalidArgument, match="needs text"):
        check_template(notify_pb2.Template(name="nobody", contents=[notify_pb2.TemplateContent(channel=PUSH,
                                                                                                subject="t")]))


def test_push_providers_are_fcm_or_apns_with_their_settings_and_a_key_that_loads():
    fcm = check_provider(notify_pb2.Provider(channel=PUSH, kind="fcm", secret=new_rsa_key(), settings={
        "project_id": "p", "client_email": "a@p.iam", "token_url": "https://t.example/token"}))
    assert fcm.secret_set
    check_provider(notify_pb2.Provider(channel=PUSH, kind="apns", secret=new_ec_key(), settings={
        "key_id": "K", "team_id": "T", "topic": "com.x"}))
    for provider, says in (
            (notify_pb2.Provider(channel=PUSH, kind="smtp"), "push channel's kinds are 'fcm', 'apns'"),
            (notify_pb2.Provider(channel=PUSH, kind="apns", secret=new_rsa_key(), settings={
                "key_id": "K", "team_id": "T", "topic": "com.x"}), "the .p8 signing key"),
            (notify_pb2.Provider(channel=PUSH, kind="fcm", secret="not a key", settings={
                "project_id": "p", "client_email": "e"}), "private key"),
            (notify_pb2.Provider(channel=PUSH, kind="fcm", settings={"project_id": "p"}), "client_email"),
            (notify_pb2.Provider(channel=notify_pb2.EMAIL, kind="fcm"), "email channel's kind is 'smtp'")):
        with pytest.raises(errors.InvalidArgument, match=says):
            check_provider(provider)


async def test_a_send_through_two_providers_names_both():
    p = Parts()
    await p.alice(TOKENS[:2])
    p.providers.script = [Sent("apns", "a1"), Sent("fcm", "f1")]
    assert await p.handle() == ACK
    scanned = await p.table.scan("n1", rows.events_prefix("n1", "alice"))
    sent = notify_pb2.SendEvent.FromString(scanned.values[-1])
    assert (sent.state, sent.provider, sent.provider_message_id) == (notify_pb2.SEND_SENT, "apns,fcm", "a1,f1")


async def test_a_tasks_events_keep_their_order_within_one_millisecond(monkeypatch):
    """The log orders a send's events by time, then state: FAILED (a dead device) then
    SENT (the others) must not share a ms, or SENT would sort first."""
    monkeypatch.setattr("sender.channel_worker.now_ms", lambda: T0 + 5)  # a clock that does not move
    p = Parts()
    await p.alice(TOKENS[:2])
    p.providers.script = [Failed(False, "fcm HTTP 404 UNREGISTERED", "fcm", dead=True), Sent("fcm", "m2")]
    assert await p.handle() == ACK
    scanned = await p.table.scan("n1", rows.events_prefix("n1", "alice"))
    keys = [rows.parse_event_key(k) for k in scanned.keys]
    assert [k.state for k in keys] == [notify_pb2.SEND_RENDERED, notify_pb2.SEND_FAILED, notify_pb2.SEND_SENT]
    assert [k.event_ms for k in keys] == [T0 + 5, T0 + 6, T0 + 7]


async def test_push_tasks_under_way_at_once_read_their_devices_in_one_call_not_a_scan_each():
    p = Parts()
    rids = [f"r{i}" for i in range(20)]
    for i, rid in enumerate(rids):
        await p.table.write(rid, [put(rows.contact_key(rid), notify_pb2.Recipient(id=rid).SerializeToString())])
        for token in TOKENS[:1 + i % 3]:
            await p.devices.add(rid, notify_pb2.Device(platform="fcm", token=f"{token}-{rid}"))
    p.table.calls.clear()

    async def handle(rid: str):
        task = internal_pb2.ChannelTask(notification_id="n1", recipient=rid, channel=PUSH, template="invoice",
                                        template_version=1, category="billing", priority=notify_pb2.NORMAL,
                                        data='{"number": 17}', accepted_ms=T0)
        return await p.sender.handle(pubsub_pb2.ReceivedMessage(ack_id=rid, delivery_attempt=1, message=(
            pubsub_pb2.PubsubMessage(message_id=rid, data=task.SerializeToString()))))

    assert await asyncio.gather(*(handle(rid) for rid in rids)) == [ACK] * 20
    assert sorted(m.to for m in p.providers.sent) == sorted(
        f"{token}-{rid}" for i, rid in enumerate(rids) for token in TOKENS[:1 + i % 3])
    assert p.table.count("scan") == 0
    assert p.table.count("scan_many") <= 2  # the first at once, the other 19 together
