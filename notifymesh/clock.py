"""Wall-clock milliseconds, as stored in records and compared across processes."""

import time

from google.protobuf import timestamp_pb2


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def to_ms(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000
