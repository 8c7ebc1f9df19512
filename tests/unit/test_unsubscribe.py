"""Unsubscribe tokens (notifymesh/server/unsubscribe.py) and the frontend's
one-click endpoint (frontend/http.py) on a real aiohttp server, writing through a
fake table."""

import time
import urllib.parse

import aiohttp
import pytest

from frontend.http import HttpServer, UnsubscribeEndpoint, application
from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from notifymesh.server import rows
from notifymesh.server.tracking import CLICK, Send, Tracking
from notifymesh.server.unsubscribe import (InvalidToken, TokenSigner, public_base_url, unsubscribe_url)

KEY = bytes(range(32))


def test_a_token_names_what_it_unsubscribes_from():
    signer = TokenSigner(KEY)
    token = signer.issue("alice", "marketing", "email", now_s=1_700_000_000)
    wanted = signer.verify(token, now_s=1_700_000_100)
    assert wanted == ("alice", "marketing", "email", 1_700_000_000, "", 0)
    assert signer.verify(signer.issue("bob:ü", "", "email")).recipient == "bob:ü"  # any id, every category


def test_a_token_is_its_fields_and_their_hmac_sha256():
    """The format the module's doc gives, known answers (made with hmac.new(KEY,
    payload, sha256) on main): links in sent emails keep working across versions."""
    token = TokenSigner(KEY).issue("alice", "marketing", "email", now_s=1_700_000_000, notification_id="n1",
                                   accepted_ms=1_700_000_000_123)
    assert token == ("YWxpY2UAbWFya2V0aW5nAGVtYWlsAG4xADE3MDAwMDAwMDAxMjMAMTcwMDAwMDAwMA."
                     "cmPTkMfPm7p2uZ_2odIGtvk3ylfQOreNQwYwR18ZhNg")
    tracking = Tracking(TokenSigner(KEY))
    click = tracking.token(CLICK, Send("n1", "alice", "email", 1_700_000_000_123), "https://example.com/x",
                           now_s=1_700_000_000)
    assert click == ("bjEAYWxpY2UAZW1haWwAMTcwMDAwMDAwMDEyMwBodHRwczovL2V4YW1wbGUuY29tL3gAMTcwMDAwMDAwMA."
                     "0ts8jJrFnlVeaR8b0q7QVkCcDRG06CyVgAJKkBRgTbY")
    assert tracking.verify(CLICK, click, max_age_s=60, now_s=1_700_000_001)[1] == "https://example.com/x"


def test_forged_tampered_and_expired_tokens_are_refused():
    signer = TokenSigner(KEY)
    token = signer.issue("alice", "marketing", "email")
    payload, mac = token.split(".")
    forged = TokenSigner(bytes(32)).issue("alice", "marketing", "email")  # another key
    with pytest.raises(InvalidToken, match="signature"):
        signer.verify(forged)
    bob = TokenSigner(b"x").issue("bob", "marketing", "email").split(".")[0]
    with pytest.raises(InvalidToken, match="signature"):
        signer.verify(f"{bob}.{mac}")  # alice's signature on bob's payload
    with pytest.raises(InvalidToken, match="signature"):
        # The first character: all six of its bits are the signature's (the last ones may be padding).
        signer.verify(f"{payload}.{'B' if mac[0] == 'A' else 'A'}{mac[1:]}")
    for junk in ("", "abc", "a.b.c", "!!!.???"):
        with pytest.raises(InvalidToken):
            signer.verify(junk)
    old = signer.issue("alice", "marketing", "email", now_s=time.time() - 400 * 24 * 3600)
    with pytest.raises(InvalidToken, match="expired"):
        signer.verify(old)


def test_urls():
    assert unsubscribe_url("http://127.0.0.1:50076/", "a.b") == "http://127.0.0.1:50076/unsubscribe?token=a.b"
    token = TokenSigner(KEY).issue("bob+x@y/ü", "a&b=c", "email")
    assert unsubscribe_url("http://h", token) == f"http://h/unsubscribe?{urllib.parse.urlencode({'token': token})}"
    assert unsubscribe_url("http://h", "a+b/c=") == "http://h/unsubscribe?token=a%2Bb%2Fc%3D"  # not ours: quoted
    assert public_base_url("https://notify.example.com", ["127.0.0.1:50051"], 25) == "https://notify.example.com"
    assert public_base_url("", ["127.0.0.1:50051", "127.0.0.1:50052"], 25) == "http://127.0.0.1:50076"


class FakeTable:
    def __init__(self):
        self.writes = []

    async def write(self, partition_key, ops):
        self.writes.append((partition_key, list(ops)))


@pytest.fixture
async def endpoint():
    table, signer = FakeTable(), TokenSigner(KEY)
    server = HttpServer(application(UnsubscribeEndpoint(table, signer)), "127.0.0.1", 0)
    await server.start()
    async with aiohttp.ClientSession() as session:
        yield session, f"http://127.0.0.1:{server.port}", table, signer
    await server.stop()


async def test_one_click_post_records_the_opt_out(endpoint):
    session, base, table, signer = endpoint
    url = unsubscribe_url(base, signer.issue("alice", "marketing", "email"))
    async with session.get(url) as page:  # a link scanner's GET changes nothing
        assert page.status == 200 and "marketing" in await page.text() and 'method="post"' in await page.text()
    assert table.writes == []
    async with session.post(url, data={"List-Unsubscribe": "One-Click"}) as answer:
        assert answer.status == 200 and "unsubscribed" in await answer.text()
    [(partition_key, [op])] = table.writes
    assert partition_key == "alice" and op.key == rows.preference_key("alice", "marketing", "email")
    assert internal_pb2.PreferenceRow.FromString(op.value).enabled is False


async def test_a_bad_token_is_400_and_writes_nothing(endpoint):
    session, base, table, signer = endpoint
    token = signer.issue("alice", "marketing", "email")
    forged = TokenSigner(b"guess").issue("alice", "marketing", "email")
    for url in (f"{base}/unsubscribe", unsubscribe_url(base, forged), unsubscribe_url(base, token[:-3])):
        for method in ("GET", "POST"):
            async with session.request(method, url, data="List-Unsubscribe=One-Click") as answer:
                assert answer.status == 400, (method, url)
    assert table.writes == []


def test_the_public_base_url_setting_takes_an_http_base_url_only():
    from notifymesh.errors import InvalidArgument
    from notifymesh.server import config

    assert config.setting_value("public_base_url", "https://notify.example.com/") == "https://notify.example.com"
    assert config.setting_value("public_base_url", "") == ""  # back to the frontends' own address
    for bad in ("notify.example.com", "ftp://x", "https://x/?a=1", "https://"):
        with pytest.raises(InvalidArgument, match="public_base_url"):
            config.setting_value("public_base_url", bad)
    assert config.load(env={"NOTIFYMESH_PUBLIC_BASE_URL": "http://a:1"}).public_base_url == "http://a:1"
