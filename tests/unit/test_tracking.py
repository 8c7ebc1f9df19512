"""Tracking links (notifymesh/server/tracking.py) and the frontend's endpoints for
opens, clicks, SMS status callbacks and unsubscribes (frontend/http.py) on a real
aiohttp server, recording through a notification log over a fake table."""

import asyncio
import time

import aiohttp
import pytest
from notify_fakes import FakePublisher, FakeTable, accepted_with_index

from frontend.http import CallbackAuth, HttpServer, TrackingEndpoint, UnsubscribeEndpoint, application
from frontend.tracking import SendRecorder
from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.v1 import events_pb2, notify_pb2
from notifymesh.server import notification_log, provider_callbacks, rows, tracking
from notifymesh.server.notification_log import Event, NotificationLog
from notifymesh.server.tracking import CLICK, OPEN, STATUS, InvalidToken, Send, Tracker, Tracking
from notifymesh.server.unsubscribe import TokenSigner, unsubscribe_url

KEY = bytes(range(32))
DAY = 24 * 3600
SEND = Send("n1", "alice", "email", 1_700_000_000_000)
SMS_TOKEN = "the-sms-providers-token"


def signed(url: str, form: dict, token: str = SMS_TOKEN) -> dict:
    """The SMS provider's signature header of a callback (provider_callbacks.py)."""
    return {provider_callbacks.SMS_SIGNATURE_HEADER: provider_callbacks.sms_signature(token, url, form)}


def test_tokens_name_their_send_and_open_as_their_own_kind_only():
    tokens = Tracking(TokenSigner(KEY))
    click = tokens.token(CLICK, SEND, "https://shop.example/a?b=1")
    assert tokens.verify(CLICK, click, DAY) == (SEND, "https://shop.example/a?b=1")
    assert tokens.verify(OPEN, tokens.token(OPEN, SEND), DAY) == (SEND, "")
    for kind in (OPEN, STATUS):  # a click token is no pixel nor callback
        with pytest.raises(InvalidToken):
            tokens.verify(kind, click, DAY)
    with pytest.raises(InvalidToken):  # nor an unsubscribe token a tracking one
        tokens.verify(OPEN, TokenSigner(KEY).sign(SEND[:3] + ("1",)), DAY)
    with pytest.raises(InvalidToken, match="signature"):
        tokens.verify(OPEN, Tracking(TokenSigner(bytes(32))).token(OPEN, SEND), DAY)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(OPEN, tokens.token(OPEN, SEND, now_s=time.time() - 2 * DAY), DAY)


def test_an_emails_links_go_through_the_redirect_and_a_pixel_is_added():
    tokens = Tracking(TokenSigner(KEY))
    body = ('<html><body><p><a class="b" href="https://shop.example/x?a=1&amp;b=2">Shop</a> '
            "<a href='mailto:help@example.com'>mail</a> <a href=\"http://t.test/unsubscribe?token=u\">stop</a>"
            "</p></BODY></html>")
    tracked = Tracker(tokens, "http://t.test/", SEND).html(body)
    assert "https://shop.example" not in tracked and "mailto:help@example.com" in tracked
    assert 'href="http://t.test/unsubscribe?token=u"' in tracked  # ours: left alone
    link = tracked.split('href="')[1].split('"')[0]
    assert link.startswith("http://t.test/t/c/")
    assert tokens.verify(CLICK, link.rsplit("/", 1)[1], DAY) == (SEND, "https://shop.example/x?a=1&b=2")
    pixel = tracked.split('<img src="')[1].split('"')[0]
    assert pixel.startswith("http://t.test/t/o/") and tracked.endswith("</BODY></html>")
    assert Tracker(tokens, "http://t.test", SEND).html("<p>no body</p>").startswith("<p>no body</p><img")


@pytest.fixture
async def mesh_http():
    table, publisher, signer = FakeTable(), FakePublisher(), TokenSigner(KEY)
    log = NotificationLog(table, 30 * DAY * 1000, publisher)
    await accepted_with_index(log, internal_pb2.NotificationRecord(
        id="n1", accepted_ms=SEND.accepted_ms, request=notify_pb2.NotifyRequest(template="promo", category="news")), ["alice"])
    recorder = SendRecorder(log)
    app = application(UnsubscribeEndpoint(table, signer, recorder),
                      TrackingEndpoint(Tracking(signer), recorder, lambda: 30 * DAY,
                                       CallbackAuth(lambda: ["another provider's", SMS_TOKEN], lambda: "")))
    server = HttpServer(app, "127.0.0.1", 0)
    await server.start()
    async with aiohttp.ClientSession() as session:
        yield session, Tracker(Tracking(signer), f"http://127.0.0.1:{server.port}", SEND), table, publisher, signer
    await server.stop()


async def states(table) -> list[int]:
    scanned = await table.scan("n1", rows.events_prefix("n1", "alice"))
    return [rows.parse_event_key(k).state for k in scanned.keys]


def published(publisher) -> list[events_pb2.NotificationEvent]:
    return [e for _, messages in publisher.calls for m in messages
            for e in events_pb2.NotificationEvents.FromString(m.data).events]


async def test_the_first_open_and_click_are_recorded_and_streamed_and_the_click_goes_where_signed(mesh_http):
    session, tracker, table, publisher, _ = mesh_http
    html = tracker.html('<a href="https://shop.example/sale?who=alice">sale</a>')
    pixel, link = html.split('<img src="')[1].split('"')[0], html.split('href="')[1].split('"')[0]
    for _ in range(2):
        async with session.get(pixel) as answer:
            assert answer.status == 200 and answer.content_type == "image/gif"
            assert await answer.read() == tracking.PIXEL_GIF
        async with session.get(link, allow_redirects=False) as answer:
            assert answer.status == 302 and answer.headers["Location"] == "https://shop.example/sale?who=alice"
    assert sorted(await states(table)) == [notify_pb2.SEND_OPENED, notify_pb2.SEND_CLICKED]
    events = published(publisher)
    assert [(e.event.state, e.template, e.category) for e in events] == [
        (notify_pb2.SEND_OPENED, "promo", "news"), (notify_pb2.SEND_CLICKED, "promo", "news")]
    assert events[1].event.reason == "link https://shop.example/sale"  # no query: it may hold an address


async def test_forged_altered_and_unknown_tokens_are_404_and_record_nothing(mesh_http):
    session, tracker, table, publisher, signer = mesh_http
    base = tracker.status_callback().split("/t/")[0]
    html = tracker.html('<a href="https://shop.example/">x</a>')
    link = html.split('href="')[1].split('"')[0]
    payload, mac = link.rsplit("/", 1)[1].split(".")
    evil = Tracking(TokenSigner(KEY)).token(CLICK, SEND, "https://evil.example/")
    other = Tracker(Tracking(signer), base, SEND._replace(notification_id="gone"))  # signed, no such notification
    for method, url in [("GET", f"{base}/t/c/{payload}.{mac[:-2]}AA"), ("GET", f"{base}/t/c/{evil[:-4]}abcd"),
                        ("GET", f"{base}/t/o/{link.rsplit('/', 1)[1]}"), ("GET", f"{base}/t/c/junk"),
                        ("GET", other.html("").split('src="')[1].split('"')[0]),
                        ("POST", f"{base}/t/s/{link.rsplit('/', 1)[1]}"), ("GET", f"{base}/t/x/{payload}.{mac}")]:
        form = {"MessageStatus": "delivered"}
        async with session.request(method, url, data=form, headers=signed(url, form) if method == "POST" else {},
                                   allow_redirects=False) as answer:
            assert answer.status == 404, url
    assert await states(table) == [] and published(publisher) == []


async def test_sms_status_callbacks_record_delivered_once_and_failures(mesh_http):
    session, tracker, table, publisher, _ = mesh_http
    url = tracker.status_callback()
    for status in ("queued", "sent", "delivered", "delivered"):
        form = {"MessageSid": "SM1", "MessageStatus": status}
        async with session.post(url, data=form, headers=signed(url, form)) as answer:
            assert answer.status == 204
    assert await states(table) == [notify_pb2.SEND_DELIVERED]
    assert published(publisher)[0].event.provider_message_id == "SM1"
    form = {"MessageSid": "SM1", "MessageStatus": "undelivered"}
    async with session.post(url, data=form, headers=signed(url, form)) as answer:
        assert answer.status == 204
    assert await states(table) == [notify_pb2.SEND_DELIVERED]  # delivered is final
    other = Tracker(Tracking(TokenSigner(KEY)), url.split("/t/")[0], SEND._replace(recipient="bob")).status_callback()
    form = {"MessageSid": "SM2", "MessageStatus": "undelivered", "ErrorCode": "30003"}
    async with session.post(other, data=form, headers=signed(other, form)) as answer:
        assert answer.status == 204
    scanned = await table.scan("n1", rows.events_prefix("n1", "bob"))
    (failed,) = [notify_pb2.SendEvent.FromString(v) for v in scanned.values]
    assert (failed.state, failed.reason, failed.provider_message_id) == (
        notify_pb2.SEND_FAILED, "the provider reported it undelivered (error 30003)", "SM2")


async def test_sms_status_callbacks_without_the_providers_signature_are_refused(mesh_http, caplog):
    """Unsigned: 401; signed with another secret, for another URL or with another form
    (a replayed callback URL with a changed status): 403; nothing recorded, each logged."""
    session, tracker, table, publisher, _ = mesh_http
    url = tracker.status_callback()
    form = {"MessageSid": "SM1", "MessageStatus": "failed"}
    async with session.post(url, data=form) as answer:
        assert answer.status == 401
    for headers in (signed(url, form, token="guessed"), signed(url + "x", form),
                    signed(url, {**form, "MessageStatus": "delivered"})):
        async with session.post(url, data=form, headers=headers) as answer:
            assert answer.status == 403
    assert await states(table) == [] and published(publisher) == []
    assert sum("provider callback refused" in r.getMessage() for r in caplog.records) == 4


async def test_an_unsubscribe_through_a_notifications_link_records_it_on_that_notification(mesh_http):
    session, tracker, table, publisher, signer = mesh_http
    base = tracker.status_callback().split("/t/")[0]
    url = unsubscribe_url(base, signer.issue("alice", "news", "email", notification_id="n1",
                                             accepted_ms=SEND.accepted_ms))
    async with session.post(url, data={"List-Unsubscribe": "One-Click"}) as answer:
        assert answer.status == 200
    assert await states(table) == [notify_pb2.SEND_UNSUBSCRIBED]
    assert published(publisher)[0].event.reason == "from news email notifications"


def test_the_sender_tracks_emails_unless_the_setting_is_off_and_only_with_a_known_frontend():
    from types import SimpleNamespace

    from sender.notifications import TemplateRendering
    config = SimpleNamespace(public_base_url="http://t.test", frontend_http_port_offset=25, email_tracking=1)
    frontends: dict[str, str] = {}
    listeners = []
    members = SimpleNamespace(on_change=listeners.append)  # cluster.members, a PrefixMirror
    rendering = TemplateRendering(SimpleNamespace(config=config, cluster=SimpleNamespace(
        live=lambda _: frontends, members=members)), TokenSigner(KEY))
    html = '<a href="https://x.example/">x</a>'
    tracked = rendering.track_html(html, "n1", "alice", 1)
    assert "http://t.test/t/c/" in tracked and "http://t.test/t/o/" in tracked
    callback = rendering.status_callback_url("n1", "alice", notify_pb2.SMS, 1)
    assert Tracking(TokenSigner(KEY)).verify(STATUS, callback.rsplit("/", 1)[1], DAY)[0] == ("n1", "alice", "sms", 1)
    config.email_tracking = 0
    assert rendering.track_html(html, "n1", "alice", 1) == html
    config.public_base_url, config.email_tracking = "", 1  # no frontend known yet: nothing to point at
    assert rendering.track_html(html, "n1", "alice", 1) == html
    assert rendering.status_callback_url("n1", "alice", notify_pb2.SMS, 1) == ""
    frontends["f1"] = "127.0.0.1:50051"
    for listener in listeners:  # the mirror tells of the new member
        listener("frontend/f1")
    assert rendering.status_callback_url("n1", "alice", notify_pb2.SMS, 1).startswith("http://127.0.0.1:50076/t/s/")
    frontends["f0"] = "127.0.0.1:50041"  # the first one sorted, known once the mirror tells
    assert rendering.status_callback_url("n1", "alice", notify_pb2.SMS, 1).startswith("http://127.0.0.1:50076/t/s/")
    for listener in listeners:
        listener(None)
    assert rendering.status_callback_url("n1", "alice", notify_pb2.SMS, 1).startswith("http://127.0.0.1:50066/t/s/")


async def test_callbacks_at_once_share_one_read_and_scan_and_a_repeated_one_records_once(monkeypatch):
    """A provider's receipts come as fast as it sends: the frontend reads their
    notifications and sends in one call each, not a call each per receipt."""
    table = FakeTable()
    log = NotificationLog(table, 30 * DAY * 1000, FakePublisher())
    await accepted_with_index(log, internal_pb2.NotificationRecord(
        id="n1", accepted_ms=SEND.accepted_ms, request=notify_pb2.NotifyRequest(template="bill", category="billing")), ["alice", "bob"])
    sent_ms = SEND.accepted_ms + 1000
    await log.write_rows([Event("n1", SEND.accepted_ms, rid, notify_pb2.SMS, state, sent_ms + state,
                                provider="sms-a" if state == notify_pb2.SEND_SENT else "")
                          for rid in ("alice", "bob") for state in (notify_pb2.SEND_QUEUED, notify_pb2.SEND_RENDERED,
                                                                    notify_pb2.SEND_SENT)])
    # A recipient whose events take more than one scan is read to its end apart.
    monkeypatch.setattr(notification_log, "RECIPIENT_EVENT_ROWS", 2)
    recorder = SendRecorder(log)
    table.calls.clear()
    delivered = frozenset({notify_pb2.SEND_DELIVERED})
    alice, bob = (Send("n1", rid, "sms", SEND.accepted_ms) for rid in ("alice", "bob"))
    results = await asyncio.gather(
        recorder.record(alice, notify_pb2.SEND_DELIVERED, unless=delivered, provider_message_id="SM1"),
        recorder.record(alice, notify_pb2.SEND_DELIVERED, unless=delivered, provider_message_id="SM1"),
        recorder.record(bob, notify_pb2.SEND_DELIVERED, unless=delivered),
        recorder.record(Send("gone", "carol", "sms", SEND.accepted_ms), notify_pb2.SEND_DELIVERED))
    assert [tuple(r) for r in results] == [(True, True), (True, False), (True, True), (False, False)]
    assert (table.count("read_many"), table.count("scan_many"), table.count("read"), table.count("write_many")) \
        == (1, 1, 0, 1)
    assert table.count("scan") == 3  # n1's three callbacks: each send's three rows outgrew its 2, read apart
    for rid in ("alice", "bob"):
        (events,) = await log.sends_events([("n1", rid, notify_pb2.SMS)])
        assert [e.state for e in events] == [notify_pb2.SEND_QUEUED, notify_pb2.SEND_RENDERED, notify_pb2.SEND_SENT,
                                             notify_pb2.SEND_DELIVERED]
        assert events[-1].provider == "sms-a"  # the provider that sent it, named on its latest state


@pytest.mark.parametrize("linger_s, batches", [(0.5, 3), (0.0, 4)])
async def test_under_a_stream_of_callbacks_those_arriving_one_by_one_wait_to_go_together(linger_s, batches):
    """A lone callback goes at once; once callbacks follow each other, a batch waits
    linger_s first, and those arriving one by one meanwhile go in the next together."""
    table = FakeTable()
    log = NotificationLog(table, 30 * DAY * 1000, FakePublisher())
    await accepted_with_index(log, internal_pb2.NotificationRecord(id="n1", accepted_ms=SEND.accepted_ms), ["alice"])
    recorder = SendRecorder(log, linger_s=linger_s)
    table.calls.clear()
    opened = Send("n1", "alice", "email", SEND.accepted_ms)
    await recorder.record(opened, notify_pb2.SEND_OPENED)  # alone: at once
    second = asyncio.ensure_future(recorder.record(opened, notify_pb2.SEND_CLICKED))  # a stream now: it waits
    later = []
    for _ in range(2):
        await asyncio.sleep(0.005)
        later.append(asyncio.ensure_future(recorder.record(opened, notify_pb2.SEND_UNSUBSCRIBED)))
    assert [tuple(r) for r in await asyncio.gather(second, *later)] == [(True, True), (True, True), (True, False)]
    assert table.count("read_many") == batches
