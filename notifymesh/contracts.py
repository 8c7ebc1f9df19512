"""Every format shared across processes, each a named record with one encode and
one parse: what a client, the frontend, a sender and a storage node must read
alike. Nothing here talks to the network or needs more than the standard library.

- AckId        "partition:seq-hex:subscription", given to subscribers, sent back with acks
- MessageId    39 hex digits: publish ms, randomness, topic hash, partition
- Shard        "topic/partition", the name of one partition in etcd and RocksDB keys
- etcd records MemberRecord, LeaderRecord, Candidacy (JSON) under the etcd key layout
- dedup_key    what a repeated message is recognised by: the frontend routes by it,
               storage keeps it
- DeadLetterPageToken  a ListDeadLetters page_token: where each partition's listing is
"""

import base64
import binascii
import hashlib
import json
import random
import zlib
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from notifymesh.errors import InvalidArgument

# -- ack ids -------------------------------------------------------------------------

_new_tuple = tuple.__new__


class AckId(NamedTuple):
    """Entries keep their seq on every replica, so an ack id stays valid across
    leaders; it names its subscription, so a tool given only the id can act on it."""
    partition: int
    seq: int
    subscription: str

    def encode(self) -> str:
        return f"{self.partition}:{self.seq:x}:{self.subscription}"

    @staticmethod
    def encoder(partition: int, subscription: str) -> Callable[[int], str]:
        """encode() for one partition's and subscription's seqs, for the delivery
        loop (a record per ack id there costs more than the rest of the id)."""
        head, tail = f"{partition}:", f":{subscription}"
        return lambda seq: f"{head}{seq:x}{tail}"

    @classmethod
    def parse(cls, value: str) -> "AckId":
        """Raises InvalidArgument for anything encode() did not make."""
        # No padded list, and tuple.__new__ rather than the record's own __new__ (a
        # Python function): 0.67 against 0.98 us an id over 5,000 ids (measured), and
        # the frontend parses every id it is sent.
        parts = value.split(":", 2)
        if len(parts) == 3:
            partition, seq, subscription = parts
            if subscription and partition.isdigit():
                try:
                    return _new_tuple(cls, (int(partition), int(seq, 16), subscription))
                except ValueError:
                    pass
        raise InvalidArgument(f"malformed ack id {value!r}")


class AckGroup(NamedTuple):
    subscription: str
    partition: int


def ack_seqs_by_pair(ack_ids: Iterable[str]) -> dict[AckGroup, list[int]]:
    """The seqs the ack ids name, by (subscription, partition), in their order within
    each group: what a storage leader acts on. Raises InvalidArgument on a malformed
    one, as AckId.parse would. Each id is cut at its first two colons as parse cuts
    it, but its partition and subscription are checked once a group, and no record
    is made per id (the leader parses every id acked: 0.59 against 1.42 us an id
    with AckId records, over 5,000 ids of 10 subscriptions, measured)."""
    groups: dict[tuple[str, str], list[int]] = {}
    first: dict[tuple[str, str], str] = {}  # each group's first id, for the error
    value = ""
    try:
        for value in ack_ids:
            partition, _, rest = value.partition(":")
            seq, _, subscription = rest.partition(":")
            seqs = groups.get(pair := (subscription, partition))
            if seqs is None:
                seqs = groups[pair] = []
                first[pair] = value
            seqs.append(int(seq, 16))
        paired = {}
        for pair, seqs in groups.items():
            value = first[pair]
            subscription, partition = pair
            if not subscription or not partition.isdigit():
                raise ValueError
            paired[AckGroup(subscription, int(partition))] = seqs
        return paired
    except ValueError:
        raise InvalidArgument(f"malformed ack id {value!r}") from None


def ack_ids_by_subscription(ack_ids: Iterable[str]) -> dict[str, list[str]]:
    """The ack ids, as given, by the subscription each names (routing to senders)."""
    return _grouped(ack_ids, lambda ack, value: (ack.subscription, value))


def ack_ids_by_pair(ack_ids: Iterable[str]) -> dict[AckGroup, list[str]]:
    """The ack ids, as given, by (subscription, partition): the pair a sender owns."""
    return _grouped(ack_ids, lambda ack, value: ((ack.subscription, ack.partition), value), AckGroup._make)


def ack_ids_by_partition(ack_ids: Iterable[str]) -> dict[int, list[str]]:
    """The ack ids, as given, by the partition each names (routing to leaders)."""
    return _grouped(ack_ids, lambda ack, value: (ack.partition, value))


def _grouped(ack_ids: Iterable[str], key_and_item: Callable, group: Callable | None = None) -> dict:
    """The one grouping of ack ids: key_and_item(parsed, value) -> (key, item); group(key)
    makes each group's record once a group, not once an id (a NamedTuple's making is
    a Python call: 0.6 us, measured)."""
    groups: dict = {}
    for value in ack_ids:
        key, item = key_and_item(AckId.parse(value), value)
        items = groups.get(key)
        if items is None:
            groups[key] = [item]
        else:
            items.append(item)
    return groups if group is None else {group(key): items for key, items in groups.items()}


# -- message ids -----------------------------------------------------------------------

MESSAGE_ID_LENGTH = 39
_MS_DIGITS, _RANDOM_DIGITS, _HASH_DIGITS, _PARTITION_DIGITS = 11, 16, 8, 4


def topic_hash(topic: str) -> int:
    return zlib.crc32(topic.encode())


class MessageId(NamedTuple):
    """Time-ordered and unique without coordination (44 bits of ms, 64 random bits),
    then where the message is stored (a hash of its topic, its partition), so a
    status lookup by id alone finds its shard."""
    publish_ms: int
    random: int
    topic_hash: int
    partition: int

    def encode(self) -> str:
        return f"{self.publish_ms:011x}{self.random:016x}{self.topic_hash:08x}{self.partition:04x}"

    @classmethod
    def parse(cls, value: str) -> "MessageId":
        """Raises InvalidArgument for anything encode() did not make."""
        try:
            if len(value) != MESSAGE_ID_LENGTH:
                raise ValueError
            hash_at = _MS_DIGITS + _RANDOM_DIGITS
            return cls(int(value[:_MS_DIGITS], 16), int(value[_MS_DIGITS:hash_at], 16),
                       int(value[hash_at:hash_at + _HASH_DIGITS], 16), int(value[hash_at + _HASH_DIGITS:], 16))
        except ValueError:
            raise InvalidArgument(f"{value!r} is not a notifymesh message id") from None

    @staticmethod
    def new_batch(topic: str, partition: int, count: int, publish_ms: int) -> list[str]:
        """count encoded ids of messages published at publish_ms to the partition
        (written out: this runs once per message)."""
        # getrandbits: 64 bits from a generator seeded from os.urandom at start, without
        # a system call per id.
        head = f"{publish_ms:011x}"
        where = f"{topic_hash(topic):08x}{partition:04x}"
        return [f"{head}{random.getrandbits(64):016x}{where}" for _ in range(count)]

    @staticmethod
    def lowest_at(publish_ms: int) -> str:
        """A prefix that sorts below every id published at or after publish_ms."""
        return f"{max(0, publish_ms):011x}"


# -- shards ------------------------------------------------------------------------------


class Shard(NamedTuple):
    """One partition of a topic. Topic names never contain NUL or "/"."""
    topic: str
    partition: int

    def encode(self) -> str:
        return f"{self.topic}/{self.partition}"

    @classmethod
    def parse(cls, name: str) -> "Shard":
        topic, _, partition = name.rpartition("/")
        return cls(topic, int(partition))


def shard_name(topic: str, partition: int) -> str:
    return Shard(topic, partition).encode()


# -- dead-letter pages -------------------------------------------------------------------


class DeadLetterPageToken(NamedTuple):
    """Where a subscription's dead-letter listing is: each partition's last seq
    listed (a partition not named: from its first). Opaque to clients."""
    subscription: str
    after: dict[int, int]

    def encode(self) -> str:
        positions = ",".join(f"{p}:{seq:x}" for p, seq in sorted(self.after.items()))
        return base64.urlsafe_b64encode(f"dead-letters/{self.subscription}/{positions}".encode()).decode()

    @classmethod
    def parse(cls, value: str, subscription: str) -> "DeadLetterPageToken":
        """"" is the first page. Raises InvalidArgument for anything encode() did
        not make for this subscription."""
        if not value:
            return cls(subscription, {})
        try:
            kind, _, rest = base64.urlsafe_b64decode(value.encode()).decode().partition("/")
            listed, _, positions = rest.rpartition("/")
            if kind != "dead-letters" or listed != subscription:
                raise ValueError
            after = {}
            for position in filter(None, positions.split(",")):
                partition, _, seq = position.partition(":")
                if not partition.isdigit():
                    raise ValueError
                after[int(partition)] = int(seq, 16)
            return cls(subscription, after)
        except (binascii.Error, UnicodeError, ValueError):
            raise InvalidArgument(f"page_token {value[:40]!r} is not one of a dead letter listing of "
                                  f"{subscription}") from None


# -- etcd: key layout and records -------------------------------------------------------

MEMBERS = b"/notifymesh/members/"            # + kind/node_id -> MemberRecord
TOPICS = b"/notifymesh/topics/"              # + name -> notifymesh.v1.Topic
SUBSCRIPTIONS = b"/notifymesh/subscriptions/"  # + name -> notifymesh.v1.Subscription
PLACEMENTS = b"/notifymesh/placements/"      # + shard -> internal.v1.ShardPlacement
# + shard -> LeaderRecord, under the leader's member lease; the key's create
# revision is the leader's epoch.
LEADERS = b"/notifymesh/leaders/"
CANDIDATES = b"/notifymesh/candidates/"      # + shard/node -> Candidacy
CONFIG = b"/notifymesh/config"               # the cluster configuration, a JSON object
# + storage node id -> DrainRecord: no lease, so a drain outlives restarts until undrained.
DRAINING = b"/notifymesh/draining/"
# Written with every new drain: its mod revision, compared when a drain is recorded,
# makes the check "enough nodes left" and the record one step (metadata/drains.py).
DRAINS_EPOCH = b"/notifymesh/drains-epoch"
# The notification layer's cluster metadata (metadata/notify_store.py):
CATEGORIES = b"/notifymesh/categories/"      # + name -> notifymesh.v1.Category
TEMPLATES = b"/notifymesh/templates/"        # + template_version_name() -> notifymesh.v1.Template
PROVIDERS = b"/notifymesh/providers/"        # + channel name ("email") -> notifymesh.v1.Provider, with its secret
# Identity (metadata/keys.py; notifymesh/server/principal.py), followed by every frontend:
API_KEYS = b"/notifymesh/auth/keys/"         # + key id -> principal.KeyRecord (JSON; a salted hash, no secret)
# + dashboard session nonce -> its API key id, under a lease ending when the session would have
ENDED_SESSIONS = b"/notifymesh/auth/ended-sessions/"
CERT_PRINCIPALS = b"/notifymesh/auth/certs/"  # + subject CN -> notifymesh.v1.CertificatePrincipal


def template_version_name(name: str, version: int) -> str:
    """"name/0000000007": a template's versions sort in version order under "name/"."""
    return f"{name}/{version:010d}"


def template_versions_prefix(name: str) -> bytes:
    return TEMPLATES + f"{name}/".encode()


def member_key(kind: str, node_id: str) -> bytes:
    return MEMBERS + f"{kind}/{node_id}".encode()


def leader_key(shard: str) -> bytes:
    return LEADERS + shard.encode()


def candidates_prefix(shard: str) -> bytes:
    return CANDIDATES + f"{shard}/".encode()


def candidate_key(shard: str, node_id: str) -> bytes:
    return candidates_prefix(shard) + node_id.encode()


class MemberRecord(NamedTuple):
    addr: str
    pid: int = 0
    started: float = 0.0
    # The etcd lease the key lives under (0: not recorded), so that a peer that finds
    # the member dead can end the lease at once (notifymesh.server.liveness).
    lease: int = 0
    # Where the process serves GET /metrics (notifymesh.server.telemetry); "" before it did.
    metrics_addr: str = ""
    # Frontends: the mutual-TLS port internal callers (and certificate principals) use;
    # "" for other kinds and for a plaintext mesh (notifymesh.server.process).
    internal_addr: str = ""
    # Storage: it reads table entries of many rows (storage/table.py); a table shard's
    # leader writes them only while every node its entries go to does (false before them).
    table_ops: bool = False

    def encode(self) -> bytes:
        return json.dumps(self._asdict()).encode()

    @classmethod
    def parse(cls, value: bytes) -> "MemberRecord":
        record = json.loads(value)
        return cls(record["addr"], record.get("pid", 0), record.get("started", 0.0), record.get("lease", 0),
                   record.get("metrics_addr", ""), record.get("internal_addr", ""), record.get("table_ops", False))


class LeaderRecord(NamedTuple):
    node: str
    addr: str

    def encode(self) -> bytes:
        return json.dumps(self._asdict()).encode()

    @classmethod
    def parse(cls, value: bytes) -> "LeaderRecord":
        record = json.loads(value)
        return cls(record["node"], record["addr"])


class DrainRecord(NamedTuple):
    """A storage node being drained: the ring that places replicas leaves it out."""
    since_ms: int  # when the drain began (ms since the epoch)

    def encode(self) -> bytes:
        return json.dumps(self._asdict()).encode()

    @classmethod
    def parse(cls, value: bytes) -> "DrainRecord":
        return cls(json.loads(value)["since_ms"])


class Candidacy(NamedTuple):
    """A replica's log position, announced while its shard has no leader."""
    end: int
    last_epoch: int
    state: tuple[int, ...]  # the stamp of its delivery state: newer compares higher

    def encode(self) -> bytes:
        return json.dumps({"end": self.end, "last_epoch": self.last_epoch, "state": list(self.state)}).encode()

    @classmethod
    def parse(cls, value: bytes) -> "Candidacy":
        record = json.loads(value)
        return cls(record["end"], record["last_epoch"], tuple(record["state"]))


# -- de-duplication keys ---------------------------------------------------------------


def dedup_key(message, by_payload: bool, payload_attributes: Iterable[str] | None = None) -> str:
    """What a repeat of message (a notifymesh.v1.PubsubMessage) is recognised by on
    its topic: "k:" + its idempotency key; else, on a payload-dedup topic, "p:" + a
    hash of its data and the attributes named (None: all); else "r:" + its retry
    key; "" for none. The frontend sends a message with one to the partition it
    hashes to, where storage recognises the repeat."""
    if message.idempotency_key:
        return "k:" + message.idempotency_key
    if by_payload:
        digest = hashlib.sha256(len(message.data).to_bytes(8, "big") + message.data)
        attributes = message.attributes
        names = attributes if payload_attributes is None else payload_attributes
        for key in sorted(name for name in set(names) if name in attributes):
            digest.update(key.encode() + b"\0" + attributes[key].encode() + b"\0")
        return "p:" + digest.hexdigest()
    return "r:" + message.retry_key if message.retry_key else ""


# -- the local mesh's outbox (deploy/local_providers.py writes it, `notifymesh outbox list` reads it) ---

OUTBOX_CHANNELS = ("email", "sms", "webhook", "push")
OUTBOX_MAX_BYTES = 64 * 1024 * 1024  # a channel's file is moved to its .1 beyond this (one kept): 128 MiB at most


def outbox_files(data_dir, channel: str) -> list[Path]:
    """A channel's JSON-lines files under the data dir, oldest first: the rotated
    one, then the current one (each may not exist)."""
    current = Path(data_dir) / "outbox" / f"{channel}.jsonl"
    return [current.with_name(current.name + ".1"), current]
