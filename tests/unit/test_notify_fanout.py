"""The fan-out over fakes: channel tasks per recipient and channel with their
idempotency keys, the log's suppressions, pages of an audience (several at once) with a checkpoint
after each, and a crash that resumes at the checkpoint without a duplicate task."""

import asyncio

import pytest

from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from notify_fakes import FakeMetadata, FakePublisher, FakeTable
from notifymesh.server import rows
from notifymesh.server.internal_topics import channel_topic
from notifymesh.server.notification_log import NotificationLog
from sender import channel_tasks
from sender.fanout import PAGE_BYTES, PAGES_IN_FLIGHT, Fanout, page_size

EMAIL, SMS = notify_pb2.EMAIL, notify_pb2.SMS
T0 = 1_700_000_000_000
EMAIL_TOPIC, SMS_TOPIC = channel_topic(EMAIL, notify_pb2.NORMAL), channel_topic(SMS, notify_pb2.NORMAL)


class Parts:
    def __init__(self):
        self.table, self.metadata, self.publisher = FakeTable(), FakeMetadata(), FakePublisher()
        self.log = NotificationLog(self.table, 3_600_000)
        self.fanout = Fanout(self.table, self.log, self.metadata, self.publisher)
        self.metadata.categories["marketing"] = notify_pb2.Category(name="marketing")
        self.metadata.templates[("promo", 1)] = notify_pb2.Template(name="promo", version=1, contents=[
            notify_pb2.TemplateContent(channel=EMAIL, text="hi"), notify_pb2.TemplateContent(channel=SMS, text="hi")])

    async def put(self, partition_key: str, key: bytes, message=None) -> None:
        value = message.SerializeToString() if message is not None else b""
        await self.table.write(partition_key, [storage_pb2.TableOp(key=key, value=value)])

    async def recipient(self, rid: str, **contact) -> None:
        await self.put(rid, rows.contact_key(rid), notify_pb2.Recipient(id=rid, **contact))

    def states(self, nid: str) -> dict[tuple[str, str], tuple[int, str]]:
        """(recipient, channel) -> (state, reason) of the events logged."""
        shard_rows = self.table.rows[self.table.partition(nid)]
        found = {}
        for key, (value, _) in sorted(shard_rows.items()):
            if key.startswith(rows.events_prefix(nid)):
                parsed = rows.parse_event_key(key)
                reason = notify_pb2.SendEvent.FromString(value).reason
                found[(parsed.recipient, parsed.channel)] = (parsed.state, reason)
        return found

    def tasks(self, topic: str) -> dict[str, internal_pb2.ChannelTask]:
        """Each recipient's task (a task of many taken apart) by its task_key; a
        recipient in two tasks fails."""
        expanded = {}
        for message in self.publisher.stored.get(topic, {}).values():
            task = internal_pb2.ChannelTask.FromString(message.data)
            assert len(channel_tasks.recipients(task)) <= channel_tasks.TASK_RECIPIENTS
            for rid in channel_tasks.recipients(task):
                key = channel_tasks.task_key(task.notification_id, rid, task.channel)
                assert key not in expanded, f"{key} in two tasks"
                expanded[key] = channel_tasks.one_recipient(task, rid)
        return expanded


def job(**request) -> internal_pb2.NotificationJob:
    request.setdefault("template", "promo")
    request.setdefault("category", "marketing")
    return internal_pb2.NotificationJob(request=notify_pb2.NotifyRequest(**request), template_version=1,
                                        accepted_ms=T0)


def received(nid: str, notification_job: internal_pb2.NotificationJob) -> pubsub_pb2.ReceivedMessage:
    return pubsub_pb2.ReceivedMessage(ack_id="a-1", delivery_attempt=1, message=pubsub_pb2.PubsubMessage(
        message_id=nid, data=notification_job.SerializeToString()))


async def test_recipients_become_tasks_per_channel_and_suppressions_are_logged():
    p = Parts()
    await p.recipient("alice", email="alice@example.com", phone="+14155550100")
    await p.recipient("bob", email="bob@example.com")
    await p.recipient("carol", phone="+14155550101")
    await p.put("carol", rows.preference_key("carol", "marketing", "sms"), internal_pb2.PreferenceRow(enabled=False))
    await p.put("dave", rows.contact_key("dave"), notify_pb2.Recipient(id="dave", email="dave@example.com"))
    await p.put("dave", rows.unsubscribed_key("dave"), internal_pb2.PreferenceRow(enabled=False))
    outcome = await p.fanout.handle(received("n1", job(recipients=["alice", "bob", "carol", "dave", "erin", "bob"],
                                                       data='{"x": 1}')))
    assert outcome.ack
    assert sorted(p.tasks(EMAIL_TOPIC)) == ["n1/alice/email", "n1/bob/email"]
    assert sorted(p.tasks(SMS_TOPIC)) == ["n1/alice/sms"]
    task = p.tasks(EMAIL_TOPIC)["n1/bob/email"]
    assert (task.notification_id, task.recipient, task.channel, task.template, task.template_version, task.category,
            task.data, task.accepted_ms, task.priority) == ("n1", "bob", EMAIL, "promo", 1, "marketing", '{"x": 1}',
                                                            T0, notify_pb2.NORMAL)
    assert p.states("n1") == {
        ("alice", "email"): (notify_pb2.SEND_QUEUED, ""), ("alice", "sms"): (notify_pb2.SEND_QUEUED, ""),
        ("bob", "email"): (notify_pb2.SEND_QUEUED, ""),
        ("carol", "sms"): (notify_pb2.SUPPRESSED_OPTED_OUT, "opted out of category marketing on sms"),
        ("dave", "email"): (notify_pb2.SUPPRESSED_OPTED_OUT, "unsubscribed from everything"),
        ("erin", "email"): (notify_pb2.SUPPRESSED_NO_CONTACT, "recipient not found"),
        ("erin", "sms"): (notify_pb2.SUPPRESSED_NO_CONTACT, "recipient not found")}
    header = await p.log.header("n1")
    assert (header.id, header.recipient_count, header.request.template) == ("n1", 6, "promo")
    for rid in ("alice", "bob", "carol", "dave", "erin"):
        assert p.table.get(rid, rows.recipient_notification_key(rid, T0, "n1")) is not None
    # the recipients' rows were read in one batched read
    assert p.table.count("read_many") == 1


async def test_a_recipient_named_twice_on_different_pages_is_expanded_once():
    """Big data makes small pages: bob's second mention falls on a later page, where
    nothing of the first page is known any more."""
    p = Parts()
    data = '{"x": "%s"}' % ("y" * 60_000)
    people = [f"r{i:03d}" for i in range(120)]
    for rid in people:
        await p.recipient(rid, email=f"{rid}@example.com")
    request = job(recipients=[*people, "r000"], channels=[EMAIL], data=data)
    assert page_size(request.request) < len(people)
    await p.fanout.handle(received("n1", request))
    assert published_recipients(p) == len(people)  # one task each, not one per mention
    assert len(p.tasks(EMAIL_TOPIC)) == len(people)


async def test_a_pages_recipients_go_25_a_task_keyed_by_the_first_and_the_count():
    p = Parts()
    people = [f"r{i:03d}" for i in range(60)]
    for rid in people:
        await p.recipient(rid, email=f"{rid}@example.com")
    await p.fanout.run("n1", job(recipients=people, channels=[EMAIL]))
    stored = p.publisher.stored[EMAIL_TOPIC]
    assert sorted(stored) == ["n1/r000/email/25", "n1/r025/email/25", "n1/r050/email/10"]
    assert list(internal_pb2.ChannelTask.FromString(stored["n1/r050/email/10"].data).recipients) == people[50:]
    # each task its own log group (its first recipient), named by its recipients' queued rows
    assert {internal_pb2.ChannelTask.FromString(m.data).log_group for m in stored.values()} == {"r000", "r025", "r050"}
    queued = {rows.parse_event_key(key).recipient: internal_pb2.LogGroupTag.FromString(value).log_group
              for key, (value, _) in p.table.rows[p.table.partition("n1")].items()
              if key.startswith(rows.events_prefix("n1"))}
    assert queued == {rid: people[i - i % 25] for i, rid in enumerate(people)}
    # expanded again (a crash before the checkpoint): the same tasks, repeats by key
    await p.fanout.run("n1", job(recipients=people, channels=[EMAIL]))
    assert len(stored) == 3


async def test_high_priority_tasks_go_to_the_high_topics():
    p = Parts()
    await p.recipient("alice", email="alice@example.com")
    await p.fanout.run("n1", job(recipients=["alice"], priority=notify_pb2.HIGH, channels=[EMAIL]))
    assert list(p.tasks(channel_topic(EMAIL, notify_pb2.HIGH))) == ["n1/alice/email"]
    assert not p.tasks(EMAIL_TOPIC)


async def add_audience(p: Parts, name: str, count: int) -> list[str]:
    members = [f"m{i:05d}" for i in range(count)]
    for rid in members:
        await p.recipient(rid, email=f"{rid}@example.com")
        await p.put(name, rows.member_key(name, rid))
    return members


async def test_an_audience_is_expanded_a_page_at_a_time_with_a_checkpoint_after_each():
    p = Parts()
    members = await add_audience(p, "everyone", 2500)
    p.table.calls.clear()
    done = await p.fanout.run("n1", job(audience="everyone", channels=[EMAIL]))
    assert done == 2500
    assert sorted(p.tasks(EMAIL_TOPIC)) == sorted(f"n1/{rid}/email" for rid in members)
    assert max(len(messages) for _, messages in p.publisher.calls) <= 1000
    reads = [keys for call, keys in p.table.calls if call == "read_many"]
    assert [len(keys) for keys in reads] == [1000, 1000, 500]  # one batched read per page, a page at most 1000
    assert checkpoints(p, "n1") == [1000, 2000, 2500]
    assert (await p.log.header("n1")).recipient_count == 2500


def published_recipients(p: Parts) -> int:
    """The recipients of every channel task published, repeats included."""
    return sum(len(channel_tasks.recipients(internal_pb2.ChannelTask.FromString(m.data)))
               for _, messages in p.publisher.calls for m in messages)


def checkpoints(p: Parts, nid: str) -> list[int]:
    """recipients_done of each checkpoint written, in order."""
    return [internal_pb2.FanoutCheckpoint.FromString(ops[0].value).recipients_done
            for call, by_key in p.table.calls if call == "write"
            for ops in by_key.values() if ops[0].key == rows.checkpoint_key(nid)]


async def test_a_crash_mid_audience_resumes_at_the_checkpoint_without_duplicate_tasks():
    p = Parts()
    members = await add_audience(p, "everyone", 2500)
    publish = p.publisher.publish

    async def crash_on_second_page(topic, messages):
        result = await publish(topic, messages)
        if channel_tasks.recipients(internal_pb2.ChannelTask.FromString(messages[0].data))[0] == members[1000]:
            raise ConnectionError("sender killed")  # page 2 published, the sender dies before its checkpoint
        return result

    p.publisher.publish = crash_on_second_page
    with pytest.raises(ConnectionError):
        await p.fanout.run("n1", job(audience="everyone", channels=[EMAIL]))
    assert checkpoints(p, "n1") == [1000]  # page 1 done; page 3 may have been published: it was under way
    before = published_recipients(p)
    p.publisher.publish = publish
    assert await p.fanout.run("n1", job(audience="everyone", channels=[EMAIL])) == 2500
    # resumed after page 1: pages 2 and 3 published again (dropped as repeats by key), page 1 not
    assert published_recipients(p) == before + 1500
    assert len(p.tasks(EMAIL_TOPIC)) == 2500 == len(set(p.tasks(EMAIL_TOPIC)))
    assert sorted(p.tasks(EMAIL_TOPIC)) == sorted(f"n1/{rid}/email" for rid in members)
    # a job delivered again once done publishes nothing
    assert await p.fanout.run("n1", job(audience="everyone", channels=[EMAIL])) == 2500
    assert published_recipients(p) == before + 1500


async def test_pages_overlap_and_the_checkpoint_covers_only_pages_done_with_all_before_them():
    """Page 1's publish is held until a later page's is done: the later pages go on
    meanwhile (at most PAGES_IN_FLIGHT of them), but no checkpoint is written until
    page 1 is done, and then in order."""
    p = Parts()
    data = '{"x": "%s"}' % ("y" * 40_000)
    size = page_size(notify_pb2.NotifyRequest(data=data, channels=[EMAIL]))
    pages = 2 * PAGES_IN_FLIGHT
    members = await add_audience(p, "everyone", size * pages)
    publish, write = p.publisher.publish, p.table.write
    timeline: list[tuple[str, int]] = []
    later_page_done = asyncio.Event()
    under_way = most_under_way = 0

    async def held_publish(topic, messages):
        nonlocal under_way, most_under_way
        under_way += 1
        most_under_way = max(most_under_way, under_way)
        page = members.index(channel_tasks.recipients(internal_pb2.ChannelTask.FromString(messages[0].data))[0]) // size + 1
        if page == 1:  # (a fan-out of one page at a time never gets past it)
            await asyncio.wait_for(later_page_done.wait(), 5)
        else:
            await asyncio.sleep(0.01)
        result = await publish(topic, messages)
        timeline.append(("published", page))
        if page > 1:
            later_page_done.set()
        under_way -= 1
        return result

    async def noted_write(partition_key, ops):
        if ops[0].key == rows.checkpoint_key("n1"):
            timeline.append(("checkpoint", internal_pb2.FanoutCheckpoint.FromString(ops[0].value).recipients_done))
        await write(partition_key, ops)

    p.publisher.publish, p.table.write = held_publish, noted_write
    assert await p.fanout.run("n1", job(audience="everyone", channels=[EMAIL], data=data)) == size * pages
    assert len(p.tasks(EMAIL_TOPIC)) == size * pages
    assert timeline.index(("published", 2)) < timeline.index(("published", 1)) < timeline.index(("checkpoint", size))
    assert [n for kind, n in timeline if kind == "checkpoint"] == [size * k for k in range(1, pages + 1)]
    assert most_under_way == PAGES_IN_FLIGHT


async def test_the_pages_of_all_jobs_under_way_are_bounded_by_the_page_slots():
    p = Parts()
    p.fanout = Fanout(p.table, p.log, p.metadata, p.publisher, page_slots=3)
    await add_audience(p, "everyone", 100)
    publish = p.publisher.publish
    under_way = most_under_way = 0

    async def slow_publish(topic, messages):
        nonlocal under_way, most_under_way
        under_way += 1
        most_under_way = max(most_under_way, under_way)
        await asyncio.sleep(0.01)
        under_way -= 1
        return await publish(topic, messages)

    p.publisher.publish = slow_publish
    # Pages of a few recipients; the data differs, so no job's sends are the duplicates of another's.
    done = await asyncio.gather(*(p.fanout.run(f"n{k}", job(audience="everyone", channels=[EMAIL],
                                                            data='{"x%d": "%s"}' % (k, "y" * 60_000)))
                                  for k in range(3)))
    assert done == [100] * 3
    assert most_under_way == 3
    assert len(p.tasks(EMAIL_TOPIC)) == 300


async def test_big_data_makes_smaller_pages_so_a_page_stays_bounded():
    p = Parts()
    await add_audience(p, "everyone", 300)
    data = '{"blob": "%s"}' % ("x" * 60_000)
    await p.fanout.run("n1", job(audience="everyone", data=data))
    assert len(p.tasks(EMAIL_TOPIC)) == 300
    reads = [keys for call, keys in p.table.calls if call == "read_many"]
    assert max(len(keys) for keys in reads) == page_size(notify_pb2.NotifyRequest(data=data)) < 300
    assert max(sum(len(m.data) for m in messages) for _, messages in p.publisher.calls) <= PAGE_BYTES


async def test_a_job_that_is_no_notification_job_is_set_aside():
    p = Parts()
    message = pubsub_pb2.ReceivedMessage(ack_id="a", message=pubsub_pb2.PubsubMessage(message_id="n1",
                                                                                     data=b"\xff\xff"))
    outcome = await p.fanout.handle(message)
    assert (outcome.ack, outcome.terminal) == (False, True)


async def test_the_same_request_again_under_another_id_is_a_duplicate_but_the_same_job_again_is_not():
    p = Parts()
    await p.recipient("alice", email="alice@example.com")
    await p.recipient("bob", email="bob@example.com")
    await p.fanout.handle(received("n1", job(recipients=["alice"], data='{"invoice": 17}')))
    # A repeat without its idempotency key: a new notification id, the same template, category and data.
    await p.fanout.handle(received("n2", job(recipients=["alice", "bob"], data='{"invoice": 17}')))
    assert p.states("n2")[("alice", "email")][0] == notify_pb2.SUPPRESSED_DUPLICATE
    assert p.states("n2")[("bob", "email")][0] == notify_pb2.SEND_QUEUED
    assert sorted(p.tasks(EMAIL_TOPIC)) == ["n1/alice/email", "n2/bob/email"]
    # Other data is another notification; the first one delivered again (a crash) is no duplicate of itself.
    await p.fanout.handle(received("n3", job(recipients=["alice"], data='{"invoice": 18}')))
    await p.table.write("n1", [storage_pb2.TableOp(key=rows.checkpoint_key("n1"), delete=True)])
    await p.fanout.handle(received("n1", job(recipients=["alice"], data='{"invoice": 17}')))
    assert p.states("n3")[("alice", "email")][0] == notify_pb2.SEND_QUEUED
    assert p.states("n1")[("alice", "email")][0] == notify_pb2.SEND_QUEUED


async def test_a_list_of_one_page_is_logged_in_one_write_a_partition_and_keeps_no_checkpoint():
    p = Parts()
    await p.recipient("alice", email="alice@example.com", phone="+14155550100")
    p.table.calls.clear()
    await p.fanout.handle(received("n1", job(recipients=["alice"])))
    writes = [by_key for call, by_key in p.table.calls if call in ("write", "write_many")]
    assert len(writes) == 1  # the header and the events, at once
    assert sorted(writes[0]) == ["n1"]
    assert rows.notification_key("n1") in [op.key for op in writes[0]["n1"]]
    # The index row in the write of alice's duplicate check (one call to her partition).
    (with_acquires,) = [by_key for call, by_key in p.table.calls if call == "rate_acquire_writes"]
    assert {k: [op.key for op in ops] for k, ops in with_acquires.items()} == {
        "alice": [rows.recipient_notification_key("alice", T0, "n1")]}
    assert p.table.count("rate_acquire_many") == 1
    assert [call for call, _ in p.table.calls if call == "read"] == []  # no checkpoint read ...
    assert p.table.get("n1", rows.checkpoint_key("n1")) is None  # ... nor written
    assert (await p.log.header("n1")).recipient_count == 1
    assert p.states("n1") == {("alice", "email"): (notify_pb2.SEND_QUEUED, ""),
                              ("alice", "sms"): (notify_pb2.SEND_QUEUED, "")}
    # Delivered again (a crash before its ack): expanded again, no task twice.
    await p.fanout.handle(received("n1", job(recipients=["alice"])))
    assert sorted(p.tasks(EMAIL_TOPIC)) == ["n1/alice/email"] and sorted(p.tasks(SMS_TOPIC)) == ["n1/alice/sms"]
