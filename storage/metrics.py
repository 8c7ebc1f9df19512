"""What a storage node exports on /metrics (notifymesh.server.telemetry), read at
scrape time off the state the leader keeps anyway (Replication.status: the same
figures as `notifymesh cluster status`), so nothing is counted on the write path:
per partition it leads, the commit index, the epoch and each replica's lag in
entries; per subscription and partition, the backlog. Labels: topic, partition,
replica node, subscription: bounded by the topics and subscriptions that exist."""

import time
from typing import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation

from gen.notifymesh.v1 import cluster_pb2
from notifymesh.server import telemetry


# One scrape reads the four gauges; the status is made once for them (a backlog
# costs two RocksDB reads per subscription and partition: storage/stats.py).
STATUS_REUSED_S = 1.0


class StorageMetrics:
    def __init__(self, status: Callable[[], list[cluster_pb2.ShardStatus]]):
        self._read_status = status
        self._last: tuple[float, list[cluster_pb2.ShardStatus]] = (float("-inf"), [])
        m = telemetry.meter()
        m.create_observable_gauge("notifymesh.partition.commit", [self._commits], unit="{entry}",
                                  description="the commit index of each partition this node leads")
        m.create_observable_gauge("notifymesh.partition.epoch", [self._epochs], unit="{epoch}",
                                  description="the leadership epoch of each partition this node leads")
        m.create_observable_gauge("notifymesh.partition.replica_lag", [self._lags], unit="{entry}",
                                  description="entries a replica is behind this leader, by replica")
        m.create_observable_gauge("notifymesh.subscription.backlog", [self._backlogs], unit="{message}",
                                  description="messages a subscription has yet to acknowledge, by partition")

    def _status(self) -> list[cluster_pb2.ShardStatus]:
        at, status = self._last
        if time.monotonic() - at > STATUS_REUSED_S:
            status = self._read_status()
            self._last = (time.monotonic(), status)
        return status

    @staticmethod
    def _shard(shard: cluster_pb2.ShardStatus) -> dict:
        return {"topic": shard.topic, "partition": shard.partition}

    def _commits(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.commit, self._shard(s)) for s in self._status()]

    def _epochs(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.epoch, self._shard(s)) for s in self._status()]

    def _lags(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(r.lag, {**self._shard(s), "replica": r.node_id, "role": r.role})
                for s in self._status() for r in s.replica_status]

    def _backlogs(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(b.backlog, {**self._shard(s), "subscription": b.subscription})
                for s in self._status() for b in s.backlogs]
