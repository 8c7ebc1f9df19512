"""Encryption at rest on a real mesh: no file of any storage node (RocksDB tables,
write-ahead log, manifest) nor of etcd holds a payload, an attribute, a recipient's
address, phone number or device token (keys are not sealed: a device row is keyed
by a digest of its token), a notification's data, a dead letter's error, a push
secret or a provider credential in the clear; and a full restart of every process
still delivers, with secrets opened again."""

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time

import pytest
from helpers import Receiver, cli, new_mesh, unique

from deploy import local_providers
from gen.notifymesh.v1 import notify_pb2
from notifymesh.client import Client, Message
from notifymesh.server.sealing import new_master_key_line

WAIT_S = 60


def files_holding(mesh, needles: dict[str, bytes]) -> dict[str, list[str]]:
    """needle name -> the files (of the storage nodes and etcd members) holding it."""
    found: dict[str, list[str]] = {}
    for directory in [*mesh.data_dir.glob("storage-*"), *mesh.data_dir.glob("etcd-*")]:
        for path in directory.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for name, needle in needles.items():
                    if needle in data:
                        found.setdefault(name, []).append(str(path.relative_to(mesh.data_dir)))
    return found


async def until(check, what: str):
    deadline = time.monotonic() + WAIT_S
    while not (result := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)
    return result


@pytest.fixture
def sealed_mesh(tmp_path):
    mesh = new_mesh(tmp_path / "mesh")
    yield mesh
    mesh.stop()


async def test_nothing_clients_sent_is_on_disk_in_the_clear_and_a_full_restart_still_delivers(sealed_mesh):
    mesh, marker = sealed_mesh, secrets.token_hex(12)
    payload, attribute = f"payload-{marker}".encode(), f"attribute-{marker}"
    email, phone = f"mail-{marker}@example.com", "+1415555" + str(secrets.randbelow(10 ** 4)).zfill(4)
    note, reason = f"note-{marker}", f"reason-{marker}"
    device_token = f"fcm-token-{marker}"
    receiver = Receiver()
    try:
        async with Client(mesh.frontend_addr) as client:
            topic, pull, push, dead = unique("vault"), unique("pull"), unique("push"), unique("dead")
            await client.create_topic(topic)
            await client.create_topic(dead)
            await client.create_subscription(pull, topic)
            await client.create_subscription(dead, dead)
            pushed = await client.create_subscription(push, topic, push_endpoint=receiver.url)
            push_secret = pushed.push_config.secret
            assert push_secret
            # A rotated push secret, and the one it replaced (kept for the overlap): sealed as well.
            rotated, quiet = unique("rotated"), unique("quiet")  # a topic of its own: nothing pushed with them
            await client.create_topic(quiet)
            replaced = (await client.create_subscription(rotated, quiet, push_endpoint=receiver.url)).push_config.secret
            rotated_secret = (await client.rotate_push_secret(rotated, 3600)).push_config.secret
            # A dead letter with an error: the delivery log and the saved delivery state hold it.
            nacked = unique("nacked")
            await client.create_subscription(nacked, topic, max_delivery_attempts=5, dead_letter_topic=dead)
            (message_id,) = await client.publish(topic, [Message(payload, {"note": attribute})])
            received = await until(lambda: client.pull(nacked, 1, wait_s=1), "the message on the nacked subscription")
            await client.nack(nacked, [received[0].ack_id], terminal=True, reason=reason)
            await until(lambda: client.pull(dead, 1, wait_s=1), "the dead letter")
            # Contact data and the notification log.
            template, category, rid = unique("t"), unique("c"), unique("r")
            await client.create_template(notify_pb2.Template(name=template, contents=[notify_pb2.TemplateContent(
                channel=notify_pb2.EMAIL, subject="Hi", text="{{ data.note }}")]))
            await client.create_category(category)
            await client.upsert_recipient(rid, email=email, phone=phone)
            await client.add_device(rid, "fcm", device_token)
            nid = await client.notify(template, category, [rid], data={"note": note})

            async def sent():
                notification = await client.get_notification(nid)
                return any(s.state in (notify_pb2.SEND_SENT, notify_pb2.SEND_DELIVERED) for s in notification.sends)
            await until(sent, "the notification's email")
            await until(lambda: asyncio.sleep(0, result=bool(receiver.requests)), "the push")
        provider_secrets = {f"provider {r.kind} secret": r.secret.encode()[-48:]
                            for r in local_providers.provider_records(local_providers.credentials(mesh.data_dir),
                                                                      "127.0.0.1", 1, 2) if r.secret}
        needles = {"payload": payload, "attribute": attribute.encode(), "email": email.encode(),
                   "phone": phone.encode(), "device token": device_token.encode(),
                   "notification data": note.encode(), "nack reason": reason.encode(),
                   "push secret": push_secret.encode(), "rotated push secret": rotated_secret.encode(),
                   "previous push secret": replaced.encode(), **provider_secrets}

        mesh.stop()  # every process: RocksDB flushed and closed, etcd stopped
        assert files_holding(mesh, needles) == {}
        # The check can find what is there: keys are in the clear (RocksDB stores a key
        # as the part after what it shares with the previous one: a recipient id's
        # random tail), etcd's record of the topic too.
        controls = {"recipient id": rid[-8:].encode(), "topic": topic.encode()}
        found = files_holding(mesh, controls)
        assert any(path.startswith("storage-") for path in found.get("recipient id", [])), found
        assert any(path.startswith("etcd-") for path in found.get("topic", [])), found

        mesh.start()
        async with Client(mesh.frontend_addr) as client:
            received = await until(lambda: client.pull(pull, 1, wait_s=1), "the message after the restart")
            assert received[0].message.data == payload
            assert received[0].message.attributes["note"] == attribute
            assert (await client.get_message_status(message_id)).message.attributes["note"] == attribute
            before = len(receiver.requests)
            await client.publish(topic, [Message(b"after the restart")])
            await until(lambda: asyncio.sleep(0, result=len(receiver.requests) > before), "a push after the restart")
        _, headers, body = receiver.requests[-1]
        assert base64.b64decode(json.loads(body)["data"]) == b"after the restart"  # signed with the secret opened again
        signature = hmac.new(push_secret.encode(), body, hashlib.sha256).hexdigest()
        assert any(signature in value for value in headers.values())
    finally:
        receiver.close()


def test_keys_rotate_makes_a_data_key_that_new_writes_use_and_the_old_still_opens(sealed_mesh):
    mesh, topic = sealed_mesh, unique("rotated")
    assert cli(mesh, "topic", "create", topic).returncode == 0
    assert cli(mesh, "subscription", "create", topic + "-s", "--topic", topic).returncode == 0
    assert cli(mesh, "publish", topic, "sealed with data key 1").returncode == 0
    done = cli(mesh, "keys", "rotate")
    assert done.returncode == 0, done.stderr
    rotated = json.loads(done.stdout)
    assert rotated["data_key"] == 2 and rotated["rewrapped"] == 0
    # A new master key first in the key file; the data keys re-wrapped under it.
    old = mesh.master_key_file.read_text()
    mesh.master_key_file.write_text(new_master_key_line() + "\n" + old)
    done = cli(mesh, "keys", "rotate", "--master")
    assert done.returncode == 0, done.stderr
    rewrapped = json.loads(done.stdout)
    assert rewrapped["rewrapped"] == 2 and rewrapped["master_key_id"] != ""
    time.sleep(3.5)  # the new data key becomes active
    assert cli(mesh, "publish", topic, "sealed with data key 2").returncode == 0
    # Every process restarted with the new master key alone: both data keys still open.
    mesh.stop()
    mesh.master_key_file.write_text(mesh.master_key_file.read_text().splitlines()[0] + "\n")
    mesh.start()
    seen, deadline = b"", time.monotonic() + WAIT_S
    while not (b"sealed with data key 1" in seen and b"sealed with data key 2" in seen):
        assert time.monotonic() < deadline, seen
        pulled = cli(mesh, "pull", topic + "-s", "--max", "10", "--wait", "2s", "--ack")
        assert pulled.returncode == 0, pulled.stderr
        seen += pulled.stdout
