"""The events stream, tracking and stats on the real mesh: an email's open pixel
and tracked link and an SMS delivery receipt (the local SMS fake calls the
status callback back) recorded through the frontend's HTTP endpoints, visible in
`notification status` and as events on a public subscription of
notifymesh.events; a forged or altered link is 404 and records nothing; the
counts of `notifymesh stats`, kept by the mesh's consumer of the events topic,
match the events seen."""

import asyncio
import json
import time

import aiohttp
from helpers import cli, unique
from test_notify_pipeline import outbox_to

from gen.notifymesh.v1 import events_pb2, notify_pb2
from notifymesh import errors
from notifymesh.server.internal_topics import EVENTS_TOPIC

WAIT_S = 60
EMAIL, SMS = notify_pb2.EMAIL, notify_pb2.SMS


async def eventually(probe, what: str):
    """probe()'s first truthy answer, within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = await probe()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {WAIT_S}s: {what}"
        await asyncio.sleep(0.2)


async def test_opens_clicks_and_receipts_are_recorded_streamed_and_counted(mesh, client):
    template, category, rid = unique("promo"), unique("news"), unique("reader")
    stream = unique("analytics")
    await client.create_subscription(stream, EVENTS_TOPIC)  # the one reserved topic open to subscriptions
    await client.create_category(category)
    await client.create_template(notify_pb2.Template(name=template, contents=[
        notify_pb2.TemplateContent(channel=EMAIL, subject="Sale", text="Sale at https://shop.example/sale",
                                   html='<html><body><a href="https://shop.example/sale?id={{ recipient.id }}">'
                                        'Sale</a></body></html>'),
        notify_pb2.TemplateContent(channel=SMS, text="Sale today")]))
    address = f"{rid}@example.com"
    await client.upsert_recipient(notify_pb2.Recipient(id=rid, email=address, phone="+14155550199"))
    nid = await client.notify(template, category, [rid])

    mail = (await eventually(lambda: asyncio.sleep(0, outbox_to(mesh, "email", address)), "the email"))[0]
    pixel = mail["html"].split('<img src="')[1].split('"')[0]
    link = mail["html"].split('href="')[1].split('"')[0]
    assert "/t/o/" in pixel and "/t/c/" in link and "shop.example" not in link
    async with aiohttp.ClientSession() as http:
        base, token = link.split("/t/c/")
        payload, mac = token.split(".")
        forged = [f"{base}/t/c/{payload}.{mac[:-4]}AAAA", f"{base}/t/o/{token}", f"{base}/t/c/{payload}",
                  f"{base}/t/o/nonsense"]
        for url in forged:
            async with http.get(url, allow_redirects=False) as answer:
                assert answer.status == 404, url
        for _ in range(2):  # the second open and click record nothing more
            async with http.get(pixel) as answer:
                assert answer.status == 200 and answer.content_type == "image/gif"
            async with http.get(link, allow_redirects=False) as answer:
                assert answer.status == 302 and answer.headers["Location"] == f"https://shop.example/sale?id={rid}"

    async def settled():
        sends = {s.channel: s for s in (await client.get_notification(nid)).sends}
        done = sends.get(SMS) and sends[SMS].state == notify_pb2.SEND_DELIVERED and \
            notify_pb2.SEND_CLICKED in {e.state for e in sends[EMAIL].timeline}
        return sends if done else None

    sends = await eventually(settled, "the SMS delivered (the fake's status callback) and the email clicked")
    email_states = [e.state for e in sends[EMAIL].timeline]
    assert email_states == [notify_pb2.SEND_QUEUED, notify_pb2.SEND_RENDERED, notify_pb2.SEND_SENT,
                            notify_pb2.SEND_OPENED, notify_pb2.SEND_CLICKED]
    assert sends[EMAIL].timeline[-1].reason == "link https://shop.example/sale"
    sms = await client.get_notification(nid)
    delivered = [s for s in sms.sends if s.channel == SMS][0]
    assert delivered.provider_message_id.startswith("SM")  # the provider's id, from the receipt
    # The provider that sent each (by name: the local mesh's are unnamed, "default"), after the receipt too.
    assert (delivered.provider, sends[EMAIL].provider) == ("default", "default")

    status = cli(mesh, "notification", "status", nid)
    assert status.returncode == 0, status.stderr
    states = {(r["channel"], r["state"]) for r in map(json.loads, status.stdout.splitlines()[1:])}
    assert states == {("email", "SEND_CLICKED"), ("sms", "SEND_DELIVERED")}

    seen: list[events_pb2.NotificationEvent] = []
    wanted = {(EMAIL, s) for s in email_states} | {(SMS, notify_pb2.SEND_SENT), (SMS, notify_pb2.SEND_DELIVERED)}

    async def streamed():
        async for message in client.subscribe(stream):
            seen.extend(e for e in events_pb2.NotificationEvents.FromString(message.message.data).events
                        if e.notification_id == nid)
            await client.acknowledge(stream, [message.ack_id])
            if wanted <= {(e.channel, e.event.state) for e in seen}:
                return

    await asyncio.wait_for(streamed(), WAIT_S)
    assert {(e.template, e.category, e.recipient) for e in seen} == {(template, category, rid)}
    # once each (no second open or click); in any order: the topic's partitions interleave
    assert sorted(e.event.state for e in seen if e.channel == EMAIL) == sorted(email_states)

    def stats():
        done = cli(mesh, "stats", "--template", template, "--since", "1h")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    async def counted():
        found = stats()
        return found if found["delivered"] == 1 and found["clicked"] == 1 else None

    found = await eventually(counted, "the stats consumer's counts")
    assert {k: found[k] for k in ("queued", "sent", "delivered", "failed", "opened", "clicked", "suppressed")} == {
        "queued": 2, "sent": 2, "delivered": 1, "failed": 0, "opened": 1, "clicked": 1, "suppressed": 0}
    assert (found["open_rate"], found["click_rate"], found["delivery_rate"]) == (0.5, 0.5, 0.5)
    by_category = await client.get_stats(category=category)
    assert (by_category.sent, by_category.opened) == (2, 1)
    assert (await client.get_stats(template=unique("other"))).sent == 0


async def test_the_events_topic_takes_subscriptions_but_no_publishes_and_stats_says_what_is_wrong(mesh, client):
    try:
        await client.publish(EVENTS_TOPIC, [b"forged"])
        raise AssertionError("a public publish to the events topic was taken")
    except errors.InvalidArgument as e:
        assert "reserved" in e.details
    try:
        await client.create_subscription(unique("notifymesh.x"), EVENTS_TOPIC)
        raise AssertionError("a reserved subscription name was taken")
    except errors.InvalidArgument as e:
        assert "reserved" in e.details
    table = cli(mesh, "stats", "--output", "table")
    assert table.returncode == 0 and table.stdout.split()[:3] == [b"SINCE", b"TEMPLATE", b"CATEGORY"], table.stderr
    too_far = cli(mesh, "stats", "--since", "40d")
    assert too_far.returncode == 1 and b"31 days" in too_far.stderr and b"Traceback" not in too_far.stderr
