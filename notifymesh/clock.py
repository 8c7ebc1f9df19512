"""Wall-clock milliseconds, as stored in records and compared across processes,
and the message ids made from them."""

import random
import time
import zlib

from google.protobuf import timestamp_pb2


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def to_ms(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


MESSAGE_ID_LENGTH = 39


def new_message_ids(topic: str, partition: int, count: int, ms: int | None = None) -> list[str]:
    """Time-ordered and unique without coordination (44 bits of ms, 64 random
    bits), then where the message is stored (a hash of the topic, the partition),
    so that a status lookup by id alone finds its shard."""
    # getrandbits: 64 bits from a generator seeded from os.urandom at start, without
    # a system call per id.
    head = f"{now_ms() if ms is None else ms:011x}"
    where = f"{topic_hash(topic):08x}{partition:04x}"
    return [f"{head}{random.getrandbits(64):016x}{where}" for _ in range(count)]


def new_message_id(topic: str, partition: int, ms: int | None = None) -> str:
    return new_message_ids(topic, partition, 1, ms)[0]


def shard_hint(message_id: str) -> tuple[int, int] | None:
    """(hash of the topic, partition) of a message id made by new_message_id."""
    if len(message_id) != MESSAGE_ID_LENGTH:
        return None
    try:
        return int(message_id[27:35], 16), int(message_id[35:], 16)
    except ValueError:
        return None


def topic_hash(topic: str) -> int:
    return zlib.crc32(topic.encode())
