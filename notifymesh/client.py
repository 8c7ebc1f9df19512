"""The Python client of the public notifymesh.v1 API (asyncio).

Every failed call raises the notifymesh.errors family (NotFound, InvalidArgument,
Unavailable, ...), whose code and details are the server's status.

    async with Client("127.0.0.1:50051") as client:
        await client.create_topic("orders")
        await client.create_subscription("orders-audit", topic="orders")
        ids = await client.publish("orders", [b"hello", Message(b"hi", {"k": "v"})])
        async for message in client.subscribe("orders-audit"):
            ...
            await client.acknowledge("orders-audit", [message.ack_id])
"""

import asyncio
import collections
import datetime
import itertools
import json
import os
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable, NamedTuple, Sequence

import grpc
from google.protobuf import duration_pb2

from gen.notifymesh.v1 import cluster_pb2, cluster_pb2_grpc, notify_pb2, notify_pb2_grpc, pubsub_pb2, pubsub_pb2_grpc
from gen.notifymesh.v1 import auth_pb2, auth_pb2_grpc, events_pb2, events_pb2_grpc
from notifymesh import credentials as credentials_mod
from notifymesh import errors
from notifymesh.backoff import Backoff, BackoffPolicy
from notifymesh.batching import Coalescer
from notifymesh.channel import channel_options, client_target
from notifymesh.contracts import AckId

DEFAULT_ADDR = "127.0.0.1:50051"
RECONNECT_BACKOFF = BackoffPolicy(first_s=0.1, max_s=5.0)
# A stream is opened again after these too: grpc's server cancels calls it has not
# taken up yet beyond its pending limit or after 30 s (50,000 streams opened at once
# on one frontend lost about 7,000 so). This client's own cancel is CancelledError.
STREAM_RECONNECT_CODES = (*errors.RETRYABLE_CODES, grpc.StatusCode.CANCELLED)
MAX_ACK_IDS_PER_CALL = 1000  # the server's limit on ack ids in one request
MAX_RECIPIENTS_PER_CALL = 1000  # the server's limit on recipients (ids) in one request
IMPORT_CALLS_IN_FLIGHT = 2  # import_recipients: one checked by the server while the next is read
ACK_CALLS_IN_FLIGHT = 32
# Publish requests larger than this go gzip-compressed (every service accepts gzip);
# the measurement behind the figure is in docs/benchmarks.md (2026-11-30, transport).
COMPRESS_OVER_BYTES = 32 * 1024


def default_addr() -> str:
    """$NOTIFYMESH_ADDR (host:port, or several separated by commas), else the local mesh's."""
    return os.environ.get("NOTIFYMESH_ADDR", DEFAULT_ADDR)


@dataclass
class Message:
    data: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    idempotency_key: str = ""
    ordering_key: str = ""
    # Identifies this message across resends of its publish (the Publisher gives
    # each one without an idempotency key its own); see PubsubMessage.retry_key.
    retry_key: str = ""

    def proto(self) -> pubsub_pb2.PubsubMessage:
        # Only the fields set: each keyword costs a protobuf call, and this runs per message.
        proto = pubsub_pb2.PubsubMessage(data=self.data)
        if self.attributes:
            proto.attributes.update(self.attributes)
        if self.idempotency_key:
            proto.idempotency_key = self.idempotency_key
        if self.ordering_key:
            proto.ordering_key = self.ordering_key
        if self.retry_key:
            proto.retry_key = self.retry_key
        return proto


class _AckRequest(NamedTuple):
    subscription: str
    ack_ids: list[str]


def _of_subscription(subscription: str, ack_ids: list[str]) -> bool:
    try:
        return all(AckId.parse(ack_id).subscription == subscription for ack_id in ack_ids)
    except errors.InvalidArgument:
        return False


def channel_of(value: int | str) -> int:
    """A notify_pb2.Channel from itself or its name ("email", "sms", "webhook")."""
    if isinstance(value, int) and value in notify_pb2.Channel.values() and value != notify_pb2.CHANNEL_UNSPECIFIED:
        return value
    names = [n.lower() for n in notify_pb2.Channel.keys() if n != "CHANNEL_UNSPECIFIED"]
    if isinstance(value, str) and value.lower() in names:
        return notify_pb2.Channel.Value(value.upper())
    raise errors.InvalidArgument(f"unknown channel {value!r}: one of {', '.join(names)}")


class ImportedBatch(NamedTuple):
    """One UpsertRecipients call of import_recipients: its recipients' indexes in the
    whole import were start to start + count - 1; errors carry those indexes."""
    start: int
    count: int
    stored: int
    errors: list[notify_pb2.RecipientError]


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(round(seconds * 1000))
    return d


def secure_channel(target, credentials: credentials_mod.Credentials, options: list) -> grpc.aio.Channel:
    """The channel to the frontends: TLS (the client certificate when there is one),
    or plaintext for a mesh explicitly run without TLS."""
    if credentials.plaintext:
        return grpc.aio.insecure_channel(target.target, options=options)
    tls = grpc.ssl_channel_credentials(credentials.ca_pem, credentials.key_pem, credentials.cert_pem)
    if len(target.addresses) > 1:  # an ipv4:a,b target: the certificate must name the first address's host
        options = [*options, ("grpc.ssl_target_name_override", target.addresses[0].rpartition(":")[0].strip("[]"))]
    return grpc.aio.secure_channel(target.target, tls, options=options)


class Client:
    def __init__(self, addr: str | Sequence[str] | None = None, timeout_s: float = 30, *,
                 ca=None, cert=None, key=None, api_key: str | None = None):
        """addr: a frontend's host:port, or several ("a:1,b:2" or a list): calls are
        then spread over them (round robin) and go to the others while one is down.
        ca, cert, key: PEM file paths (or bytes); api_key: sent as a bearer token. By
        default as notifymesh.credentials finds them (a local mesh's files)."""
        target = client_target(addr or default_addr())
        self.addr = ",".join(target.addresses)
        self.credentials = credentials_mod.resolve(target.addresses, ca=ca, cert=cert, key=key, api_key=api_key)
        api_key = self.credentials.api_key
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        self._channel = secure_channel(target, self.credentials,
                                       [*channel_options(64 * 1024 * 1024), *target.options])
        self._publisher = pubsub_pb2_grpc.PublisherStub(self._channel)
        self._subscriber = pubsub_pb2_grpc.SubscriberStub(self._channel)
        self._cluster = cluster_pb2_grpc.ClusterAdminStub(self._channel)
        self._notifications = notify_pb2_grpc.NotificationsStub(self._channel)
        self._analytics = events_pb2_grpc.AnalyticsStub(self._channel)
        self._auth = auth_pb2_grpc.AuthStub(self._channel)
        self._timeout = timeout_s
        # Publish requests above it are sent gzip-compressed; None: never (a client
        # on a fast link to its frontend, where gzip's CPU costs more than it saves).
        self.compress_over_bytes: int | None = COMPRESS_OVER_BYTES
        # Concurrent acks, of any subscriptions, share one call: a process holding
        # many subscriptions sends a few calls, not one per subscription. An item's
        # size is its count of ack ids.
        self._acks = Coalescer(self._send_acks, max_items=MAX_ACK_IDS_PER_CALL, max_bytes=MAX_ACK_IDS_PER_CALL,
                               size_of=lambda request: len(request.ack_ids))
        self._ack_lanes = itertools.cycle(range(ACK_CALLS_IN_FLIGHT))

    async def _call(self, method, request, extra_timeout_s: float = 0, compression: grpc.Compression | None = None):
        """One unary call (allowed extra_timeout_s beyond the client's timeout); its
        failure raised as the error family."""
        deadline = asyncio.get_running_loop().time() + self._timeout + extra_timeout_s
        while True:
            try:
                return await method(request, timeout=self._timeout + extra_timeout_s, metadata=self._metadata,
                                    compression=compression)
            except grpc.aio.AioRpcError as e:
                error = errors.from_rpc_error(e)
                # Over a rate limit: wait as the server says, while the call's time lasts.
                if not isinstance(error, errors.RateLimited) or \
                        asyncio.get_running_loop().time() + error.retry_after_s > deadline:
                    raise error from e
            await asyncio.sleep(error.retry_after_s)

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    # -- topics -----------------------------------------------------------------

    async def create_topic(self, name: str, retention_s: float | None = None, partitions: int = 0,
                           replication_factor: int = 0, dedup_window_s: float | None = None,
                           dedup_by_payload: bool = False,
                           dedup_attributes: Iterable[str] = (),
                           retain_acked_s: float | None = None) -> pubsub_pb2.Topic:
        """partitions and replication_factor 0 take the server's defaults (1 and 3);
        the dedup window defaults to 24 h. With dedup_by_payload, a repeat is
        recognised by its data and the attributes named in dedup_attributes.
        retain_acked_s keeps acknowledged messages that long, for seek (default off)."""
        topic = pubsub_pb2.Topic(name=name, partition_count=partitions, replication_factor=replication_factor,
                                 dedup_by_payload=dedup_by_payload, dedup_attributes=dedup_attributes)
        if retain_acked_s is not None:
            topic.retain_acked.CopyFrom(_duration(retain_acked_s))
        if dedup_window_s is not None:
            topic.dedup_window.CopyFrom(_duration(dedup_window_s))
        if retention_s is not None:
            topic.message_retention.CopyFrom(_duration(retention_s))
        return await self._call(self._publisher.CreateTopic, pubsub_pb2.CreateTopicRequest(topic=topic))

    async def get_topic(self, name: str) -> pubsub_pb2.Topic:
        return await self._call(self._publisher.GetTopic, pubsub_pb2.GetTopicRequest(name=name))

    async def list_topics(self, page_size: int = 0) -> list[pubsub_pb2.Topic]:
        """Every topic, by name (page after page; see topic_pages)."""
        return [topic async for page in self.topic_pages(page_size) for topic in page]

    async def topic_pages(self, page_size: int = 0) -> AsyncIterator[list[pubsub_pb2.Topic]]:
        """The topics a page at a time (page_size 0: the server's 100; at most 1000)."""
        async for page in self._pages(self._publisher.ListTopics, pubsub_pb2.ListTopicsRequest(page_size=page_size),
                                      "topics"):
            yield page

    async def update_topic(self, name: str, partitions: int = 0,
                           retain_acked_s: float | None = None) -> pubsub_pb2.Topic:
        """Raises the partition count (0: unchanged, with retain_acked_s); sets how
        long acknowledged messages are kept (0: off) unless retain_acked_s is None."""
        request = pubsub_pb2.UpdateTopicRequest(name=name, partition_count=partitions)
        if retain_acked_s is not None:
            request.retain_acked.CopyFrom(_duration(retain_acked_s))
        return await self._call(self._publisher.UpdateTopic, request)

    async def get_cluster_status(self) -> cluster_pb2.ClusterStatus:
        return await self._call(self._cluster.GetClusterStatus, cluster_pb2.GetClusterStatusRequest())

    async def delete_topic(self, name: str) -> None:
        await self._call(self._publisher.DeleteTopic, pubsub_pb2.DeleteTopicRequest(name=name))

    async def publish(self, topic: str, messages: Iterable[bytes | Message]) -> list[str]:
        """Publishes one batch; returns the message ids in order once it is durably stored."""
        protos = [Message(m).proto() if isinstance(m, bytes) else m.proto() for m in messages]
        request = pubsub_pb2.PublishRequest(topic=topic, messages=protos)
        over = self.compress_over_bytes
        gzip = grpc.Compression.Gzip if over is not None and request.ByteSize() > over else None
        reply = await self._call(self._publisher.Publish, request, compression=gzip)
        return list(reply.message_ids)

    # -- subscriptions ----------------------------------------------------------

    async def create_subscription(self, name: str, topic: str, ack_deadline_s: float | None = None,
                                  min_backoff_s: float | None = None, max_backoff_s: float | None = None,
                                  max_delivery_attempts: int = 0, dead_letter_topic: str = "",
                                  push_endpoint: str = "") -> pubsub_pb2.Subscription:
        """With either backoff, redeliveries follow a retry policy (defaults 1 s to
        60 s, doubling); with max_delivery_attempts, exhausted messages move to
        dead_letter_topic. With push_endpoint, the mesh POSTs each message there
        (the signing secret comes back in push_config.secret)."""
        subscription = pubsub_pb2.Subscription(name=name, topic=topic, max_delivery_attempts=max_delivery_attempts,
                                               dead_letter_topic=dead_letter_topic)
        if push_endpoint:
            subscription.push_config.endpoint = push_endpoint
        if ack_deadline_s is not None:
            subscription.ack_deadline.CopyFrom(_duration(ack_deadline_s))
        if min_backoff_s is not None or max_backoff_s is not None:
            subscription.retry_policy.SetInParent()
            if min_backoff_s is not None:
                subscription.retry_policy.minimum_backoff.CopyFrom(_duration(min_backoff_s))
            if max_backoff_s is not None:
                subscription.retry_policy.maximum_backoff.CopyFrom(_duration(max_backoff_s))
        return await self._call(self._subscriber.CreateSubscription,
                                pubsub_pb2.CreateSubscriptionRequest(subscription=subscription))

    async def get_subscription(self, name: str) -> pubsub_pb2.Subscription:
        return await self._call(self._subscriber.GetSubscription, pubsub_pb2.GetSubscriptionRequest(name=name))

    async def list_subscriptions(self, topic: str = "", page_size: int = 0) -> list[pubsub_pb2.Subscription]:
        """Every subscription (of topic, when given), by name (see subscription_pages)."""
        return [sub async for page in self.subscription_pages(topic, page_size) for sub in page]

    async def subscription_pages(self, topic: str = "",
                                 page_size: int = 0) -> AsyncIterator[list[pubsub_pb2.Subscription]]:
        """The subscriptions a page at a time (page_size 0: the server's 100; at most 1000)."""
        async for page in self._pages(self._subscriber.ListSubscriptions, pubsub_pb2.ListSubscriptionsRequest(
                topic=topic, page_size=page_size), "subscriptions"):
            yield page

    async def rotate_push_secret(self, name: str,
                                 previous_secret_ttl_s: float | None = None) -> pubsub_pb2.Subscription:
        """A new push signing secret (in push_config.secret: the one time it is shown).
        The old one keeps signing beside it for previous_secret_ttl_s (None: the
        server's 24 h; 0: stops at once; at most 7 days), until
        push_config.previous_secret_expire_time."""
        return await self._call(self._subscriber.RotatePushSecret, pubsub_pb2.RotatePushSecretRequest(
            subscription=name,
            previous_secret_ttl=None if previous_secret_ttl_s is None else _duration(previous_secret_ttl_s)))

    async def delete_subscription(self, name: str) -> None:
        await self._call(self._subscriber.DeleteSubscription, pubsub_pb2.DeleteSubscriptionRequest(name=name))

    async def update_subscription(self, name: str, ack_deadline_s: float | None = None,
                                  min_backoff_s: float | None = None, max_backoff_s: float | None = None,
                                  max_delivery_attempts: int | None = None, dead_letter_topic: str | None = None,
                                  push_endpoint: str | None = None) -> pubsub_pb2.Subscription:
        """Changes the settings given (and only those) in place: the subscription keeps
        its messages. push_endpoint "" makes it a pull subscription; max_delivery_attempts
        0 with dead_letter_topic "" ends dead-lettering."""
        subscription, paths = pubsub_pb2.Subscription(name=name), []
        if ack_deadline_s is not None:
            subscription.ack_deadline.CopyFrom(_duration(ack_deadline_s))
            paths.append("ack_deadline")
        for path, seconds in (("minimum_backoff", min_backoff_s), ("maximum_backoff", max_backoff_s)):
            if seconds is not None:
                getattr(subscription.retry_policy, path).CopyFrom(_duration(seconds))
                paths.append(f"retry_policy.{path}")
        if max_delivery_attempts is not None:
            subscription.max_delivery_attempts = max_delivery_attempts
            paths.append("max_delivery_attempts")
        if dead_letter_topic is not None:
            subscription.dead_letter_topic = dead_letter_topic
            paths.append("dead_letter_topic")
        if push_endpoint:  # its other push settings stay
            subscription.push_config.endpoint = push_endpoint
            paths.append("push_config.endpoint")
        elif push_endpoint is not None:
            paths.append("push_config")
        request = pubsub_pb2.UpdateSubscriptionRequest(subscription=subscription)
        request.update_mask.paths.extend(paths)
        return await self._call(self._subscriber.UpdateSubscription, request)

    async def set_redrive_rules(self, subscription: str,
                                rules: Iterable[pubsub_pb2.RedriveRule]) -> pubsub_pb2.Subscription:
        """Replaces the subscription's redrive rules (none: every dead letter waits for
        a person); notifymesh's own subscriptions take this change too."""
        request = pubsub_pb2.UpdateSubscriptionRequest(subscription=pubsub_pb2.Subscription(
            name=subscription, redrive_rules=rules))
        request.update_mask.paths.append("redrive_rules")
        return await self._call(self._subscriber.UpdateSubscription, request)

    async def pull(self, subscription: str, max_messages: int = 0, wait_s: float = 0,
                   trace_context: bool = False) -> list[pubsub_pb2.ReceivedMessage]:
        """Up to max_messages (0: the server's 100) messages ready now; with none ready,
        waits up to wait_s (at most 30) for a first one. Ack them as Subscribe's.
        trace_context: traced messages keep notifymesh.traceparent (their delivery's span)."""
        request = pubsub_pb2.PullRequest(subscription=subscription, max_messages=max_messages,
                                         wait=_duration(wait_s), trace_context=trace_context)
        reply = await self._call(self._subscriber.Pull, request, max(0.0, wait_s))
        return list(reply.received_messages)

    async def subscribe_frames(self, subscription: str, max_outstanding: int = 0, reconnect: bool = True,
                               trace_context: bool = False) -> AsyncIterator[list[pubsub_pb2.ReceivedMessage]]:
        """Yields each frame's messages as the server pushes them. With reconnect, a
        broken stream (UNAVAILABLE, cancelled by the server, or ended by a frontend shutting down) is opened
        again; unacknowledged messages come back after their ack deadline.
        trace_context: traced messages keep notifymesh.traceparent (their delivery's span)."""
        request = pubsub_pb2.SubscribeRequest(subscription=subscription, max_outstanding_messages=max_outstanding,
                                              trace_context=trace_context)
        async for messages in self._streamed(lambda: self._subscriber.Subscribe(request, metadata=self._metadata),
                                             lambda frame: list(frame.received_messages), reconnect):
            yield messages

    async def _streamed(self, open_call: Callable[[], Any], items_of: Callable[[Any], list],
                        reconnect: bool) -> AsyncIterator[list]:
        """items_of(frame) for each frame of the server stream open_call() starts; with
        reconnect, a stream broken by a retryable error or cancelled by the server
        (STREAM_RECONNECT_CODES) is opened again after a backoff."""
        backoff = Backoff(RECONNECT_BACKOFF)
        while True:
            call = open_call()
            try:
                async for frame in call:
                    backoff.reset()
                    yield items_of(frame)
            except grpc.aio.AioRpcError as e:
                if not reconnect or e.code() not in STREAM_RECONNECT_CODES:
                    raise errors.from_rpc_error(e) from e
            finally:
                call.cancel()
            if not reconnect:
                return
            await backoff.sleep()

    async def subscribe(self, subscription: str, max_outstanding: int = 0,
                        reconnect: bool = True) -> AsyncIterator[pubsub_pb2.ReceivedMessage]:
        async for frame in self.subscribe_frames(subscription, max_outstanding, reconnect):
            for message in frame:
                yield message

    async def acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        """Acks issued while earlier ones are in flight go out together, in one call
        (at most ACK_CALLS_IN_FLIGHT calls at a time)."""
        results = await self._acks.submit(next(self._ack_lanes), [_AckRequest(subscription, list(ack_ids))])
        if results and isinstance(results[0], BaseException):
            raise results[0]

    async def _send_acks(self, _lane, requests: list["_AckRequest"]) -> list:
        """One merged call (subscription "": each ack id names its own) for the
        requests whose ack ids are well formed and of their subscription; the
        others, and all of them when the server refuses the merged call, go alone,
        so a bad ack id fails only its own request, with the server's answer."""
        results: list = [None] * len(requests)
        names_own = [_of_subscription(request.subscription, request.ack_ids) for request in requests]
        together = [i for i, ok in enumerate(names_own) if ok]
        alone = [i for i, ok in enumerate(names_own) if not ok]
        if len(together) > 1:
            try:
                await self._call(self._subscriber.Acknowledge, pubsub_pb2.AcknowledgeRequest(
                    ack_ids=[a for i in together for a in requests[i].ack_ids]))
                together = []
            except errors.InvalidArgument:
                pass
        alone += together
        replies = await asyncio.gather(*(self._call(self._subscriber.Acknowledge, pubsub_pb2.AcknowledgeRequest(
            subscription=requests[i].subscription, ack_ids=requests[i].ack_ids)) for i in alone),
            return_exceptions=True)
        for i, reply in zip(alone, replies):
            results[i] = reply
        return results

    async def modify_ack_deadline(self, subscription: str, ack_ids: list[str], seconds: float) -> None:
        await self._call(self._subscriber.ModifyAckDeadline, pubsub_pb2.ModifyAckDeadlineRequest(
            subscription=subscription, ack_ids=ack_ids, ack_deadline=_duration(seconds)))

    async def nack(self, subscription: str, ack_ids: list[str], delay_s: float | None = None,
                   terminal: bool = False, reason: str = "") -> None:
        """Asks for redelivery after delay_s (by default the subscription's retry
        backoff, at once without one); terminal sends the messages to the
        dead-letter topic instead. reason goes to the delivery log."""
        request = pubsub_pb2.NackRequest(subscription=subscription, ack_ids=ack_ids, terminal=terminal, reason=reason)
        if delay_s is not None:
            request.delay.CopyFrom(_duration(delay_s))
        await self._call(self._subscriber.Nack, request)

    async def list_dead_letters(self, subscription: str, page_size: int = 0) -> list[pubsub_pb2.DeadLetter]:
        """Every dead letter kept for the subscription (page after page; see dead_letter_pages)."""
        return [dead async for page in self.dead_letter_pages(subscription, page_size) for dead in page]

    async def dead_letter_pages(self, subscription: str,
                                page_size: int = 0) -> AsyncIterator[list[pubsub_pb2.DeadLetter]]:
        """The dead letters a page at a time (page_size 0: the server's 100; at most
        1000), each partition's oldest first, merged by dead-letter time."""
        async for page in self._pages(self._subscriber.ListDeadLetters, pubsub_pb2.ListDeadLettersRequest(
                subscription=subscription, page_size=page_size), "dead_letters"):
            yield page

    async def _pages(self, method, request, items: str = ""):
        """Each page of a List call (the reply's repeated field items, or the reply
        itself without items), following next_page_token; a token handed back
        unchanged ends it with an error rather than a loop."""
        while True:
            reply = await self._call(method, request)
            yield list(getattr(reply, items)) if items else reply
            if not reply.next_page_token:
                return
            if reply.next_page_token == request.page_token:
                raise errors.Internal(f"the server answered page token {request.page_token!r} with itself")
            request.page_token = reply.next_page_token

    async def redrive_dead_letters(self, subscription: str) -> int:
        """Delivers the subscription's dead letters again; returns how many."""
        reply = await self._call(self._subscriber.RedriveDeadLetters, pubsub_pb2.RedriveDeadLettersRequest(
            subscription=subscription))
        return reply.redriven

    async def seek(self, subscription: str, time: datetime.datetime | None = None,
                   to_end: bool = False) -> pubsub_pb2.SeekResponse:
        """Delivers what was published at or after time (an aware datetime) again,
        and counts what was published before as acknowledged; to_end acknowledges
        everything published so far. Going back reaches only what is kept (a
        topic's retain_acked); partitions_limited says how many stopped short."""
        request = pubsub_pb2.SeekRequest(subscription=subscription)
        if to_end:
            request.to_end = True
        elif time is not None:
            request.time.FromDatetime(time.astimezone(datetime.timezone.utc))
        return await self._call(self._subscriber.Seek, request)

    async def purge(self, subscription: str) -> None:
        """Acknowledges every message published to the subscription so far."""
        await self.seek(subscription, to_end=True)

    async def get_message_status(self, message_id: str) -> pubsub_pb2.MessageStatus:
        return await self._call(self._publisher.GetMessageStatus,
                                pubsub_pb2.GetMessageStatusRequest(message_id=message_id))

    async def describe_topic(self, name: str) -> pubsub_pb2.TopicStats:
        """Every subscription's backlog, in flight, oldest unacknowledged age, delivery
        rate, dead letters and streams, per partition and in total (cheap: counters)."""
        return await self._call(self._publisher.DescribeTopic, pubsub_pb2.DescribeTopicRequest(name=name))

    async def describe_subscription(self, name: str) -> pubsub_pb2.SubscriptionStats:
        """The subscription's numbers, as describe_topic gives them for each."""
        return await self._call(self._subscriber.DescribeSubscription,
                                pubsub_pb2.DescribeSubscriptionRequest(name=name))

    # -- cluster configuration (in etcd; running services follow it) -------------

    async def get_config(self, key: str = "") -> list[cluster_pb2.ConfigSetting]:
        """Every setting (or key's alone) with its value, default and restart_required."""
        reply = await self._call(self._cluster.GetConfig, cluster_pb2.GetConfigRequest(key=key))
        return list(reply.settings)

    async def set_config(self, key: str, value: str | float | None) -> cluster_pb2.ConfigSetting:
        """Sets key cluster-wide; None resets it to its default. The answer's
        restart_required says whether running services take it in only at restart."""
        request = cluster_pb2.SetConfigRequest(key=key, value="" if value is None else str(value),
                                               reset=value is None)
        return await self._call(self._cluster.SetConfig, request)

    async def rotate_keys(self, master: bool = False) -> cluster_pb2.RotateKeysResponse:
        """Encryption at rest: a new data key for new writes; with master, the data
        keys re-wrapped under the master key's current version instead."""
        return await self._call(self._cluster.RotateKeys, cluster_pb2.RotateKeysRequest(master=master))

    async def drain_node(self, node_id: str, undrain: bool = False) -> cluster_pb2.NodeDrain:
        """Graceful scale-in: records the storage node as draining (again: no change),
        so its replicas and leaderships move to the others; with undrain, ends the
        drain. The answer counts the partitions it still holds and leads."""
        return await self._call(self._cluster.DrainNode, cluster_pb2.DrainNodeRequest(node_id=node_id,
                                                                                      undrain=undrain))

    # -- notifications: recipients, preferences, categories, templates, audiences,
    # providers, notify and the notification log --------------------------------

    async def upsert_recipient(self, recipient: notify_pb2.Recipient | str, **fields) -> notify_pb2.Recipient:
        """A Recipient, or its id with its fields as keywords (email, phone, locale,
        timezone, attributes, webhook_url); replaces the whole stored record."""
        record = recipient if isinstance(recipient, notify_pb2.Recipient) else notify_pb2.Recipient(id=recipient,
                                                                                                      **fields)
        return await self._call(self._notifications.UpsertRecipient, notify_pb2.UpsertRecipientRequest(
            recipient=record))

    async def upsert_recipients(self, recipients: Iterable[notify_pb2.Recipient]
                                ) -> notify_pb2.UpsertRecipientsResponse:
        """Up to MAX_RECIPIENTS_PER_CALL; the answer names the refused ones by index."""
        return await self._call(self._notifications.UpsertRecipients, notify_pb2.UpsertRecipientsRequest(
            recipients=recipients))

    async def import_recipients(self, recipients: Iterable[notify_pb2.Recipient],
                                batch_size: int = MAX_RECIPIENTS_PER_CALL,
                                in_flight: int = IMPORT_CALLS_IN_FLIGHT) -> AsyncIterator[ImportedBatch]:
        """Upserts any number of recipients, batch_size (at most 1000) to a call, up to
        in_flight calls at a time (the next batch is read while the server checks the
        last); yields each batch's outcome in order (a refused recipient does not stop
        the import; a failed call does, and the calls still in flight are cancelled)."""
        if not 1 <= batch_size <= MAX_RECIPIENTS_PER_CALL:
            raise errors.InvalidArgument(f"batch_size {batch_size}: 1 to {MAX_RECIPIENTS_PER_CALL}")
        calls: collections.deque[tuple[int, int, asyncio.Future]] = collections.deque()  # (start, count, call)
        start, batch = 0, []
        try:
            for recipient in itertools.chain(recipients, [None]):
                if recipient is not None:
                    batch.append(recipient)
                if batch and (recipient is None or len(batch) == batch_size):
                    calls.append((start, len(batch), asyncio.ensure_future(self.upsert_recipients(batch))))
                    start, batch = start + len(batch), []
                while calls and (len(calls) >= max(1, in_flight) or recipient is None):
                    first, count, call = calls.popleft()
                    reply = await call
                    refused = [notify_pb2.RecipientError(index=first + e.index, id=e.id, reason=e.reason)
                               for e in reply.errors]
                    yield ImportedBatch(first, count, reply.stored, refused)
        finally:
            for _, _, call in calls:
                call.cancel()

    async def get_recipient(self, recipient_id: str) -> notify_pb2.Recipient:
        return await self._call(self._notifications.GetRecipient, notify_pb2.GetRecipientRequest(id=recipient_id))

    async def delete_recipient(self, recipient_id: str) -> None:
        """Erases the recipient's contact data, preferences and attributes everywhere."""
        await self._call(self._notifications.DeleteRecipient, notify_pb2.DeleteRecipientRequest(id=recipient_id))

    async def add_device(self, recipient: str, platform: str, token: str, app_id: str = "") -> notify_pb2.Device:
        """Adds a device ("apns" or "fcm") to the recipient, or refreshes it (last_seen)."""
        device = notify_pb2.Device(platform=platform, token=token, app_id=app_id)
        return await self._call(self._notifications.AddDevice,
                                notify_pb2.AddDeviceRequest(recipient=recipient, device=device))

    async def remove_device(self, recipient: str, platform: str, token: str) -> None:
        await self._call(self._notifications.RemoveDevice,
                         notify_pb2.RemoveDeviceRequest(recipient=recipient, platform=platform, token=token))

    async def list_devices(self, recipient: str) -> list[notify_pb2.Device]:
        reply = await self._call(self._notifications.ListDevices, notify_pb2.ListDevicesRequest(recipient=recipient))
        return list(reply.devices)

    async def get_preferences(self, recipient: str) -> notify_pb2.Preferences:
        return await self._call(self._notifications.GetPreferences,
                                notify_pb2.GetPreferencesRequest(recipient=recipient))

    async def update_preferences(self, recipient: str, preferences: Iterable[notify_pb2.Preference] = (),
                                 unsubscribed: bool | None = None,
                                 rate_limits: dict[str, tuple[int, float]] | None = None) -> notify_pb2.Preferences:
        """Sets each (category, channel) preference given ("" for every one), the
        global unsubscribe unless None, and per category a (limit, period_s) override
        ((0, 0) removes it); answers all of the recipient's preferences."""
        request = notify_pb2.UpdatePreferencesRequest(recipient=recipient, preferences=preferences)
        if unsubscribed is not None:
            request.unsubscribed = unsubscribed
        for category, (limit, period_s) in (rate_limits or {}).items():
            request.rate_limits.add(category=category, rate_limit=notify_pb2.RateLimit(
                limit=limit, period_seconds=round(period_s)))
        return await self._call(self._notifications.UpdatePreferences, request)

    @staticmethod
    def _category(name: str, description: str, mandatory: bool, limit: int, period_s: float,
                  over_limit: str) -> notify_pb2.Category:
        return notify_pb2.Category(name=name, description=description, mandatory=mandatory,
                                   rate_limit=notify_pb2.RateLimit(limit=limit, period_seconds=round(period_s)),
                                   over_limit=notify_pb2.OverLimitPolicy.Value(over_limit.upper()))

    async def create_category(self, name: str, description: str = "", mandatory: bool = False, limit: int = 0,
                              period_s: float = 0, over_limit: str = "drop") -> notify_pb2.Category:
        """At most limit notifications a recipient per period_s (0: no limit); over it,
        "drop" (suppressed) or "delay". A mandatory category ignores opt-outs."""
        return await self._call(self._notifications.CreateCategory, notify_pb2.CreateCategoryRequest(
            category=self._category(name, description, mandatory, limit, period_s, over_limit)))

    async def update_category(self, name: str, description: str = "", mandatory: bool = False, limit: int = 0,
                              period_s: float = 0, over_limit: str = "drop") -> notify_pb2.Category:
        """Replaces the category's settings with these."""
        return await self._call(self._notifications.UpdateCategory, notify_pb2.UpdateCategoryRequest(
            category=self._category(name, description, mandatory, limit, period_s, over_limit)))

    async def get_category(self, name: str) -> notify_pb2.Category:
        return await self._call(self._notifications.GetCategory, notify_pb2.GetCategoryRequest(name=name))

    async def list_categories(self) -> list[notify_pb2.Category]:
        reply = await self._call(self._notifications.ListCategories, notify_pb2.ListCategoriesRequest())
        return list(reply.categories)

    async def delete_category(self, name: str) -> None:
        await self._call(self._notifications.DeleteCategory, notify_pb2.DeleteCategoryRequest(name=name))

    async def create_template(self, template: notify_pb2.Template) -> notify_pb2.Template:
        """Adds a version (the first for a new name); refused when it does not compile."""
        return await self._call(self._notifications.CreateTemplate,
                                notify_pb2.CreateTemplateRequest(template=template))

    async def get_template(self, name: str, version: int = 0) -> notify_pb2.Template:
        """version 0: the latest."""
        return await self._call(self._notifications.GetTemplate,
                                notify_pb2.GetTemplateRequest(name=name, version=version))

    async def list_templates(self) -> list[notify_pb2.Template]:
        """The latest version of each."""
        reply = await self._call(self._notifications.ListTemplates, notify_pb2.ListTemplatesRequest())
        return list(reply.templates)

    async def delete_template(self, name: str) -> None:
        """Every version."""
        await self._call(self._notifications.DeleteTemplate, notify_pb2.DeleteTemplateRequest(name=name))

    async def preview_template(self, name: str, channel: int | str, data: dict | str | None = None,
                               recipient: str = "", locale: str = "", version: int = 0) -> notify_pb2.RenderedContent:
        """Renders without sending: data (a dict or JSON object text) as `data`, the
        stored recipient's fields as `recipient`."""
        return await self._call(self._notifications.PreviewTemplate, notify_pb2.PreviewTemplateRequest(
            name=name, version=version, channel=channel_of(channel), locale=locale, recipient=recipient,
            data=data if isinstance(data, str) else json.dumps(data or {})))

    async def create_audience(self, name: str, description: str = "") -> notify_pb2.Audience:
        return await self._call(self._notifications.CreateAudience, notify_pb2.CreateAudienceRequest(
            audience=notify_pb2.Audience(name=name, description=description)))

    async def get_audience(self, name: str) -> notify_pb2.Audience:
        return await self._call(self._notifications.GetAudience, notify_pb2.GetAudienceRequest(name=name))

    async def delete_audience(self, name: str) -> None:
        """The audience and all its members."""
        await self._call(self._notifications.DeleteAudience, notify_pb2.DeleteAudienceRequest(name=name))

    async def add_audience_members(self, audience: str, recipients: Iterable[str]) -> None:
        """Up to MAX_RECIPIENTS_PER_CALL ids (they need not be recipients yet)."""
        await self._call(self._notifications.AddAudienceMembers, notify_pb2.AudienceMembersRequest(
            audience=audience, recipients=recipients))

    async def remove_audience_members(self, audience: str, recipients: Iterable[str]) -> None:
        await self._call(self._notifications.RemoveAudienceMembers, notify_pb2.AudienceMembersRequest(
            audience=audience, recipients=recipients))

    async def list_audience_members(self, audience: str, page_size: int = 0) -> list[str]:
        """Every member, by id (see audience_member_pages for a large audience)."""
        return [rid async for page in self.audience_member_pages(audience, page_size) for rid in page]

    async def audience_member_pages(self, audience: str, page_size: int = 0) -> AsyncIterator[list[str]]:
        """The members a page at a time (page_size 0: the server's 1000, also the most)."""
        async for page in self._pages(self._notifications.ListAudienceMembers, notify_pb2.ListAudienceMembersRequest(
                audience=audience, page_size=page_size), "recipients"):
            yield page

    async def set_provider(self, provider: notify_pb2.Provider, keep_secret: bool = False,
                           previous_secret_ttl_s: float | None = None) -> notify_pb2.Provider:
        """How a channel sends; the secret is write-only (keep_secret with an empty
        one keeps the stored secret). A webhook provider's replaced signing key keeps
        signing beside the new one for previous_secret_ttl_s (None: the server's 24 h;
        0: stops at once; at most 7 days), until previous_secret_expire_time."""
        return await self._call(self._notifications.SetProvider, notify_pb2.SetProviderRequest(
            provider=provider, keep_secret=keep_secret,
            previous_secret_ttl=None if previous_secret_ttl_s is None else _duration(previous_secret_ttl_s)))

    async def get_provider(self, channel: int | str, name: str = "") -> notify_pb2.Provider:
        return await self._call(self._notifications.GetProvider,
                                notify_pb2.GetProviderRequest(channel=channel_of(channel), name=name))

    async def list_providers(self) -> list[notify_pb2.Provider]:
        reply = await self._call(self._notifications.ListProviders, notify_pb2.ListProvidersRequest())
        return list(reply.providers)

    async def delete_provider(self, channel: int | str, name: str = "") -> None:
        await self._call(self._notifications.DeleteProvider,
                         notify_pb2.DeleteProviderRequest(channel=channel_of(channel), name=name))

    async def get_provider_status(self, channel: int | str = 0) -> notify_pb2.GetProviderStatusResponse:
        """Each provider's circuit breaker in each live sender (of channel; 0: all)."""
        return await self._call(self._notifications.GetProviderStatus, notify_pb2.GetProviderStatusRequest(
            channel=channel_of(channel) if channel else 0))

    async def notify(self, template: str, category: str, recipients: Iterable[str] = (), audience: str = "",
                     data: dict | str | None = None, channels: Iterable[int | str] = (), idempotency_key: str = "",
                     priority: int = notify_pb2.NORMAL, template_version: int = 0) -> str:
        """Accepts a notification to up to MAX_RECIPIENTS_PER_CALL recipient ids, or
        to an audience; returns its id once it is durably stored (everything after
        happens asynchronously). A repeat with the same idempotency_key returns the
        first notification's id and notifies nobody again."""
        reply = await self._call(self._notifications.Notify, notify_pb2.NotifyRequest(
            template=template, template_version=template_version, category=category, recipients=recipients,
            audience=audience, data=data if isinstance(data, str) else json.dumps(data or {}),
            channels=[channel_of(c) for c in channels], idempotency_key=idempotency_key, priority=priority))
        return reply.notification_id

    async def get_notification(self, notification_id: str, page_size: int = 0,
                               page_token: str = "") -> notify_pb2.Notification:
        """The notification and a page of its sends (see notification_pages)."""
        return await self._call(self._notifications.GetNotification, notify_pb2.GetNotificationRequest(
            id=notification_id, page_size=page_size, page_token=page_token))

    async def notification_pages(self, notification_id: str,
                                 page_size: int = 0) -> AsyncIterator[notify_pb2.Notification]:
        """The notification a page of its sends (recipient, channel, state, timeline)
        at a time, the header on each (page_size 0: the server's 1000, also the most)."""
        async for page in self._pages(self._notifications.GetNotification, notify_pb2.GetNotificationRequest(
                id=notification_id, page_size=page_size)):
            yield page

    async def list_notifications(self, recipient: str, start: datetime.datetime | None = None,
                                 end: datetime.datetime | None = None,
                                 page_size: int = 0) -> list[notify_pb2.Notification]:
        """The recipient's notifications from start to end (aware datetimes; None:
        from the oldest kept, up to now), newest first, each with its sends to them."""
        return [n async for page in self.notifications_pages(recipient, start, end, page_size) for n in page]

    async def notifications_pages(self, recipient: str, start: datetime.datetime | None = None,
                                  end: datetime.datetime | None = None,
                                  page_size: int = 0) -> AsyncIterator[list[notify_pb2.Notification]]:
        """As list_notifications, a page at a time (page_size 0: the server's 100; at most 1000)."""
        request = notify_pb2.ListNotificationsRequest(recipient=recipient, page_size=page_size)
        if start is not None:
            request.start_time.FromDatetime(start.astimezone(datetime.timezone.utc))
        if end is not None:
            request.end_time.FromDatetime(end.astimezone(datetime.timezone.utc))
        async for page in self._pages(self._notifications.ListNotifications, request, "notifications"):
            yield page

    async def get_stats(self, template: str = "", category: str = "",
                        start: datetime.datetime | None = None) -> events_pb2.Stats:
        """Counts of the notification events (sent, delivered, failed, opened, clicked...)
        and their rates from start's hour (an aware datetime; None: the last hour) up
        to now, of one template and category ("": every one). The events themselves
        stream on the topic "notifymesh.events": subscribe to it like to any topic."""
        request = events_pb2.GetStatsRequest(template=template, category=category)
        if start is not None:
            request.start_time.FromDatetime(start.astimezone(datetime.timezone.utc))
        return await self._call(self._analytics.GetStats, request)

    # -- in-app inbox -----------------------------------------------------------------

    async def subscribe_inbox(self, recipient: str, max_outstanding: int = 0,
                           reconnect: bool = True) -> AsyncIterator[list[notify_pb2.InboxItem]]:
        """The recipient's unacknowledged items, then new ones, a frame at a time
        (at most max_outstanding unacknowledged at once; 0: the server's 100). Ack
        them with ack_inbox; an item not acknowledged comes again on the next stream.
        With reconnect, a broken stream (UNAVAILABLE) is opened again."""
        request = notify_pb2.SubscribeInboxRequest(recipient=recipient, max_outstanding=max_outstanding)
        async for items in self._streamed(lambda: self._notifications.SubscribeInbox(request, metadata=self._metadata),
                                          lambda frame: list(frame.items), reconnect):
            yield items

    async def ack_inbox(self, recipient: str, notification_ids: Iterable[str]) -> int:
        """Acknowledges delivered items; returns how many were not acknowledged before."""
        reply = await self._call(self._notifications.AckInbox, notify_pb2.AckInboxRequest(
            recipient=recipient, notification_ids=list(notification_ids)))
        return reply.acked

    async def mark_read(self, recipient: str, notification_ids: Iterable[str]) -> int:
        """Marks items read; returns how many were unread."""
        reply = await self._call(self._notifications.MarkRead, notify_pb2.MarkReadRequest(
            recipient=recipient, notification_ids=list(notification_ids)))
        return reply.marked

    async def list_inbox(self, recipient: str, unread_only: bool = False, page_size: int = 0,
                         page_token: str = "") -> notify_pb2.ListInboxResponse:
        """A page of the recipient's items, newest first, and the unread count."""
        return await self._call(self._notifications.ListInbox, notify_pb2.ListInboxRequest(
            recipient=recipient, unread_only=unread_only, page_size=page_size, page_token=page_token))

    async def inbox_pages(self, recipient: str, unread_only: bool = False,
                          page_size: int = 0) -> AsyncIterator[notify_pb2.ListInboxResponse]:
        """Every page of list_inbox."""
        async for page in self._pages(self._notifications.ListInbox, notify_pb2.ListInboxRequest(
                recipient=recipient, unread_only=unread_only, page_size=page_size)):
            yield page

    # -- identity (admin keys; create_recipient_token: publisher keys too) -------

    async def create_api_key(self, name: str, role: str, topics: Iterable[str] = (), subscriptions: Iterable[str] = (),
                             categories: Iterable[str] = (), personal_data: bool = False,
                             ttl_s: float | None = None) -> auth_pb2.CreateApiKeyResponse:
        """A new key; its secret (secret_key) is in this answer only."""
        request = auth_pb2.CreateApiKeyRequest(name=name, grants=auth_pb2.Grants(
            role=role, topics=topics, subscriptions=subscriptions, categories=categories, personal_data=personal_data))
        if ttl_s is not None:
            request.ttl.CopyFrom(_duration(ttl_s))
        return await self._call(self._auth.CreateApiKey, request)

    async def revoke_api_key(self, key_id: str) -> auth_pb2.ApiKey:
        return await self._call(self._auth.RevokeApiKey, auth_pb2.RevokeApiKeyRequest(key_id=key_id))

    async def list_api_keys(self) -> list[auth_pb2.ApiKey]:
        return list((await self._call(self._auth.ListApiKeys, auth_pb2.ListApiKeysRequest())).keys)

    async def set_api_key_limits(self, key_id: str, **limits: float) -> auth_pb2.ApiKey:
        """limits: RateLimits fields (publish_messages_per_s, ...); unset: the defaults."""
        return await self._call(self._auth.SetApiKeyLimits, auth_pb2.SetApiKeyLimitsRequest(
            key_id=key_id, limits=auth_pb2.RateLimits(**limits)))

    async def map_certificate(self, common_name: str, role: str = "", remove: bool = False,
                              **patterns) -> auth_pb2.CertificatePrincipal:
        """Callers with a client certificate of this subject CN act as role (patterns:
        topics=, subscriptions=, categories=, personal_data=)."""
        return await self._call(self._auth.MapCertificate, auth_pb2.MapCertificateRequest(
            principal=auth_pb2.CertificatePrincipal(common_name=common_name,
                                                    grants=auth_pb2.Grants(role=role, **patterns)), remove=remove))

    async def create_recipient_token(self, recipient: str, ttl_s: float | None = None) -> auth_pb2.RecipientToken:
        """A short-lived token for one end user: Client(addr, api_key=token) then reaches
        only that recipient's inbox, devices and preferences."""
        request = auth_pb2.CreateRecipientTokenRequest(recipient=recipient)
        if ttl_s is not None:
            request.ttl.CopyFrom(_duration(ttl_s))
        return await self._call(self._auth.CreateRecipientToken, request)

    async def wait_connected(self, timeout_s: float) -> bool:
        """True once a connection to a frontend is up; False as soon as every frontend
        refused one, or after timeout_s without an answer."""
        async def settled() -> bool:
            state = self._channel.get_state(try_to_connect=True)
            while state not in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
                await self._channel.wait_for_state_change(state)
                state = self._channel.get_state(try_to_connect=True)
            return state == grpc.ChannelConnectivity.READY

        try:
            return await asyncio.wait_for(settled(), timeout_s)
        except TimeoutError:
            return False
