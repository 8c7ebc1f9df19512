"""What the frontend records for a send from outside the mesh: an email opened or
clicked (tracking links), an SMS delivered or failed (the provider's status
callback), an unsubscribe through the send's link. Each is an event of the
notification log (and so of the events stream), on the send the signed link
names (notifymesh/server/tracking.py)."""

import asyncio
from typing import NamedTuple, Protocol

from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.v1 import notify_pb2
from notifymesh.clock import now_ms
from notifymesh.server.internal_topics import parse_channel
from notifymesh.server.notification_log import Event
from notifymesh.server.tracking import Send

# An SMS provider's MessageStatus (the common SMS API's words) -> the state it records;
# the rest (queued, sending, sent, accepted...) are steps before the end: not recorded.
SMS_STATUSES = {"delivered": notify_pb2.SEND_DELIVERED, "failed": notify_pb2.SEND_FAILED,
                "undelivered": notify_pb2.SEND_FAILED}


class TrackingLog(Protocol):
    """notifymesh.server.notification_log.NotificationLog, with its events publisher."""

    async def header(self, notification_id: str) -> internal_pb2.NotificationRecord | None: ...

    async def send_events(self, notification_id: str, recipient: str, channel: int) -> list[notify_pb2.SendEvent]: ...

    async def record(self, events: list[Event]) -> None: ...


class Recorded(NamedTuple):
    found: bool  # the notification exists (its header is kept)
    new: bool  # an event was written (not a repeat of a state recorded once)


class SendRecorder:
    def __init__(self, notification_log: TrackingLog):
        self._log = notification_log

    async def record(self, send: Send, state: int, unless: frozenset[int] | None = None, **fields) -> Recorded:
        """Records state on the send once: when the send has been in a state of unless
        (default: state itself) already (the second open, a provider calling back
        twice), nothing. found False: the notification is gone (its log expired) or
        was never there."""
        try:
            channel = parse_channel(send.channel)
        except ValueError:
            return Recorded(False, False)
        header, events = await asyncio.gather(self._log.header(send.notification_id),
                                              self._log.send_events(send.notification_id, send.recipient, channel))
        if header is None:
            return Recorded(False, False)
        if {e.state for e in events} & (unless if unless is not None else {state}):
            return Recorded(True, False)
        # The provider that sent it, so the send's latest state still names it.
        sent = [e.provider for e in events if e.state == notify_pb2.SEND_SENT]
        fields.setdefault("provider", sent[-1] if sent else "")
        await self._log.record([Event(send.notification_id, send.accepted_ms, send.recipient, channel, state,
                                      now_ms(), template=header.request.template, category=header.request.category,
                                      **fields)])
        return Recorded(True, True)
