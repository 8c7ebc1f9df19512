"""Per-key limits (frontend/limits.py) and the caller's identity (frontend/auth.py)
without a mesh: buckets, the share of each frontend, streams, tokens, certificates,
the verified-key cache."""

import asyncio
import dataclasses
import secrets
import types

import pytest

from frontend import auth
from frontend.limits import Limits
from gen.notifymesh.v1 import auth_pb2
from notifymesh import errors
from notifymesh.server import principal as principal_mod
from notifymesh.server.principal import Principal


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _config(**values):
    defaults = dict(auth_publish_messages_per_s=100.0, auth_publish_bytes_per_s=1e9, auth_admin_calls_per_s=10.0,
                    auth_max_streams=4)
    return types.SimpleNamespace(**{**defaults, **values})


KEY = Principal("key:abc", "svc", "publisher")


def test_a_bucket_admits_its_rate_and_says_when_to_retry():
    clock = Clock()
    limits = Limits(_config(), lambda: 1, clock)
    limits.publish(KEY, 100, 10)  # a second's worth at once
    with pytest.raises(errors.RateLimited) as limited:
        limits.publish(KEY, 50, 10)
    assert limited.value.retry_after_s == pytest.approx(0.5)
    clock.now += 0.5
    limits.publish(KEY, 50, 10)


def test_several_frontends_together_admit_the_limit_within_one_burst_each():
    """Round robin over 3 frontends for 10 s: each enforces limit/3."""
    clock = Clock()
    frontends = [Limits(_config(), lambda: 3, clock) for _ in range(3)]
    admitted = 0
    for step in range(10_000):
        clock.now = 100 + step / 1000  # a call every ms, 10 messages each: 10,000 msg/s offered
        try:
            frontends[step % 3].publish(KEY, 10, 1)
            admitted += 10
        except errors.RateLimited:
            pass
    # 100 msg/s for 10 s, plus at most one burst (a second's share) per frontend.
    assert 1000 <= admitted <= 1000 + 100 + 30


def test_per_key_overrides_and_admin_calls():
    clock = Clock()
    limits = Limits(_config(), lambda: 1, clock)
    tight = Principal("key:def", "svc", "admin", limits={"admin_calls_per_s": 2})
    limits.admin_call(tight)
    limits.admin_call(tight)
    with pytest.raises(errors.RateLimited, match="admin_calls_per_s"):
        limits.admin_call(tight)
    for _ in range(10):
        limits.admin_call(KEY)  # its own bucket, the default


def test_streams_per_key_are_capped_and_given_back():
    limits = Limits(_config(auth_max_streams=2), lambda: 1)
    with limits.stream(KEY, "m"), limits.stream(KEY, "m"):
        with pytest.raises(errors.ResourceExhausted, match="max_streams"):
            with limits.stream(KEY, "m"):
                pass
    with limits.stream(KEY, "m"):
        pass
    assert limits._streams == {}


def test_recipient_tokens_name_one_recipient_and_expire():
    tokens = auth.RecipientTokens()
    tokens.start(b"k" * 32)
    minted = tokens.mint("alice", 60)
    assert tokens.verify(minted.token) == Principal("recipient:alice", "alice", "recipient")
    other = auth.RecipientTokens()
    other.start(b"x" * 32)
    with pytest.raises(errors.Unauthenticated, match="signature"):
        other.verify(minted.token)
    expired = tokens.mint("alice", -1)
    with pytest.raises(errors.Unauthenticated, match="expired"):
        tokens.verify(expired.token)


class _Context:
    def __init__(self, metadata=(), common_name=None):
        self._metadata, self._cn = metadata, common_name

    def invocation_metadata(self):
        return self._metadata

    def auth_context(self):
        return {"x509_common_name": [self._cn.encode()]} if self._cn else {}


class _Mirror:
    def __init__(self, items):
        self.items = items

    async def get(self, what, name):
        raise errors.NotFound(name)


def test_a_client_certificate_is_its_mapped_principal():
    mapped = auth_pb2.CertificatePrincipal(common_name="billing-worker", grants=auth_pb2.Grants(
        role="publisher", topics=["billing.*"]))
    authenticator = auth.Authenticator(_Mirror({}), _Mirror({"billing-worker": mapped}), auth.RecipientTokens())
    caller = asyncio.run(authenticator.principal(_Context(common_name="billing-worker")))
    assert caller.id == "cert:billing-worker" and caller.allows("publish", "topic", "billing.x")
    assert not caller.allows("publish", "topic", "ops.x")
    with pytest.raises(errors.Unauthenticated, match="not mapped"):
        asyncio.run(authenticator.principal(_Context(common_name="stranger")))
    with pytest.raises(errors.Unauthenticated, match="no credentials"):
        asyncio.run(authenticator.principal(_Context()))
    with pytest.raises(errors.Unauthenticated, match="Bearer"):
        asyncio.run(authenticator.principal(_Context((("authorization", "Basic abc"),))))


def _key_record(**changes):
    """A live API key as the mirror holds it, and the key its caller sends."""
    key_id, secret, key = principal_mod.new_key()
    salt = secrets.token_bytes(16)
    record = principal_mod.KeyRecord(key_id, "svc", "publisher", salt.hex(),
                                     principal_mod.hash_secret(salt, secret).hex(), 1, topics=("orders",))
    return dataclasses.replace(record, **changes), key


def _bearer(key):
    return _Context((("authorization", f"Bearer {key}"),))


def test_a_verified_key_is_not_hashed_again_until_its_record_changes(monkeypatch):
    """The verified-key cache: one hash per key while the mirror's record is the one
    it was checked against; a revocation (a new record from etcd's watch) is refused
    on the next call, with no time-to-live to wait out."""
    record, key = _key_record()
    keys = _Mirror({record.key_id: record})
    authenticator = auth.Authenticator(keys, _Mirror({}), auth.RecipientTokens())
    hashed = []
    real = principal_mod.hash_secret
    monkeypatch.setattr(principal_mod, "hash_secret", lambda salt, s: hashed.append(1) or real(salt, s))
    for _ in range(3):
        assert asyncio.run(authenticator.principal(_bearer(key))).id == f"key:{record.key_id}"
    assert len(hashed) == 1
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")  # the same key id, another secret: checked, refused
    with pytest.raises(errors.Unauthenticated, match="wrong secret"):
        asyncio.run(authenticator.principal(_bearer(wrong)))
    keys.items[record.key_id] = dataclasses.replace(record, revoked_ms=2)  # as the watch delivers it
    with pytest.raises(errors.Unauthenticated, match="revoked"):
        asyncio.run(authenticator.principal(_bearer(key)))


def test_a_cached_key_that_expires_is_refused(monkeypatch):
    record, key = _key_record(expires_ms=10_000)
    authenticator = auth.Authenticator(_Mirror({record.key_id: record}), _Mirror({}), auth.RecipientTokens())
    monkeypatch.setattr(auth, "now_ms", lambda: 9_999)
    asyncio.run(authenticator.principal(_bearer(key)))
    monkeypatch.setattr(auth, "now_ms", lambda: 10_001)
    with pytest.raises(errors.Unauthenticated, match="expired"):
        asyncio.run(authenticator.principal(_bearer(key)))


def test_the_verified_key_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(auth, "MAX_VERIFIED", 2)
    records = [_key_record() for _ in range(5)]
    authenticator = auth.Authenticator(_Mirror({r.key_id: r for r, _ in records}), _Mirror({}),
                                       auth.RecipientTokens())
    for _, key in records:
        asyncio.run(authenticator.principal(_bearer(key)))
        assert len(authenticator._verified) <= 2
