"""The stats consumer: counts each message of the events topic (internal_topics.
EVENTS_STATS_SUBSCRIPTION) into the table's count rows
(notifymesh/server/event_stats.py), then acks it. A pipeline.Handler."""

from google.protobuf.message import DecodeError

from gen.notifymesh.v1 import events_pb2, pubsub_pb2
from notifymesh.contracts import MessageId
from notifymesh.server.event_stats import EventCounter
from sender.pipeline import ACK, Outcome

# Messages counted at once: each up to 1,000 events; EventCounter adds them up to
# event_stats.MESSAGES_PER_WRITE per table write.
WINDOW = 256


class StatsConsumer:
    def __init__(self, counter: EventCounter):
        self._counter = counter

    async def handle(self, received: pubsub_pb2.ReceivedMessage) -> Outcome:
        message = received.message
        try:
            events = events_pb2.NotificationEvents.FromString(message.data)
        except DecodeError:  # nothing the mesh wrote: set aside for a person
            return Outcome(ack=False, terminal=True, reason="not NotificationEvents")
        await self._counter.count(MessageId.parse(message.message_id).partition, message.message_id, events)
        return ACK
