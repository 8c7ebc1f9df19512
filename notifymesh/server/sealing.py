"""Encryption at rest: AES-256-GCM under data keys wrapped by the cluster's master key.

Two layers (envelope encryption):
- The master key never encrypts data. It only wraps data keys. It comes from a
  MasterKey: a key file (`--master-key-file`, for the local mesh
  `<data_dir>/master.key`, 0600), the NOTIFYMESH_MASTER_KEY environment variable
  (the same content), or a KMS reached through a command (NOTIFYMESH_KMS_COMMAND,
  CommandMasterKey below). A key file holds one base64 key a line. The first line is
  the current key. Lines after it are older keys, still used to unwrap.
- Data keys (32 random bytes, numbered 1, 2, ...) are kept in etcd, wrapped
  (DATA_KEYS + number -> DataKeyRecord), so every process of the cluster can open
  what any other sealed: a storage follower that becomes leader, the senders that
  sign with a push secret the metadata service sealed. `notifymesh keys rotate`
  adds one, which new writes use from its `active_ms` on: the delay gives every
  process's watch time to load it before anyone seals with it. Old data keys stay,
  so old values still open. Rotating the master key re-wraps the data keys (a
  few etcd values). No message is rewritten.

A sealed value is MAGIC, the data key number (4 bytes), a 96-bit nonce, then the
ciphertext and its 16-byte GCM tag: one encryption per value, 35 bytes more. The
associated data is the header plus the caller's context: for RocksDB the value's
key, for etcd the secret's record key. So a ciphertext copied to another row, or
relabelled with another key number, fails to open instead of passing for that
row's value. Nonces count up from a random 96-bit start per KeyRing. Across
processes a repeat would need two random starts within 2**64 of each other, out of
2**96 (cheaper than os.urandom per value, and never a repeat within a process).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import secrets
import shlex
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from notifymesh import errors
from notifymesh.log import fields

log = logging.getLogger(__name__)

DATA_KEYS = b"/notifymesh/keys/data/"  # + 10-digit number -> DataKeyRecord (JSON)
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
TAG_BYTES = 16
MAGIC = b"\xe5nm"
HEADER = struct.Struct(">3sI")  # MAGIC, data key number
OVERHEAD = HEADER.size + NONCE_BYTES + TAG_BYTES
# New data keys are used for writes this long after they are made (see above).
ACTIVATION_DELAY_MS = 3_000
# Rotations are made by hand (or a timer): this bounds the keys every process loads.
MAX_DATA_KEYS = 10_000
_NONCE_SPACE = 1 << (8 * NONCE_BYTES)
TEXT_PREFIX = "nmsealed:"  # a sealed secret kept in a string field of a proto in etcd

MASTER_KEY_ENV = "NOTIFYMESH_MASTER_KEY"
MASTER_KEY_FILE_ENV = "NOTIFYMESH_MASTER_KEY_FILE"
KMS_COMMAND_ENV = "NOTIFYMESH_KMS_COMMAND"


class SealError(errors.FailedPrecondition):
    """A value that does not open: another key, another row, changed, or an unknown data key."""


# -- the master key ------------------------------------------------------------------


class MasterKey(Protocol):
    """Wraps and unwraps data keys (a KMS's encrypt/decrypt). The wrapped form is
    opaque to the caller and names the master key version itself."""

    def wrap(self, data_key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes: ...

    def current_id(self) -> str: ...

    def refresh(self) -> None:
        """Reads the key source again (before a re-wrap: the current version may have changed)."""


def new_master_key_line() -> str:
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def create_key_file(path: Path) -> bool:
    """Creates a key file with one new master key (0600) unless it exists; True when made."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(new_master_key_line() + "\n")
    return True


def _parse_keys(text: str, source: str) -> list[bytes]:
    found = []
    for line in text.replace(",", "\n").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = base64.b64decode(line, validate=True)
        except binascii.Error:
            key = b""
        if len(key) != KEY_BYTES:
            raise SystemExit(f"{source}: each master key is {KEY_BYTES} bytes in base64, one a line")
        found.append(key)
    if not found:
        raise SystemExit(f"{source}: no master key")
    return found


def _fingerprint(key: bytes) -> bytes:
    return hashlib.sha256(b"notifymesh master key" + key).digest()[:8]


class LocalMasterKey:
    """Master keys from a key file or an environment variable: AES-256-GCM key
    wrapping under the first key. A wrapped key starts with the fingerprint of
    the master key that wrapped it, so any listed key unwraps what it wrapped. The
    file is read again when a fingerprint is unknown: add a key at the top, then
    `notifymesh keys rotate --master`."""

    def __init__(self, read: callable, source: str):
        self._read, self._source = read, source
        self._load()

    @classmethod
    def from_file(cls, path: Path) -> LocalMasterKey:
        if not path.exists():
            raise SystemExit(f"master key file {path} not found")
        if path.stat().st_mode & 0o077:
            log.warning("master key file readable by others", extra=fields(path=str(path)))
        return cls(path.read_text, str(path))

    def refresh(self) -> None:
        self._load()

    def _load(self) -> None:
        keys = _parse_keys(self._read(), self._source)
        self._keys = {_fingerprint(key): AESGCM(key) for key in keys}
        self._current = _fingerprint(keys[0])

    def current_id(self) -> str:
        return self._current.hex()

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return self._current + nonce + self._keys[self._current].encrypt(nonce, data_key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        fingerprint = wrapped[:8]
        if fingerprint not in self._keys:
            self._load()
        if fingerprint not in self._keys:
            raise SealError(f"a data key is wrapped by master key {fingerprint.hex()}, which {self._source} "
                            f"does not hold")
        try:
            return self._keys[fingerprint].decrypt(wrapped[8:8 + NONCE_BYTES], wrapped[8 + NONCE_BYTES:], context)
        except InvalidTag:
            raise SealError("a wrapped data key does not open (changed, or moved to another number)") from None


class CommandMasterKey:
    """A KMS reached through a command, like git's credential helpers: the command
    is run with one argument, `wrap` or `unwrap`, and reads a JSON object on stdin
    {"data": base64, "context": base64}, answering {"data": base64} on stdout
    (wrap: the wrapped key, as the KMS returns it; unwrap: the data key). `id`
    prints the KMS key's current version. Run only when data keys are loaded, made or re-wrapped."""

    TIMEOUT_S = 30

    def __init__(self, command: str):
        self._argv = shlex.split(command)

    def _run(self, action: str, data: bytes = b"", context: bytes = b"") -> bytes:
        request = json.dumps({"data": base64.b64encode(data).decode(), "context": base64.b64encode(context).decode()})
        try:
            done = subprocess.run([*self._argv, action], input=request, capture_output=True, text=True,
                                  timeout=self.TIMEOUT_S, check=True)
            return base64.b64decode(json.loads(done.stdout)["data"])
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as e:
            raise SealError(f"the KMS command failed to {action}: {e}") from None

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        return self._run("wrap", data_key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        return self._run("unwrap", wrapped, context)

    def current_id(self) -> str:
        return self._run("id").decode()

    def refresh(self) -> None:
        pass  # the KMS always wraps with its current version


def master_key(key_file: Path | None) -> MasterKey | None:
    """The master key configured: --master-key-file, else NOTIFYMESH_MASTER_KEY_FILE,
    NOTIFYMESH_MASTER_KEY, NOTIFYMESH_KMS_COMMAND; None when there is none."""
    key_file = key_file or (Path(os.environ[MASTER_KEY_FILE_ENV]) if os.environ.get(MASTER_KEY_FILE_ENV) else None)
    if key_file is not None:
        return LocalMasterKey.from_file(key_file)
    if os.environ.get(MASTER_KEY_ENV):
        return LocalMasterKey(lambda: os.environ.get(MASTER_KEY_ENV, ""), MASTER_KEY_ENV)
    if os.environ.get(KMS_COMMAND_ENV):
        return CommandMasterKey(os.environ[KMS_COMMAND_ENV])
    return None


# -- data keys -------------------------------------------------------------------------


@dataclass(frozen=True)
class DataKeyRecord:
    """A data key as etcd keeps it: wrapped by the master key."""
    number: int
    wrapped: bytes
    created_ms: int
    active_ms: int  # new writes use it from then on

    def encode(self) -> bytes:
        return json.dumps({"number": self.number, "wrapped": base64.b64encode(self.wrapped).decode(),
                           "created_ms": self.created_ms, "active_ms": self.active_ms}).encode()

    @classmethod
    def parse(cls, value: bytes) -> DataKeyRecord:
        o = json.loads(value)
        return cls(int(o["number"]), base64.b64decode(o["wrapped"]), int(o["created_ms"]), int(o["active_ms"]))


def data_key_name(number: int) -> bytes:
    return DATA_KEYS + b"%010d" % number


def _wrap_context(number: int) -> bytes:
    """A wrapped data key opens only as the key of its own number."""
    return b"notifymesh data key %d" % number


class KeyRing:
    """The cluster's data keys, unwrapped, and the one new values are sealed with.
    enabled False (config encrypt_at_rest off, for measurements): seal passes
    values through, open still opens what was sealed before."""

    def __init__(self, master: MasterKey | None, enabled: bool = True):
        if enabled and master is None:
            raise SystemExit("encryption at rest needs a master key: --master-key-file, NOTIFYMESH_MASTER_KEY or "
                             "NOTIFYMESH_KMS_COMMAND (or set encrypt_at_rest to false)")
        self.master, self.enabled = master, enabled
        self._ciphers: dict[int, AESGCM] = {}
        self._records: dict[int, DataKeyRecord] = {}
        self._current: int | None = None
        self._header = b""
        self._cipher: AESGCM | None = None
        self._nonce = secrets.randbits(8 * NONCE_BYTES)

    # -- loading ------------------------------------------------------------------

    def add(self, record: DataKeyRecord) -> None:
        """Takes in a data key read from etcd (also when its wrapping changed)."""
        if self.master is None:
            return
        if (known := self._records.get(record.number)) is not None and known.wrapped == record.wrapped:
            return
        key = self.master.unwrap(record.wrapped, _wrap_context(record.number))
        self._ciphers[record.number] = AESGCM(key)
        self._records[record.number] = record
        self.choose_current()

    def choose_current(self, now: int | None = None) -> None:
        """The newest active data key becomes the one new values are sealed with."""
        now = now if now is not None else int(time.time() * 1000)
        active = [r.number for r in self._records.values() if r.active_ms <= now]
        newest = max(active) if active else (min(self._records) if self._records else None)
        if newest is not None and newest != self._current:
            self._current, self._cipher = newest, self._ciphers[newest]
            self._header = HEADER.pack(MAGIC, newest)
            log.info("data key in use", extra=fields(number=newest))

    def pending_activation_ms(self) -> int | None:
        """When a data key not yet active becomes so (None: none waits)."""
        waiting = [r.active_ms for r in self._records.values() if r.number > (self._current or 0)]
        return min(waiting) if waiting else None

    @property
    def current(self) -> int | None:
        return self._current

    @property
    def numbers(self) -> list[int]:
        return sorted(self._records)

    # -- values -------------------------------------------------------------------

    def seal(self, plaintext: bytes, context: bytes = b"") -> bytes:
        """One AES-256-GCM encryption bound to context (see the module's docstring)."""
        if not self.enabled:
            return plaintext
        cipher = self._cipher
        if cipher is None:
            raise SealError("no data key loaded yet")
        header = self._header
        self._nonce = (self._nonce + 1) % _NONCE_SPACE
        nonce = self._nonce.to_bytes(NONCE_BYTES, "big")
        return header + nonce + cipher.encrypt(nonce, plaintext, header + context)

    def open(self, value: bytes, context: bytes = b"") -> bytes:
        """The plaintext of a sealed value; raises SealError when it does not open.
        A value that is not sealed (written with encryption off) comes back as it is."""
        if not is_sealed(value):
            return value
        number = int.from_bytes(value[3:7], "big")
        cipher = self._ciphers.get(number)
        if cipher is None:
            raise SealError(f"sealed with data key {number}, which is not loaded")
        try:
            return cipher.decrypt(value[7:7 + NONCE_BYTES], value[7 + NONCE_BYTES:], value[:7] + context)
        except InvalidTag:
            raise SealError("a sealed value does not open (changed, or moved from another row)") from None

    def seal_text(self, text: str, context: str) -> str:
        """For secrets kept in string fields of records in etcd."""
        if not text or not self.enabled:
            return text
        return TEXT_PREFIX + base64.b64encode(self.seal(text.encode(), context.encode())).decode()

    def open_text(self, text: str, context: str) -> str:
        if not text.startswith(TEXT_PREFIX):
            return text
        return self.open(base64.b64decode(text[len(TEXT_PREFIX):]), context.encode()).decode()


def is_sealed(value: bytes) -> bool:
    return len(value) >= OVERHEAD and value[:3] == MAGIC


# -- etcd -------------------------------------------------------------------------------


async def load(etcd, ring: KeyRing) -> None:
    """Loads every data key from etcd, making the first when there is none (whichever
    process comes first makes it; the others read it)."""
    if ring.master is None:
        return
    kvs = await etcd.get_prefix(DATA_KEYS)
    if not list(kvs):
        await _create(etcd, ring.master, 1, active_ms=0)
        kvs = await etcd.get_prefix(DATA_KEYS)
    for kv in kvs:
        record = DataKeyRecord.parse(kv.value)
        try:
            ring.add(record)
        except SealError as e:
            raise SystemExit(f"data key {record.number}: {e}") from None


async def _create(etcd, master: MasterKey, number: int, active_ms: int) -> bool:
    now = int(time.time() * 1000)
    record = DataKeyRecord(number, master.wrap(secrets.token_bytes(KEY_BYTES), _wrap_context(number)), now,
                           active_ms)
    txn = etcd.transactions
    created, _ = await etcd.transaction(compare=[txn.version(data_key_name(number)) == 0],
                                        success=[txn.put(data_key_name(number), record.encode())], failure=[])
    return created


@dataclass(frozen=True)
class Rotation:
    """What a rotation did: the new data key and when writes use it, or how many
    data keys were re-wrapped under the master key's current version."""
    data_key: int
    active_ms: int
    rewrapped: int
    master_key_id: str


async def rotate_data_key(etcd, master: MasterKey) -> Rotation:
    """A new data key, numbered after the newest, used for new writes from
    ACTIVATION_DELAY_MS on."""
    for _ in range(10):  # another rotation at the same time takes the number: the next one
        numbers = [DataKeyRecord.parse(kv.value).number for kv in await etcd.get_prefix(DATA_KEYS)]
        if len(numbers) >= MAX_DATA_KEYS:
            raise errors.ResourceExhausted(f"the cluster has {len(numbers)} data keys, the most it keeps")
        number = max(numbers, default=0) + 1
        active_ms = int(time.time() * 1000) + ACTIVATION_DELAY_MS
        if await _create(etcd, master, number, active_ms):
            return Rotation(number, active_ms, 0, master.current_id())
    raise errors.Aborted("data keys were rotated concurrently: try again")


async def rewrap_data_keys(etcd, master: MasterKey) -> Rotation:
    """Re-wraps every data key under the master key's current version (after a new
    master key was put first in the key file, or the KMS rotated its key), each with
    a compare-and-swap on the value read. The data it seals is not touched."""
    master.refresh()
    count, newest, active = 0, 0, 0
    txn = etcd.transactions
    for kv in await etcd.get_prefix(DATA_KEYS):
        record = DataKeyRecord.parse(kv.value)
        key = master.unwrap(record.wrapped, _wrap_context(record.number))
        rewrapped = DataKeyRecord(record.number, master.wrap(key, _wrap_context(record.number)), record.created_ms,
                                  record.active_ms)
        done, _ = await etcd.transaction(compare=[txn.value(kv.key) == kv.value],
                                         success=[txn.put(kv.key, rewrapped.encode())], failure=[])
        if not done:
            raise errors.Aborted(f"data key {record.number} changed meanwhile: try again")
        count += 1
        if record.number > newest:
            newest, active = record.number, record.active_ms
    return Rotation(newest, active, count, master.current_id())


class KeyAdmin:
    """`notifymesh keys rotate` (through the metadata service)."""

    def __init__(self, etcd, ring_: KeyRing):
        self._etcd, self._ring = etcd, ring_

    async def rotate(self, master: bool) -> Rotation:
        if self._ring.master is None:
            raise errors.FailedPrecondition("this metadata service has no master key (encryption at rest is off)")
        if master:
            return await rewrap_data_keys(self._etcd, self._ring.master)
        return await rotate_data_key(self._etcd, self._ring.master)


async def follow(etcd, ring: KeyRing):
    """Keeps ring equal to the data keys in etcd (new ones, re-wrapped ones), and
    switches to a new one when it becomes active. Returns the mirror (stop() it)."""
    from notifymesh.server.cluster import PrefixMirror  # cluster imports this module

    mirror = PrefixMirror(etcd, DATA_KEYS, DataKeyRecord.parse)
    loop = asyncio.get_running_loop()

    def changed(_name: str | None) -> None:
        for record in mirror.items.values():
            try:
                ring.add(record)
            except SealError as e:  # a master key this process lacks: keep the others
                log.error("data key not loaded", extra=fields(number=record.number, error=str(e)))
        if (at := ring.pending_activation_ms()) is not None:
            loop.call_later(max(0.0, at / 1000 - time.time()) + 0.01, ring.choose_current)

    mirror.on_change(changed)
    await mirror.start()
    return mirror


# -- the process's key ring (design: seal(bytes) -> bytes, open(bytes) -> bytes) ----------

# Every service installs its ring at start (process.serve); until then (unit tests)
# values pass in the clear, and sealed ones do not open.
_installed = KeyRing(None, enabled=False)


def install(ring_: KeyRing) -> None:
    global _installed
    _installed = ring_


def ring() -> KeyRing:
    return _installed


def seal(plaintext: bytes, context: bytes = b"") -> bytes:
    return _installed.seal(plaintext, context)


def open(sealed: bytes, context: bytes = b"") -> bytes:  # noqa: A001 (the name the design gives it)
    return _installed.open(sealed, context)


# -- secrets in etcd records --------------------------------------------------------------
# Push secrets and provider credentials are sealed in the records etcd keeps, bound to
# the record they belong to; every process reads them through these (its mirrors too).


def _push_context(subscription: pubsub_pb2.Subscription) -> str:
    return f"subscription {subscription.name} push secret"


def _previous_push_context(subscription: pubsub_pb2.Subscription) -> str:
    """Its own context: a sealed previous secret cannot pass for the current one."""
    return f"subscription {subscription.name} previous push secret"


def subscription_value(subscription: pubsub_pb2.Subscription) -> bytes:
    """The record to store: its push secrets (current and previous) sealed."""
    push = subscription.push_config
    if not (push.secret or push.previous_secret) or not _installed.enabled:
        return subscription.SerializeToString()
    stored = pubsub_pb2.Subscription()
    stored.CopyFrom(subscription)
    stored.push_config.secret = _installed.seal_text(push.secret, _push_context(subscription))
    stored.push_config.previous_secret = _installed.seal_text(push.previous_secret,
                                                              _previous_push_context(subscription))
    return stored.SerializeToString()


def parse_subscription(value: bytes, strict: bool = True) -> pubsub_pb2.Subscription:
    """strict False (the cluster's mirrors): a secret that does not open is left
    empty and logged, rather than stop the whole view of the cluster."""
    subscription = pubsub_pb2.Subscription.FromString(value)
    push = subscription.push_config
    if push.secret.startswith(TEXT_PREFIX):
        push.secret = _open_secret(push.secret, _push_context(subscription), strict)
    if push.previous_secret.startswith(TEXT_PREFIX):
        push.previous_secret = _open_secret(push.previous_secret, _previous_push_context(subscription), strict)
    return subscription


def _open_secret(text: str, context: str, strict: bool) -> str:
    try:
        return _installed.open_text(text, context)
    except SealError as e:
        if strict:
            raise
        log.error("a secret in etcd does not open", extra=fields(record=context, error=str(e)))
        return ""


def _provider_context(provider: notify_pb2.Provider) -> str:
    return f"provider {provider.channel} {provider.name} secret"


def _previous_provider_context(provider: notify_pb2.Provider) -> str:
    """Its own context: a sealed previous secret cannot pass for the current one."""
    return f"provider {provider.channel} {provider.name} previous secret"


def provider_value(provider: notify_pb2.Provider) -> bytes:
    """The record to store: its secrets (a password, an API key, a private key; a
    webhook's replaced signing key) sealed."""
    if not (provider.secret or provider.previous_secret) or not _installed.enabled:
        return provider.SerializeToString()
    stored = notify_pb2.Provider()
    stored.CopyFrom(provider)
    stored.secret = _installed.seal_text(provider.secret, _provider_context(provider))
    stored.previous_secret = _installed.seal_text(provider.previous_secret, _previous_provider_context(provider))
    return stored.SerializeToString()


def parse_provider(value: bytes, strict: bool = True) -> notify_pb2.Provider:
    provider = notify_pb2.Provider.FromString(value)
    if provider.secret.startswith(TEXT_PREFIX):
        provider.secret = _open_secret(provider.secret, _provider_context(provider), strict)
    if provider.previous_secret.startswith(TEXT_PREFIX):
        provider.previous_secret = _open_secret(provider.previous_secret, _previous_provider_context(provider), strict)
    return provider


def mirrored_subscription(value: bytes) -> pubsub_pb2.Subscription:
    return parse_subscription(value, strict=False)


def mirrored_provider(value: bytes) -> notify_pb2.Provider:
    return parse_provider(value, strict=False)
