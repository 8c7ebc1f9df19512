"""The audit log: every admin call and every refused one (who, what, when, from
where, outcome), as one JSON line in the frontend's log and one message on the
system topic notifymesh.audit (internal_topics.AUDIT_TOPIC, replicated like any
topic, kept 7 days for `notifymesh audit tail`). Never a key's secret: callers
appear by principal id (key:<key id>).

Entries are published in batches by a background task; at most MAX_PENDING wait
(a flood of refused calls beyond that is counted in the log, not queued).
"""

import asyncio
import json
import logging
from collections import deque
from typing import Awaitable, Callable

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh.backoff import Backoff, BackoffPolicy
from notifymesh.clock import now_ms
from notifymesh.log import fields
from notifymesh.server.internal_topics import AUDIT_TOPIC
from notifymesh.server.principal import Principal

log = logging.getLogger(__name__)

MAX_PENDING = 10_000
BATCH = 500
RETRY = BackoffPolicy(first_s=0.2, max_s=5.0)


class AuditLog:
    def __init__(self, publish: Callable[[str, list], Awaitable], node_id: str):
        """publish(topic, [PubsubMessage]): the frontend's internal publisher."""
        self._publish, self._node = publish, node_id
        self._pending: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.dropped = 0

    def record(self, principal: Principal | None, method: str, resource: str, peer: str, outcome: str,
               message: str = "") -> None:
        entry = {"time_ms": now_ms(), "principal": principal.id if principal else "", "role":
                 principal.role if principal else "", "method": method, "resource": resource, "peer": peer,
                 "outcome": outcome, "message": message, "frontend": self._node}
        log.info("audit", extra=fields(**entry))
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("audit entries dropped: the audit topic is not keeping up",
                            extra=fields(dropped=self.dropped))
            return
        self._pending.append(json.dumps(entry).encode())
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = Backoff(RETRY)
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
                try:
                    await self._publish(AUDIT_TOPIC, [pubsub_pb2.PubsubMessage(data=data) for data in batch])
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # storage or the topic not up yet: keep them, try again
                    log.warning("audit entries not published yet; retrying", extra=fields(error=repr(e)))
                    await backoff.sleep()
                    continue
                backoff.reset()
                for _ in batch:
                    self._pending.popleft()
