"""The sink provider, for load tests and dry runs: accepts every message at once
and sends nothing, answering a provider message id of its own (sink-<n>)."""

import itertools
import uuid

from gen.notifymesh.v1 import notify_pb2
from sender.providers.base import OutgoingMessage, SendResult


class SinkProvider:
    name = "sink"

    def __init__(self, record: notify_pb2.Provider):
        # Unique across senders and restarts: a random prefix, then a counter.
        self._prefix = f"sink-{uuid.uuid4().hex[:12]}-"
        self._counter = itertools.count(1)

    async def send(self, msg: OutgoingMessage) -> SendResult:
        return SendResult(self.name, f"{self._prefix}{next(self._counter)}")

    async def close(self) -> None:
        pass
