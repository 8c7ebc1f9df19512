"""The notification pipeline end to end on the real mesh: Notify through the
fan-out and the channel workers to the local SMTP server and SMS API, with
preferences, rate limits, retries and the notification log saying what happened."""

import asyncio
import collections
import json
import time

import aiohttp
from helpers import unique

from gen.notifymesh.v1 import notify_pb2
from notifymesh.client import Client
from notifymesh.contracts import outbox_files

FINAL = {notify_pb2.SUPPRESSED_OPTED_OUT, notify_pb2.SUPPRESSED_RATE_LIMITED, notify_pb2.SUPPRESSED_DUPLICATE,
         notify_pb2.SUPPRESSED_NO_CONTACT, notify_pb2.SEND_SENT, notify_pb2.SEND_DEAD_LETTERED,
         notify_pb2.SEND_DELIVERED}  # an SMS: the local fake's receipt follows the send
SENT = {notify_pb2.SEND_SENT, notify_pb2.SEND_DELIVERED}
WAIT_S = 60
PEOPLE = 100  # recipients of the first test: half with a phone


async def settled(client, nid: str, sends: int, final=FINAL):
    """The notification once it has `sends` sends, each in a state of final."""
    deadline = time.monotonic() + WAIT_S
    while True:
        notification = await client.get_notification(nid)
        if len(notification.sends) == sends and all(s.state in final for s in notification.sends):
            return notification, {(s.recipient, s.channel): s for s in notification.sends}
        assert time.monotonic() < deadline, \
            f"not settled: {[(s.recipient, s.channel, s.state) for s in notification.sends]}"
        await asyncio.sleep(0.2)


async def new_template(client, name: str) -> None:
    await client.create_template(notify_pb2.Template(name=name, contents=[
        notify_pb2.TemplateContent(channel=notify_pb2.EMAIL, subject="Invoice {{ data.invoice }}",
                                   text="Hello {{ recipient.id }}, {{ data.amount }} is due."),
        notify_pb2.TemplateContent(channel=notify_pb2.SMS, text="{{ data.amount }} due for {{ recipient.id }}")]))


def read_outbox(data_dir, channel: str) -> list[dict]:
    """What the local providers stored, but for a line they are writing right now."""
    records = []
    for path in outbox_files(data_dir, channel):
        if path.exists():
            records += [json.loads(line) for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]
    return records


def outbox_to(mesh, channel: str, address: str) -> list[dict]:
    key = "to"
    return [r for r in read_outbox(mesh.data_dir, channel)
            if (address in r[key] if isinstance(r[key], list) else r[key] == address)]


async def test_notify_reaches_email_and_sms_honouring_preferences_and_logs_each_step(mesh, client):
    template, category = unique("invoice"), unique("billing")
    await new_template(client, template)
    await client.create_category(category)
    people = [unique(f"p{i}") for i in range(PEOPLE)]
    await client.upsert_recipients([notify_pb2.Recipient(id=rid, email=f"{rid}@example.com",
                                                         phone=f"+1415555{i:04d}" if i % 2 == 0 else "")
                                    for i, rid in enumerate(people)])
    opted_out, unsubscribed = people[0], people[1]
    await client.update_preferences(opted_out, [notify_pb2.Preference(category=category, channel="sms",
                                                                      enabled=False)])
    await client.update_preferences(unsubscribed, unsubscribed=True)
    nobody = unique("nobody")
    nid = await client.notify(template, category, people + [nobody], data={"invoice": 17, "amount": "12.00"})
    # email for all, sms for the half with a phone, and the unknown recipient's two channels
    notification, sends = await settled(client, nid, PEOPLE + PEOPLE // 2 + 2)
    assert notification.recipient_count == PEOPLE + 1
    assert sends[(opted_out, notify_pb2.SMS)].state == notify_pb2.SUPPRESSED_OPTED_OUT
    assert sends[(opted_out, notify_pb2.EMAIL)].state == notify_pb2.SEND_SENT
    assert sends[(unsubscribed, notify_pb2.EMAIL)].state == notify_pb2.SUPPRESSED_OPTED_OUT
    assert sends[(unsubscribed, notify_pb2.EMAIL)].reason == "unsubscribed from everything"
    assert {sends[(nobody, c)].state for c in (notify_pb2.EMAIL, notify_pb2.SMS)} == {notify_pb2.SUPPRESSED_NO_CONTACT}
    sent = [s for s in sends.values() if s.state in SENT]
    assert len(sent) == (PEOPLE - 1) + (PEOPLE // 2 - 1)
    for send in sent:
        assert [e.state for e in send.timeline] in (
            [notify_pb2.SEND_QUEUED, notify_pb2.SEND_RENDERED, notify_pb2.SEND_SENT],
            [notify_pb2.SEND_QUEUED, notify_pb2.SEND_RENDERED, notify_pb2.SEND_SENT, notify_pb2.SEND_DELIVERED])
        assert send.provider and send.provider_message_id
    for rid in people[2:]:
        (mail,) = outbox_to(mesh, "email", f"{rid}@example.com")
        assert mail["subject"] == "Invoice 17" and f"Hello {rid}, 12.00 is due." in mail["text"]
        assert "".join(mail["headers"]["List-Unsubscribe"].split()).startswith("<http") and \
            mail["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    for i in range(2, PEOPLE, 2):
        (sms,) = outbox_to(mesh, "sms", f"+1415555{i:04d}")
        assert sms["body"] == f"12.00 due for {people[i]}"
    assert outbox_to(mesh, "sms", "+14155550000") == []  # opted out of sms
    # the recipient's own listing
    (listed,) = await client.list_notifications(people[2])
    assert listed.id == nid and {s.channel for s in listed.sends} == {notify_pb2.EMAIL, notify_pb2.SMS}
    # a repeat with the same key sends nothing new
    key = unique("key")
    first = await client.notify(template, category, people[2:3], data={"invoice": 18, "amount": "1.00"},
                                idempotency_key=key)
    await settled(client, first, 2)
    assert await client.notify(template, category, people[2:3], data={"invoice": 18, "amount": "1.00"},
                               idempotency_key=key) == first
    await asyncio.sleep(2)
    assert len([m for m in outbox_to(mesh, "email", f"{people[2]}@example.com") if m["subject"] == "Invoice 18"]) == 1


async def fault(mesh, channel: str, status: int, count: int) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{mesh.provider_ports[1]}/_faults",
                             json={"channel": channel, "status": status, "count": count}) as response:
            assert response.status == 200, await response.text()


async def test_a_failing_provider_is_retried_a_permanent_failure_is_not(mesh, client):
    template, category = unique("invoice"), unique("billing")
    await new_template(client, template)
    await client.create_category(category)
    rid = unique("flaky")
    await client.upsert_recipient(rid, phone="+14155559900")
    await fault(mesh, "sms", 500, 2)
    nid = await client.notify(template, category, [rid], data={"invoice": 1, "amount": "5.00"}, channels=["sms"])
    # The SMS fake reports each delivery: waiting for its receipt makes the history whole
    # (read at SENT, the receipt could land between the wait and the read).
    _, sends = await settled(client, nid, 1, {notify_pb2.SEND_DELIVERED})
    send = sends[(rid, notify_pb2.SMS)]
    assert [e.state for e in send.timeline] == [notify_pb2.SEND_QUEUED] + [
        notify_pb2.SEND_RENDERED, notify_pb2.SEND_FAILED] * 2 + [notify_pb2.SEND_RENDERED, notify_pb2.SEND_SENT,
                                                                  notify_pb2.SEND_DELIVERED]
    assert [e.attempt for e in send.timeline if e.state == notify_pb2.SEND_RENDERED] == [1, 2, 3]
    assert "+14155559900" not in str(send)  # no phone number in the log
    assert len(outbox_to(mesh, "sms", "+14155559900")) == 1

    await fault(mesh, "sms", 400, 1)
    nid = await client.notify(template, category, [rid], data={"invoice": 2, "amount": "5.00"}, channels=["sms"])
    _, sends = await settled(client, nid, 1, FINAL | {notify_pb2.SEND_FAILED})
    send = sends[(rid, notify_pb2.SMS)]
    assert [e.state for e in send.timeline] == [notify_pb2.SEND_QUEUED, notify_pb2.SEND_RENDERED,
                                                notify_pb2.SEND_FAILED]
    await asyncio.sleep(2)
    assert len((await client.get_notification(nid)).sends[0].timeline) == 3  # not retried
    assert len(outbox_to(mesh, "sms", "+14155559900")) == 1


async def test_a_rate_limit_drops_and_a_missing_variable_fails_only_its_recipient(mesh, client):
    template, category = unique("welcome"), unique("marketing")
    await client.create_template(notify_pb2.Template(name=template, contents=[notify_pb2.TemplateContent(
        channel=notify_pb2.EMAIL, subject="Hi", text="Your code: {{ recipient.attributes.code }}")]))
    await client.create_category(category, limit=1, period_s=3600)
    alice, bob = unique("alice"), unique("bob")
    await client.upsert_recipient(alice, email=f"{alice}@example.com", attributes={"code": "A1"})
    await client.upsert_recipient(bob, email=f"{bob}@example.com")
    nid = await client.notify(template, category, [alice, bob])
    _, sends = await settled(client, nid, 2, FINAL | {notify_pb2.SEND_FAILED})
    assert sends[(alice, notify_pb2.EMAIL)].state == notify_pb2.SEND_SENT
    failed = sends[(bob, notify_pb2.EMAIL)]
    assert failed.state == notify_pb2.SEND_FAILED and "code" in failed.reason
    # Other data (the same again would be a duplicate): over the category's limit of 1.
    second = await client.notify(template, category, [alice], data={"n": 2})
    _, sends = await settled(client, second, 1)
    assert sends[(alice, notify_pb2.EMAIL)].state == notify_pb2.SUPPRESSED_RATE_LIMITED
    third = await client.notify(template, category, [alice])
    _, sends = await settled(client, third, 1)
    assert sends[(alice, notify_pb2.EMAIL)].state == notify_pb2.SUPPRESSED_DUPLICATE
    assert len(outbox_to(mesh, "email", f"{alice}@example.com")) == 1


async def test_a_sender_killed_mid_audience_loses_no_recipient_and_sends_no_unlogged_duplicate(own_mesh):
    async with Client(own_mesh.frontend_addr) as client:
        template, category, audience = unique("news"), unique("news"), unique("everyone")
        await client.create_template(notify_pb2.Template(name=template, contents=[notify_pb2.TemplateContent(
            channel=notify_pb2.EMAIL, subject="News", text="Hello {{ recipient.id }}")]))
        await client.create_category(category)
        await client.create_audience(audience)
        members = [f"m{i:05d}" for i in range(2500)]
        for start in range(0, len(members), 1000):
            batch = members[start:start + 1000]
            await client.upsert_recipients([notify_pb2.Recipient(id=rid, email=f"{rid}@example.com")
                                            for rid in batch])
            await client.add_audience_members(audience, batch)
        nid = await client.notify(template, category, audience=audience)
        deadline = time.monotonic() + WAIT_S
        while len(read_outbox(own_mesh.data_dir, "email")) < 300:  # well under way
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        own_mesh.kill("sender-1")
        own_mesh.restart("sender-1")
        # A hang guard, not a speed bound: the killed sender's leased tasks come back
        # after their ack deadline (30 s), and a loaded CI machine sends slowly.
        deadline = time.monotonic() + 4 * WAIT_S
        while True:
            pages = [page async for page in client.notification_pages(nid)]
            sends = [s for page in pages for s in page.sends]
            # The audience's size is written once its last page's tasks are out: those
            # tasks may all be sent before it is.
            if len(sends) == 2500 and all(s.state == notify_pb2.SEND_SENT for s in sends) \
                    and pages[-1].recipient_count == 2500:
                break
            assert time.monotonic() < deadline, (
                f"{len(sends)} sends, {pages[-1].recipient_count} counted, by state "
                f"{collections.Counter(notify_pb2.SendState.Name(s.state) for s in sends)}")
            await asyncio.sleep(0.5)
        received: dict[str, int] = {}
        for mail in read_outbox(own_mesh.data_dir, "email"):
            for address in mail["to"]:
                received[address] = received.get(address, 0) + 1
        assert set(received) == {f"{rid}@example.com" for rid in members}  # no one lost
        for send in sends:  # a repeat only where the log shows the attempt it repeats
            attempts = sum(1 for e in send.timeline if e.state == notify_pb2.SEND_RENDERED)
            assert received[f"{send.recipient}@example.com"] <= attempts, send


async def test_rate_limit_counts_hold_across_a_sender_restart(own_mesh):
    async with Client(own_mesh.frontend_addr) as client:
        template, category, rid = unique("promo"), unique("promo"), unique("alice")
        await client.create_template(notify_pb2.Template(name=template, contents=[notify_pb2.TemplateContent(
            channel=notify_pb2.EMAIL, subject="Promo", text="Hi")]))
        await client.create_category(category, limit=2, period_s=3600)
        await client.upsert_recipient(rid, email=f"{rid}@example.com")
        for n in range(2):
            await settled(client, await client.notify(template, category, [rid], data={"n": n}), 1)
        own_mesh.restart("sender-1")
        _, sends = await settled(client, await client.notify(template, category, [rid], data={"n": 2}), 1)
        assert sends[(rid, notify_pb2.EMAIL)].state == notify_pb2.SUPPRESSED_RATE_LIMITED
        # high priority is counted but never held back
        _, sends = await settled(client, await client.notify(template, category, [rid], data={"n": 3},
                                                             priority=notify_pb2.HIGH), 1)
        assert sends[(rid, notify_pb2.EMAIL)].state == notify_pb2.SEND_SENT
        assert len(outbox_to(own_mesh, "email", f"{rid}@example.com")) == 3


def files_holding(directory, needle: bytes) -> list[str]:
    return [str(path) for path in directory.rglob("*") if path.is_file() and needle in path.read_bytes()]


async def test_deleting_a_recipient_leaves_its_address_in_no_replica_file_log_or_outbox(mesh, client):
    template, category, rid = unique("invoice"), unique("billing"), unique("gone")
    email, phone = f"{rid}@example.com", "+14155558877"
    await new_template(client, template)
    await client.create_category(category)
    await client.upsert_recipient(rid, email=email, phone=phone)
    nid = await client.notify(template, category, [rid], data={"invoice": 5, "amount": "1.00"})
    _, sends = await settled(client, nid, 2)
    assert {s.state for s in sends.values()} <= SENT
    assert outbox_to(mesh, "email", email) and outbox_to(mesh, "sms", phone)
    await client.delete_recipient(rid)
    # The erasure hook (set by the local mesh) made the local providers forget the addresses at once.
    assert outbox_to(mesh, "email", email) == [] and outbox_to(mesh, "sms", phone) == []
    # Every replica compacts the erased rows out of its files, after a short debounce.
    deadline = time.monotonic() + WAIT_S
    while holding := files_holding(mesh.data_dir, email.encode()) + files_holding(mesh.data_dir, phone.encode()):
        assert time.monotonic() < deadline, f"still holding the address: {holding}"
        await asyncio.sleep(0.5)
    # The log says what happened and still holds no address.
    notification = await client.get_notification(nid)
    assert email not in str(notification) and phone not in str(notification)
