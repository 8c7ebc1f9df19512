"""Analytics.GetStats: the counts the stats consumer keeps from the events topic
(notifymesh/server/event_stats.py), summed over a range of hours."""

from typing import Callable, Protocol

from gen.notifymesh.v1 import events_pb2, events_pb2_grpc, pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms
from notifymesh.server import validation
from notifymesh.server.event_stats import HOUR_MS, MAX_RANGE_MS, StatsReader, StatsTable
from notifymesh.server.internal_topics import EVENTS_TOPIC


class Topics(Protocol):
    """notifymesh.server.cluster.Cluster.topic"""

    async def topic(self, name: str) -> pubsub_pb2.Topic: ...


class Analytics:
    def __init__(self, topics: Topics, table: StatsTable, clock: Callable[[], int] = now_ms):
        self._topics, self._reader, self._clock = topics, StatsReader(table, clock), clock

    async def stats(self, request: events_pb2.GetStatsRequest) -> events_pb2.Stats:
        if request.template:
            validation.name("template", request.template)
        if request.category:
            validation.name("category", request.category)
        now = self._clock()
        start = request.start_time.ToMilliseconds() if request.HasField("start_time") else now - HOUR_MS
        if start > now:
            raise errors.InvalidArgument("start_time is in the future")
        if start < now - MAX_RANGE_MS:
            raise errors.InvalidArgument(f"start_time reaches back over {MAX_RANGE_MS // (24 * HOUR_MS)} days: "
                                         "counts are kept that long")
        try:
            partitions = (await self._topics.topic(EVENTS_TOPIC)).partition_count
        except errors.NotFound:  # metadata has not made it yet: nothing counted
            raise errors.Unavailable(f"the events topic {EVENTS_TOPIC!r} is not created yet") from None
        return await self._reader.stats(partitions, start, request.template, request.category)


class AnalyticsServicer(events_pb2_grpc.AnalyticsServicer):
    def __init__(self, analytics: Analytics):
        self._analytics = analytics

    async def GetStats(self, request, context):
        return await self._analytics.stats(request)
