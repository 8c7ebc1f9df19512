"""The notification log over a fake table: events grouped per recipient and
channel with their timeline and latest state, pages of sends and of a
recipient's notifications, and batched writes that expire with the notification."""

import asyncio

import pytest

from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.v1 import notify_pb2
from notify_fakes import FakeTable, accepted_with_index
from notifymesh import errors
from notifymesh.clock import to_ms
from notifymesh.server import internal_topics, rows
from notifymesh.server.notification_log import BatchedRecorder, Event, NotificationLog

EMAIL, SMS = notify_pb2.EMAIL, notify_pb2.SMS
RETENTION = 3_600_000
T0 = 1_700_000_000_000


def record(nid: str, accepted_ms: int = T0, **request) -> internal_pb2.NotificationRecord:
    return internal_pb2.NotificationRecord(id=nid, accepted_ms=accepted_ms, template_version=2, recipient_count=2,
                                           request=notify_pb2.NotifyRequest(template="invoice", category="billing",
                                                                            **request))


def ev(nid, rid, channel, state, ms, accepted_ms=T0, **kw) -> Event:
    return Event(nid, accepted_ms, rid, channel, state, ms, **kw)


async def test_sends_are_grouped_per_recipient_and_channel_with_timeline_oldest_first():
    table = FakeTable()
    log = NotificationLog(table, RETENTION)
    await accepted_with_index(log, record("n1", recipients=["alice", "bob"]), ["alice", "bob"])
    await log.record([  # written out of order, over two calls
        ev("n1", "bob", EMAIL, notify_pb2.SEND_QUEUED, T0 + 1),
        ev("n1", "alice", SMS, notify_pb2.SUPPRESSED_OPTED_OUT, T0 + 1, reason="opted out of every category on sms"),
        ev("n1", "alice", EMAIL, notify_pb2.SEND_SENT, T0 + 30, provider="smtp", provider_message_id="pm-1",
           attempt=2)])
    await log.record([
        ev("n1", "alice", EMAIL, notify_pb2.SEND_FAILED, T0 + 10, reason="HTTP 503", attempt=1),
        ev("n1", "alice", EMAIL, notify_pb2.SEND_QUEUED, T0 + 1)])
    n = await log.notification("n1")
    assert (n.id, n.template, n.template_version, n.category, n.priority, to_ms(n.create_time)) == \
        ("n1", "invoice", 2, "billing", notify_pb2.NORMAL, T0)
    assert [(s.recipient, s.channel, s.state) for s in n.sends] == [
        ("alice", EMAIL, notify_pb2.SEND_SENT), ("alice", SMS, notify_pb2.SUPPRESSED_OPTED_OUT),
        ("bob", EMAIL, notify_pb2.SEND_QUEUED)]
    alice_email = n.sends[0]
    assert [e.state for e in alice_email.timeline] == [notify_pb2.SEND_QUEUED, notify_pb2.SEND_FAILED,
                                                       notify_pb2.SEND_SENT]
    assert [to_ms(e.time) for e in alice_email.timeline] == [T0 + 1, T0 + 10, T0 + 30]
    assert (alice_email.provider, alice_email.provider_message_id) == ("smtp", "pm-1")
    assert n.sends[1].reason == "opted out of every category on sms"
    assert not n.next_page_token
    # every row expires with the notification
    assert table.expire_of("n1", rows.notification_key("n1")) == T0 + RETENTION
    assert table.expire_of("n1", rows.event_key("n1", "bob", "email", T0 + 1, notify_pb2.SEND_QUEUED)) == \
        T0 + RETENTION
    assert table.expire_of("alice", rows.recipient_notification_key("alice", T0, "n1")) == T0 + RETENTION


async def test_a_fan_out_page_written_again_and_a_receipt_do_not_hide_what_the_send_reached():
    """A sender killed after its page's tasks went out but before its checkpoint: the
    page is fanned out again, its queued events written after the sends they repeat.
    A delivery receipt names no provider: the send keeps the one that sent it."""
    log = NotificationLog(FakeTable(), RETENTION)
    await accepted_with_index(log, record("n1", recipients=["alice"]), ["alice"])
    await log.record([
        ev("n1", "alice", EMAIL, notify_pb2.SEND_QUEUED, T0 + 1),
        ev("n1", "alice", EMAIL, notify_pb2.SEND_RENDERED, T0 + 2),
        ev("n1", "alice", EMAIL, notify_pb2.SEND_SENT, T0 + 3, provider="smtp", provider_message_id="pm-1"),
        ev("n1", "alice", EMAIL, notify_pb2.SEND_QUEUED, T0 + 60_000),
        ev("n1", "alice", SMS, notify_pb2.SEND_SENT, T0 + 3, provider="sms-a", provider_message_id="SM1"),
        ev("n1", "alice", SMS, notify_pb2.SEND_DELIVERED, T0 + 9)])
    email, sms = (await log.notification("n1")).sends
    assert [e.state for e in email.timeline][-1] == notify_pb2.SEND_QUEUED  # the repeat is shown...
    assert (email.state, email.provider, email.provider_message_id) == (notify_pb2.SEND_SENT, "smtp", "pm-1")
    assert (sms.state, sms.provider, sms.provider_message_id) == (notify_pb2.SEND_DELIVERED, "sms-a", "SM1")


async def test_an_sms_receipt_with_the_message_id_but_no_provider_keeps_the_provider_that_sent_it():
    """The provider's status callback came before the sender's SEND_SENT row was
    written (under load), so the frontend found no provider to name; the receipt
    still carries the provider's message id (MessageSid)."""
    log = NotificationLog(FakeTable(), RETENTION)
    await accepted_with_index(log, record("n1", recipients=["alice"]), ["alice"])
    await log.record([
        ev("n1", "alice", SMS, notify_pb2.SEND_FAILED, T0 + 2, provider="sms-b", reason="provider unavailable"),
        ev("n1", "alice", SMS, notify_pb2.SEND_SENT, T0 + 3, provider="sms-a", provider_message_id="SM1"),
        ev("n1", "alice", SMS, notify_pb2.SEND_DELIVERED, T0 + 9, provider_message_id="SM1")])
    sms, = (await log.notification("n1")).sends
    assert (sms.state, sms.provider, sms.provider_message_id) == (notify_pb2.SEND_DELIVERED, "sms-a", "SM1")
    assert [e.provider for e in sms.timeline] == ["sms-b", "sms-a", ""]  # the receipt as recorded


async def test_a_tasks_events_are_one_row_a_write_and_read_back_as_each_recipients_own(monkeypatch):
    """A channel task's recipients (log group "alice": its first) have their queued
    rows name the group; the channel worker's events of the task are a row a write
    (two writes: three rows for six events), read back into each recipient's
    timeline in time order with its own rows (a receipt), by every reader."""
    from notifymesh.server import notification_log
    table = FakeTable()
    log = NotificationLog(table, RETENTION)
    await accepted_with_index(log, record("n1", recipients=["alice", "bob", "carol"]), ["alice", "bob", "carol"])
    await log.record([ev("n1", rid, SMS, notify_pb2.SEND_QUEUED, T0 + 1, log_group="alice")
                      for rid in ("alice", "bob")] + [ev("n1", "carol", SMS, notify_pb2.SEND_QUEUED, T0 + 1)])
    group = dict(log_group="alice", log_writer="m1.1.0")
    await log.record([ev("n1", rid, SMS, notify_pb2.SEND_RENDERED, T0 + 5, **group) for rid in ("alice", "bob")])
    await log.record([ev("n1", "alice", SMS, notify_pb2.SEND_SENT, T0 + 8, provider="sms-a",
                         provider_message_id="SM1", **group | {"log_writer": "m1.1.1"}),
                      ev("n1", "bob", SMS, notify_pb2.SEND_FAILED, T0 + 8, reason="HTTP 503",
                         **group | {"log_writer": "m1.1.1"}),
                      ev("n1", "alice", SMS, notify_pb2.SEND_DELIVERED, T0 + 20, provider_message_id="SM1")])
    await log.record([ev("n1", "bob", SMS, notify_pb2.SEND_SENT, T0 + 30, provider="sms-a", provider_message_id="SM2",
                         log_group="alice", log_writer="part.1.0")])  # a part of the task, later
    logged = [key for key in table.rows[table.partition("n1")] if key.startswith(rows.LOGGED_EVENTS)]
    assert len(logged) == 3
    assert sorted(k for k in table.rows[table.partition("n1")] if k.startswith(rows.EVENT)) == sorted(
        [rows.event_key("n1", rid, "sms", T0 + 1, notify_pb2.SEND_QUEUED) for rid in ("alice", "bob", "carol")] +
        [rows.event_key("n1", "alice", "sms", T0 + 20, notify_pb2.SEND_DELIVERED)])
    expected = {"alice": [(notify_pb2.SEND_QUEUED, T0 + 1), (notify_pb2.SEND_RENDERED, T0 + 5),
                          (notify_pb2.SEND_SENT, T0 + 8), (notify_pb2.SEND_DELIVERED, T0 + 20)],
                "bob": [(notify_pb2.SEND_QUEUED, T0 + 1), (notify_pb2.SEND_RENDERED, T0 + 5),
                        (notify_pb2.SEND_FAILED, T0 + 8), (notify_pb2.SEND_SENT, T0 + 30)],
                "carol": [(notify_pb2.SEND_QUEUED, T0 + 1)]}

    def timeline(send):
        # The group tag is the log's own: not in what clients get.
        assert not any(internal_pb2.LogGroupTag.FromString(e.SerializeToString()).log_group for e in send.timeline)
        return [(e.state, to_ms(e.time)) for e in send.timeline]

    monkeypatch.setattr(notification_log, "RECIPIENT_EVENT_ROWS", 2)  # a group's rows read to their end apart
    n = await log.notification("n1")
    assert {s.recipient: timeline(s) for s in n.sends} == expected
    alice, bob, _ = n.sends
    assert (alice.state, alice.provider, alice.provider_message_id) == (notify_pb2.SEND_DELIVERED, "sms-a", "SM1")
    assert (bob.state, bob.provider_message_id) == (notify_pb2.SEND_SENT, "SM2")
    paged = await log.notification("n1", page_size=1)
    assert [timeline(s) for s in paged.sends] == [expected["alice"]]
    for rid in expected:
        listed, = (await log.by_recipient(rid)).notifications
        assert [timeline(s) for s in listed.sends] == [expected[rid]]
    events = await log.sends_events([("n1", "bob", SMS), ("n1", "carol", SMS), ("n1", "bob", EMAIL)])
    assert [[(e.state, to_ms(e.time)) for e in send] for send in events] == [expected["bob"], expected["carol"], []]


async def test_a_notification_without_its_header_row_is_not_found():
    log = NotificationLog(FakeTable(), RETENTION)
    with pytest.raises(errors.NotFound):
        await log.notification("n-unknown")


async def test_pages_of_sends_list_each_once_even_as_events_arrive_between_pages(monkeypatch):
    from notifymesh.server import notification_log
    monkeypatch.setattr(notification_log, "SCAN_ROWS", 3)  # groups spread over several scans
    log = NotificationLog(FakeTable(), lambda: RETENTION)
    await log.accepted(record("n1"))
    rids = [f"r{i}" for i in range(5)]
    await log.record([ev("n1", rid, EMAIL, state, T0 + i) for rid in rids
                      for i, state in enumerate([notify_pb2.SEND_QUEUED, notify_pb2.SEND_RENDERED])])
    listed, token, pages = [], "", 0
    while True:
        page = await log.notification("n1", page_size=2, page_token=token)
        pages += 1
        listed += [(s.recipient, len(s.timeline)) for s in page.sends]
        if pages == 1:  # the first page's last send goes on: the next page does not list it again
            await log.record([ev("n1", "r1", EMAIL, notify_pb2.SEND_SENT, T0 + 5)])
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert listed == [(rid, 2) for rid in rids]
    with pytest.raises(errors.InvalidArgument):
        await log.notification("n1", page_token="garbage")
    first = await log.notification("n1", page_size=1)
    await log.accepted(record("n2"))
    with pytest.raises(errors.InvalidArgument):  # a token is good for its own notification only
        await log.notification("n2", page_token=first.next_page_token)
    with pytest.raises(errors.InvalidArgument):
        await log.notification("n1", page_size=1001)


async def test_by_recipient_lists_a_time_range_newest_first_in_pages_with_that_recipients_sends():
    log = NotificationLog(FakeTable(), RETENTION)
    for i in range(5):
        nid, ms = f"n{i}", T0 + i * 1000
        await accepted_with_index(log, record(nid, accepted_ms=ms), ["alice", "bob"])
        await log.record([ev(nid, "alice", EMAIL, notify_pb2.SEND_SENT, ms + 1, accepted_ms=ms),
                          ev(nid, "bob", SMS, notify_pb2.SEND_QUEUED, ms + 1, accepted_ms=ms)])
    everything = await log.by_recipient("alice")
    assert [n.id for n in everything.notifications] == ["n4", "n3", "n2", "n1", "n0"]
    assert not everything.next_page_token
    assert all([(s.recipient, s.channel) for s in n.sends] == [("alice", EMAIL)] for n in everything.notifications)
    ranged, token = [], ""
    while True:
        page = await log.by_recipient("alice", start_ms=T0 + 1000, end_ms=T0 + 3000, page_size=2, page_token=token)
        ranged.append([n.id for n in page.notifications])
        token = page.next_page_token
        if not token:
            break
    assert ranged == [["n3", "n2"], ["n1"]]
    assert [n.id for n in (await log.by_recipient("bob", end_ms=T0 + 1500)).notifications] == ["n1", "n0"]
    assert (await log.by_recipient("carol")).notifications == []
    with pytest.raises(errors.InvalidArgument):  # alice's token is not bob's
        await log.by_recipient("bob", page_token=(await log.by_recipient("alice", page_size=1)).next_page_token)


async def test_events_of_many_notifications_recorded_together_are_one_table_write():
    table = FakeTable()
    recorder = BatchedRecorder(NotificationLog(table, RETENTION))
    await asyncio.gather(*(recorder.record([ev(f"n{i}", "alice", EMAIL, notify_pb2.SEND_QUEUED, T0)])
                           for i in range(20)))
    assert table.count("write_many") <= 2  # the first call goes at once, the other 19 together
    assert sum(len(ops) for call, by_key in table.calls if call == "write_many" for ops in by_key.values()) == 20


async def test_recorded_events_are_published_after_their_rows_a_thousand_a_message():
    from notify_fakes import FakePublisher

    from gen.notifymesh.v1 import events_pb2
    from notifymesh.server.internal_topics import EVENTS_TOPIC
    table, publisher = FakeTable(), FakePublisher()
    log = NotificationLog(table, RETENTION, publisher)
    written_first = []
    publish = publisher.publish

    async def checked(topic, messages):
        written_first.append(table.count("write_many"))
        return await publish(topic, messages)

    publisher.publish = checked
    await log.record([ev("n1", f"r{i}", EMAIL, notify_pb2.SEND_SENT, T0 + i, template="invoice", category="billing",
                         provider="smtp") for i in range(2500)])
    assert written_first == [1]
    ((topic, messages),) = publisher.calls
    assert topic == EVENTS_TOPIC
    batches = [events_pb2.NotificationEvents.FromString(m.data).events for m in messages]
    assert [len(b) for b in batches] == [1000, 1000, 500]
    first = batches[0][0]
    assert (first.notification_id, first.recipient, first.channel, first.template, first.category) == (
        "n1", "r0", EMAIL, "invoice", "billing")
    assert (first.event.state, first.event.provider, first.event.time.ToMilliseconds()) == (
        notify_pb2.SEND_SENT, "smtp", T0)
    publisher.fail = RuntimeError("storage down")  # the caller retries the record: rows and events again
    with pytest.raises(RuntimeError):
        await log.record([ev("n1", "x", EMAIL, notify_pb2.SEND_QUEUED, T0)])
    assert await NotificationLog(FakeTable(), RETENTION).record([ev("n1", "x", EMAIL, 1, T0)]) is None  # no publisher


def test_an_event_key_names_each_channel_and_parses_back():
    for channel in internal_topics.CHANNELS:
        name = internal_topics.channel_name(channel)
        assert internal_topics.parse_channel(name) == channel
        key = rows.event_key("nid-é", "rid\u00e9", name, T0, notify_pb2.SEND_SENT)
        assert rows.parse_event_key(key) == ("nid-é", "rid\u00e9", name, T0, notify_pb2.SEND_SENT)
    assert internal_topics.channel_name(notify_pb2.EMAIL) == "email"
    with pytest.raises(ValueError):
        internal_topics.channel_name(99)
