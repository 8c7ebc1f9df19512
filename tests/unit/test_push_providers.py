"""The push providers (sender/providers/fcm.py, apns.py, push_auth.py): their
tokens and their refresh under a fake clock, the throttling back-off, and their
requests against the local fakes (deploy/push_fakes.py, real HTTP and HTTP/2
servers in the test's loop): sent, dead tokens, throttling, refused credentials."""

import asyncio
import json
import re
import ssl
import time

import aiohttp
import certifi
import jh2.config
import jh2.connection
import jh2.events
import jwt
import pycurl
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from deploy import pki, push_fakes
from deploy.local_providers import LocalProviders, apns_record, credentials, provider_records, read_outbox
from deploy.push_fakes import new_ec_key, new_rsa_key
from gen.notifymesh.v1 import notify_pb2
from notifymesh.server.config import LOOPBACK_NETWORKS, parse_networks
from sender.providers import DeadAddressError, OutgoingMessage, PermanentSendError, TransientSendError, provider_for
from sender.providers.apns import TOKEN_REFRESH_S, ApnsProvider
from sender.providers.fcm import SCOPE, FcmProvider
from sender.providers.curl_client import CurlClient
from sender.providers.push_auth import Bearer, CachedBearer, Throttle

LOOPBACK = (lambda: parse_networks(LOOPBACK_NETWORKS))  # the local fakes are on loopback

APNS_TOKEN = "ab" * 32


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def public(pem: str):
    return load_pem_private_key(pem.encode(), password=None).public_key()


async def test_a_cached_bearer_is_fetched_once_until_near_its_expiry_and_again_after_invalidate():
    clock, fetched = Clock(1000.0), []

    async def fetch() -> Bearer:
        fetched.append(clock.now)
        await asyncio.sleep(0)
        return Bearer(f"t{len(fetched)}", clock.now + 3600)

    bearer = CachedBearer(fetch, clock, refresh_margin_s=300)
    assert await asyncio.gather(*(bearer.get() for _ in range(5))) == ["t1"] * 5  # one fetch shared
    clock.now += 3600 - 301
    assert await bearer.get() == "t1"
    clock.now += 2  # within the margin of its expiry
    assert await bearer.get() == "t2" and len(fetched) == 2
    bearer.invalidate("t1")  # an older token refused: the current one stays
    assert await bearer.get() == "t2"
    bearer.invalidate("t2")
    assert await bearer.get() == "t3"


async def test_apns_signs_an_es256_jwt_and_makes_another_every_50_minutes():
    clock, key = Clock(1_800_000_000.0), new_ec_key()
    provider = ApnsProvider(notify_pb2.Provider(kind="apns", secret=key, settings={
        "key_id": "KEY1", "team_id": "TEAM1", "topic": "com.x", "base_url": "http://127.0.0.1:9"}), clock=clock)
    try:
        first = await provider._bearer.get()
        assert jwt.get_unverified_header(first) == {"alg": "ES256", "typ": "JWT", "kid": "KEY1"}
        assert jwt.decode(first, public(key), algorithms=["ES256"], options={"verify_iat": False}) == {"iss": "TEAM1", "iat": 1_800_000_000}
        clock.now += TOKEN_REFRESH_S - 1
        assert await provider._bearer.get() == first
        clock.now += 1
        second = await provider._bearer.get()
        assert second != first
        assert jwt.decode(second, public(key), algorithms=["ES256"], options={"verify_iat": False})["iat"] == 1_800_000_000 + TOKEN_REFRESH_S
    finally:
        await provider.close()


async def test_fcm_asserts_its_service_account_with_an_rs256_jwt():
    clock, key = Clock(1_800_000_000.0), new_rsa_key()
    provider = FcmProvider(notify_pb2.Provider(kind="fcm", secret=key, settings={
        "project_id": "p", "client_email": "a@p.iam", "token_url": "http://127.0.0.1:9/token"}), clock=clock)
    try:
        claims = jwt.decode(provider.assertion(), public(key), algorithms=["RS256"], audience="http://127.0.0.1:9/token",
                            options={"verify_exp": False, "verify_iat": False})
        assert claims == {"iss": "a@p.iam", "scope": SCOPE, "aud": "http://127.0.0.1:9/token",
                          "iat": 1_800_000_000, "exp": 1_800_003_600}
    finally:
        await provider.close()


def test_throttling_backs_off_every_send_until_retry_after_else_doubling_to_a_bound():
    clock = Clock(100.0)
    throttle = Throttle("apns", clock)
    throttle.check()
    assert throttle.throttled(7.0, "429").retry_after_s == 7.0
    with pytest.raises(TransientSendError, match="backing off 7.0s more") as held:
        throttle.check()
    assert held.value.retry_after_s == 7.0
    clock.now += 7
    throttle.check()
    assert [throttle.throttled(None, "429").retry_after_s for _ in range(8)] == [2, 4, 8, 16, 32, 60, 60, 60]
    throttle.ok()
    assert throttle.throttled(None, "429").retry_after_s == 1


# -- against the local fakes ---------------------------------------------------------------


@pytest.fixture
async def fakes(tmp_path):
    providers = LocalProviders(tmp_path, credentials(tmp_path))
    await providers.start()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{providers.http_port}") as session:
        async def fault(**spec):
            async with session.post("/_faults", json={"channel": "push", **spec}) as r:
                assert r.status == 200, await r.text()
        yield providers, fault
    await providers.stop()


def fcm_record(providers: LocalProviders) -> notify_pb2.Provider:
    [record] = [r for r in provider_records(providers.creds, "127.0.0.1", 0, providers.http_port)
                if r.channel == notify_pb2.PUSH]
    return record


def push(token: str, platform: str, **kw) -> OutgoingMessage:
    return OutgoingMessage(notify_pb2.PUSH, token, subject="Invoice 17", text="is due", platform=platform,
                           idempotency_key="n1/alice/push", **kw)


async def test_fcm_and_apns_send_to_the_fakes_which_store_what_they_got(fakes):
    providers, _ = fakes
    fcm_rec = fcm_record(providers)
    fcm = provider_for(fcm_rec, LOOPBACK)
    apns = provider_for(apns_record(providers.creds, "127.0.0.1", providers.push.apns_port), LOOPBACK)
    try:
        sent = await fcm.send(push("fcm-token-1", "fcm", json_body='{"invoice":"17"}'))
        sent_apns = await apns.send(push(APNS_TOKEN, "apns", json_body='{"invoice":"17"}'))
        response = await apns._client.post(f"/3/device/{APNS_TOKEN}", b"{}", {})
        assert response.http_version == "HTTP/2"
        with pytest.raises(PermanentSendError, match="a fcm device; the push provider sends to apns devices"):
            await apns.send(push("fcm-token-1", "fcm"))
    finally:
        await fcm.close()
        await apns.close()
    stored = read_outbox(providers.outbox._data_dir, "push")
    assert [(s["provider"], s["to"], s["title"], s["body"], s["data"], s["id"]) for s in stored] == [
        ("fcm", "fcm-token-1", "Invoice 17", "is due", {"invoice": "17"}, sent.provider_message_id),
        ("apns", APNS_TOKEN, "Invoice 17", "is due", {"invoice": "17"}, sent_apns.provider_message_id)]


async def test_dead_tokens_and_throttling_as_each_provider_answers_them(fakes):
    providers, fault = fakes
    fcm_rec = fcm_record(providers)
    clock = Clock(time.time())
    fcm = FcmProvider(fcm_rec, LOOPBACK, clock)
    apns = ApnsProvider(apns_record(providers.creds, "127.0.0.1", providers.push.apns_port), LOOPBACK, clock)
    try:
        await fault(dead_token="dead-fcm")
        await fault(dead_token="cd" * 32)
        with pytest.raises(DeadAddressError, match="fcm HTTP 404 UNREGISTERED"):
            await fcm.send(push("dead-fcm", "fcm"))
        with pytest.raises(DeadAddressError, match="apns HTTP 410 Unregistered"):
            await apns.send(push("cd" * 32, "apns"))
        with pytest.raises(DeadAddressError, match="apns HTTP 400 BadDeviceToken"):
            await apns.send(push("not-hex", "apns"))

        for provider, token in ((fcm, "fcm-2"), (apns, APNS_TOKEN)):
            await fault(status=429, count=1, retry_after=5)
            with pytest.raises(TransientSendError) as throttled:
                await provider.send(push(token, provider.platform))
            assert throttled.value.retry_after_s == 5
            with pytest.raises(TransientSendError, match="backing off"):  # held back: the fake is not asked
                await provider.send(push(token, provider.platform))
            clock.now += 5
            await provider.send(push(token, provider.platform))
        assert [s["to"] for s in read_outbox(providers.outbox._data_dir, "push")] == ["fcm-2", APNS_TOKEN]
    finally:
        await fcm.close()
        await apns.close()


async def test_the_fakes_refuse_a_key_they_do_not_know(fakes):
    providers, _ = fakes
    fcm_rec = fcm_record(providers)
    fcm_rec.secret = new_rsa_key()
    other = apns_record(providers.creds, "127.0.0.1", providers.push.apns_port)
    other.secret = new_ec_key()
    fcm, apns = provider_for(fcm_rec, LOOPBACK), provider_for(other, LOOPBACK)
    try:
        with pytest.raises(PermanentSendError, match="fcm token endpoint: HTTP 400.*invalid_grant"):
            await fcm.send(push("fcm-1", "fcm"))
        with pytest.raises(PermanentSendError, match="apns HTTP 403 InvalidProviderToken"):
            await apns.send(push(APNS_TOKEN, "apns"))
    finally:
        await fcm.close()
        await apns.close()
    assert read_outbox(providers.outbox._data_dir, "push") == []


async def test_push_providers_connect_only_where_the_mesh_may(fakes):
    """Without loopback in allowed_networks the fakes' address is refused, at each
    connection, as a permanent failure that names the setting (egress.py)."""
    providers, _ = fakes
    fcm = provider_for(fcm_record(providers))
    apns = provider_for(apns_record(providers.creds, "127.0.0.1", providers.push.apns_port))
    try:
        with pytest.raises(PermanentSendError, match="fcm token endpoint refused: 127.0.0.1 is a loopback address.*"
                                                     "allowed_networks"):
            await fcm.send(push("fcm-token-1", "fcm"))
        with pytest.raises(PermanentSendError, match="apns refused: 127.0.0.1 is a loopback address"):
            await apns.send(push(APNS_TOKEN, "apns"))
    finally:
        await fcm.close()
        await apns.close()
    assert read_outbox(providers.outbox._data_dir, "push") == []


class AnsweredClient(CurlClient):
    """The APNs provider's HTTP/2 client with libcurl's resolver answering the test's
    addresses for the host (its RESOLVE entries), as a DNS server would."""

    def __init__(self, answer: str, port: int, *args):
        super().__init__(*args)
        self._answer, self._port = answer, port

    def _request(self, transfer, *args):
        easy = super()._request(transfer, *args)
        easy.setopt(pycurl.RESOLVE, [f"apns.test:{self._port}:{self._answer}"])
        return easy


async def test_apns_connects_only_to_allowed_addresses_of_each_dns_answer(fakes):
    """The address checked is the one libcurl connects to: an answer changed to a
    forbidden address is refused at the next connection, and of an answer holding
    both, only the allowed address is connected to."""
    providers, _ = fakes
    port = providers.push.apns_port
    record = apns_record(providers.creds, "127.0.0.1", port)
    record.settings["base_url"] = f"http://apns.test:{port}"
    allowed = (lambda: parse_networks("127.0.0.1/32"))
    for answer, refused in (("127.0.0.1", ""), ("127.0.0.2", "apns refused: apns.test (127.0.0.2) is a loopback"),
                            ("10.0.0.1,127.0.0.1", ""), ("10.0.0.1", "apns.test (10.0.0.1) is a private")):
        apns = ApnsProvider(record, allowed)
        await apns.close()
        apns._client = AnsweredClient(answer, port, allowed, record.settings["base_url"], 5.0)
        try:
            if refused:
                with pytest.raises(PermanentSendError, match=re.escape(refused)):
                    await apns.send(push(APNS_TOKEN, "apns"))
            else:
                await apns.send(push(APNS_TOKEN, "apns"))
        finally:
            await apns.close()
    assert len(read_outbox(providers.outbox._data_dir, "push")) == 2


async def test_apns_over_tls_verifies_the_server_against_its_roots(fakes, tmp_path, monkeypatch):
    """HTTP/2 over TLS (ALPN), as APNs serves it: a server whose CA is not among the
    roots is not sent to (a transient failure, as any failed connection); with its CA
    among them the send goes through."""
    providers, _ = fakes
    pki.new_ca(tmp_path / "tls")
    pki.issue(tmp_path / "tls", "apns")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls" / "apns.pem", tmp_path / "tls" / "apns.key")
    context.set_alpn_protocols(["h2"])
    server = await asyncio.get_running_loop().create_server(lambda: push_fakes._H2Server(providers.push),
                                                            "127.0.0.1", 0, ssl=context)
    record = apns_record(providers.creds, "127.0.0.1", 0)
    record.settings["base_url"] = f"https://localhost:{server.sockets[0].getsockname()[1]}"
    try:
        apns = ApnsProvider(record, LOOPBACK)
        try:
            with pytest.raises(TransientSendError, match="apns: SSL certificate.*unable to get local issuer certificate"):
                await apns.send(push(APNS_TOKEN, "apns"))
        finally:
            await apns.close()
        monkeypatch.setattr(certifi, "where", lambda: str(tmp_path / "tls" / pki.CA_FILE))
        apns = ApnsProvider(record, LOOPBACK)
        try:
            await apns.send(push(APNS_TOKEN, "apns"))
            assert (await apns._client.post(f"/3/device/{APNS_TOKEN}", b"{}", {})).http_version == "HTTP/2"
        finally:
            await apns.close()
    finally:
        server.close()
    assert len(read_outbox(providers.outbox._data_dir, "push")) == 1


async def test_apns_gives_up_on_a_silent_server_after_its_timeout(fakes):
    """A server that takes the connection and never answers: a transient failure
    once timeout_seconds have passed, and the request is no longer under way."""
    providers, _ = fakes
    held: list[asyncio.StreamWriter] = []

    async def silent(_reader, writer):
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    record = apns_record(providers.creds, "127.0.0.1", server.sockets[0].getsockname()[1])
    record.settings["timeout_seconds"] = "0.3"
    apns = ApnsProvider(record, LOOPBACK)
    try:
        with pytest.raises(TransientSendError, match="apns: .*[Tt]imed? ?out"):
            await apns.send(push(APNS_TOKEN, "apns"))
        assert apns._client._transfers == {}
    finally:
        await apns.close()
        for writer in held:
            writer.close()
        server.close()


async def test_the_apns_requests_of_one_read_are_stored_in_one_outbox_write_before_they_are_answered(fakes,
                                                                                                     monkeypatch):
    """Ten requests a client sends in one write reach the fake in one read: their
    records go to the outbox together, and each is there once its answer is."""
    providers, _ = fakes
    writes = []
    store_many = providers.outbox.store_many
    monkeypatch.setattr(providers.outbox, "store_many",
                        lambda channel, records: (writes.append(len(records)), store_many(channel, records)))
    bearer = await ApnsProvider(apns_record(providers.creds, "127.0.0.1", providers.push.apns_port))._jwt()
    reader, writer = await asyncio.open_connection("127.0.0.1", providers.push.apns_port)
    conn = jh2.connection.H2Connection(jh2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    tokens = [f"{i:064x}" for i in range(10)]
    for token in tokens:
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":authority", "127.0.0.1"),
                                   (":path", f"/3/device/{token}"), ("authorization", f"bearer {bearer.token}"),
                                   ("apns-topic", push_fakes.APNS_TOPIC), ("apns-push-type", "alert")])
        conn.send_data(stream, b'{"aps":{"alert":"hi"}}', end_stream=True)
    writer.write(conn.data_to_send())
    statuses = {}
    try:
        while len(statuses) < len(tokens):
            for event in conn.receive_data(await reader.read(65536)):
                if isinstance(event, jh2.events.ResponseReceived):
                    statuses[event.stream_id] = dict(event.headers)[b":status"]
                    stored = {r["to"] for r in read_outbox(providers.outbox._data_dir, "push")}
                    assert tokens[(event.stream_id - 1) // 2] in stored  # stored before answered
            writer.write(conn.data_to_send())
    finally:
        writer.close()
    assert set(statuses.values()) == {b"200"}
    assert writes == [10]
    assert [r["to"] for r in read_outbox(providers.outbox._data_dir, "push")] == tokens


@pytest.mark.parametrize("data", ["", "{}", '{"invoice":"17"}', '{"a":"1","b":"x\\"y","c":"\\u00e9"}',
                                  '{"aps":"theirs","k":"v"}', '{"k":"v","aps":"theirs"}', '{"k":"\\"aps\\":"}',
                                  '{"n": "spaced" }'])
def test_the_apns_body_is_the_data_with_aps_last_as_loading_and_dumping_it_gives(data):
    apns = ApnsProvider(push_fakes.apns_record(new_ec_key(), "127.0.0.1", 1))
    msg = push(APNS_TOKEN, "apns", json_body=data)
    payload = json.loads(data) if data else {}
    payload["aps"] = {"alert": {"title": msg.subject, "body": msg.text}}
    assert apns.body(msg) == json.dumps(payload, separators=(",", ":")).encode()
