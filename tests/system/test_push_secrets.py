"""Push signing secrets on the real mesh: shown once (at creation, at rotation), never
read back; every push signed with a timestamp (Notifymesh-Signature) beside the
deprecated body-only signature; rotation takes effect at the next push."""

import asyncio
import json
import time

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

    rotated = await client.rotate_push_secret(sub)
    assert len(rotated.push_config.secret) == 64 and rotated.push_config.secret != created.push_config.secret
    assert (await client.get_subscription(sub)).push_config.secret == ""
    await asyncio.sleep(MIRROR_S)
    [second] = await client.publish(topic, [b"two"])
    assert await wait_until(lambda: any(json.loads(b)["message_id"] == second for _, _, b in receiver.requests))
    [(_, headers, body)] = [r for r in receiver.requests if json.loads(r[2])["message_id"] == second]
    assert webhooks.verify(rotated.push_config.secret, headers[webhooks.HEADER], body)
    assert not webhooks.verify(created.push_config.secret, headers[webhooks.HEADER], body)
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
    rotated = cli(mesh, "subscription", "rotate-secret", sub)
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)["push_secret"]
    assert len(new) == 64 and new != secret
    missing = cli(mesh, "subscription", "rotate-secret", unique("nope"))
    assert missing.returncode == 1 and b"NOT_FOUND" in missing.stderr
