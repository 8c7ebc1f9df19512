"""Push signing secrets on the real mesh: shown once (at creation, at rotation), never
read back; every push signed with a timestamp (Notifymesh-Signature) beside the
deprecated body-only signature; rotation takes effect at the next push, the old
secret signing beside the new one for the rotation's overlap."""

import asyncio
import datetime
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import Receiver, cli, unique
from notifymesh import errors, webhooks

MIRROR_S = 0.5  # time for every process's watch to see an etcd record change


async def wait_until(predicate, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return predicate()


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


async def test_a_push_secret_is_shown_at_creation_and_rotation_only(mesh, client, receiver):
    topic, sub, pull = unique("sec"), unique("sec-push"), unique("sec-pull")
    await client.create_topic(topic)
    created = await client.create_subscription(sub, topic, push_endpoint=receiver.url)
    await client.create_subscription(pull, topic)
    assert len(created.push_config.secret) == 64
    got = await client.get_subscription(sub)
    assert (got.push_config.secret, got.push_config.secret_set) == ("", True)
    [listed] = [s for s in await client.list_subscriptions(topic) if s.name == sub]
    assert (listed.push_config.secret, listed.push_config.secret_set) == ("", True)
    updated = await client.update_subscription(sub, ack_deadline_s=20)
    assert (updated.push_config.secret, updated.push_config.secret_set) == ("", True)
    assert not (await client.get_subscription(pull)).push_config.secret_set

    [first] = await client.publish(topic, [b"one"])
    assert await wait_until(lambda: receiver.requests)
    _, headers, body = receiver.requests[0]
    assert webhooks.verify(created.push_config.secret, headers[webhooks.HEADER], body)
    assert abs(int(headers[webhooks.HEADER].split(",")[0][2:]) - time.time()) < 30
    assert headers[webhooks.LEGACY_HEADER] == webhooks.legacy_signature(created.push_config.secret, body)

    rotated = await client.rotate_push_secret(sub)  # the default overlap: a day
    assert len(rotated.push_config.secret) == 64 and rotated.push_config.secret != created.push_config.secret
    assert rotated.push_config.previous_secret == ""
    day_from_now = time.time() + 24 * 3600
    assert abs(rotated.push_config.previous_secret_expire_time.ToSeconds() - day_from_now) < 30
    got = (await client.get_subscription(sub)).push_config
    assert (got.secret, got.previous_secret) == ("", "") and got.previous_secret_expire_time.ToSeconds() > 0
    await asyncio.sleep(MIRROR_S)
    [second] = await client.publish(topic, [b"two"])
    assert await wait_until(lambda: any(json.loads(b)["message_id"] == second for _, _, b in receiver.requests))
    [(_, headers, body)] = [r for r in receiver.requests if json.loads(r[2])["message_id"] == second]
    assert webhooks.verify(rotated.push_config.secret, headers[webhooks.HEADER], body)
    assert webhooks.verify(created.push_config.secret, headers[webhooks.HEADER], body)  # the overlap
    assert headers[webhooks.LEGACY_HEADER] == webhooks.legacy_signature(rotated.push_config.secret, body)
    assert first != second

    with pytest.raises(errors.FailedPrecondition, match="not a push subscription"):
        await client.rotate_push_secret(pull)
    with pytest.raises(errors.NotFound):
        await client.rotate_push_secret(unique("nope"))


async def test_the_cli_prints_a_push_secret_once(mesh, client, receiver):
    topic, sub = unique("clisec"), unique("clisec-push")
    await client.create_topic(topic)
    made = cli(mesh, "subscription", "create", sub, "--topic", topic, "--push-endpoint", receiver.url)
    assert made.returncode == 0, made.stderr
    secret = json.loads(made.stdout)["push_secret"]
    for args in (("subscription", "get", sub), ("subscription", "list", "--topic", topic),
                 ("subscription", "update", sub, "--ack-deadline", "20s")):
        shown = cli(mesh, *args)
        assert shown.returncode == 0, shown.stderr
        line = json.loads(shown.stdout.splitlines()[0])
        assert "push_secret" not in line and line["push_secret_set"] is True, line
        assert secret.encode() not in shown.stdout
    rotated = cli(mesh, "subscription", "rotate-secret", sub, "--overlap", "2h")
    assert rotated.returncode == 0, rotated.stderr
    line = json.loads(rotated.stdout)
    new = line["push_secret"]
    assert len(new) == 64 and new != secret and secret.encode() not in rotated.stdout
    expires = datetime.datetime.fromisoformat(line["previous_secret_expire_time"].replace("Z", "+00:00"))
    assert abs(expires.timestamp() - (time.time() + 7200)) < 30
    shown = json.loads(cli(mesh, "subscription", "get", sub).stdout)
    assert shown["previous_secret_expire_time"] == line["previous_secret_expire_time"]
    at_once = json.loads(cli(mesh, "subscription", "rotate-secret", sub, "--overlap", "0").stdout)
    assert "previous_secret_expire_time" not in at_once
    too_long = cli(mesh, "subscription", "rotate-secret", sub, "--overlap", "8d")
    assert too_long.returncode == 1 and b"INVALID_ARGUMENT" in too_long.stderr and b"Traceback" not in too_long.stderr
    missing = cli(mesh, "subscription", "rotate-secret", unique("nope"))
    assert missing.returncode == 1 and b"NOT_FOUND" in missing.stderr


class OldSecretReceiver:
    """A webhook receiver that has not deployed the new secret yet: it verifies each
    push with the secret it holds (set once the subscription made it) and answers 200
    or 401, recording (message id, status, signature header) for each request."""

    def __init__(self):
        self.secret = ""
        self.answers: list[tuple[str, int, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                header = self.headers.get(webhooks.HEADER, "")
                status = 200 if webhooks.verify(receiver.secret, header, body) else 401
                receiver.answers.append((json.loads(body)["message_id"], status, header))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    async def first_answer(self, message_id: str) -> tuple[int, str]:
        """(status, signature header) of the first request carrying message_id."""
        assert await wait_until(lambda: any(m == message_id for m, _, _ in self.answers)), message_id
        return next((status, header) for m, status, header in self.answers if m == message_id)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def old_secret_receiver():
    made = OldSecretReceiver()
    yield made
    made.close()


async def test_a_receiver_with_the_old_secret_accepts_pushes_until_the_overlap_ends(mesh, client,
                                                                                  old_secret_receiver):
    receiver, overlap_s = old_secret_receiver, 3.0
    topic, sub = unique("overlap"), unique("overlap-push")
    await client.create_topic(topic)
    receiver.secret = old = (await client.create_subscription(sub, topic, push_endpoint=receiver.url)
                             ).push_config.secret
    [before] = await client.publish(topic, [b"before"])
    assert (await receiver.first_answer(before))[0] == 200

    rotated = await client.rotate_push_secret(sub, previous_secret_ttl_s=overlap_s)
    new, expires_s = rotated.push_config.secret, rotated.push_config.previous_secret_expire_time.ToMilliseconds() / 1000
    assert abs(expires_s - (time.time() + overlap_s)) < 2 and rotated.push_config.previous_secret == ""
    await asyncio.sleep(MIRROR_S)
    [during] = await client.publish(topic, [b"during"])
    status, header = await receiver.first_answer(during)
    late = " (the push came after the overlap: too slow to tell)" if time.time() > expires_s else ""
    assert status == 200 and header.count("v1=") == 2, header + late  # signed with both: the old verifies

    await asyncio.sleep(max(0.0, expires_s - time.time()) + 0.2)
    [after] = await client.publish(topic, [b"after"])
    status, header = await receiver.first_answer(after)
    assert status == 401 and header.count("v1=") == 1  # the overlap is over: the new secret alone
    assert not (await client.get_subscription(sub)).push_config.HasField("previous_secret_expire_time")

    receiver.secret = new  # the receiver deployed the new secret; the next rotation ends it at once
    assert (await client.rotate_push_secret(sub, previous_secret_ttl_s=0)).push_config.HasField(
        "previous_secret_expire_time") is False
    await asyncio.sleep(MIRROR_S)
    [at_once] = await client.publish(topic, [b"at once"])
    status, header = await receiver.first_answer(at_once)
    assert status == 401 and header.count("v1=") == 1
    assert old != new
    await client.delete_subscription(sub)  # the refused pushes are retried until then


async def test_a_second_rotation_during_an_overlap_keeps_two_secrets_signing(mesh, client, receiver):
    topic, sub = unique("twice"), unique("twice-push")
    await client.create_topic(topic)
    first = (await client.create_subscription(sub, topic, push_endpoint=receiver.url)).push_config.secret
    second = (await client.rotate_push_secret(sub, previous_secret_ttl_s=600)).push_config.secret
    third = (await client.rotate_push_secret(sub, previous_secret_ttl_s=600)).push_config.secret
    await client.update_subscription(sub, ack_deadline_s=20)  # an update keeps the previous secret too
    await asyncio.sleep(MIRROR_S)
    [sent] = await client.publish(topic, [b"after two rotations"])
    assert await wait_until(lambda: any(json.loads(b)["message_id"] == sent for _, _, b in receiver.requests))
    [(_, headers, body)] = [r for r in receiver.requests if json.loads(r[2])["message_id"] == sent]
    header = headers[webhooks.HEADER]
    assert header.count("v1=") == 2, header
    assert webhooks.verify(third, header, body) and webhooks.verify(second, header, body)
    assert not webhooks.verify(first, header, body)  # the oldest ended with the second rotation

    for ttl, message in ((7 * 24 * 3600 + 1, "previous secret ttl .* out of range"),
                         (-1, "previous secret ttl .* out of range")):
        with pytest.raises(errors.InvalidArgument, match=message):
            await client.rotate_push_secret(sub, previous_secret_ttl_s=ttl)
