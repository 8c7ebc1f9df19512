"""RocksDB key layout of a storage node: every key and stored value, each encoder
with its decoder. A shard is one partition of a topic, named "topic/partition"
(contracts.Shard). Names never contain NUL or "/" (validation.NAME), so NUL
separates them; sequence numbers are 8-byte big-endian so keys sort by seq.

  m shard \0 seq                  -> notifymesh.internal.v1.StoredMessage, sealed (seal_entry)
  f shard                         -> first seq still kept (8 bytes)
  s shard                         -> notifymesh.internal.v1.DeliveryState: cursors, leases, dead letters
  e shard                         -> the newest leader epoch this node has seen of the shard (8 bytes)
  k shard \0 idempotency key      -> expiry ms (8 bytes) + message id
  i shard \0 message id           -> seq (8 bytes)
  d shard \0 seq subscription \0 delivered ms (8 bytes) attempt (4 bytes)
                                  -> delivery record: DELIVERY_RECORD + error (UTF-8)
  c shard \0 seq                  -> notifymesh.v1.PubsubMessage without its data: what a
                                     collected message's status still shows, kept with its
                                     delivery records (storage/delivery_log.py); written for
                                     each message stubbed (storage/retention.py)
  n shard \0 last seq             -> the same of the messages collected or trimmed together
                                     (at most retention.COLLECT_CHUNK), up to seq last: one
                                     sealed value a chunk (identities_value)
  t shard \0 row key              -> a row of the replicated table (storage/table.py):
                                     seq (8 bytes) + epoch (8) + expire ms (8) + value
  a shard                         -> the table shard's applied position: entries below it are
                                     in its rows (8 bytes; written with the rows)

The log's write and delivery loops build keys per message: they use a shard's
ShardKeys, whose prefixes are encoded once.

Encryption at rest (notifymesh/server/sealing.py): every value that holds what
clients sent (a message's payload and attributes, a table row's value, a delivery
record's error, a subscription's saved state with its dead letters' errors, a
collected message's attributes) is sealed with the node's KeyRing, bound to its
RocksDB key, so a value copied under another key fails to open. Keys and
positions stay in the clear: they are ids, names, seqs and times, which RocksDB
must compare. Off (config encrypt_at_rest false), values are written as before and
sealed ones still open.
"""

import struct
import zlib
from typing import Iterator, NamedTuple

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.server.sealing import KeyRing, SealError, is_sealed
from storage import wire

SEQ_BYTES = 8
# Delivery keys a shard's leader keeps for followers yet to take their records (they
# take them every tick): about 100 bytes each with the list's slot (sys.getsizeof of a
# key of a 20-character shard and subscription, + 8), so at most ~10 MB per shard while
# a follower is away; one that comes back further behind misses the oldest records.
WRITTEN_KEPT = 50_000
_MS_BYTES, _ATTEMPT_BYTES = 8, 4

# The first byte of every key: its kind.
MESSAGE, FIRST, STATE, IDEMPOTENCY, INDEX, DELIVERY = b"m", b"f", b"s", b"k", b"i", b"d"
EPOCH = b"e"
COLLECTED, IDENTITIES = b"c", b"n"
TABLE_ROW, APPLIED = b"t", b"a"


# -- sequence numbers -------------------------------------------------------------------


def seq_bytes(seq: int) -> bytes:
    return seq.to_bytes(SEQ_BYTES, "big")


def seq_of(key: bytes) -> int:
    """The seq a message key (or an index value) ends with."""
    return int.from_bytes(key[-SEQ_BYTES:], "big")


class FirstKept(NamedTuple):
    """A first key's value: the first seq kept, and an upper bound on the append
    time of the newest message deleted below it (0: none), so that a seek knows
    whether it went back past what is gone (storage/delivery.py Deliveries.seek)."""
    seq: int
    trimmed_ms: int = 0


def first_value(first: int, trimmed_ms: int = 0) -> bytes:
    # The seq last: a version that knew only the seq (seq_of, the last 8 bytes) still reads it.
    return (trimmed_ms.to_bytes(8, "big") if trimmed_ms else b"") + seq_bytes(first)


def parse_first_value(value: bytes) -> FirstKept:
    """first_value's value (one written before trimmed_ms was kept has only the seq)."""
    return FirstKept(seq_of(value), int.from_bytes(value[:-SEQ_BYTES], "big"))


def shard_of(key: bytes) -> str:
    """The shard any key belongs to."""
    return key[1:].split(b"\0", 1)[0].decode()


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key above every key starting with prefix (prefix never ends in 0xff here)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


# -- the keys of one shard ------------------------------------------------------------


class ShardKeys:
    """The keys of one shard, its prefixes encoded once."""
    __slots__ = ("message_prefix", "index_prefix", "idempotency_prefix", "delivery_shard_prefix", "collected_prefix",
                 "identities_prefix", "first",
                 "state", "subscription_state_prefix", "epoch", "written", "written_records", "written_from",
                 "row_prefix", "applied")

    def __init__(self, shard: str):
        name = shard.encode()
        self.message_prefix = MESSAGE + name + b"\0"
        self.index_prefix = INDEX + name + b"\0"
        self.idempotency_prefix = IDEMPOTENCY + name + b"\0"
        self.delivery_shard_prefix = DELIVERY + name + b"\0"
        self.collected_prefix = COLLECTED + name + b"\0"
        self.identities_prefix = IDENTITIES + name + b"\0"
        self.first = FIRST + name  # -> first_value
        self.state = STATE + name  # -> delivery_state_value (the state's stamp)
        self.subscription_state_prefix = STATE + name + b"\0"
        self.epoch = EPOCH + name  # -> epoch_value
        self.row_prefix = TABLE_ROW + name + b"\0"  # + row key -> row_value
        self.applied = APPLIED + name  # -> applied_value
        # The delivery records put here, in order: the leader sends them to its
        # followers (storage/leader.py). Position p is written[p - written_from], its
        # key, and written_records[p - written_from], its record when it has no error
        # (a record of a few bytes, one object for all those of a call, so a list slot
        # each), else None (read back when sent: an error may be 1 KiB); a window of at
        # most 2 * WRITTEN_KEPT (released as followers take them).
        self.written: list[bytes] = []
        self.written_records: list[bytes | None] = []
        self.written_from = 0

    def message(self, seq: int) -> bytes:
        """-> sealed(entry); parse with seq_of."""
        return self.message_prefix + seq.to_bytes(SEQ_BYTES, "big")

    def subscription_state(self, subscription: str) -> bytes:
        """-> subscription_state_value; parse with subscription_of_state."""
        return self.subscription_state_prefix + subscription.encode()

    def index(self, message_id: str) -> bytes:
        """-> index_value(seq)."""
        return self.index_prefix + message_id.encode()

    def idempotency(self, dedup_key: str) -> bytes:
        """-> idempotency_value(until ms, message id)."""
        return self.idempotency_prefix + dedup_key.encode()

    def delivery(self, seq: int, subscription: str, delivered_ms: int, attempt: int) -> bytes:
        """-> delivery_record(...) or error_record(...), put with put_delivery; parse
        with parse_delivery_key. Ordered by delivery time: a redriven message counts
        its attempts from 1 again."""
        return (self.delivery_shard_prefix + seq.to_bytes(SEQ_BYTES, "big") + subscription.encode() + b"\0"
                + delivered_ms.to_bytes(_MS_BYTES, "big") + attempt.to_bytes(_ATTEMPT_BYTES, "big"))

    def put_delivery(self, batch, key: bytes, record: bytes) -> None:
        """Puts a delivery record (into a batch, or Records) and notes it in `written`,
        for replication: a record without an error as it is, so the leader sends it
        without reading it back (a multi-get was 1.5 us a record, for each follower;
        measured), one with an error as None. Only the records' writers put them."""
        batch.put(key, record)
        written = self.written
        written.append(key)
        self.written_records.append(record if len(record) == DELIVERY_RECORD.size else None)
        if len(written) > 2 * WRITTEN_KEPT:  # a follower this far behind misses the oldest (one move per 50,000)
            self.release_written(self.written_from + len(written) - WRITTEN_KEPT)

    @property
    def written_end(self) -> int:
        """The position after the last delivery key made."""
        return self.written_from + len(self.written)

    def release_written(self, below: int) -> None:
        """Forgets the delivery keys made before position below."""
        count = min(below - self.written_from, len(self.written))
        if count > 0:
            del self.written[:count]
            del self.written_records[:count]
            self.written_from += count

    # The log's write loop stores each entry through these two, one call each
    # (measured: as fast as the keys built inline; a call per key and value was
    # about 3% slower). Values as sealed, index_value and idempotency_value.

    def put_entry(self, batch, seq: int, entry: bytes, message_id: str, ring: KeyRing) -> None:
        """The entry at seq, and its index by message id (an epoch marker has none)."""
        seq_value = seq.to_bytes(SEQ_BYTES, "big")
        key = self.message_prefix + seq_value
        batch.put(key, ring.seal(entry, key) if ring.enabled else sealed(entry))
        if message_id:
            batch.put(self.index_prefix + message_id.encode(), seq_value)

    def put_idempotency(self, batch, dedup_key: str, until_ms: int, message_id: str) -> None:
        batch.put(self.idempotency_prefix + dedup_key.encode(),
                  until_ms.to_bytes(_MS_BYTES, "big") + message_id.encode())

    def deliveries(self, seq: int | None = None) -> bytes:
        """The prefix of the delivery records of one message, or of the whole shard without seq."""
        return self.delivery_shard_prefix + (seq_bytes(seq) if seq is not None else b"")

    def collected(self, seq: int) -> bytes:
        """-> collected_value(message); parse with seq_of."""
        return self.collected_prefix + seq.to_bytes(SEQ_BYTES, "big")

    def identities(self, last: int) -> bytes:
        """-> identities_value(..., last); parse with seq_of (the chunk's last seq)."""
        return self.identities_prefix + last.to_bytes(SEQ_BYTES, "big")

    def entry_prefixes(self) -> tuple[bytes, ...]:
        """The prefixes of every key kept per entry: messages, their index, idempotency
        keys, delivery records, the identities of collected messages, and a table's rows."""
        return (self.message_prefix, self.index_prefix, self.idempotency_prefix, self.delivery_shard_prefix,
                self.collected_prefix, self.identities_prefix, self.row_prefix)


def message(shard: str, seq: int) -> bytes:
    return ShardKeys(shard).message(seq)


class MessageKey(NamedTuple):
    shard: str
    seq: int


def parse_message(key: bytes) -> MessageKey:
    return MessageKey(shard_of(key), seq_of(key))


class DeliveryKey(NamedTuple):
    shard: str
    seq: int
    subscription: str
    delivered_ms: int
    attempt: int


def parse_delivery_key(key: bytes) -> DeliveryKey:
    """ShardKeys.delivery, read back."""
    seq_at = key.index(b"\0") + 1
    subscription_at = seq_at + SEQ_BYTES
    attempt_at = len(key) - _ATTEMPT_BYTES
    delivered_at = attempt_at - _MS_BYTES
    return DeliveryKey(key[1:seq_at - 1].decode(), int.from_bytes(key[seq_at:subscription_at], "big"),
                       key[subscription_at:delivered_at - 1].decode(),
                       int.from_bytes(key[delivered_at:attempt_at], "big"), int.from_bytes(key[attempt_at:], "big"))


# -- values ---------------------------------------------------------------------------


def sealed(entry: bytes) -> bytes:
    """A message key's value: the serialized StoredMessage behind its CRC-32."""
    return zlib.crc32(entry).to_bytes(4, "big") + entry


def unsealed(value: bytes) -> bytes | None:
    """The entry, or None when its checksum does not match (corrupted or partial)."""
    entry = value[4:]
    return entry if len(value) >= 4 and zlib.crc32(entry) == int.from_bytes(value[:4], "big") else None


def seal_entry(ring: KeyRing, key: bytes, entry: bytes) -> bytes:
    """A message key's value: sealed (the GCM tag does the CRC's job), or with
    encryption off, the entry behind its CRC-32."""
    return ring.seal(entry, key) if ring.enabled else sealed(entry)


def open_entry(ring: KeyRing, key: bytes, value: bytes) -> bytes | None:
    """seal_entry's entry, or None when it does not open (corrupted, partial, moved)."""
    if is_sealed(value):
        try:
            return ring.open(value, key)
        except SealError:
            pass  # a CRC form that happens to start like a sealed value is checked below
    return unsealed(value)


def seal_value(ring: KeyRing, key: bytes, value: bytes) -> bytes:
    """Any other value holding what clients sent, sealed when encryption is on."""
    return ring.seal(value, key) if ring.enabled else value


def open_value(ring: KeyRing, key: bytes, value: bytes) -> bytes:
    """seal_value's value (raises SealError when it does not open)."""
    return ring.open(value, key) if is_sealed(value) else value


applied_value = seq_bytes  # an applied key's value: the first entry not yet in the rows
parse_applied_value = seq_of
index_value = seq_bytes  # an index key's value: the message's seq
parse_index_value = seq_of
epoch_value = seq_bytes  # an epoch key's value: the newest epoch seen (like Raft's currentTerm)
parse_epoch_value = seq_of


class Idempotency(NamedTuple):
    until_ms: int  # a repeat until then is the same message
    message_id: str


def idempotency_value(until_ms: int, message_id: str) -> bytes:
    return until_ms.to_bytes(_MS_BYTES, "big") + message_id.encode()


def parse_idempotency_value(value: bytes) -> Idempotency:
    return Idempotency(int.from_bytes(value[:_MS_BYTES], "big"), value[_MS_BYTES:].decode())


def live_message_id(value: bytes, now_ms: int) -> str | None:
    """parse_idempotency_value's message id while the key is live at now_ms, else
    None. For the append path, once per repeat: no record made (measured: with
    one, preparing a batch of half repeats took about 8% longer)."""
    return value[_MS_BYTES:].decode() if int.from_bytes(value[:_MS_BYTES], "big") > now_ms else None


ROW_HEAD = struct.Struct(">qqq")  # seq, epoch, expire ms (0: never)
_ROW_EXPIRE, _ROW_EXPIRE_AT = struct.Struct(">q"), 16  # the head's expiry alone
_ROW_SEQ = struct.Struct(">q")  # the head's seq alone


class Row(NamedTuple):
    """A table row as stored: the entry that wrote it (its seq and epoch, to stub it
    when superseded), when it expires, its value."""
    seq: int
    epoch: int
    expire_ms: int
    value: bytes


def row_value(seq: int, epoch: int, expire_ms: int, value: bytes, ring: KeyRing, key: bytes) -> bytes:
    """The head stays in the clear (sweeps read expiries without opening values) but
    is bound into the value's seal with the row's key."""
    head = ROW_HEAD.pack(seq, epoch, expire_ms)
    return head + (ring.seal(value, key + head) if ring.enabled else value)


def parse_row_value(value: bytes) -> Row:
    """The row with its value as stored (open it with open_row_value)."""
    seq, epoch, expire_ms = ROW_HEAD.unpack_from(value)
    return Row(seq, epoch, expire_ms, value[ROW_HEAD.size:])


def row_seq(value: bytes) -> int:
    """The seq of the entry that wrote a stored row, without parsing the rest (applying
    looks up the row each op supersedes)."""
    return _ROW_SEQ.unpack_from(value)[0]


def row_expire_ms(value: bytes) -> int:
    """A stored row's expiry (0: never), without parsing the rest (sweeps look at every row)."""
    return _ROW_EXPIRE.unpack_from(value, _ROW_EXPIRE_AT)[0]


def open_row_value(ring: KeyRing, key: bytes, stored: bytes) -> bytes:
    """A row's value (raises SealError when it does not open)."""
    value = stored[ROW_HEAD.size:]
    return ring.open(value, key + stored[:ROW_HEAD.size]) if is_sealed(value) else value


DELIVERY_RECORD = struct.Struct(">qB")  # outcome ms, outcome (notifymesh.v1.AttemptOutcome)


class DeliveryRecord(NamedTuple):
    outcome_ms: int  # 0: not yet known (an expiry is recorded when the message is delivered again)
    outcome: int     # notifymesh.v1.AttemptOutcome
    error: str


def collected_value(message: bytes) -> bytes:
    """A collected message's identity: the serialized message without its data."""
    return wire.without_data(message)


def entry_collected_value(entry: bytes) -> bytes | None:
    """collected_value of a serialized StoredMessage's message (None: an epoch marker or a stub)."""
    return wire.message_without_data(entry)


parse_collected_value = pubsub_pb2.PubsubMessage.FromString

# Before each identity in identities_value: its seq's distance below the chunk's last, its length.
IDENTITY_HEAD = struct.Struct(">II")


def identities_value(identities: list[tuple[int, bytes]], last: int) -> bytes:
    """A chunk of (seq, collected_value) up to seq last, in seq order: sealed as one
    value, not one a message (a seal and a key each were more than half of what
    recording an identity cost: a follower's trim took 2-3 us a message with them,
    1.05-1.17 without, in-process)."""
    head, parts = IDENTITY_HEAD.pack, []
    for seq, identity in identities:
        parts.append(head(last - seq, len(identity)))
        parts.append(identity)
    return b"".join(parts)


def parse_identities_value(value: bytes, last: int) -> dict[int, bytes]:
    """identities_value's chunk up to last, read back: seq -> collected_value."""
    identities, pos, end, size = {}, 0, len(value), IDENTITY_HEAD.size
    while pos < end:
        below, length = IDENTITY_HEAD.unpack_from(value, pos)
        pos += size
        identities[last - below] = value[pos:pos + length]
        pos += length
    return identities


def delivery_record(outcome_ms: int, outcome: int, error: str = "") -> bytes:
    """A record without an error: times and an outcome, nothing a client sent."""
    return DELIVERY_RECORD.pack(outcome_ms, outcome) + error.encode()


def error_record(ring: KeyRing, key: bytes, outcome_ms: int, outcome: int, error: str) -> bytes:
    """A record with an error (which may quote an address or a payload), sealed. A
    record in the clear starts with its outcome time's top byte, 0, never MAGIC."""
    record = delivery_record(outcome_ms, outcome, error)
    return seal_value(ring, key, record) if error else record


def parse_delivery_record(value: bytes) -> DeliveryRecord:
    outcome_ms, outcome = DELIVERY_RECORD.unpack_from(value)
    return DeliveryRecord(outcome_ms, outcome, value[DELIVERY_RECORD.size:].decode())


class Delivery(NamedTuple):
    """One delivery attempt, as the delivery log keeps it."""
    subscription: str
    attempt: int
    delivered_ms: int
    outcome_ms: int
    outcome: int
    error: str


def parse_delivery(key: bytes, value: bytes, ring: KeyRing) -> Delivery:
    """A delivery key and its record, read back."""
    at, record = parse_delivery_key(key), parse_delivery_record(open_value(ring, key, value))
    return Delivery(at.subscription, at.attempt, at.delivered_ms, record.outcome_ms, record.outcome, record.error)


def delivery_state_value(state: storage_pb2.DeliveryState) -> bytes:
    return state.SerializeToString()


def parse_delivery_state(value: bytes) -> storage_pb2.DeliveryState:
    return storage_pb2.DeliveryState.FromString(value)


def subscription_state_value(state: storage_pb2.SubscriptionState) -> bytes:
    return state.SerializeToString()


def parse_subscription_state(value: bytes) -> storage_pb2.SubscriptionState:
    return storage_pb2.SubscriptionState.FromString(value)


def subscription_of_state(key: bytes) -> str | None:
    """The subscription of a ShardKeys.subscription_state key; None for a stamp (ShardKeys.state)."""
    _, separator, subscription = key[1:].partition(b"\0")
    return subscription.decode() if separator else None


# A lease in SubscriptionState.leases: seq, deadline ms, delivered ms, delivery attempt.
LEASE_STATE = struct.Struct(">qqqi")
lease_state = LEASE_STATE.pack  # (seq, deadline ms, delivered ms, attempt) -> bytes, once per lease saved


class LeaseState(NamedTuple):
    seq: int
    deadline_ms: int
    delivered_ms: int
    attempt: int


def parse_lease_states(leases: bytes) -> Iterator[LeaseState]:
    return map(LeaseState._make, LEASE_STATE.iter_unpack(leases))
