"""RocksDB key layout of a storage node. Names never contain NUL (validation.NAME),
so NUL separates them; sequence numbers are 8-byte big-endian so keys sort by seq.

  m topic \0 seq                  -> notifymesh.v1.PubsubMessage (id and publish time set)
  c topic \0 subscription         -> cursor: next seq never delivered (8 bytes)
  l topic \0 subscription \0 seq  -> notifymesh.internal.v1.Lease (in flight)
  k topic \0 idempotency key      -> expiry ms (8 bytes) + message id
"""

SEQ_BYTES = 8
SEQ_END = (1 << 64) - 1


def seq_bytes(seq: int) -> bytes:
    return seq.to_bytes(SEQ_BYTES, "big")


def seq_of(key: bytes) -> int:
    return int.from_bytes(key[-SEQ_BYTES:], "big")


def message(topic: str, seq: int) -> bytes:
    return b"m" + topic.encode() + b"\0" + seq_bytes(seq)


def message_prefix(topic: str) -> bytes:
    return b"m" + topic.encode() + b"\0"


def cursor(topic: str, subscription: str) -> bytes:
    return b"c" + topic.encode() + b"\0" + subscription.encode()


def lease(topic: str, subscription: str, seq: int) -> bytes:
    return lease_prefix(topic, subscription) + seq_bytes(seq)


def lease_prefix(topic: str, subscription: str) -> bytes:
    return b"l" + topic.encode() + b"\0" + subscription.encode() + b"\0"


def idempotency(topic: str, key: str) -> bytes:
    return idempotency_prefix(topic) + key.encode()


def idempotency_prefix(topic: str) -> bytes:
    return b"k" + topic.encode() + b"\0"


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key above every key starting with prefix (prefix never ends in 0xff here)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])
