"""The local providers (deploy/local_providers.py) in the test's loop: the fault
switch, the outbox files and their bound, the credentials kept in the data dir."""

import json

import aiohttp
import pytest

import deploy.local_providers as local_providers
from deploy.local_providers import LocalProviders, credentials, read_outbox
from notifymesh.contracts import outbox_files


@pytest.fixture
async def http(tmp_path):
    providers = LocalProviders(tmp_path, credentials(tmp_path))
    await providers.start()
    creds = providers.creds
    auth = {"Authorization": aiohttp.encode_basic_auth(creds.sms_account, creds.sms_token)}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{providers.http_port}") as session:
        async def sms(to="+14155550100"):
            async with session.post(f"/accounts/{creds.sms_account}/messages", headers=auth,
                                    data={"To": to, "From": "+1500", "Body": "hi"}) as r:
                return r.status, await r.json(), r.headers.get("Retry-After")
        yield providers, session, sms
    await providers.stop()


async def test_a_fault_fails_the_next_requests_of_its_channel_only(http):
    providers, session, sms = http
    async with session.post("/_faults", json={"channel": "sms", "status": 503, "count": 2, "retry_after": 3}) as r:
        assert r.status == 200
    async with session.post("/webhook/a", json={"x": 1}) as r:
        assert r.status == 200  # another channel: not affected
    assert [(await sms())[::2] for _ in range(3)] == [(503, "3"), (503, "3"), (201, None)]
    async with session.get("/_outbox", params={"channel": "sms"}) as r:
        [stored] = await r.json()
    assert stored["to"] == "+14155550100" and stored["id"].startswith("SM")
    async with session.post("/_faults", json={"channel": "sms", "status": 500, "count": 5}) as r:
        assert r.status == 200
    async with session.post("/_faults", json={"channel": "sms", "status": 500, "count": 0}) as r:
        assert r.status == 200  # count 0 clears it
    assert (await sms())[0] == 201


async def test_bad_requests_are_refused(http):
    providers, session, sms = http
    for spec in ({"channel": "fax", "status": 500}, {"channel": "sms", "status": 42}, {"status": 500}, [1]):
        async with session.post("/_faults", json=spec) as r:
            assert r.status == 400
    async with session.get("/_outbox", params={"channel": "fax"}) as r:
        assert r.status == 400
    async with session.post(f"/accounts/{providers.creds.sms_account}/messages", data={"To": "+1"}) as r:
        assert r.status == 401  # no basic auth
    status, answer, _ = await sms("alice")
    assert status == 400 and "not a phone number" in answer["message"]
    assert read_outbox(providers.outbox._data_dir, "sms") == []


async def test_an_outbox_file_is_rotated_at_its_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(local_providers, "OUTBOX_MAX_BYTES", 200)
    outbox = local_providers.Outbox(tmp_path)
    for i in range(12):
        outbox.store("webhook", {"path": f"/webhook/{i}", "body": "x" * 40})
    assert all(path.stat().st_size <= 200 + 80 for path in outbox_files(tmp_path, "webhook") if path.exists())
    kept = [r["path"] for r in outbox.read("webhook")]
    assert kept == [f"/webhook/{i}" for i in range(12 - len(kept), 12)]  # the newest, in order
    assert len(kept) < 12  # the oldest went: the files are bounded


def test_an_outbox_channel_file_is_opened_once_and_each_record_readable_at_once(tmp_path, monkeypatch):
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **kw: opened.append(a[:2]) or real_open(*a, **kw))
    outbox = local_providers.Outbox(tmp_path)
    for i in range(3):
        outbox.store("push", {"to": f"token-{i}"})
        assert [r["to"] for r in read_outbox(tmp_path, "push")][-1] == f"token-{i}"  # flushed as stored
    assert opened.count((outbox_files(tmp_path, "push")[1], "a")) == 1  # for appending
    outbox.close()


def test_a_record_stored_after_an_erase_is_kept_in_the_rewritten_file(tmp_path):
    outbox = local_providers.Outbox(tmp_path)
    outbox.store("sms", {"to": "+14155550100"})
    outbox.store("sms", {"to": "+14155550111"})
    assert outbox.erase("+14155550100") == 1
    outbox.store("sms", {"to": "+14155550122"})
    assert [r["to"] for r in outbox.read("sms")] == ["+14155550111", "+14155550122"]
    outbox.close()


def test_credentials_are_made_once_and_kept(tmp_path):
    first = credentials(tmp_path)
    assert credentials(tmp_path) == first
    assert json.loads((tmp_path / local_providers.CREDENTIALS_FILE).read_text())["sms_token"] == first.sms_token
    assert (tmp_path / local_providers.CREDENTIALS_FILE).stat().st_mode & 0o077 == 0


async def test_erase_rewrites_the_outbox_without_the_address(http):
    providers, session, sms = http
    for to in ("+14155550100", "+14155550111", "+14155550100"):
        assert (await sms(to))[0] == 201
    outbox = providers.outbox
    outbox.store("email", {"to": ["alice@example.com"], "text": "Hi"})
    outbox.store("email", {"to": ["bob@example.com"], "text": "alice@example.com wrote"})  # named in the text
    outbox.store("email", {"to": ["carol@example.com"], "text": "Hi"})
    async with session.post("/_erase", json={"address": "+14155550100"}) as r:
        assert await r.json() == {"erased": 2}
    async with session.post("/_erase", json={"address": "alice@example.com"}) as r:
        assert await r.json() == {"erased": 2}
    assert [r["to"] for r in outbox.read("sms")] == ["+14155550111"]
    assert [r["to"] for r in outbox.read("email")] == [["carol@example.com"]]
    files = [p for c in ("sms", "email") for p in outbox_files(outbox._data_dir, c) if p.exists()]
    assert not any(b"+14155550100" in p.read_bytes() or b"alice@example.com" in p.read_bytes() for p in files)
    async with session.post("/_erase", json={"address": ""}) as r:
        assert r.status == 400
