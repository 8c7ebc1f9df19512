"""API keys and certificate principals in etcd (contracts.API_KEYS, CERT_PRINCIPALS).

A key's secret is made here and returned once (CreateApiKeyResponse.secret_key);
etcd holds only its salted hash (principal.KeyRecord). Revocation keeps the record
(with revoked_ms) so listings show it and the frontends, which follow these
prefixes, refuse it; MAX_KEYS bounds the records.
"""

import logging
import re
import secrets

from google.protobuf import duration_pb2

from gen.notifymesh.v1 import auth_pb2
from notifymesh import errors
from notifymesh.clock import now_ms, timestamp
from notifymesh.contracts import API_KEYS, CERT_PRINCIPALS
from notifymesh.log import fields
from notifymesh.server import principal as principal_mod
from notifymesh.server.principal import KeyRecord

log = logging.getLogger(__name__)

MAX_KEYS = 10_000
KEY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
COMMON_NAME = re.compile(r"^[\x21-\x7e]{1,64}$")
MAX_TTL_S = 10 * 365 * 24 * 3600
LIMIT_FIELDS = ("publish_messages_per_s", "publish_bytes_per_s", "admin_calls_per_s", "max_streams")
MAX_LIMIT = 1e12
BOOTSTRAP_KEY_NAME = "bootstrap-admin"


def grants_of(grants: auth_pb2.Grants) -> dict:
    """The checked grants as KeyRecord fields. A viewer without patterns reads every name."""
    if grants.role not in principal_mod.ROLES:
        raise errors.InvalidArgument(f"role {grants.role!r}: one of {', '.join(principal_mod.ROLES)}")
    values = {kind: principal_mod.check_patterns(kind, getattr(grants, kind))
              for kind in ("topics", "subscriptions", "categories")}
    if grants.role == "viewer" and not any(values.values()):
        values = {kind: ("*",) for kind in values}
    return {"role": grants.role, "personal_data": grants.personal_data, **values}


def grants_proto(record: KeyRecord) -> auth_pb2.Grants:
    return auth_pb2.Grants(role=record.role, topics=record.topics, subscriptions=record.subscriptions,
                           categories=record.categories, personal_data=record.personal_data)


def key_proto(record: KeyRecord) -> auth_pb2.ApiKey:
    key = auth_pb2.ApiKey(key_id=record.key_id, name=record.name, grants=grants_proto(record),
                          limits=auth_pb2.RateLimits(**record.limits))
    key.create_time.CopyFrom(timestamp(record.created_ms))
    if record.expires_ms:
        key.expire_time.CopyFrom(timestamp(record.expires_ms))
    if record.revoked_ms:
        key.revoke_time.CopyFrom(timestamp(record.revoked_ms))
    return key


def _ttl_ms(ttl: duration_pb2.Duration) -> int:
    ms = ttl.ToMilliseconds()
    if not 1000 <= ms <= MAX_TTL_S * 1000:
        raise errors.InvalidArgument(f"key ttl {ms / 1000:g}s: 1 second to {MAX_TTL_S // 86400} days")
    return ms


class KeyStore:
    def __init__(self, etcd):
        self._etcd = etcd
        self._txn = etcd.transactions

    async def create(self, request: auth_pb2.CreateApiKeyRequest) -> auth_pb2.CreateApiKeyResponse:
        if not KEY_NAME.match(request.name):
            raise errors.InvalidArgument(f"key name {request.name[:80]!r}: 1 to 64 of a-z A-Z 0-9 . _ -")
        grants = grants_of(request.grants)
        if len(await self._etcd.get_prefix(API_KEYS, keys_only=True)) >= MAX_KEYS:
            raise errors.ResourceExhausted(f"at most {MAX_KEYS} API keys; revoke and delete some first")
        key_id, secret, full = principal_mod.new_key()
        salt = secrets.token_bytes(principal_mod.SALT_BYTES)
        created = now_ms()
        record = KeyRecord(key_id, request.name, salt=salt.hex(), hash=principal_mod.hash_secret(salt, secret).hex(),
                           created_ms=created,
                           expires_ms=created + _ttl_ms(request.ttl) if request.HasField("ttl") else 0, **grants)
        key = API_KEYS + key_id.encode()
        made, _ = await self._etcd.transaction(compare=[self._txn.create(key) == 0],
                                               success=[self._txn.put(key, record.encode())], failure=[])
        if not made:  # 48 random bits taken: vanishingly rare
            raise errors.Aborted("key id collision; create it again")
        log.info("api key created", extra=fields(key_id=key_id, name=request.name, role=record.role))
        return auth_pb2.CreateApiKeyResponse(key=key_proto(record), secret_key=full)

    async def ensure_bootstrap(self, key: str) -> bool:
        """Registers key (nm_<key id>_<secret>, made outside: deploy/admin_key.py) as the
        admin key "bootstrap-admin" unless its key id is in etcd already, revoked or not
        (a revoked one stays revoked: put a new key in the file); whether it did.
        Several metadata services may race here at start: one transaction wins."""
        try:
            key_id, secret = principal_mod.parse_key(key)
        except errors.Unauthenticated:
            raise ValueError("the admin key file does not hold an API key (nm_<12 hex digits>_<43 characters>; "
                             "python -m deploy.admin_key FILE makes one)") from None
        salt = secrets.token_bytes(principal_mod.SALT_BYTES)
        record = KeyRecord(key_id, BOOTSTRAP_KEY_NAME, salt=salt.hex(),
                           hash=principal_mod.hash_secret(salt, secret).hex(), created_ms=now_ms(), role="admin")
        entry = API_KEYS + key_id.encode()
        made, _ = await self._etcd.transaction(compare=[self._txn.create(entry) == 0],
                                               success=[self._txn.put(entry, record.encode())], failure=[])
        if made:
            log.info("bootstrap admin key registered", extra=fields(key_id=key_id))
        return made

    async def _record(self, key_id: str) -> tuple[KeyRecord, int]:
        if not re.fullmatch(r"[0-9a-f]{12}", key_id):
            raise errors.InvalidArgument(f"key id {key_id[:40]!r}: 12 lowercase hex digits")
        kv = await self._etcd.get(API_KEYS + key_id.encode())
        if kv is None:
            raise errors.NotFound(f"API key {key_id} not found")
        return KeyRecord.decode(kv.value), kv.mod_revision

    async def _replace(self, record: KeyRecord, revision: int) -> None:
        key = API_KEYS + record.key_id.encode()
        done, _ = await self._etcd.transaction(compare=[self._txn.mod(key) == revision],
                                               success=[self._txn.put(key, record.encode())], failure=[])
        if not done:
            raise errors.Aborted(f"API key {record.key_id} changed meanwhile; try again")

    async def revoke(self, key_id: str) -> auth_pb2.ApiKey:
        record, revision = await self._record(key_id)
        if not record.revoked_ms:
            record = KeyRecord(**{**record.__dict__, "revoked_ms": now_ms()})
            await self._replace(record, revision)
            log.info("api key revoked", extra=fields(key_id=key_id, name=record.name))
        return key_proto(record)

    async def set_limits(self, key_id: str, limits: auth_pb2.RateLimits) -> auth_pb2.ApiKey:
        record, revision = await self._record(key_id)
        values = {name: getattr(limits, name) for name in LIMIT_FIELDS if getattr(limits, name)}
        for name, value in values.items():
            if not 0 < value <= MAX_LIMIT:
                raise errors.InvalidArgument(f"{name} {value:g}: above 0 and at most {MAX_LIMIT:g} (0: the default)")
        record = KeyRecord(**{**record.__dict__, "limits": values})
        await self._replace(record, revision)
        return key_proto(record)

    async def list(self) -> auth_pb2.ListApiKeysResponse:
        records = [KeyRecord.decode(kv.value) for kv in await self._etcd.get_prefix(API_KEYS)]
        return auth_pb2.ListApiKeysResponse(keys=[key_proto(r) for r in sorted(records, key=lambda r: r.created_ms)])

    async def map_certificate(self, request: auth_pb2.MapCertificateRequest) -> auth_pb2.CertificatePrincipal:
        mapped = request.principal
        if not COMMON_NAME.match(mapped.common_name):
            raise errors.InvalidArgument(f"common name {mapped.common_name[:80]!r}: 1 to 64 printable ASCII")
        key = CERT_PRINCIPALS + mapped.common_name.encode()
        if request.remove:
            await self._etcd.delete(key)
            return mapped
        record = auth_pb2.CertificatePrincipal(common_name=mapped.common_name,
                                               grants=auth_pb2.Grants(**grants_of(mapped.grants)))
        await self._etcd.put(key, record.SerializeToString())
        return record
