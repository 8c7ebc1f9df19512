"""The Notifications logic over fakes of the table, metadata, mirrors, the gateway,
the notification log and the renderer."""

import json
from typing import NamedTuple

import pytest

from frontend.notifications import Notifications
from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import notify_pb2 as pb
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.server import internal_topics, rows


class Scanned(NamedTuple):
    keys: list[bytes]
    values: list[bytes]
    more: bool


class FakeTable:
    """Rows by key, each remembering the partition key it was written under."""

    def __init__(self):
        self.rows: dict[bytes, tuple[str, bytes]] = {}
        self.writes: list[tuple[str, list[storage_pb2.TableOp]]] = []
        self.write_many_calls = 0
        self.scans: list[tuple[bytes, bytes, int]] = []

    async def write(self, partition_key, ops):
        self.writes.append((partition_key, list(ops)))
        for op in ops:
            if op.delete or op.erase:
                self.rows.pop(op.key, None)
            else:
                self.rows[op.key] = (partition_key, op.value)

    async def write_many(self, ops_by_partition_key):
        self.write_many_calls += 1
        for partition_key, ops in ops_by_partition_key.items():
            await self.write(partition_key, ops)

    async def read(self, partition_key, keys):
        return [self.rows[k][1] if k in self.rows and self.rows[k][0] == partition_key else None for k in keys]

    async def scan(self, partition_key, prefix, start_after=b"", limit=1000, reverse=False):
        self.scans.append((prefix, start_after, limit))
        keys = sorted(k for k, (pk, _) in self.rows.items() if pk == partition_key and k.startswith(prefix)
                      and k > start_after)
        return Scanned(keys[:limit], [self.rows[k][1] for k in keys[:limit]], len(keys) > limit)

    def ops(self) -> list[storage_pb2.TableOp]:
        return [op for _, ops in self.writes for op in ops]


class FakeMetadata:
    def __init__(self, answers=None):
        self.calls: list[tuple[str, object]] = []
        self.answers = answers or {}

    async def admin(self, method, request):
        self.calls.append((method, request))
        return self.answers.get(method)


class FakeCatalog:
    def __init__(self, categories=(), templates=()):
        self.categories = {name: pb.Category(name=name) for name in categories}
        self.templates = {t.name: t for t in templates}

    async def category(self, name):
        if name not in self.categories:
            raise errors.NotFound(f"category {name!r} not found")
        return self.categories[name]

    async def template(self, name, version=0):
        template = self.templates.get(name)
        if template is None or version not in (0, template.version):
            raise errors.NotFound(f"template {name!r} not found")
        return template


class FakeMesh:
    def __init__(self):
        self.published: list[tuple[str, pubsub_pb2.PubsubMessage]] = []
        self.by_key: dict[str, str] = {}
        self.kept: dict[str, pubsub_pb2.MessageStatus] = {}

    async def publish(self, topic, messages):
        ids = []
        for message in messages:
            known = self.by_key.get(message.idempotency_key)
            if known:
                ids.append(known)
                continue
            message_id = f"m{len(self.published)}"
            self.published.append((topic, message))
            self.kept[message_id] = pubsub_pb2.MessageStatus(topic=topic, message=message)
            if message.idempotency_key:
                self.by_key[message.idempotency_key] = message_id
            ids.append(message_id)
        return ids

    async def message_status(self, message_id):
        if message_id not in self.kept:
            raise errors.NotFound(f"message {message_id!r} is not kept (any more)")
        return self.kept[message_id]


class FakeLog:
    def __init__(self):
        self.headers: dict[str, pb.Notification] = {}
        self.asked: list[tuple] = []

    async def notification(self, notification_id, page_size, page_token):
        self.asked.append((notification_id, page_size, page_token))
        return self.headers.get(notification_id)

    async def by_recipient(self, recipient, start_ms, end_ms, page_size, page_token):
        self.asked.append((recipient, start_ms, end_ms, page_size, page_token))
        return pb.ListNotificationsResponse(next_page_token="t")


class FakeRenderer:
    def render(self, template, channel, locale, context):
        return pb.RenderedContent(channel=channel, locale=locale, version=template.version,
                                  text=json.dumps(context, sort_keys=True))


def context_of(recipient, data, notification_id, category):
    return {"recipient": {"id": recipient.id, "email": recipient.email}, "data": data,
            "notification_id": notification_id, "category": category}


INVOICE = pb.Template(name="invoice-due", version=3, contents=[pb.TemplateContent(channel=pb.EMAIL, text="x")])


class Api(NamedTuple):
    n: Notifications
    table: FakeTable
    metadata: FakeMetadata
    mesh: FakeMesh
    log: FakeLog


@pytest.fixture
def api() -> Api:
    table, metadata, mesh, log = FakeTable(), FakeMetadata(), FakeMesh(), FakeLog()
    catalog = FakeCatalog(categories=("billing", "marketing"), templates=(INVOICE,))
    return Api(Notifications(table, metadata, catalog, mesh, log, FakeRenderer(), context_of), table, metadata,
               mesh, log)


# -- recipients ----------------------------------------------------------------------


async def test_a_recipient_is_stored_normalized_under_its_id_and_read_back(api):
    stored = await api.n.upsert_recipient(pb.UpsertRecipientRequest(recipient=pb.Recipient(
        id="alice", email="Alice@Example.COM", phone="+1 415 555 0100")))
    assert (stored.email, stored.phone) == ("Alice@example.com", "+14155550100")
    assert stored.HasField("update_time")
    assert api.table.rows[rows.contact_key("alice")][0] == "alice"  # partitioned by the recipient id
    assert await api.n.get_recipient(pb.GetRecipientRequest(id="alice")) == stored
    with pytest.raises(errors.NotFound, match="'bob'"):
        await api.n.get_recipient(pb.GetRecipientRequest(id="bob"))
    with pytest.raises(errors.InvalidArgument, match="invalid email"):
        await api.n.upsert_recipient(pb.UpsertRecipientRequest(recipient=pb.Recipient(id="bob", email="bob")))


async def test_a_batch_stores_the_valid_ones_in_one_write_and_names_the_refused_by_index(api):
    reply = await api.n.upsert_recipients(pb.UpsertRecipientsRequest(recipients=[
        pb.Recipient(id="a", email="a@example.com"), pb.Recipient(id="b", phone="555"),
        pb.Recipient(id="", email="c@example.com"), pb.Recipient(id="d", locale="de-CH")]))
    assert reply.stored == 2
    assert [(e.index, e.id) for e in reply.errors] == [(1, "b"), (2, "")]
    assert "invalid phone" in reply.errors[0].reason
    assert api.table.write_many_calls == 1
    assert {rows.contact_key("a"), rows.contact_key("d")} == set(api.table.rows)
    with pytest.raises(errors.InvalidArgument, match="at most 1000"):
        await api.n.upsert_recipients(pb.UpsertRecipientsRequest(
            recipients=[pb.Recipient(id=f"r{i}") for i in range(1001)]))


async def test_delete_erases_every_row_of_the_recipient_and_records_the_erasure(api, caplog):
    await api.n.upsert_recipient(pb.UpsertRecipientRequest(recipient=pb.Recipient(id="alice",
                                                                                  email="alice@example.com")))
    await api.n.update_preferences(pb.UpdatePreferencesRequest(
        recipient="alice", unsubscribed=True,
        preferences=[pb.Preference(category="marketing", channel="email", enabled=False)],
        rate_limits=[pb.CategoryRateLimit(category="billing", rate_limit=pb.RateLimit(limit=2, period_seconds=60))]))
    await api.n.add_device(pb.AddDeviceRequest(recipient="alice", device=pb.Device(platform="fcm", token="tok-1")))
    await api.n.upsert_recipient(pb.UpsertRecipientRequest(recipient=pb.Recipient(id="alicia")))
    caplog.set_level("INFO")
    await api.n.delete_recipient(pb.DeleteRecipientRequest(id="alice"))
    erased = {op.key for op in api.table.writes[-1][1] if op.erase}
    assert erased == {rows.contact_key("alice"), rows.unsubscribed_key("alice"),
                      rows.preference_key("alice", "marketing", "email"), rows.rate_limit_key("alice", "billing"),
                      rows.has_devices_key("alice"), rows.device_key("alice", "fcm", "tok-1")}
    assert set(api.table.rows) == {rows.erased_key("alice"), rows.contact_key("alicia")}
    assert len(api.table.rows[rows.erased_key("alice")][1]) == 13
    assert "recipient erased" in caplog.text
    await api.n.delete_recipient(pb.DeleteRecipientRequest(id="alice"))  # again: nothing more to erase


# -- preferences ---------------------------------------------------------------------


async def test_preferences_write_only_the_rows_given_and_read_back_whole(api):
    prefs = await api.n.update_preferences(pb.UpdatePreferencesRequest(
        recipient="alice", preferences=[pb.Preference(category="marketing", channel="email", enabled=False),
                                        pb.Preference(category="", channel="sms", enabled=True)]))
    assert not prefs.unsubscribed
    assert sorted((p.category, p.channel, p.enabled) for p in prefs.preferences) == [
        ("", "sms", True), ("marketing", "email", False)]
    writes = len(api.table.writes)
    prefs = await api.n.update_preferences(pb.UpdatePreferencesRequest(
        recipient="alice", unsubscribed=True,
        rate_limits=[pb.CategoryRateLimit(category="marketing", rate_limit=pb.RateLimit(limit=3, period_seconds=3600))]))
    assert [op.key for op in api.table.writes[writes][1]] == [rows.rate_limit_key("alice", "marketing"),
                                                             rows.unsubscribed_key("alice")]
    assert prefs.unsubscribed and len(prefs.preferences) == 2
    assert [(r.category, r.rate_limit.limit, r.rate_limit.period_seconds) for r in prefs.rate_limits] == [
        ("marketing", 3, 3600)]
    prefs = await api.n.update_preferences(pb.UpdatePreferencesRequest(
        recipient="alice", unsubscribed=False,
        rate_limits=[pb.CategoryRateLimit(category="marketing", rate_limit=pb.RateLimit())]))
    assert not prefs.unsubscribed and not prefs.rate_limits  # 0 per 0 s: the override removed


async def test_preferences_name_known_categories_and_channels(api):
    for request, error, text in (
            (pb.UpdatePreferencesRequest(recipient="a", preferences=[pb.Preference(category="nope")]),
             errors.NotFound, "nope"),
            (pb.UpdatePreferencesRequest(recipient="a", preferences=[pb.Preference(channel="fax")]),
             errors.InvalidArgument, "unknown channel 'fax'"),
            (pb.UpdatePreferencesRequest(recipient="a", rate_limits=[pb.CategoryRateLimit(
                category="billing", rate_limit=pb.RateLimit(limit=3))]), errors.InvalidArgument, "period"),
            (pb.UpdatePreferencesRequest(recipient="a", rate_limits=[pb.CategoryRateLimit(
                rate_limit=pb.RateLimit(limit=3, period_seconds=1))]), errors.InvalidArgument, "names its category")):
        with pytest.raises(error, match=text):
            await api.n.update_preferences(request)
    assert api.table.writes == []


# -- audiences -----------------------------------------------------------------------


async def test_audience_members_are_added_listed_in_pages_and_removed(api):
    await api.n.create_audience(pb.CreateAudienceRequest(audience=pb.Audience(name="beta-users")))
    with pytest.raises(errors.AlreadyExists):
        await api.n.create_audience(pb.CreateAudienceRequest(audience=pb.Audience(name="beta-users")))
    await api.n.change_members(pb.AudienceMembersRequest(audience="beta-users",
                                                         recipients=[f"r{i:02d}" for i in range(25)]), add=True)
    await api.n.change_members(pb.AudienceMembersRequest(audience="beta-users", recipients=["r03"]), add=False)
    listed, token, pages = [], "", 0
    while True:
        page = await api.n.list_audience_members(pb.ListAudienceMembersRequest(
            audience="beta-users", page_size=10, page_token=token))
        listed += page.recipients
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert listed == [f"r{i:02d}" for i in range(25) if i != 3] and pages == 3
    with pytest.raises(errors.InvalidArgument, match="page token"):
        await api.n.list_audience_members(pb.ListAudienceMembersRequest(audience="beta-users", page_token="zz"))
    with pytest.raises(errors.NotFound):
        await api.n.change_members(pb.AudienceMembersRequest(audience="nobody-here", recipients=["a"]), add=True)
    with pytest.raises(errors.InvalidArgument, match="1 to 1000"):
        await api.n.change_members(pb.AudienceMembersRequest(audience="beta-users",
                                                             recipients=[str(i) for i in range(1001)]), add=True)


async def test_deleting_an_audience_removes_its_members_in_bounded_batches_then_it(api, monkeypatch):
    monkeypatch.setattr("frontend.notifications.SCAN_PAGE", 4)
    await api.n.create_audience(pb.CreateAudienceRequest(audience=pb.Audience(name="big-one")))
    await api.n.change_members(pb.AudienceMembersRequest(audience="big-one",
                                                         recipients=[f"r{i}" for i in range(10)]), add=True)
    before = len(api.table.writes)
    await api.n.delete_audience(pb.DeleteAudienceRequest(name="big-one"))
    batches = [ops for _, ops in api.table.writes[before:]]
    assert [len(ops) for ops in batches] == [4, 4, 2, 1]
    assert batches[-1][0].key == rows.audience_key("big-one")
    assert api.table.rows == {}
    with pytest.raises(errors.NotFound):
        await api.n.get_audience(pb.GetAudienceRequest(name="big-one"))


# -- categories, templates, providers --------------------------------------------------


async def test_provider_secrets_never_come_back(api):
    api.metadata.answers = {
        "SetProvider": pb.Provider(channel=pb.SMS, kind="sms_http", secret="token-1"),
        "GetProvider": pb.Provider(channel=pb.SMS, kind="sms_http", secret="token-1", secret_set=True),
        "ListProviders": pb.ListProvidersResponse(providers=[pb.Provider(channel=pb.EMAIL, secret="pw"),
                                                             pb.Provider(channel=pb.WEBHOOK)])}
    request = pb.SetProviderRequest(provider=pb.Provider(channel=pb.SMS, kind="sms_http", secret="token-1"))
    for answer in (await api.n.provider("SetProvider", request),
                   await api.n.provider("GetProvider", pb.GetProviderRequest(channel=pb.SMS))):
        assert (answer.secret, answer.secret_set) == ("", True)
    assert api.metadata.calls[0] == ("SetProvider", request)  # the secret reaches metadata
    listed = await api.n.list_providers(pb.ListProvidersRequest())
    assert [(p.secret, p.secret_set) for p in listed.providers] == [("", True), ("", False)]


async def test_a_preview_renders_the_mirrors_template_with_data_and_the_stored_recipient(api):
    await api.n.upsert_recipient(pb.UpsertRecipientRequest(recipient=pb.Recipient(
        id="alice", email="alice@example.com", locale="de")))
    rendered = await api.n.preview_template(pb.PreviewTemplateRequest(
        name="invoice-due", channel=pb.EMAIL, data='{"amount": "12.00"}', recipient="alice"))
    assert (rendered.version, rendered.locale) == (3, "de")
    assert json.loads(rendered.text)["recipient"] == {"id": "alice", "email": "alice@example.com"}
    assert json.loads(rendered.text)["data"] == {"amount": "12.00"}
    for request, error in ((pb.PreviewTemplateRequest(name="nope", channel=pb.EMAIL), errors.NotFound),
                           (pb.PreviewTemplateRequest(name="invoice-due", channel=pb.EMAIL, recipient="bob"),
                            errors.NotFound),
                           (pb.PreviewTemplateRequest(name="invoice-due", channel=pb.EMAIL, data="[1]"),
                            errors.InvalidArgument),
                           (pb.PreviewTemplateRequest(name="invoice-due"), errors.InvalidArgument)):
        with pytest.raises(error):
            await api.n.preview_template(request)


# -- notify ----------------------------------------------------------------------------


async def test_notify_publishes_the_job_to_the_notify_topic_and_answers_its_message_id(api):
    request = pb.NotifyRequest(template="invoice-due", data='{"amount": "12.00"}', category="billing",
                               recipients=["alice", "bob"], idempotency_key="k1", priority=pb.HIGH)
    reply = await api.n.notify(request)
    [(topic, message)] = api.mesh.published
    assert (topic, reply.notification_id, message.idempotency_key) == (internal_topics.NOTIFY_TOPIC, "m0", "k1")
    job = internal_pb2.NotificationJob.FromString(message.data)
    assert (job.request, job.template_version) == (request, 3) and job.accepted_ms > 0
    assert (await api.n.notify(request)).notification_id == "m0"  # the key's repeat: the first id
    assert len(api.mesh.published) == 1
    await api.n.notify(pb.NotifyRequest(template="invoice-due", category="billing", recipients=["alice"]))
    assert api.mesh.published[1][1].idempotency_key == ""


async def test_notify_to_an_audience_needs_the_audience(api):
    request = pb.NotifyRequest(template="invoice-due", category="billing", audience="beta-users")
    with pytest.raises(errors.NotFound, match="audience 'beta-users'"):
        await api.n.notify(request)
    await api.n.create_audience(pb.CreateAudienceRequest(audience=pb.Audience(name="beta-users")))
    assert (await api.n.notify(request)).notification_id == "m0"


@pytest.mark.parametrize("changes, error, text", [
    ({"template": "nope"}, errors.NotFound, "template 'nope'"),
    ({"template_version": 2}, errors.NotFound, "template"),
    ({"category": "nope"}, errors.NotFound, "category 'nope'"),
    ({"category": ""}, errors.InvalidArgument, "category"),
    ({"data": "[1, 2]"}, errors.InvalidArgument, "JSON object"),
    ({"data": "{"}, errors.InvalidArgument, "not JSON"),
    ({"data": '{"amount": NaN}'}, errors.InvalidArgument, "NaN is not a JSON value"),
    ({"data": '{"amount": -Infinity}'}, errors.InvalidArgument, "Infinity is not a JSON value"),
    ({"data": json.dumps({"x": "y" * 65536})}, errors.InvalidArgument, "at most 65536"),
    ({"recipients": []}, errors.InvalidArgument, "recipients or an audience"),
    ({"recipients": [f"r{i}" for i in range(1001)]}, errors.InvalidArgument, "1 to 1000"),
    ({"audience": "beta-users"}, errors.InvalidArgument, "recipients or an audience"),
    ({"recipients": ["a\nb"]}, errors.InvalidArgument, "control character"),
    ({"channels": [pb.CHANNEL_UNSPECIFIED]}, errors.InvalidArgument, "channel 0"),
    ({"channels": [pb.SMS]}, errors.InvalidArgument, "no content for sms"),
    ({"idempotency_key": "k" * 257}, errors.InvalidArgument, "idempotency key"),
    ({"priority": 7}, errors.InvalidArgument, "priority"),
])
async def test_notify_refuses_bad_requests_before_publishing(api, changes, error, text):
    fields = {"template": "invoice-due", "data": "{}", "category": "billing", "recipients": ["alice"], **changes}
    with pytest.raises(error, match=text):
        await api.n.notify(pb.NotifyRequest(**fields))
    assert api.mesh.published == []


# -- the notification log --------------------------------------------------------------


async def test_a_notification_comes_from_the_log_or_else_from_its_job_on_the_notify_topic(api):
    api.log.headers["n1"] = pb.Notification(id="n1", template="invoice-due")
    assert (await api.n.get_notification(pb.GetNotificationRequest(id="n1", page_size=5))).id == "n1"
    assert api.log.asked[-1] == ("n1", 5, "")
    reply = await api.n.notify(pb.NotifyRequest(template="invoice-due", category="billing", recipients=["a", "b"]))
    accepted = await api.n.get_notification(pb.GetNotificationRequest(id=reply.notification_id))
    assert (accepted.id, accepted.template, accepted.template_version, accepted.recipient_count,
            len(accepted.sends)) == (reply.notification_id, "invoice-due", 3, 2, 0)
    assert accepted.create_time.ToMilliseconds() > 0
    with pytest.raises(errors.NotFound, match="notification 'm9'"):
        await api.n.get_notification(pb.GetNotificationRequest(id="m9"))
    api.mesh.kept["m8"] = pubsub_pb2.MessageStatus(topic="orders")  # another topic's message
    with pytest.raises(errors.NotFound):
        await api.n.get_notification(pb.GetNotificationRequest(id="m8"))


async def test_a_recipients_notifications_are_listed_by_time(api):
    request = pb.ListNotificationsRequest(recipient="alice", page_size=10, page_token="p")
    request.start_time.FromMilliseconds(1000)
    request.end_time.FromMilliseconds(5000)
    assert (await api.n.list_notifications(request)).next_page_token == "t"
    assert api.log.asked[-1] == ("alice", 1000, 5000, 10, "p")
    request.end_time.FromMilliseconds(500)
    with pytest.raises(errors.InvalidArgument, match="before"):
        await api.n.list_notifications(request)
    with pytest.raises(errors.InvalidArgument, match="page_size"):
        await api.n.list_notifications(pb.ListNotificationsRequest(recipient="alice", page_size=1001))
