"""Dead letters that handle themselves: a subscription's redrive rules send the
dead letters whose last error matches back after a delay, a few times at most,
on the real mesh (storage leaders apply them in their sweep); the others wait
for a person. Set and listed through the CLI; notifymesh's own channel
subscriptions come with one for "provider unavailable"."""

import asyncio
import json
import time

from helpers import cli, new_topic, unique

from gen.notifymesh.v1 import notify_pb2
from notifymesh.server.internal_topics import channel_subscription


async def test_a_matching_dead_letter_goes_back_after_the_delay_at_most_max_times_the_others_wait(mesh, client):
    dead_topic = unique("dlq")
    await client.create_topic(dead_topic)
    _, subscription = await new_topic(client, "redrive", max_delivery_attempts=1, dead_letter_topic=dead_topic)
    done = cli(mesh, "dead-letters", "add-rule", subscription, "--reason", "^flaky", "--after", "1s",
               "--max-redrives", "2")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"subscription": subscription, "reason": "^flaky", "after_s": 1.0,
                                       "max_redrives": 2}
    topic = (await client.get_subscription(subscription)).topic
    await client.publish(topic, [b"flaky", b"broken"])

    deliveries: list[tuple[bytes, int, float]] = []  # (data, attempt, when)
    started = time.monotonic()
    while time.monotonic() - started < 20 and len(deliveries) < 4:
        for received in await client.pull(subscription, 10, wait_s=2):
            data = received.message.data
            deliveries.append((data, received.delivery_attempt, time.monotonic()))
            reason = "flaky: provider timed out" if data == b"flaky" else "broken: bad address"
            await client.nack(subscription, [received.ack_id], terminal=True, reason=reason)
    # Delivered, dead-lettered, sent back twice by the rule (each a first attempt again); the other not.
    assert sorted((d, a) for d, a, _ in deliveries) == [(b"broken", 1), (b"flaky", 1), (b"flaky", 1), (b"flaky", 1)]
    flaky = [when for data, _, when in deliveries if data == b"flaky"]
    assert all(later - earlier >= 0.9 for earlier, later in zip(flaky, flaky[1:]))  # after its delay
    await asyncio.sleep(3)
    assert await client.pull(subscription, 10) == []  # at most twice

    done = cli(mesh, "dead-letters", "list", subscription)
    listed = {row["data"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert {k: (v["redrives"], v["last_error"]) for k, v in listed.items()} == {
        "flaky": (2, "flaky: provider timed out"), "broken": (0, "broken: bad address")}

    done = cli(mesh, "dead-letters", "remove-rule", subscription, "--reason", "^flaky")
    assert (done.returncode, done.stdout) == (0, b"")
    done = cli(mesh, "dead-letters", "remove-rule", subscription, "--reason", "^flaky")
    assert (done.returncode, done.stderr.strip()) == (
        1, f"error: subscription {subscription!r} has no redrive rule with reason '^flaky'".encode())
    done = cli(mesh, "dead-letters", "add-rule", subscription, "--reason", "(unclosed")
    assert done.returncode == 1 and b"INVALID_ARGUMENT: redrive rule reason '(unclosed' is not a regular" \
        in done.stderr


async def test_the_channel_subscriptions_redrive_provider_outages_and_take_rules(mesh, client):
    sms = channel_subscription(notify_pb2.SMS, notify_pb2.NORMAL)
    done = cli(mesh, "dead-letters", "rules")
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert {"subscription": sms, "reason": "^provider unavailable", "after_s": 600.0, "max_redrives": 3} in rows
    done = cli(mesh, "dead-letters", "add-rule", sms, "--reason", "^HTTP 503", "--after", "5m")
    assert done.returncode == 0, done.stderr
    try:
        assert [row["reason"] for row in map(json.loads, done.stdout.splitlines())] == [
            "^provider unavailable", "^HTTP 503"]
        # Only the rules: any other change of notifymesh's own subscription is refused.
        done = cli(mesh, "subscription", "update", sms, "--ack-deadline", "20s")
        assert done.returncode == 1 and b"is reserved" in done.stderr
    finally:
        cli(mesh, "dead-letters", "remove-rule", sms, "--reason", "^HTTP 503")
