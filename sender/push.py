"""Push subscriptions: this sender POSTs their messages to HTTP endpoints.

A push worker is one more consumer of the subscription's dispatcher, with a
window of push_config.max_in_flight: that many requests at most are in flight,
and nothing more is pulled from storage meanwhile, so a slow or dead endpoint
holds no more than that in memory. A 2xx answer acknowledges the message;
anything else nacks it, and storage applies the subscription's retry policy
(and dead-lettering).
"""

import asyncio
import base64
import json
import logging
import time

import httpx

from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import webhooks
from notifymesh.log import fields
from notifymesh.server import egress, telemetry, tracing, validation
from notifymesh.server.cluster import ChangedNames, Cluster
from sender.dispatch import Dispatcher, Stream

log = logging.getLogger(__name__)


def request_body(subscription: str, received: pubsub_pb2.ReceivedMessage) -> bytes:
    message = received.message
    return json.dumps({
        "message_id": message.message_id, "subscription": subscription,
        "attributes": dict(message.attributes), "data": base64.b64encode(message.data).decode(),
        "publish_time": message.publish_time.ToJsonString(), "delivery_attempt": received.delivery_attempt,
    }).encode()


def live_previous_secret(push_config: pubsub_pb2.PushConfig, now_s: float | None = None) -> str:
    """The secret a rotation replaced while its overlap lasts (it signs beside the
    new one), else "": checked at each request, so it stops at its expire time."""
    now_ms = (time.time() if now_s is None else now_s) * 1000
    if push_config.previous_secret and push_config.previous_secret_expire_time.ToMilliseconds() > now_ms:
        return push_config.previous_secret
    return ""


class PushWorker:
    def __init__(self, record: pubsub_pb2.Subscription, dispatcher: Dispatcher, http: httpx.AsyncClient,
                 sender_slots: asyncio.Semaphore):
        self._record, self._dispatcher, self._http, self._sender_slots = record, dispatcher, http, sender_slots
        self.push_config = record.push_config
        self.in_flight = 0  # requests not yet answered (bounded by max_in_flight)
        # outcome ("ok", "error") -> (publish to delivery, request) series
        self._timed = {outcome: (PUSH_METRICS.delivered.series({"subscription": record.name, "outcome": outcome}),
                                 PUSH_METRICS.request.series({"subscription": record.name, "outcome": outcome}))
                       for outcome in ("ok", "error")}

    async def run(self) -> None:
        name, limit = self._record.name, self.push_config.max_in_flight
        slots = asyncio.Semaphore(limit)
        tasks: set[asyncio.Task] = set()
        stream = Stream(limit)
        sub = await self._dispatcher.attach(name, stream)
        log.info("pushing", extra=fields(subscription=name, endpoint=self.push_config.endpoint))
        try:
            async for frame in stream.frames():
                for raw in frame.received_messages:
                    received = pubsub_pb2.ReceivedMessage.FromString(raw)
                    await slots.acquire()
                    await self._sender_slots.acquire()  # the sender-wide cap, shared by all workers
                    task = asyncio.create_task(self._deliver(sub, received))
                    tasks.add(task)
                    task.add_done_callback(lambda t: (tasks.discard(t), slots.release(), self._sender_slots.release()))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await sub.remove(stream)

    async def _deliver(self, sub, received: pubsub_pb2.ReceivedMessage) -> None:
        # A traced message: this attempt's span, its context to the endpoint as W3C's
        # traceparent header, never in the body.
        traced = tracing.push_span(self._record.name, received)
        body = request_body(self._record.name, received)
        headers = {"Content-Type": "application/json",
                   "X-Notifymesh-Message-Id": received.message.message_id,
                   "X-Notifymesh-Delivery-Attempt": str(received.delivery_attempt),
                   **webhooks.headers(self.push_config.secret, body,
                                      previous=live_previous_secret(self.push_config)),
                   **({"traceparent": tracing.encode(traced.get_span_context())} if traced is not None else {})}
        self.in_flight += 1
        started = time.perf_counter()
        error = "cancelled"  # until the endpoint answers
        try:
            response = await self._http.post(self.push_config.endpoint, content=body, headers=headers,
                                             timeout=self.push_config.timeout.ToMilliseconds() / 1000)
            error = "" if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        except (httpx.HTTPError, egress.ForbiddenAddress) as e:  # timeout, refused, reset: a failed attempt
            error = f"{type(e).__name__}: {e}"[:validation.MAX_REASON_BYTES]
        finally:
            self.in_flight -= 1
            if traced is not None:
                tracing.end_push_span(traced, error)
        # Publish to this attempt's answer (the push's end: the endpoint has it), by outcome.
        delivered, request = self._timed["error" if error else "ok"]
        delivered.record(max(0.0, time.time() - received.message.publish_time.ToNanoseconds() / 1e9))
        request.record(time.perf_counter() - started)
        try:
            if traced is not None:
                tracing.ack_span(self._record.name, tracing.Delivered(traced.get_span_context()),
                                 "nack" if error else "ack")
            if not error:
                await sub.acknowledge([received.ack_id])
            else:
                log.info("push failed", extra=fields(subscription=self._record.name, error=error,
                                                     attempt=received.delivery_attempt))
                await sub.nack(pubsub_pb2.NackRequest(subscription=self._record.name, ack_ids=[received.ack_id],
                                                      reason=error))
        except Exception as e:  # storage unreachable: the lease brings the message back
            log.warning("push outcome not recorded", extra=fields(subscription=self._record.name, error=repr(e)))


class PushMetrics:
    def __init__(self):
        self.delivered = telemetry.histogram(
            "notifymesh.push.publish_to_delivery.duration", unit="s",
            description="publish to the push endpoint's answer, per attempt, by subscription and outcome")
        self.request = telemetry.histogram("notifymesh.push.request.duration", unit="s",
                                           description="push requests, by subscription and outcome")


PUSH_METRICS = PushMetrics()


class PushSubscriptions:
    """Runs a PushWorker for every push subscription the sender ring gives this
    sender, following etcd as subscriptions and senders come and go."""

    def __init__(self, cluster: Cluster, dispatcher: Dispatcher, max_in_flight: int, allowed: egress.Allowed):
        """allowed(): the networks besides public ones endpoints may be in (egress.py)."""
        self._cluster, self._dispatcher = cluster, dispatcher
        self._slots = asyncio.Semaphore(max_in_flight)
        self._http = egress.guarded_http_client(allowed, httpx.Limits(max_connections=1000,
                                                                      max_keepalive_connections=100))
        self.workers: dict[str, tuple[PushWorker, asyncio.Task]] = {}
        # The subscriptions with a push endpoint, as etcd last said: what the sweep each
        # second looks at, with the workers. Sweeping every subscription instead was 11 %
        # of the sender's samples while 50,000 pull subscriptions' streams attached
        # (bench fanout_streams, none of them push). Bound: the push subscriptions.
        self._push: set[str] = set()
        self._changed = ChangedNames()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._cluster.subscriptions.on_change(self._changed.note)
        self._cluster.members.on_change(lambda _name: self._changed.note(None))  # ownership moved
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            try:  # also every second: a worker whose subscription vanished has ended
                await asyncio.wait_for(self._changed.event.wait(), 1.0)
            except TimeoutError:
                pass
            await self.reconcile(self._changed.take())

    async def reconcile(self, changed: set[str] | None) -> None:
        """Starts and stops workers: for the subscriptions changed (None: any may have,
        or ownership moved), and every push subscription and worker (their ownership
        lapses with this sender's lease, and a worker may have ended)."""
        items = self._cluster.subscriptions.items
        if changed is None:
            self._push = {name for name, record in items.items() if record.push_config.endpoint}
            changed = set()
        for name in changed:
            record = items.get(name)
            if record is not None and record.push_config.endpoint:
                self._push.add(name)
            else:
                self._push.discard(name)
        for name in changed | self._push | self.workers.keys():
            record = items.get(name)
            wanted = record is not None and bool(record.push_config.endpoint) and self._dispatcher.owns(name)
            if name in self.workers:
                worker, task = self.workers[name]
                # Any change of the push config (UpdateSubscription) starts the worker over with it.
                if wanted and not task.done() and record.push_config == worker.push_config:
                    continue
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                del self.workers[name]
            if wanted:
                worker = PushWorker(record, self._dispatcher, self._http, self._slots)
                self.workers[name] = (worker, asyncio.create_task(worker.run()))

    async def stop(self) -> None:
        tasks = [self._task] if self._task else []
        tasks += [task for _, task in self.workers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.aclose()
