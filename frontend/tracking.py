"""What the frontend records for a send from outside the mesh: an email opened or
clicked (tracking links), an SMS delivered or failed (the provider's status
callback), an unsubscribe through the send's link. Each is an event of the
notification log (and so of the events stream), on the send the signed link
names (notifymesh/server/tracking.py)."""

import asyncio
import time
from typing import Iterable, NamedTuple, Protocol

from gen.notifymesh.internal.v1 import notify_pb2 as internal_pb2
from gen.notifymesh.v1 import notify_pb2
from notifymesh.batching import Coalescer
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

    async def headers(self, notification_ids: Iterable[str]) -> dict[str, internal_pb2.NotificationRecord | None]: ...

    async def sends_events(self, sends: list[tuple[str, str, int]]) -> list[list[notify_pb2.SendEvent]]: ...

    async def record(self, events: list[Event]) -> None: ...


class Recorded(NamedTuple):
    found: bool  # the notification exists (its header is kept)
    new: bool  # an event was written (not a repeat of a state recorded once)


class _Wanted(NamedTuple):
    """One record() call: its state on the send, unless the send was in one of unless."""
    send: Send
    channel: int
    state: int
    unless: frozenset[int]
    fields: dict


# Under a stream of callbacks (a batch begun within this long of the one before), a
# batch waits this long first, so the callbacks arriving meanwhile go together in
# the batch after it (batching.Coalescer takes them while a batch is under way): a
# provider's receipts come one by one, about as fast as the mesh sends, and each
# batch costs a header read, an event scan, a replicated write and an events
# message (with its delivery and ack). A lone callback goes at once.
LINGER_S = 0.02


class SendRecorder:
    """Records states on sends. Callbacks arriving together (a provider's receipts
    come as fast as it sends) share one read of their notifications' headers, one
    scan of their sends' events and one log record: table calls per partition for
    all of them, not three calls and an events message a callback. An SMS run with a
    receipt a send made 13,265 TableRead and 7,561 TableScan calls for 20,000 sends,
    a call each (docs/benchmarks.md, 2026-12-02)."""

    def __init__(self, notification_log: TrackingLog, max_batch: int = 1000, linger_s: float = LINGER_S):
        self._log, self._linger_s = notification_log, linger_s
        self._batches = Coalescer(self._record_all, max_items=max_batch)
        self._last_batch = float("-inf")  # when the last batch began (monotonic)

    async def record(self, send: Send, state: int, unless: frozenset[int] | None = None, **fields) -> Recorded:
        """Records state on the send once: when the send has been in a state of unless
        (default: state itself) already (the second open, a provider calling back
        twice), nothing. found False: the notification is gone (its log expired) or
        was never there."""
        try:
            channel = parse_channel(send.channel)
        except ValueError:
            return Recorded(False, False)
        wanted = _Wanted(send, channel, state, unless if unless is not None else frozenset({state}), fields)
        (recorded,) = await self._batches.submit("", [wanted])
        return recorded

    async def _record_all(self, _key, batch: list[_Wanted]) -> list[Recorded]:
        previous, self._last_batch = self._last_batch, time.monotonic()
        if self._last_batch - previous < self._linger_s:
            await asyncio.sleep(self._linger_s)  # the callbacks arriving meanwhile make the next batch
        headers, events = await asyncio.gather(
            self._log.headers({w.send.notification_id for w in batch}),
            self._log.sends_events([(w.send.notification_id, w.send.recipient, w.channel) for w in batch]))
        results, recording = [], []
        # The states each send has, those recorded by this batch included: a provider
        # calling back twice at once records once.
        states: dict[tuple[str, str, int], set[int]] = {}
        for w, send_events in zip(batch, events):
            header = headers[w.send.notification_id]
            if header is None:
                results.append(Recorded(False, False))
                continue
            send_states = states.setdefault((w.send.notification_id, w.send.recipient, w.channel),
                                            {e.state for e in send_events})
            if send_states & w.unless:
                results.append(Recorded(True, False))
                continue
            send_states.add(w.state)
            # The provider that sent it, so the send's latest state still names it.
            sent = [e.provider for e in send_events if e.state == notify_pb2.SEND_SENT]
            fields = {"provider": sent[-1] if sent else "", **w.fields}
            recording.append(Event(w.send.notification_id, w.send.accepted_ms, w.send.recipient, w.channel, w.state,
                                   now_ms(), template=header.request.template, category=header.request.category,
                                   **fields))
            results.append(Recorded(True, True))
        if recording:
            await self._log.record(recording)
        return results
