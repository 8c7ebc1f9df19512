"""RocksDB key layout of a storage node. A shard is one partition of a topic,
named "topic/partition" (contracts.Shard). Names never contain NUL or "/" (validation.NAME), so NUL
separates them; sequence numbers are 8-byte big-endian so keys sort by seq.

  m shard \0 seq                  -> CRC-32 (4 bytes) + notifymesh.internal.v1.StoredMessage
  f shard                         -> first seq still kept (8 bytes)
  s shard                         -> notifymesh.internal.v1.DeliveryState: cursors, leases, dead letters
  k shard \0 idempotency key      -> expiry ms (8 bytes) + message id
  i shard \0 message id           -> seq (8 bytes)
  d shard \0 seq subscription \0 delivered ms (8 bytes) attempt (4 bytes)
                                  -> delivery record: DELIVERY_RECORD + error (UTF-8)
"""

import struct
import zlib


SEQ_BYTES = 8


def seq_bytes(seq: int) -> bytes:
    return seq.to_bytes(SEQ_BYTES, "big")


def seq_of(key: bytes) -> int:
    return int.from_bytes(key[-SEQ_BYTES:], "big")


def message(shard: str, seq: int) -> bytes:
    return message_prefix(shard) + seq_bytes(seq)


def message_prefix(shard: str) -> bytes:
    return b"m" + shard.encode() + b"\0"


def first(shard: str) -> bytes:
    return b"f" + shard.encode()


def delivery_state(shard: str) -> bytes:
    return b"s" + shard.encode()


def idempotency(shard: str, key: str) -> bytes:
    return idempotency_prefix(shard) + key.encode()


def idempotency_prefix(shard: str) -> bytes:
    return b"k" + shard.encode() + b"\0"


# A lease in SubscriptionState.leases: seq, deadline ms, delivered ms, delivery attempt.
LEASE_STATE = struct.Struct(">qqqi")


def message_index(shard: str, message_id: str) -> bytes:
    return message_index_prefix(shard) + message_id.encode()


def message_index_prefix(shard: str) -> bytes:
    return b"i" + shard.encode() + b"\0"


def delivery(shard: str, seq: int, subscription: str, delivered_ms: int, attempt: int) -> bytes:
    """Ordered by delivery time: a redriven message counts its attempts from 1 again."""
    return (delivery_prefix(shard, seq) + subscription.encode() + b"\0" + delivered_ms.to_bytes(8, "big")
            + attempt.to_bytes(4, "big"))


def delivery_prefix(shard: str, seq: int | None = None) -> bytes:
    """The delivery records of one message, or of the whole shard without seq."""
    return b"d" + shard.encode() + b"\0" + (seq_bytes(seq) if seq is not None else b"")


DELIVERY_RECORD = struct.Struct(">qB")  # outcome ms, outcome (notifymesh.v1.AttemptOutcome)


def delivery_record(outcome_ms: int, outcome: int, error: str = "") -> bytes:
    return DELIVERY_RECORD.pack(outcome_ms, outcome) + error.encode()


def parse_delivery(key: bytes, value: bytes) -> tuple[str, int, int, int, int, str]:
    """(subscription, attempt, delivered ms, outcome ms, outcome, error) of a delivery record."""
    subscription = key[key.index(b"\0") + 1 + SEQ_BYTES:-13].decode()
    outcome_ms, outcome = DELIVERY_RECORD.unpack_from(value)
    return (subscription, int.from_bytes(key[-4:], "big"), int.from_bytes(key[-12:-4], "big"), outcome_ms, outcome,
            value[DELIVERY_RECORD.size:].decode())


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key above every key starting with prefix (prefix never ends in 0xff here)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def sealed(entry: bytes) -> bytes:
    return zlib.crc32(entry).to_bytes(4, "big") + entry


def unsealed(value: bytes) -> bytes | None:
    """The entry, or None when its checksum does not match (corrupted or partial)."""
    entry = value[4:]
    return entry if len(value) >= 4 and zlib.crc32(entry) == int.from_bytes(value[:4], "big") else None
