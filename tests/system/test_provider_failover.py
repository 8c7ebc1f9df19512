"""Several providers per channel, by name and priority, and failover between them
on the real mesh: a second SMS API fake (deploy/local_providers.py as its own
process) is the primary; it is stopped mid-run, its circuit breaker opens, every
notification still arrives through the mesh's own SMS fake, the log names the
provider of each, and sends return to the primary once it is back (the half-open
trial)."""

import asyncio
import json
import subprocess
import sys
import time

import pytest
from helpers import cli, key_ring, unique
from test_notify_pipeline import SENT, new_template, read_outbox, settled

from deploy.local import _port_open, free_port
from deploy.local_providers import SMS_FROM, credentials
from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from notifymesh import errors
from notifymesh.client import Client
from notifymesh.contracts import PROVIDERS
from notifymesh.server import sealing
from notifymesh.server.cluster import connect_etcd
from notifymesh.server.internal_topics import channel_subscription

SMS = notify_pb2.SMS
COOLDOWN_S = 2


def sms_provider(name: str, priority: int, data_dir, http_port: int) -> notify_pb2.Provider:
    creds = credentials(data_dir)
    return notify_pb2.Provider(channel=SMS, kind="sms_http", name=name, priority=priority, secret=creds.sms_token,
                               settings={"base_url": f"http://127.0.0.1:{http_port}", "account": creds.sms_account,
                                         "from": SMS_FROM})


@pytest.fixture
async def providers_restored(mesh):
    """The mesh's providers as they were, after the test (they are cluster-wide)."""
    etcd = connect_etcd(mesh.etcd_endpoint, mesh.client_tls())
    before = {kv.key: kv.value for kv in await etcd.get_prefix(PROVIDERS)}
    yield etcd
    await etcd.delete_prefix(PROVIDERS)
    for key, value in before.items():
        await etcd.put(key, value)
    await etcd.close()


async def test_a_channel_has_providers_by_name_and_priority_and_secrets_stay_write_only(
        mesh, client, providers_restored, monkeypatch):
    etcd = providers_restored
    await etcd.delete_prefix(PROVIDERS + b"webhook")
    # One stored before providers had names (at providers/<channel>) reads as "default".
    await etcd.put(PROVIDERS + b"webhook", notify_pb2.Provider(channel=notify_pb2.WEBHOOK, kind="webhook",
                                                               secret="s", max_concurrency=32).SerializeToString())
    legacy = await client.get_provider("webhook")
    assert (legacy.name, legacy.secret, legacy.secret_set) == ("default", "", True)

    second = await client.set_provider(notify_pb2.Provider(channel=notify_pb2.WEBHOOK, kind="sink", name="backup",
                                                           priority=5))
    assert (second.name, second.priority, second.max_concurrency) == ("backup", 5, 32)
    # Writing "default" keeps its secret and replaces the legacy key.
    again = await client.set_provider(notify_pb2.Provider(channel=notify_pb2.WEBHOOK, kind="webhook", priority=1),
                                      keep_secret=True)
    assert (again.name, again.secret_set) == ("default", True)
    assert await etcd.get(PROVIDERS + b"webhook") is None
    stored = (await etcd.get(PROVIDERS + b"webhook/default")).value
    assert b"nmsealed:" in stored  # kept sealed by the master key (encryption at rest)
    monkeypatch.setattr(sealing, "_installed", await key_ring(mesh))
    assert sealing.parse_provider(stored).secret == "s"
    listed = [(p.name, p.priority) for p in await client.list_providers() if p.channel == notify_pb2.WEBHOOK]
    assert listed == [("default", 1), ("backup", 5)]

    done = cli(mesh, "provider", "list")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert {"channel": "webhook", "name": "backup", "priority": 5, "kind": "sink", "settings": {},
            "secret_set": False, "max_concurrency": 32} in rows
    assert all("secret" not in row for row in rows)
    done = cli(mesh, "provider", "delete", "webhook", "--name", "backup")
    assert (done.returncode, json.loads(done.stdout)) == (0, {"channel": "webhook", "name": "backup",
                                                              "deleted": True})
    done = cli(mesh, "provider", "delete", "webhook", "--name", "backup")
    assert (done.returncode, done.stderr.decode().strip()) == (
        1, "error: NOT_FOUND: no provider 'backup' set for the webhook channel")
    with pytest.raises(errors.InvalidArgument, match="provider priority 1001 out of range: 0 to 1000"):
        await client.set_provider(notify_pb2.Provider(channel=notify_pb2.WEBHOOK, kind="sink", name="x-1",
                                                      priority=1001))
    with pytest.raises(errors.InvalidArgument, match="invalid provider name 'a b'"):
        await client.set_provider(notify_pb2.Provider(channel=notify_pb2.WEBHOOK, kind="sink", name="a b"))

    # Each sender answers for its breakers: closed, no sends yet.
    status = await client.get_provider_status("webhook")
    assert [(s.name, s.state, s.sends) for s in status.providers] == [("default", notify_pb2.BREAKER_CLOSED, 0)]
    assert status.providers[0].sender and not status.unanswered_senders


class SmsFake:
    """deploy/local_providers.py as a process of its own, on a fixed HTTP port, so it
    can be stopped and started again."""

    def __init__(self, data_dir):
        self.data_dir, self.http_port = data_dir, free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deploy.local_providers", "--data-dir", str(self.data_dir), "--smtp-port", "0",
             "--http-port", str(self.http_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not _port_open(self.http_port):
            assert self.process.poll() is None and time.monotonic() < deadline, "the SMS fake did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def received(self) -> set[str]:
        return {record["to"] for record in read_outbox(self.data_dir, "sms")}


@pytest.fixture
def primary(tmp_path):
    fake = SmsFake(tmp_path / "primary")
    fake.start()
    yield fake
    fake.stop()


async def test_the_primary_goes_down_every_sms_arrives_through_the_second_and_sends_return_after_it_recovers(
        own_mesh, primary):
    mesh = own_mesh
    async with Client(mesh.frontend_addr) as client:
        await client.set_config("provider_breaker_cooldown_s", COOLDOWN_S)
        await client.delete_provider("sms")  # the mesh's own SMS fake becomes the second
        await client.set_provider(sms_provider("sms-b", 2, mesh.data_dir, mesh.provider_ports[1]))
        await client.set_provider(sms_provider("sms-a", 1, primary.data_dir, primary.http_port))
        template, category = unique("invoice"), unique("billing")
        await new_template(client, template)
        await client.create_category(category)

        async def notify(batch: int, count: int) -> tuple[list[str], dict]:
            people = [f"r{batch}-{i}" for i in range(count)]
            phones = [f"+1415555{batch}{i:03d}" for i in range(count)]
            for rid, phone in zip(people, phones):
                await client.upsert_recipient(rid, phone=phone)
            nid = await client.notify(template, category, people, data={"invoice": 1, "amount": "1.00"},
                                      channels=["sms"])
            _, sends = await settled(client, nid, count)
            return phones, {rid: sends[(rid, SMS)] for rid in people}

        phones, sends = await notify(1, 10)
        assert {s.state for s in sends.values()} <= SENT  # sent (the fake's receipt may have come too)
        assert {s.provider for s in sends.values()} == {"sms-a"}
        assert set(phones) <= primary.received()

        primary.stop()
        phones, sends = await notify(2, 40)
        assert {s.state for s in sends.values()} <= SENT  # none dead-lettered
        assert {s.provider for s in sends.values()} == {"sms-b"}
        second = {record["to"] for record in read_outbox(mesh.data_dir, "sms")}
        assert set(phones) <= second
        failed_on_a = [e for s in sends.values() for e in s.timeline if e.state == notify_pb2.SEND_FAILED]
        assert failed_on_a and {e.provider for e in failed_on_a} == {"sms-a"}
        # Once open, retries went to sms-b: no send failed more than twice (its first
        # attempt, and perhaps a half-open trial while sms-a was still down), where
        # without the breaker each fails against sms-a until it is dead-lettered.
        assert max(sum(e.state == notify_pb2.SEND_FAILED for e in s.timeline) for s in sends.values()) <= 2
        status = cli(mesh, "provider", "status", "sms")
        assert status.returncode == 0, status.stderr
        rows = {row["name"]: row for row in map(json.loads, status.stdout.splitlines())}
        # In a row, not in the window: the failures that opened it leave the 30 s window
        # once this batch's retries take longer than that (a loaded CI machine: 38 s).
        assert rows["sms-a"]["state"] in ("open", "half_open") and rows["sms-a"]["consecutive_failures"] >= 5
        failures, sends = rows["sms-a"]["failures"], rows["sms-a"]["sends"]  # in the window
        assert rows["sms-a"]["error_rate"] == (round(failures / sends, 3) if sends else 0.0)
        assert "last_error" in rows["sms-a"]
        assert (rows["sms-b"]["state"], rows["sms-b"]["failures"]) == ("closed", 0)

        primary.start()
        await asyncio.sleep(COOLDOWN_S + 0.5)
        phones, sends = await notify(3, 1)  # the half-open trial: sms-a again, and it closes
        assert {s.provider for s in sends.values()} == {"sms-a"}
        phones, sends = await notify(4, 20)
        assert {s.provider for s in sends.values()} == {"sms-a"}
        assert set(phones) <= primary.received()
        status = await client.get_provider_status("sms")
        assert {s.name: s.state for s in status.providers}["sms-a"] == notify_pb2.BREAKER_CLOSED


async def test_a_task_dead_lettered_while_every_provider_is_down_goes_back_by_rule_and_is_sent(own_mesh, primary):
    mesh = own_mesh
    async with Client(mesh.frontend_addr) as client:
        await client.set_config("provider_breaker_cooldown_s", COOLDOWN_S)
        await client.delete_provider("sms")
        await client.set_provider(sms_provider("sms-a", 1, primary.data_dir, primary.http_port))
        rule = pubsub_pb2.RedriveRule(reason="provider unavailable|Cannot connect", max_redrives=3)
        rule.after.FromSeconds(1)
        await client.set_redrive_rules(channel_subscription(SMS, notify_pb2.NORMAL), [rule])
        template, category = unique("invoice"), unique("billing")
        await new_template(client, template)
        await client.create_category(category)
        await client.upsert_recipient("r5", phone="+14155555000")
        primary.stop()
        nid = await client.notify(template, category, ["r5"], data={"invoice": 1, "amount": "1.00"}, channels=["sms"])
        _, sends = await settled(client, nid, 1, {notify_pb2.SEND_DEAD_LETTERED})  # 5 attempts: about 15 s
        primary.start()
        _, sends = await settled(client, nid, 1, SENT)
        send = sends[("r5", SMS)]
        states = [e.state for e in send.timeline]
        assert states.count(notify_pb2.SEND_DEAD_LETTERED) == 1 and send.provider == "sms-a"
        assert states.index(notify_pb2.SEND_DEAD_LETTERED) < states.index(notify_pb2.SEND_SENT)
        assert "+14155555000" in primary.received()
