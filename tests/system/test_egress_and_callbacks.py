"""Server-side request forgery and provider callbacks on a real mesh of their own:
URLs the mesh would call for a user (push endpoints, webhook URLs, the erasure
hook) at loopback, link-local (the cloud metadata service), private or other
non-public addresses are refused when given and again when sent to, unless the
cluster setting allowed_networks holds them; the local mesh allows loopback. SMS
status callbacks need the SMS provider's signature."""

import asyncio
import json
import time

import aiohttp
import pytest

from helpers import Receiver, frontend_log_lines, new_mesh, unique
from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from notifymesh import errors
from notifymesh.client import Client
from notifymesh.server import provider_callbacks

FORBIDDEN = [("http://169.254.169.254/latest/meta-data/", "link-local"), ("http://127.0.0.1:9/hook", "loopback"),
             ("http://localhost:9/hook", "loopback"), ("http://[::1]:9/hook", "loopback"),
             ("http://[::ffff:127.0.0.1]:9/hook", "loopback"), ("http://10.0.0.7/hook", "private"),
             ("https://192.168.1.1/hook", "private"), ("http://0.0.0.0:9/hook", "unspecified")]


@pytest.fixture(scope="module")
def egress_mesh(tmp_path_factory):
    """A mesh of its own: its allowed_networks changes."""
    mesh = new_mesh(tmp_path_factory.mktemp("egress"))
    yield mesh
    mesh.stop()


@pytest.fixture
async def client(egress_mesh):
    async with Client(egress_mesh.frontend_addr) as client:
        yield client
        await client.set_config("allowed_networks", None)  # back to the local mesh's loopback


async def allow(client: Client, networks: str, topic: str) -> None:
    """Sets allowed_networks and waits until the metadata service and the frontend follow it."""
    await client.set_config("allowed_networks", networks)
    loopback = "127.0.0.0/8" in networks
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            name = unique("probe")
            await client.create_subscription(name, topic, push_endpoint="http://127.0.0.1:9/probe")
            await client.delete_subscription(name)
            refused = False
        except errors.InvalidArgument:
            refused = True
        if refused != loopback:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)  # the frontends and senders follow the same watch


async def test_urls_at_non_public_addresses_are_refused_when_given_unless_allowed(client):
    topic = unique("ssrf")
    await client.create_topic(topic)
    await allow(client, "", topic)
    for url, why in FORBIDDEN:
        with pytest.raises(errors.InvalidArgument, match=f"is a {why} address.*allowed_networks") as refused:
            await client.create_subscription(unique("ssrf-sub"), topic, push_endpoint=url)
        assert url[:30] in str(refused.value)
        with pytest.raises(errors.InvalidArgument, match=f"webhook_url.*{why}"):
            await client.upsert_recipient(unique("mallory"), webhook_url=url)
    with pytest.raises(errors.InvalidArgument, match="erasure_hook_url.*link-local"):
        await client.set_config("erasure_hook_url", "http://169.254.169.254/erase")
    # Providers' endpoints too, whichever kind (each also checks at every connection).
    for provider, why in ((notify_pb2.Provider(channel=notify_pb2.PUSH, kind="fcm", name=unique("fcm"), settings={
                               "project_id": "p", "client_email": "a@p.iam",
                               "token_url": "http://169.254.169.254/token"}), "token_url.*link-local"),
                          (notify_pb2.Provider(channel=notify_pb2.PUSH, kind="apns", name=unique("apns"), settings={
                               "key_id": "K", "team_id": "T", "topic": "com.x",
                               "base_url": "http://10.1.2.3:443"}), "base_url.*private"),
                          (notify_pb2.Provider(channel=notify_pb2.EMAIL, kind="smtp", name=unique("smtp"), settings={
                               "host": "127.0.0.1", "port": "25", "from": "a@example.com"}), "smtp provider host.*loopback"),
                          (notify_pb2.Provider(channel=notify_pb2.SMS, kind="sms_http", name=unique("sms"), settings={
                               "base_url": "http://[::1]:8080", "account": "a", "from": "+14155550100"}), "loopback")):
        with pytest.raises(errors.InvalidArgument, match=why):
            await client.set_provider(provider)
    reply = await client.upsert_recipients([notify_pb2.Recipient(id="fine", webhook_url="https://8.8.8.8/hook"),
                                            notify_pb2.Recipient(id="evil", webhook_url=FORBIDDEN[0][0])])
    assert reply.stored == 1 and [(e.index, "link-local" in e.reason) for e in reply.errors] == [(1, True)]
    existing = unique("ssrf-pull")
    await client.create_subscription(existing, topic)
    with pytest.raises(errors.InvalidArgument, match="link-local"):
        await client.update_subscription(existing, push_endpoint=FORBIDDEN[0][0])

    await allow(client, "10.0.0.0/8,127.0.0.0/8", topic)  # a network named in the setting is allowed
    allowed = await client.create_subscription(unique("ssrf-sub"), topic, push_endpoint="http://10.0.0.7/hook")
    assert allowed.push_config.endpoint == "http://10.0.0.7/hook"
    await client.delete_subscription(allowed.name)
    with pytest.raises(errors.InvalidArgument, match="link-local"):
        await client.create_subscription(unique("ssrf-sub"), topic, push_endpoint=FORBIDDEN[0][0])
    with pytest.raises(errors.InvalidArgument, match="allowed_networks"):
        await client.set_config("allowed_networks", "10.0.0.0/33")


async def test_an_endpoint_allowed_when_given_is_checked_again_at_each_send(client):
    """What a DNS answer changed after the check (rebinding) comes to: the address
    the sender would connect to is checked when it sends."""
    receiver = Receiver()
    try:
        topic, sub = unique("rebind"), unique("rebind-sub")
        await client.create_topic(topic)
        url = receiver.url.replace("127.0.0.1", "localhost")
        await client.create_subscription(sub, topic, push_endpoint=url, min_backoff_s=1, max_backoff_s=1)
        await allow(client, "", topic)
        [message_id] = await client.publish(topic, [b"to an address now forbidden"])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            status = await client.get_message_status(message_id)
            attempts = [a for d in status.deliveries for a in d.attempts if a.outcome != pubsub_pb2.IN_FLIGHT]
            if attempts:
                break
            await asyncio.sleep(0.2)
        assert attempts and attempts[0].outcome == pubsub_pb2.NACKED, status
        assert "ForbiddenAddress" in attempts[0].error and "loopback" in attempts[0].error
        assert receiver.requests == []
        await allow(client, "127.0.0.0/8,::1/128", topic)
        deadline = time.monotonic() + 15
        while not receiver.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert [json.loads(body)["message_id"] for _, _, body in receiver.requests][:1] == [message_id]
    finally:
        receiver.close()


async def test_sms_status_callbacks_need_the_providers_signature(egress_mesh, client):
    """The local SMS fake signs its delivery receipts, so a send ends delivered; a
    callback without the signature is 401, with a wrong one 403, each logged."""
    template, category, rid = unique("receipt"), unique("receipts"), unique("carol")
    await client.create_category(category)
    await client.create_template(notify_pb2.Template(name=template, contents=[
        notify_pb2.TemplateContent(channel=notify_pb2.SMS, text="hi")]))
    await client.upsert_recipient(rid, phone="+14155550123")
    nid = await client.notify(template, category, [rid])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sends = (await client.get_notification(nid)).sends
        if sends and sends[0].state == notify_pb2.SEND_DELIVERED:
            break
        await asyncio.sleep(0.2)
    assert sends and sends[0].state == notify_pb2.SEND_DELIVERED, sends

    url = f"http://127.0.0.1:{egress_mesh.frontend_http_ports()[0]}/t/s/anything"
    form = {"MessageSid": "SM1", "MessageStatus": "failed"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=form) as answer:
            assert answer.status == 401
        forged = {provider_callbacks.SMS_SIGNATURE_HEADER: provider_callbacks.sms_signature("guess", url, form)}
        async with session.post(url, data=form, headers=forged) as answer:
            assert answer.status == 403
    assert sum(frontend_log_lines(egress_mesh, "provider callback refused").values()) == 2
