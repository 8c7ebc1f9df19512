"""Which addresses the mesh connects to on a user's behalf (notifymesh/server/egress.py),
and the webhook signature receivers check (notifymesh/webhooks.py)."""

import hashlib
import hmac

import pytest

from notifymesh import errors, webhooks
from notifymesh.server import egress
from notifymesh.server.config import LOOPBACK_NETWORKS, parse_networks, setting_value


@pytest.mark.parametrize("address,why", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1%eth0", "link-local"), ("10.1.2.3", "private"),
    ("192.168.0.10", "private"), ("172.16.5.5", "private"), ("fd00::1", "private"), ("0.0.0.0", "unspecified"),
    ("100.64.0.1", "not public"), ("224.0.0.1", "multicast"), ("8.8.8.8", ""), ("2001:4860:4860::8888", ""),
])
def test_only_public_addresses_pass_by_default(address, why):
    assert egress.refusal(address, ()) == why


def test_allowed_networks_let_their_addresses_through():
    allowed = parse_networks("10.0.0.0/8, " + LOOPBACK_NETWORKS)
    assert [egress.refusal(a, allowed) for a in ("10.9.9.9", "127.0.0.1", "::1", "::ffff:127.0.0.1")] == [""] * 4
    assert egress.refusal("169.254.169.254", allowed) == "link-local"
    assert setting_value("allowed_networks", " 10.0.0.0/8,::1 ") == "10.0.0.0/8,::1/128"
    for bad in ("10.0.0.0/33", "nope", ",".join(["10.0.0.0/8"] * 65)):
        with pytest.raises(errors.InvalidArgument, match="allowed_networks"):
            setting_value("allowed_networks", bad)


async def test_urls_naming_forbidden_addresses_are_invalid_argument():
    for url in ("http://169.254.169.254/latest/meta-data/", "http://localhost:8080/hook", "https://[::1]/x",
                "http://10.0.0.5/hook"):
        with pytest.raises(errors.InvalidArgument, match="allowed_networks"):
            await egress.check_url("push endpoint", url, ())
    await egress.check_url("push endpoint", "http://127.0.0.1:9/hook", parse_networks(LOOPBACK_NETWORKS))
    await egress.check_url("push endpoint", "https://8.8.8.8/hook", ())  # public
    with pytest.raises(egress.ForbiddenAddress, match="link-local"):
        await egress.pinned_address("169.254.169.254", 80, ())


def test_a_signature_verifies_its_body_and_time_only():
    body, secret, now = b'{"a": 1}', "s3cret", 1_800_000_000
    header = webhooks.sign(secret, body, now)
    t, v1 = header.split(",")
    assert t == f"t={now}" and v1 == "v1=" + hmac.new(b"s3cret", f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert webhooks.verify(secret, header, body, now_s=now + 299)
    assert not webhooks.verify(secret, header, body, now_s=now + 301)  # a replay, later
    assert not webhooks.verify(secret, header, body + b" ", now_s=now)
    assert not webhooks.verify("other", header, body, now_s=now)
    assert not webhooks.verify(secret, header.replace(f"t={now}", f"t={now + 100}"), body, now_s=now)
    assert not webhooks.verify(secret, "garbage", body) and not webhooks.verify(secret, "t=x,v1=y", body)
    legacy = webhooks.headers(secret, body, now)[webhooks.LEGACY_HEADER]
    assert legacy == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
