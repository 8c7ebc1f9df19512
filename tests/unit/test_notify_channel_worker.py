"""A channel worker's steps over fakes: rate limits (drop, delay, high priority,
the recipient's override), no contact, a missing variable, transient failures
retried with Retry-After, permanent ones, the last attempt dead-lettered, no
provider set, and provider concurrency with high priority first."""

import asyncio
import itertools

import pytest

from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from fakes import eventually
from notify_fakes import FakeMetadata, FakeProviders, FakePublisher, FakeRendering, FakeTable
from notifymesh.server import rows
from notifymesh.server.internal_topics import channel_subscription
from notifymesh.server.notification_log import BatchedRecorder, Event, NotificationLog
from sender import channel_tasks, channel_worker
from sender.channel_worker import ChannelSender, Failed, PrioritySlots, Sent
from sender.pipeline import ACK

EMAIL, SMS = notify_pb2.EMAIL, notify_pb2.SMS
SUB = channel_subscription(EMAIL, notify_pb2.NORMAL)
T0 = 1_700_000_000_000


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    """A millisecond per event: a retry's events do not share their keys' time."""
    ticks = itertools.count(T0)
    monkeypatch.setattr(channel_worker, "now_ms", lambda: next(ticks))


def received(rid: str) -> pubsub_pb2.ReceivedMessage:
    task = internal_pb2.ChannelTask(notification_id="n1", recipient=rid, channel=EMAIL, template="invoice",
                                    template_version=1, category="billing", data='{"number": 17, "amount": "1"}',
                                    accepted_ms=T0)
    return pubsub_pb2.ReceivedMessage(ack_id=f"ack-{rid}", delivery_attempt=1, message=pubsub_pb2.PubsubMessage(
        message_id=f"m-{rid}", data=task.SerializeToString()))


class Parts:
    def __init__(self, over_limit=notify_pb2.DROP, limit=0, slots: PrioritySlots | None = None):
        self.table, self.metadata, self.providers = FakeTable(), FakeMetadata(), FakeProviders()
        self.requeue = FakePublisher()
        self.log = NotificationLog(self.table, 3_600_000)
        self.slots = slots or PrioritySlots(4)
        self.sender = ChannelSender(SUB, self.table, self.metadata, FakeRendering(), self.providers,
                                    BatchedRecorder(self.log), self.requeue, self.slots)
        self.metadata.categories["billing"] = notify_pb2.Category(
            name="billing", over_limit=over_limit, rate_limit=notify_pb2.RateLimit(limit=limit, period_seconds=3600))
        self.metadata.templates[("invoice", 1)] = notify_pb2.Template(name="invoice", version=1, contents=[
            notify_pb2.TemplateContent(channel=EMAIL, subject="Invoice $number", text="Pay $amount")])
        self.metadata.providers[EMAIL] = notify_pb2.Provider(channel=EMAIL, kind="smtp", max_concurrency=4)
        self.metadata.subscriptions[SUB] = pubsub_pb2.Subscription(name=SUB, max_delivery_attempts=5,
                                                                   dead_letter_topic="notifymesh.channel.email.dead")

    async def put(self, rid: str, key: bytes, message) -> None:
        await self.table.write(rid, [storage_pb2.TableOp(key=key, value=message.SerializeToString())])

    async def recipient(self, rid: str, **contact) -> None:
        await self.put(rid, rows.contact_key(rid), notify_pb2.Recipient(id=rid, **contact))

    async def handle(self, rid: str, nid: str = "n1", attempt: int = 1, data: str = '{"number": 17, "amount": "12.00"}',
                     priority=notify_pb2.NORMAL):
        task = internal_pb2.ChannelTask(notification_id=nid, recipient=rid, channel=EMAIL, template="invoice",
                                        template_version=1, category="billing", priority=priority, data=data,
                                        accepted_ms=T0)
        return await self.sender.handle(pubsub_pb2.ReceivedMessage(
            ack_id=f"ack-{rid}", delivery_attempt=attempt, message=pubsub_pb2.PubsubMessage(
                message_id=f"m-{rid}", data=task.SerializeToString())))

    async def timeline(self, rid: str, nid: str = "n1") -> list[tuple[int, str]]:
        (events,) = await self.log.sends_events([(nid, rid, EMAIL)])
        return [(e.state, e.reason) for e in events]


async def test_a_task_is_rendered_and_sent_with_its_unsubscribe_headers_and_each_attempt_logged_first():
    p = Parts()
    await p.recipient("alice", email="alice@example.com")
    writes = p.table.count("write_many")
    send = p.providers.send
    logged_before_sending = []

    async def checked_send(message):
        logged_before_sending.append([s for s, _ in await p.timeline("alice")])
        return await send(message)

    p.providers.send = checked_send
    assert await p.handle("alice") == ACK
    assert logged_before_sending == [[notify_pb2.SEND_RENDERED]]
    (message,) = p.providers.sent
    assert (message.to, message.subject, message.text, message.idempotency_key) == (
        "alice@example.com", "Invoice 17", "Pay 12.00", "n1/alice/email")
    assert message.headers == {"List-Unsubscribe": "<http://unsubscribe.test/alice/billing/email>",
                               "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    assert [s for s, _ in await p.timeline("alice")] == [notify_pb2.SEND_RENDERED, notify_pb2.SEND_SENT]
    assert p.table.count("write_many") == writes + 2  # the attempt, then its outcome
    sent = notify_pb2.SendEvent.FromString((await p.table.scan("n1", rows.events_prefix("n1", "alice"))).values[-1])
    assert (sent.provider, sent.provider_message_id, sent.attempt) == ("fake", "pm-1", 1)


async def test_over_a_dropping_limit_the_task_is_suppressed_and_acked():
    p = Parts(limit=2)
    await p.recipient("alice", email="alice@example.com")
    for nid in ("n1", "n2", "n3"):
        assert await p.handle("alice", nid=nid) == ACK
    assert len(p.providers.sent) == 2
    assert (await p.timeline("alice", "n3")) == [
        (notify_pb2.SUPPRESSED_RATE_LIMITED, "over the rate limit of 2 per 3600s of category billing")]
    # a retried task counts once (its token): n1 again is within the limit
    assert await p.handle("alice", nid="n1", attempt=2) == ACK
    assert len(p.providers.sent) == 3


async def test_over_a_delaying_limit_the_task_is_put_back_without_an_attempt_and_high_priority_is_not():
    p = Parts(over_limit=notify_pb2.DELAY, limit=1)
    await p.recipient("alice", email="alice@example.com")
    assert await p.handle("alice", nid="n1") == ACK
    outcome = await p.handle("alice", nid="n2")
    assert (outcome.ack, outcome.deferred) == (False, True)
    assert outcome.delay_ms == 600_000  # the hour's wait, in nacks of at most 10 minutes
    assert [s for s, _ in await p.timeline("alice", "n2")] == [notify_pb2.SEND_DELAYED]
    assert await p.handle("alice", nid="n3", priority=notify_pb2.HIGH) == ACK  # counted, never held back
    assert len(p.providers.sent) == 2
    assert [args[5] for call, args in p.table.calls if call == "rate_acquire"] == [False, False, True]  # force


async def test_the_recipients_override_replaces_the_categorys_limit():
    p = Parts(limit=1)
    await p.recipient("alice", email="alice@example.com")
    await p.put("alice", rows.rate_limit_key("alice", "billing"),
                internal_pb2.RateLimitRow(rate_limit=notify_pb2.RateLimit(limit=3, period_seconds=60)))
    for nid in ("n1", "n2", "n3", "n4"):
        await p.handle("alice", nid=nid)
    assert len(p.providers.sent) == 3


async def test_a_category_without_a_limit_takes_the_clusters_default():
    p = Parts(limit=0)
    p.sender = ChannelSender(SUB, p.table, p.metadata, FakeRendering(), p.providers, BatchedRecorder(p.log),
                             p.requeue, PrioritySlots(4), lambda: notify_pb2.RateLimit(limit=2, period_seconds=60))
    await p.recipient("alice", email="alice@example.com")
    for nid in ("n1", "n2", "n3"):
        await p.handle("alice", nid=nid)
    assert len(p.providers.sent) == 2
    assert [args[2:4] for call, args in p.table.calls if call == "rate_acquire"] == [(2, 60_000)] * 3


async def test_tasks_under_way_at_once_share_one_table_read():
    p = Parts()
    rids = [f"r{i}" for i in range(20)]
    for rid in rids:
        await p.recipient(rid, email=f"{rid}@example.com")
    outcomes = await asyncio.gather(*(p.handle(rid) for rid in rids))
    assert outcomes == [ACK] * 20 and len(p.providers.sent) == 20
    assert p.table.count("read_many") <= 2  # the first at once, the other 19 together


async def test_a_batch_is_read_once_logged_rendered_before_any_send_and_sent_before_its_answer():
    p = Parts()
    rids = [f"r{i}" for i in range(10)]
    for rid in rids:
        await p.recipient(rid, email=f"{rid}@example.com")
    await p.recipient("nobody")  # no email: suppressed, in the same batch
    calls_before = len(p.table.calls)
    rendered_when_sent = []
    send = p.providers.send

    async def checked(message):
        # Every task of the batch is logged SEND_RENDERED before the first provider call.
        timelines = [await p.timeline(rid) for rid in rids]
        rendered_when_sent.append(all(notify_pb2.SEND_RENDERED in [state for state, _ in timeline]
                                      for timeline in timelines))
        return await send(message)
    p.providers.send = checked
    outcomes = await p.sender.handle_batch([received(rid) for rid in rids + ["nobody"]])
    assert outcomes == [ACK] * 11 and len(p.providers.sent) == 10 and all(rendered_when_sent)
    calls = [call for call, _ in p.table.calls[calls_before:] if call not in ("scan", "scan_many")]  # timeline()
    assert calls == ["read_many", "write_many", "write_many"]  # the reads; the rendered; the sent
    for rid in rids:
        assert [state for state, _ in await p.timeline(rid)] == [notify_pb2.SEND_RENDERED, notify_pb2.SEND_SENT]
    assert [state for state, _ in await p.timeline("nobody")] == [notify_pb2.SUPPRESSED_NO_CONTACT]


async def test_no_contact_and_a_missing_variable_fail_only_that_recipient():
    p = Parts()
    await p.recipient("alice", email="alice@example.com")
    await p.recipient("bob", phone="+14155550100")
    assert await p.handle("bob") == ACK
    assert await p.handle("carol") == ACK
    assert await p.handle("alice", nid="n2", data='{"number": 17}') == ACK
    assert await p.handle("alice") == ACK
    assert await p.timeline("bob") == [(notify_pb2.SUPPRESSED_NO_CONTACT, "no email contact")]
    assert await p.timeline("carol") == [(notify_pb2.SUPPRESSED_NO_CONTACT, "recipient not found")]
    ((state, reason),) = await p.timeline("alice", "n2")
    assert state == notify_pb2.SEND_FAILED and "'amount'" in reason
    assert [m.recipient for m in p.providers.sent] == ["alice"]


async def test_a_transient_failure_is_retried_with_retry_after_then_sent():
    p = Parts()
    await p.recipient("alice", email="alice@example.com")
    p.providers.script = [Failed(True, "HTTP 429 for alice@example.com", "sms_http", retry_after_s=7)]
    outcome = await p.handle("alice", attempt=1)
    assert (outcome.ack, outcome.delay_ms, outcome.deferred, outcome.terminal) == (False, 7000, False, False)
    p.providers.script = [Failed(True, "timeout")]
    outcome = await p.handle("alice", attempt=2)
    assert (outcome.ack, outcome.delay_ms) == (False, None)  # the retry policy's backoff
    assert await p.handle("alice", attempt=3) == ACK
    states = await p.timeline("alice")
    assert [s for s, _ in states] == [notify_pb2.SEND_RENDERED, notify_pb2.SEND_FAILED] * 2 + \
        [notify_pb2.SEND_RENDERED, notify_pb2.SEND_SENT]
    assert states[1][1] == "HTTP 429 for <recipient>"  # the log holds no address


async def test_a_failed_breaker_trial_before_the_send_is_logged_as_its_own_failure():
    p = Parts()
    await p.recipient("alice", email="alice@example.com")
    p.providers.script = [Sent("smtp-b", "m-1", trials_failed=(Failed(True, "refused for alice@example.com",
                                                                      "smtp-a"),))]
    assert await p.handle("alice") == ACK
    assert await p.timeline("alice") == [(notify_pb2.SEND_RENDERED, ""),
                                         (notify_pb2.SEND_FAILED, "refused for <recipient>"),
                                         (notify_pb2.SEND_SENT, "")]


async def test_a_permanent_failure_is_not_retried():
    p = Parts()
    await p.recipient("alice", email="alice@example.com")
    p.providers.script = [Failed(False, "550 no such mailbox")]
    assert await p.handle("alice") == ACK
    assert (await p.timeline("alice"))[-1] == (notify_pb2.SEND_FAILED, "550 no such mailbox")


async def test_the_last_attempt_is_dead_lettered():
    p = Parts()
    await p.recipient("alice", email="alice@example.com")
    p.providers.script = [Failed(True, "HTTP 503")]
    outcome = await p.handle("alice", attempt=5)
    assert (outcome.ack, outcome.terminal) == (False, True)
    assert [s for s, _ in await p.timeline("alice")] == [notify_pb2.SEND_RENDERED, notify_pb2.SEND_FAILED,
                                                         notify_pb2.SEND_DEAD_LETTERED]


async def test_without_a_provider_the_task_waits_logged_once():
    p = Parts()
    del p.metadata.providers[EMAIL]
    await p.recipient("alice", email="alice@example.com")
    for _ in range(3):
        outcome = await p.handle("alice")
        assert (outcome.ack, outcome.deferred, outcome.delay_ms) == (False, True, 30_000)
    assert [s for s, _ in await p.timeline("alice")] == [notify_pb2.SEND_DELAYED]
    assert p.table.count("read_many") == 0  # nothing else done while it waits
    p.metadata.providers[EMAIL] = notify_pb2.Provider(channel=EMAIL, kind="smtp")
    assert await p.handle("alice") == ACK


async def test_provider_slots_go_to_high_priority_first():
    slots = PrioritySlots(1)
    await slots.acquire(False)
    order = []

    async def take(name, high):
        await slots.acquire(high)
        order.append(name)

    waiters = [asyncio.create_task(take("normal", False)), asyncio.create_task(take("high", True))]
    await asyncio.sleep(0)
    assert order == []
    slots.release()
    await asyncio.sleep(0)
    assert order == ["high"]
    slots.release()
    await asyncio.gather(*waiters)
    assert order == ["high", "normal"] and slots.used == 1
    cancelled = asyncio.create_task(slots.acquire(True))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    slots.release()
    assert slots.used == 0


async def test_an_emails_html_is_tracked_and_an_sms_carries_its_status_callback():
    p = Parts()
    p.metadata.templates[("invoice", 1)].contents.extend([
        notify_pb2.TemplateContent(channel=EMAIL, locale="de", subject="x", text="y"),
        notify_pb2.TemplateContent(channel=SMS, text="Pay $amount")])
    p.metadata.templates[("invoice", 1)].contents[0].html = '<a href="https://pay.example/$number">pay</a>'
    p.metadata.providers[SMS] = notify_pb2.Provider(channel=SMS, kind="sms_http")
    await p.recipient("alice", email="alice@example.com", phone="+14155550100")
    assert await p.handle("alice") == ACK
    task = internal_pb2.ChannelTask(notification_id="n1", recipient="alice", channel=SMS, template="invoice",
                                    template_version=1, category="billing", data='{"amount": "1"}', accepted_ms=T0)
    received = pubsub_pb2.ReceivedMessage(ack_id="a", delivery_attempt=1,
                                          message=pubsub_pb2.PubsubMessage(message_id="m", data=task.SerializeToString()))
    assert await p.sender.handle(received) == ACK
    email, sms = p.providers.sent
    assert email.html == '<a href="https://pay.example/17">pay</a><img src=http://track.test/n1/alice>'
    assert (email.status_callback, sms.status_callback) == ("", "http://track.test/status/n1/alice")


async def test_a_worker_has_room_until_its_providers_queue_holds_a_concurrency_of_sends():
    """room() gates the next batch: with the provider busy, tasks arriving meanwhile
    wait and go together; high priority waits behind no normal send."""
    p = Parts(slots=PrioritySlots(2))
    slots = p.slots
    high = ChannelSender(channel_subscription(EMAIL, notify_pb2.HIGH), p.table, p.metadata, FakeRendering(),
                         p.providers, BatchedRecorder(p.log), p.requeue, slots, high_priority=True)
    release = asyncio.Event()
    send = p.providers.send

    async def held_send(message):
        await release.wait()
        return await send(message)

    p.providers.send = held_send
    for rid in "abcd":
        await p.recipient(rid, email=f"{rid}@example.com")
    await asyncio.wait_for(p.sender.room(False), 1)
    batch = asyncio.create_task(p.sender.handle_batch([received(rid) for rid in "abcd"]))
    await eventually(lambda: slots.used == 2 and slots.queued(False) == 2)
    normal_room = asyncio.create_task(p.sender.room(False))
    await asyncio.sleep(0.05)
    assert not normal_room.done()  # two sends waiting for the two slots: the provider has work
    # a full batch waiting goes while fewer than PREPARED_AHEAD are prepared or queued
    await asyncio.wait_for(p.sender.room(True), 1)
    await asyncio.wait_for(high.room(False), 1)  # none of them high
    release.set()
    await asyncio.wait_for(normal_room, 1)
    assert [outcome.ack for outcome in await batch] == [True] * 4


async def test_a_slot_freed_while_its_waiter_is_being_cancelled_goes_to_the_next_one():
    slots = PrioritySlots(1)
    await slots.acquire(False)
    cancelled = asyncio.ensure_future(slots.acquire(False))
    waiting = asyncio.ensure_future(slots.acquire(False))
    await asyncio.sleep(0)
    cancelled.cancel()  # its future is cancelled; its task has not run its handler yet
    slots.release()  # a free slot: not to the cancelled one (InvalidStateError), to the next
    await asyncio.wait_for(waiting, 1)
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert slots.used == 1
    slots.release()
    assert slots.used == 0


# -- tasks of many recipients (sender/channel_tasks.py) ---------------------------------


def many(*rids: str, attempt: int = 1, **fields) -> pubsub_pb2.ReceivedMessage:
    task = internal_pb2.ChannelTask(notification_id="n1", channel=EMAIL, template="invoice", template_version=1,
                                    category="billing", data='{"number": 17, "amount": "1"}', accepted_ms=T0,
                                    **fields)
    task.recipients.extend(rids)
    return pubsub_pb2.ReceivedMessage(ack_id="ack-many", delivery_attempt=attempt, message=pubsub_pb2.PubsubMessage(
        message_id="m-many", data=task.SerializeToString()))


def by_address(p: "Parts", answers: dict[str, Sent | Failed]) -> None:
    send = p.providers.send

    async def answered(message):
        await send(message)
        return answers.get(message.to, Sent("fake", f"pm-{message.to}"))
    p.providers.send = answered


def parts_published(p: "Parts") -> list[internal_pb2.ChannelTask]:
    return [internal_pb2.ChannelTask.FromString(m.data) for _, messages in p.requeue.calls for m in messages]


async def test_a_task_of_many_recipients_sends_each_with_its_own_key_and_is_acked_once():
    p = Parts()
    for rid in ("alice", "bob", "carol"):
        await p.recipient(rid, email=f"{rid}@example.com")
    assert await p.sender.handle(many("alice", "bob", "carol")) == ACK
    assert sorted((m.to, m.idempotency_key) for m in p.providers.sent) == [
        ("alice@example.com", "n1/alice/email"), ("bob@example.com", "n1/bob/email"),
        ("carol@example.com", "n1/carol/email")]
    for rid in ("alice", "bob", "carol"):
        assert [s for s, _ in await p.timeline(rid)] == [notify_pb2.SEND_RENDERED, notify_pb2.SEND_SENT]
    assert not p.requeue.calls


async def test_a_task_of_a_log_group_logs_its_recipients_events_in_a_row_a_write_and_its_parts_keep_the_group():
    p = Parts()
    for rid in ("alice", "bob", "carol"):
        await p.recipient(rid, email=f"{rid}@example.com")
    await p.log.record([Event("n1", T0, rid, EMAIL, notify_pb2.SEND_QUEUED, T0, log_group="alice")
                        for rid in ("alice", "bob", "carol")])  # the fan-out's
    by_address(p, {"bob@example.com": Failed(True, "503 busy", "fake")})
    assert await p.sender.handle(many("alice", "bob", "carol", log_group="alice")) == ACK
    shard = p.table.rows[p.table.partition("n1")]
    logged = [internal_pb2.LoggedEvents.FromString(value) for key, (value, _) in sorted(shard.items())
              if key.startswith(rows.LOGGED_EVENTS)]
    assert [sorted((e.recipient, e.event.state) for e in row.events) for row in logged] == [  # rendered, outcomes
        [("alice", notify_pb2.SEND_RENDERED), ("bob", notify_pb2.SEND_RENDERED), ("carol", notify_pb2.SEND_RENDERED)],
        [("alice", notify_pb2.SEND_SENT), ("bob", notify_pb2.SEND_FAILED), ("carol", notify_pb2.SEND_SENT)]]
    assert sum(key.startswith(rows.EVENT) for key in shard) == 3  # the queued rows only
    assert [s for s, _ in await p.timeline("bob")] == [notify_pb2.SEND_QUEUED, notify_pb2.SEND_RENDERED,
                                                       notify_pb2.SEND_FAILED]
    bob, = parts_published(p)
    assert (channel_tasks.recipients(bob), bob.log_group) == (["bob"], "alice")


async def test_recipients_not_done_go_on_as_parts_with_their_attempts_and_wait_and_the_task_is_acked():
    p = Parts(over_limit=notify_pb2.DELAY, limit=1)
    for rid in ("alice", "bob", "carol", "dave"):
        await p.recipient(rid, email=f"{rid}@example.com")
    assert await p.handle("dave", nid="n0") == ACK  # dave's hour is used up: his send in n1 waits
    p.metadata.subscriptions[SUB].retry_policy.minimum_backoff.FromMilliseconds(10_000)
    p.metadata.subscriptions[SUB].retry_policy.maximum_backoff.FromMilliseconds(60_000)
    p.metadata.subscriptions[SUB].retry_policy.multiplier = 2.0
    by_address(p, {"bob@example.com": Failed(True, "503 busy", "fake"),
                   "carol@example.com": Failed(False, "550 no such user", "fake")})
    assert await p.sender.handle(many("alice", "bob", "carol", "dave", attempt=2)) == ACK
    parts = parts_published(p)
    assert [(channel_tasks.recipients(t), t.attempts_before) for t in parts] == [
        (["bob"], 2), (["dave"], 1)]  # a delay counts no attempt
    bob, dave = parts
    assert T0 + 20_000 <= bob.not_before_ms <= T0 + 20_000 + 100  # the policy's wait after attempt 2
    assert dave.not_before_ms % 1000 == 0 and dave.not_before_ms >= T0 + 600_000  # a whole second
    assert (bob.notification_id, bob.template, bob.data) == ("n1", "invoice", '{"number": 17, "amount": "1"}')
    (topic, _), = p.requeue.calls
    assert topic == "notifymesh.channel.email"
    assert [s for s, _ in await p.timeline("bob")] == [notify_pb2.SEND_RENDERED, notify_pb2.SEND_FAILED]
    assert [s for s, _ in await p.timeline("carol")] == [notify_pb2.SEND_RENDERED, notify_pb2.SEND_FAILED]
    assert [s for s, _ in await p.timeline("dave")] == [notify_pb2.SEND_DELAYED]
    # the same outcome again (the task's ack lost): the same parts, repeats by key
    keys = [m.idempotency_key for _, messages in p.requeue.calls for m in messages]
    assert len(set(keys)) == 2 and all(k.startswith("m-many/2/") for k in keys)


def part_received(task: internal_pb2.ChannelTask, attempt: int = 1) -> pubsub_pb2.ReceivedMessage:
    return pubsub_pb2.ReceivedMessage(ack_id="ack-part", delivery_attempt=attempt, message=pubsub_pb2.PubsubMessage(
        message_id="m-part", data=task.SerializeToString()))


async def test_a_part_waits_until_its_time_and_a_task_of_many_is_never_dead_lettered_whole():
    p = Parts()  # 5 attempts, then the dead-letter topic
    for rid in ("bob", "carol", "dave"):
        await p.recipient(rid, email=f"{rid}@example.com")
    waiting = await p.sender.handle(many("bob", "carol", not_before_ms=T0 + 60_000, attempts_before=3))
    assert (waiting.ack, waiting.deferred, waiting.terminal) == (False, True, False)
    assert 59_000 <= waiting.delay_ms <= 60_000
    assert not p.providers.sent and not await p.timeline("bob")
    # attempt 3 + 1 = 4: the next would be the last, so bob and dave go on a task each
    by_address(p, {"bob@example.com": Failed(True, "503 busy", "fake"),
                   "dave@example.com": Failed(True, "503 busy", "fake")})
    assert await p.sender.handle(many("bob", "carol", "dave", attempts_before=3)) == ACK
    assert [(t.recipient, list(t.recipients), t.attempts_before) for t in parts_published(p)] == [
        ("bob", [], 4), ("dave", [], 4)]
    assert [s for s, _ in await p.timeline("bob")] == [notify_pb2.SEND_RENDERED, notify_pb2.SEND_FAILED]
    # bob's task fails again at its fifth attempt: dead-lettered
    bob = parts_published(p)[0]
    bob.not_before_ms = 0
    dead = await p.sender.handle(part_received(bob))
    assert (dead.ack, dead.terminal) == (False, True)
    assert [s for s, _ in await p.timeline("bob")][-1] == notify_pb2.SEND_DEAD_LETTERED
    last = notify_pb2.SendEvent.FromString((await p.table.scan("n1", rows.events_prefix("n1", "bob"))).values[-1])
    assert last.attempt == 5
    # redriven (storage counts its attempts from zero again): five more attempts, not one
    for attempt in (1, 2, 3, 4):
        outcome = await p.sender.handle(part_received(bob, attempt))
        assert (outcome.ack, outcome.terminal) == (False, False)
    assert (await p.sender.handle(part_received(bob, 5))).terminal
    dead_letterings = [s for s, _ in await p.timeline("bob")].count(notify_pb2.SEND_DEAD_LETTERED)
    assert dead_letterings == 2


async def test_recipients_failing_alike_keep_their_task_whole_with_the_wait_of_its_attempts():
    p = Parts()
    for rid in ("alice", "bob"):
        await p.recipient(rid, email=f"{rid}@example.com")
    policy = p.metadata.subscriptions[SUB].retry_policy
    policy.minimum_backoff.FromMilliseconds(1_000)
    policy.maximum_backoff.FromMilliseconds(60_000)
    policy.multiplier = 2.0
    by_address(p, {"alice@example.com": Failed(True, "503", "fake"), "bob@example.com": Failed(True, "503", "fake")})
    outcome = await p.sender.handle(many("alice", "bob"))
    assert (outcome.ack, outcome.delay_ms, outcome.terminal) == (False, None, False)  # storage's backoff
    outcome = await p.sender.handle(many("alice", "bob", attempts_before=2))
    assert (outcome.ack, outcome.delay_ms) == (False, 4_000)  # after attempt 3: storage counts only 1
    assert not p.requeue.calls
