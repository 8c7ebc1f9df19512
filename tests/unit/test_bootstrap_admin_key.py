"""KeyStore.ensure_bootstrap (metadata/keys.py): the admin key of --admin-key-file is
registered once, as a salted hash, and a key id already there is left as it is."""

import pytest

from metadata.keys import KeyStore
from notifymesh.contracts import API_KEYS
from notifymesh.server import principal
from notifymesh.server.principal import KeyRecord


class FakeEtcd:
    """The create-if-absent transaction KeyStore uses, over a dict."""

    class transactions:
        @staticmethod
        def create(key):
            return _Created(key)

        @staticmethod
        def put(key, value):
            return ("put", key, value)

    def __init__(self):
        self.kv: dict[bytes, bytes] = {}

    async def transaction(self, compare, success, failure):
        ok = all(c.key not in self.kv for c in compare)
        for _, key, value in success if ok else failure:
            self.kv[key] = value
        return ok, []


class _Created:
    def __init__(self, key):
        self.key = key

    def __eq__(self, revision):  # txn.create(key) == 0: the key does not exist
        assert revision == 0
        return self


async def test_the_bootstrap_key_is_registered_once_as_an_admin_key_that_verifies():
    etcd, (key_id, secret, key) = FakeEtcd(), principal.new_key()
    keys = KeyStore(etcd)
    assert await keys.ensure_bootstrap(key)
    record = KeyRecord.decode(etcd.kv[API_KEYS + key_id.encode()])
    assert record.role == "admin" and record.name == "bootstrap-admin" and not record.revoked_ms
    assert record.verifies(secret) and secret not in etcd.kv[API_KEYS + key_id.encode()].decode()
    revoked = KeyRecord(**{**record.__dict__, "revoked_ms": 1})
    etcd.kv[API_KEYS + key_id.encode()] = revoked.encode()
    assert not await keys.ensure_bootstrap(key), "there already: a restart changes nothing"
    assert KeyRecord.decode(etcd.kv[API_KEYS + key_id.encode()]).revoked_ms == 1, "a revoked one stays revoked"


async def test_a_file_without_a_key_stops_the_start_with_what_to_do():
    with pytest.raises(ValueError, match="deploy.admin_key"):
        await KeyStore(FakeEtcd()).ensure_bootstrap("not a key")
