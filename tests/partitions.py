"""The partition test bench: a mesh whose every process runs on a host of its own
(tests/netns.py), and a checker that publishes unique payloads without pause and
consumes them, so that what a fault did is measured, not guessed:

- lost: acknowledged publishes never delivered (must be 0)
- duplicates: deliveries beyond the first of a message
- longest_stall_s: the longest time without an acknowledged publish
"""

import asyncio
import time
from dataclasses import dataclass, field

from netns import Lab

from deploy.local import LocalMesh

from notifymesh.client import Client
from notifymesh.errors import NotifymeshError
from notifymesh.subscriber import Subscriber

PUBLISH_TIMEOUT_S = 5  # a publish stuck behind a cut fails after this and is counted as not acknowledged
BATCH = 5
PAUSE_S = 0.02  # between publishes: about 200 messages/s, enough to see every stall
MAX_PUBLISHED = 100_000  # bound of one checker run


def partitioned_mesh(tmp_path, lab: Lab, **kwargs) -> LocalMesh:
    """A mesh with each process on a host of its own (etcd too), on fixed ports:
    every host has all its ports to itself."""
    mesh = LocalMesh(tmp_path / "mesh", network=lab, etcd_ports=[(2379, 2380)], frontend_port=50051, **kwargs)
    try:
        mesh.start()
    except BaseException:
        mesh.stop()
        raise
    return mesh


@dataclass
class Report:
    acknowledged: int
    failed_publishes: int
    delivered: int
    lost: int
    duplicates: int
    longest_stall_s: float
    errors: dict[str, int] = field(default_factory=dict)


class Checker:
    """Publishes unique payloads to topic and consumes subscription until stopped."""

    def __init__(self, client: Client, topic: str, subscription: str):
        self._client, self._topic, self._subscription = client, topic, subscription
        self.acknowledged: dict[str, bytes] = {}  # message id -> payload
        self.deliveries: dict[str, int] = {}  # message id -> times delivered
        self.errors: dict[str, int] = {}
        self.failed = 0
        self._last_ack = time.monotonic()
        self.longest_stall_s = 0.0
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._last_ack = time.monotonic()
        self._tasks = [asyncio.create_task(self._publish()), asyncio.create_task(self._consume())]

    async def _publish(self) -> None:
        sent = 0
        while not self._stopping.is_set() and sent < MAX_PUBLISHED:
            batch = [b"m-%d" % (sent + i) for i in range(BATCH)]
            sent += BATCH
            try:
                ids = await asyncio.wait_for(self._client.publish(self._topic, batch), PUBLISH_TIMEOUT_S)
            except (NotifymeshError, TimeoutError) as e:
                self.failed += len(batch)
                name = e.code.name if isinstance(e, NotifymeshError) else "TIMEOUT"
                self.errors[name] = self.errors.get(name, 0) + 1
            else:
                now = time.monotonic()
                self.longest_stall_s = max(self.longest_stall_s, now - self._last_ack)
                self._last_ack = now
                self.acknowledged.update(zip(ids, batch))
            await asyncio.sleep(PAUSE_S)

    async def _consume(self) -> None:
        async with Subscriber(self._client, self._subscription, max_outstanding_messages=1000) as subscriber:
            async for delivery in subscriber:
                self.deliveries[delivery.message_id] = self.deliveries.get(delivery.message_id, 0) + 1
                delivery.ack()

    def progressed_since(self, count: int) -> bool:
        return len(self.acknowledged) > count

    async def wait_published(self, more: int, timeout_s: float) -> bool:
        """Until more messages than now are acknowledged, or timeout_s."""
        target = len(self.acknowledged) + more
        deadline = time.monotonic() + timeout_s
        while len(self.acknowledged) < target and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return len(self.acknowledged) >= target

    async def stop(self, drain_s: float = 60) -> Report:
        """Stops publishing, waits up to drain_s for every acknowledged message to be
        delivered, then reports."""
        self._stopping.set()
        await self._tasks[0]
        self.longest_stall_s = max(self.longest_stall_s, 0.0)
        deadline = time.monotonic() + drain_s
        while set(self.acknowledged) - set(self.deliveries) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        self._tasks[1].cancel()
        await asyncio.gather(self._tasks[1], return_exceptions=True)
        lost = set(self.acknowledged) - set(self.deliveries)
        return Report(acknowledged=len(self.acknowledged), failed_publishes=self.failed,
                      delivered=len(self.deliveries), lost=len(lost),
                      duplicates=sum(n - 1 for n in self.deliveries.values()),
                      longest_stall_s=round(self.longest_stall_s, 2), errors=dict(self.errors))
