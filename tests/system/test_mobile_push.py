"""Mobile push end to end on the real mesh: devices through the CLI and the API,
Notify through the fan-out and the push channel worker to the local FCM and APNs
fakes (HTTP and HTTP/2), a dead token pruned and logged, throttling retried, and
the devices erased with their recipient."""

import json

import aiohttp
import pytest
from helpers import cli, unique
from test_notify_pipeline import read_outbox, settled

from deploy.local_providers import apns_record, credentials, provider_records
from gen.notifymesh.v1 import notify_pb2
from notifymesh import errors

APNS_LIVE, APNS_DEAD = "a1" * 32, "d1" * 32


async def fault(mesh, **spec) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{mesh.provider_ports[1]}/_faults",
                             json={"channel": "push", **spec}) as response:
            assert response.status == 200, await response.text()


async def push_template(client) -> str:
    name = unique("push")
    await client.create_template(notify_pb2.Template(name=name, contents=[notify_pb2.TemplateContent(
        channel=notify_pb2.PUSH, subject="Invoice {{ data.invoice }}", text="{{ data.amount }} is due",
        json_body='{"invoice": "{{ data.invoice }}", "n": {{ data.invoice }}}')]))
    return name


def pushed_to(mesh, token: str) -> list[dict]:
    return [r for r in read_outbox(mesh.data_dir, "push") if r["to"] == token]


async def test_push_reaches_every_device_and_a_dead_token_is_pruned_and_logged(mesh, client):
    template, category = await push_template(client), unique("billing")
    await client.create_category(category)
    rid = unique("alice")
    await client.upsert_recipient(rid, locale="en")
    live, dead = unique("live-token"), unique("dead-token")
    added = cli(mesh, "device", "add", rid, "--platform", "fcm", "--token", live, "--app-id", "com.example.app")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["token"] == live
    await client.add_device(rid, "fcm", dead)
    await fault(mesh, dead_token=dead)

    nid = await client.notify(template, category, [rid], data={"invoice": 17, "amount": "12.00"})
    _, sends = await settled(client, nid, 1)
    send = sends[(rid, notify_pb2.PUSH)]
    assert send.state == notify_pb2.SEND_SENT and send.provider == "fcm"
    assert [e.state for e in send.timeline] == [notify_pb2.SEND_QUEUED, notify_pb2.SEND_RENDERED,
                                                notify_pb2.SEND_FAILED, notify_pb2.SEND_SENT]
    failed = send.timeline[2]
    assert "fcm HTTP 404 UNREGISTERED" in failed.reason and "token dead: device removed" in failed.reason
    assert dead not in failed.reason  # the log names a device by the end of its token only
    (got,) = pushed_to(mesh, live)
    assert (got["title"], got["body"], got["data"]) == ("Invoice 17", "12.00 is due", {"invoice": "17", "n": "17"})
    assert send.provider_message_id == got["id"]
    assert pushed_to(mesh, dead) == []
    assert [d.token for d in await client.list_devices(rid)] == [live]
    listed = cli(mesh, "device", "list", rid)
    assert [json.loads(line)["token"] for line in listed.stdout.splitlines()] == [live]
    shown = cli(mesh, "outbox", "list", "--channel", "push", "--data-dir", str(mesh.data_dir))
    assert any(json.loads(line)["to"] == live for line in shown.stdout.splitlines())

    # Throttled (429 with Retry-After): failed, backed off, sent on the next attempt.
    await fault(mesh, status=429, count=1, retry_after=1)
    nid = await client.notify(template, category, [rid], data={"invoice": 18, "amount": "1.00"})
    _, sends = await settled(client, nid, 1)
    timeline = sends[(rid, notify_pb2.PUSH)].timeline
    assert [e.state for e in timeline] == [notify_pb2.SEND_QUEUED, notify_pb2.SEND_RENDERED, notify_pb2.SEND_FAILED,
                                           notify_pb2.SEND_RENDERED, notify_pb2.SEND_SENT]
    assert "QUOTA_EXCEEDED" in timeline[2].reason
    assert len([r for r in pushed_to(mesh, live) if r["title"] == "Invoice 18"]) == 1

    # Removed by the CLI: nothing left to push to.
    assert cli(mesh, "device", "remove", rid, "--platform", "fcm", "--token", live).returncode == 0
    assert await client.list_devices(rid) == []
    nid = await client.notify(template, category, [rid], data={"invoice": 19, "amount": "1.00"})
    _, sends = await settled(client, nid, 1)
    assert sends[(rid, notify_pb2.PUSH)].state == notify_pb2.SUPPRESSED_NO_CONTACT
    assert sends[(rid, notify_pb2.PUSH)].reason == "no push device"


async def test_apns_over_http2_and_devices_erased_with_their_recipient(mesh, client):
    creds = credentials(mesh.data_dir)
    await client.set_provider(apns_record(creds, "127.0.0.1", mesh.provider_ports[2]))
    try:
        template, category = await push_template(client), unique("billing")
        await client.create_category(category)
        rid = unique("bob")
        await client.upsert_recipient(rid, email=f"{rid}@example.com")
        await client.add_device(rid, "apns", APNS_LIVE.upper())  # stored in lower case
        await client.add_device(rid, "apns", APNS_DEAD)
        await fault(mesh, dead_token=APNS_DEAD)
        nid = await client.notify(template, category, [rid], data={"invoice": 3, "amount": "2.00"},
                                  channels=["push"])
        _, sends = await settled(client, nid, 1)
        send = sends[(rid, notify_pb2.PUSH)]
        assert send.state == notify_pb2.SEND_SENT and send.provider == "apns"
        assert "apns HTTP 410 Unregistered" in send.timeline[2].reason
        got = [r for r in pushed_to(mesh, APNS_LIVE) if r["title"] == "Invoice 3"]
        assert len(got) == 1 and got[0]["provider"] == "apns" and got[0]["data"] == {"invoice": "3", "n": "3"}
        assert [d.token for d in await client.list_devices(rid)] == [APNS_LIVE]
    finally:
        [fcm] = [r for r in provider_records(creds, "127.0.0.1", *mesh.provider_ports[:2])
                 if r.channel == notify_pb2.PUSH]
        await client.set_provider(fcm)

    await client.delete_recipient(rid)
    assert await client.list_devices(rid) == []
    assert pushed_to(mesh, APNS_LIVE) == []  # the erasure hook reached the outbox too
    with pytest.raises(errors.NotFound):
        await client.add_device(rid, "fcm", "t")  # a device needs its recipient


async def test_devices_are_checked(mesh, client):
    rid = unique("carol")
    await client.upsert_recipient(rid)
    for platform, token, app_id, says in (("gcm", "t", "", "platform 'gcm'"), ("apns", "xyz", "", "hex digits"),
                                          ("fcm", "a b", "", "fcm token"), ("fcm", "t", "-bad", "app id")):
        with pytest.raises(errors.InvalidArgument, match=says):
            await client.add_device(rid, platform, token, app_id)
    first = await client.add_device(rid, "fcm", "tok")
    again = await client.add_device(rid, "fcm", "tok", "com.example")  # refreshed, not added twice
    [listed] = await client.list_devices(rid)
    assert listed.app_id == "com.example" and again.last_seen.ToMilliseconds() >= first.last_seen.ToMilliseconds()
    with pytest.raises(errors.NotFound):
        await client.remove_device(rid, "fcm", "other")
    for i in range(19):
        await client.add_device(rid, "fcm", f"tok{i}")
    with pytest.raises(errors.ResourceExhausted, match="20 devices"):
        await client.add_device(rid, "fcm", "one-too-many")
    bad = cli(mesh, "device", "add", rid, "--platform", "gcm", "--token", "t")
    assert bad.returncode == 2 and b"invalid choice" in bad.stderr
    refused = cli(mesh, "device", "add", rid, "--platform", "apns", "--token", "t")
    assert refused.returncode == 1 and b"INVALID_ARGUMENT" in refused.stderr and b"Traceback" not in refused.stderr
