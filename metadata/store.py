"""Topics and subscriptions as records in etcd.

etcd's Raft makes them durable and replicated, so this service keeps no state
of its own and any number of replicas can serve. Creates and deletes are etcd
transactions, so two concurrent creates of one name cannot both succeed.
"""

import base64
import binascii
import logging
import re
import secrets
import urllib.parse
from typing import NamedTuple

from aetcd import rpc as etcd_rpc
from aetcd import utils as etcd_utils
from google.protobuf import duration_pb2, field_mask_pb2

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms, timestamp
from notifymesh.contracts import CANDIDATES, LEADERS, PLACEMENTS, SUBSCRIPTIONS, TOPICS, shard_name
from notifymesh.log import fields
from notifymesh.server import egress, sealing, validation
from notifymesh.server.clients import StorageClient
from notifymesh.server.cluster import Cluster
from notifymesh.server.config import Config, parse_networks

log = logging.getLogger(__name__)

MAX_PARTITIONS = 256
PLACEMENTS_PER_TXN = 100  # etcd refuses a transaction of over 128 operations (its --max-txn-ops)
MAX_REPLICATION_FACTOR = 5
MAX_BACKOFF_S = 600
DELETE_TRIES = 3  # a delete retries when subscriptions changed between its check and its transaction
UPDATE_TRIES = 3  # an update retries when the record changed between its read and its transaction
# What UpdateSubscription may change (its update_mask paths); name, topic and
# create_time identify the subscription and its backlog.
UPDATABLE = ("ack_deadline", "retry_policy", "max_delivery_attempts", "dead_letter_topic", "push_config",
             "redrive_rules")
IMMUTABLE = ("name", "topic", "create_time")
PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
# Records one filtered page reads at most: a topic with few subscriptions among many
# gets a short page (with a token) rather than a read of every record in one call.
MAX_SCANNED_PER_PAGE = 10 * MAX_PAGE_SIZE
ETCD_TIMEOUT_S = 5  # as every other etcd request (cluster.connect_etcd)
# Redrive rules: each storage leader matches a subscription's rules against its dead
# letters every sweep (about a second), so a few short patterns.
MAX_REDRIVE_RULES, MAX_REDRIVE_PATTERN_BYTES = 10, 256
DEFAULT_REDRIVE_AFTER_S, MAX_REDRIVE_AFTER_S = 600, 7 * 24 * 3600
DEFAULT_MAX_REDRIVES, MAX_REDRIVES = 3, 100
# How long a rotated push secret keeps signing beside the new one: a day by default
# (time to deploy the new one to the receiver), at most a week.
DEFAULT_PREVIOUS_SECRET_TTL_S, MAX_PREVIOUS_SECRET_TTL_S = 24 * 3600, 7 * 24 * 3600
SERVER_SET_PUSH_FIELDS = ("push_config.secret", "push_config.previous_secret",
                          "push_config.previous_secret_expire_time")


def _refuse_if_named(topic: str, subscriptions: list[pubsub_pb2.Subscription]) -> None:
    """FAILED_PRECONDITION when a subscription reads from the topic or dead-letters to it."""
    attached = [s.name for s in subscriptions if s.topic == topic]
    if attached:
        raise errors.FailedPrecondition(
            f"topic {topic!r} has {len(attached)} subscription(s) ({', '.join(attached[:5])}); delete them first")
    dead_lettering = [s.name for s in subscriptions if s.dead_letter_topic == topic]
    if dead_lettering:
        raise errors.FailedPrecondition(
            f"topic {topic!r} is the dead-letter topic of {len(dead_lettering)} subscription(s) "
            f"({', '.join(dead_lettering[:5])}); delete them first")


def _check_retain_acked(topic: pubsub_pb2.Topic) -> None:
    """Topic.retain_acked: zero (off), or 1 minute to the topic's retention."""
    seconds = topic.retain_acked.ToMilliseconds() / 1000
    if seconds:
        validation.seconds_between("retain_acked", seconds, 60,
                                   topic.message_retention.ToMilliseconds() / 1000)


def update_mask(paths) -> field_mask_pb2.FieldMask:
    """The update mask of UpdateSubscription: fields (or fields of retry_policy and
    push_config) that can change. INVALID_ARGUMENT for none, an unknown one or one
    that cannot change."""
    if not paths:
        raise errors.InvalidArgument(f"update_mask names no field; give some of: {', '.join(UPDATABLE)}")
    for path in paths:
        top = path.split(".")[0]
        if top in IMMUTABLE:
            raise errors.InvalidArgument(f"a subscription's {top} cannot be changed (create another one)")
        if top not in UPDATABLE or not field_mask_pb2.FieldMask(paths=[path]).IsValidForDescriptor(
                pubsub_pb2.Subscription.DESCRIPTOR):
            raise errors.InvalidArgument(f"update_mask path {path!r} is not a field that can be updated; "
                                         f"give some of: {', '.join(UPDATABLE)}")
        if path in SERVER_SET_PUSH_FIELDS:
            raise errors.InvalidArgument(f"{path} is set by the server")
    return field_mask_pb2.FieldMask(paths=paths)


def _keep_previous_secret(current: pubsub_pb2.PushConfig, updated: pubsub_pb2.PushConfig) -> None:
    """An update keeps a rotation's previous secret and its expiry while it lasts, as it
    keeps the secret (an expired one is dropped then: it signs nothing)."""
    if current.previous_secret and current.previous_secret_expire_time.ToMilliseconds() > now_ms():
        updated.previous_secret = current.previous_secret
        updated.previous_secret_expire_time.CopyFrom(current.previous_secret_expire_time)


def check_redrive_rules(record: pubsub_pb2.Subscription) -> None:
    """Each rule's pattern compiles, its delay and count are in range (defaults
    filled in: 10 minutes, 3 times); rules need dead-lettering."""
    rules = record.redrive_rules
    if not rules:
        return
    if not record.max_delivery_attempts:
        raise errors.InvalidArgument("redrive rules need dead-lettering: set max delivery attempts and a "
                                     "dead-letter topic")
    validation.count_between("redrive rules", len(rules), 0, MAX_REDRIVE_RULES)
    for rule in rules:
        if not 1 <= len(rule.reason.encode()) <= MAX_REDRIVE_PATTERN_BYTES:
            raise errors.InvalidArgument(f"redrive rule reason {rule.reason[:80]!r}: a regular expression of 1 to "
                                         f"{MAX_REDRIVE_PATTERN_BYTES} bytes")
        try:
            re.compile(rule.reason)
        except re.error as e:
            raise errors.InvalidArgument(f"redrive rule reason {rule.reason!r} is not a regular expression: {e}") \
                from None
        if not rule.HasField("after"):
            rule.after.FromSeconds(DEFAULT_REDRIVE_AFTER_S)
        validation.seconds_between("redrive rule delay", rule.after.ToMilliseconds() / 1000, 1, MAX_REDRIVE_AFTER_S)
        rule.max_redrives = rule.max_redrives or DEFAULT_MAX_REDRIVES
        validation.count_between("redrive rule max redrives", rule.max_redrives, 1, MAX_REDRIVES)


class Page(NamedTuple):
    """Where a listing starts and how much it returns."""
    after: str  # the last name of the page before ("": from the first)
    size: int

    @classmethod
    def of(cls, kind: str, page_size: int, page_token: str) -> "Page":
        """page_token: base64 of "<kind>/<the last name listed>", from a listing of kind."""
        size = validation.page_size(page_size, PAGE_SIZE, MAX_PAGE_SIZE)
        after = ""
        if page_token:
            try:
                listing, _, after = base64.urlsafe_b64decode(page_token.encode()).decode().partition("/")
            except (binascii.Error, UnicodeError, ValueError):
                listing = ""
            if listing != kind or not validation.NAME.fullmatch(after):
                raise errors.InvalidArgument(f"page_token {page_token[:40]!r} is not one of a {kind} listing")
        return cls(after, size)

    @staticmethod
    def token(kind: str, last: str) -> str:
        return base64.urlsafe_b64encode(f"{kind}/{last}".encode()).decode()


class MetadataStore:
    def __init__(self, cluster: Cluster, config: Config, storage: StorageClient):
        self._cluster, self._etcd, self._config, self._storage = cluster, cluster.etcd, config, storage
        self._txn = cluster.etcd.transactions

    async def create_topic(self, topic: pubsub_pb2.Topic) -> pubsub_pb2.Topic:
        """Records the topic and the replica set of each partition (the ring over
        the live storage nodes picks them) in one transaction."""
        validation.name("topic", topic.name)
        record = pubsub_pb2.Topic()
        record.CopyFrom(topic)
        if record.HasField("message_retention"):
            validation.seconds_between("message retention", record.message_retention.ToTimedelta().total_seconds(),
                                       60, 31 * 24 * 3600)
        else:
            record.message_retention.FromSeconds(int(self._config.default_retention_s))
        if record.HasField("dedup_window"):
            validation.seconds_between("dedup window", record.dedup_window.ToTimedelta().total_seconds(),
                                       60, 7 * 24 * 3600)
        else:
            record.dedup_window.FromSeconds(int(self._config.dedup_window_s))
        validation.dedup_attributes(record.dedup_attributes, record.dedup_by_payload)
        _check_retain_acked(record)
        record.partition_count = record.partition_count or 1
        validation.count_between("partition count", record.partition_count, 1, MAX_PARTITIONS)
        record.replication_factor = record.replication_factor or self._config.default_replication_factor
        validation.count_between("replication factor", record.replication_factor, 1, MAX_REPLICATION_FACTOR)
        record.create_time.CopyFrom(timestamp(now_ms()))
        key = TOPICS + topic.name.encode()
        wanted = record.partition_count
        stored = await self._store_partitions(key, [self._txn.create(key) == 0], record, 0, wanted)
        if not stored:
            raise errors.AlreadyExists(f"topic {topic.name!r} already exists")
        if stored < wanted:
            raise errors.Aborted(f"topic {topic.name!r} changed while its partitions were placed: it has {stored}")
        log.info("topic created", extra=fields(topic=topic.name, partitions=record.partition_count,
                                               replication_factor=record.replication_factor))
        return record

    async def _store_partitions(self, key: bytes, compare: list, record: pubsub_pb2.Topic, start: int,
                                end: int) -> int:
        """Stores record with partitions start..end placed, at most PLACEMENTS_PER_TXN a
        transaction: the first on compare, each next on the record the last one stored
        (every step a whole topic, as an update raising its count is). Returns the
        partition count stored (start when the first transaction failed)."""
        while True:
            step = min(end, start + PLACEMENTS_PER_TXN)
            record.partition_count = step
            value = record.SerializeToString()
            done, _ = await self._etcd.transaction(compare=compare, success=[
                self._txn.put(key, value), *self._placements(record, range(start, step))], failure=[])
            if not done or step == end:
                return step if done else start
            start, compare = step, [self._txn.value(key) == value]

    def _placements(self, topic: pubsub_pb2.Topic, partitions) -> list:
        ring = self._cluster.rings["storage"]
        if not ring.nodes:
            raise errors.Unavailable("no live storage nodes to place the topic on")
        puts = []
        for partition in partitions:
            shard = shard_name(topic.name, partition)
            placement = storage_pb2.ShardPlacement(
                topic=topic.name, partition=partition, replication_factor=topic.replication_factor,
                replicas=ring.replicas(shard, topic.replication_factor))
            puts.append(self._txn.put(PLACEMENTS + shard.encode(), placement.SerializeToString()))
        return puts

    async def update_topic(self, name: str, partition_count: int,
                           retain_acked: duration_pb2.Duration | None = None) -> pubsub_pb2.Topic:
        """Raises the partition count (0 with retain_acked: unchanged); new
        partitions get replica sets like the first ones. Sets retain_acked unless None."""
        record = await self.get_topic(name)
        changed = retain_acked is not None and record.retain_acked != retain_acked
        if retain_acked is not None:
            partition_count = partition_count or record.partition_count
            record.retain_acked.CopyFrom(retain_acked)
            _check_retain_acked(record)
        if partition_count < record.partition_count:
            raise errors.InvalidArgument(
                f"topic {name!r} has {record.partition_count} partitions; the count can be raised, not lowered")
        validation.count_between("partition count", partition_count, 1, MAX_PARTITIONS)
        if partition_count == record.partition_count and not changed:
            return record
        old = record.partition_count
        record.partition_count = partition_count
        key = TOPICS + name.encode()
        kv = await self._etcd.get(key)
        if await self._store_partitions(key, [self._txn.mod(key) == kv.mod_revision], record, old,
                                        partition_count) < partition_count:
            raise errors.Aborted(f"topic {name!r} changed meanwhile; try again")
        log.info("topic updated", extra=fields(topic=name, partitions=partition_count,
                                               retain_acked_s=record.retain_acked.seconds))
        return record

    async def get_topic(self, name: str) -> pubsub_pb2.Topic:
        kv = await self._etcd.get(TOPICS + validation.name("topic", name).encode())
        if kv is None:
            raise errors.NotFound(f"topic {name!r} not found")
        return pubsub_pb2.Topic.FromString(kv.value)

    async def list_topics(self, page: Page) -> tuple[list[pubsub_pb2.Topic], str]:
        """(a page of topics by name, the next page's token or "")."""
        kvs, more = await self._range(TOPICS, page.after, page.size)
        topics = [pubsub_pb2.Topic.FromString(kv.value) for kv in kvs]
        return topics, Page.token("topic", topics[-1].name) if more else ""

    async def _range(self, prefix: bytes, after: str, limit: int) -> tuple[list, bool]:
        """Up to limit records under prefix, by key, from the first after prefix +
        after; and whether more follow. aetcd 1.0's range reads take no limit (a TODO
        there), so this is etcd's own Range: a page costs its size, not the size of
        everything listed."""
        await self._etcd.connect()
        start = prefix + after.encode() + b"\0" if after else prefix
        response = await self._etcd.kvstub.Range(
            etcd_rpc.RangeRequest(key=start, range_end=etcd_utils.prefix_range_end(prefix), limit=limit),
            timeout=ETCD_TIMEOUT_S, metadata=self._etcd.metadata)
        return list(response.kvs), response.more

    async def delete_topic(self, name: str) -> None:
        """Deletes a topic no subscription names (as its topic or its dead-letter
        topic). The check and the delete are one transaction: it fails if any
        subscription was created or updated since the check read them (the
        transactions of create_subscription and update_subscription, in turn, need
        the topics they name to exist)."""
        key = TOPICS + validation.name("topic", name).encode()
        for _ in range(DELETE_TRIES):
            kv = await self._etcd.get(key)
            if kv is None:
                raise errors.NotFound(f"topic {name!r} not found")
            listed = await self._etcd.get_prefix(SUBSCRIPTIONS)
            # Only the names they hold are read: their push secrets stay sealed (a secret
            # that does not open, or a key not loaded, must not stop a topic's delete).
            _refuse_if_named(name, [pubsub_pb2.Subscription.FromString(s.value) for s in listed])
            prefix_end = etcd_utils.prefix_range_end
            deleted, _ = await self._etcd.transaction(
                # No subscription written since the check read them: created, or updated
                # to name this topic as its dead-letter topic.
                compare=[self._txn.mod(key) == kv.mod_revision,
                         self._txn.mod(SUBSCRIPTIONS, prefix_end(SUBSCRIPTIONS)) < listed.header.revision + 1],
                success=[self._txn.delete(key),
                         *(self._txn.delete(p, prefix_end(p)) for p in
                           (prefix + f"{name}/".encode() for prefix in (PLACEMENTS, LEADERS, CANDIDATES)))],
                failure=[])
            if deleted:
                log.info("topic deleted", extra=fields(topic=name))
                return
        raise errors.Aborted(f"subscriptions changed while deleting topic {name!r}; try again")

    async def create_subscription(self, subscription: pubsub_pb2.Subscription) -> pubsub_pb2.Subscription:
        validation.name("subscription", subscription.name)
        validation.name("topic", subscription.topic)
        record = pubsub_pb2.Subscription()
        record.CopyFrom(subscription)
        self._check_ack_deadline(record)
        await self._check_delivery_policy(record)
        record.create_time.CopyFrom(timestamp(now_ms()))
        key = SUBSCRIPTIONS + subscription.name.encode()
        topic_key = TOPICS + subscription.topic.encode()
        created, _ = await self._etcd.transaction(
            compare=[self._txn.create(key) == 0, *self._topics_exist(record)],
            success=[self._txn.put(key, sealing.subscription_value(record))], failure=[])
        if not created:
            if await self._etcd.get(key) is not None:
                raise errors.AlreadyExists(f"subscription {subscription.name!r} already exists")
            if await self._etcd.get(topic_key) is None:
                raise errors.NotFound(f"topic {subscription.topic!r} not found")
            raise errors.NotFound(f"dead-letter topic {record.dead_letter_topic!r} not found")
        log.info("subscription created", extra=fields(subscription=record.name, topic=record.topic))
        await self._attach(record)
        return record

    async def _attach(self, record: pubsub_pb2.Subscription) -> None:
        """Attaches the record (new or updated) at storage now. Storage's watch does so
        too when it sees the record; attaching now closes the gap for messages
        published right after the call returns."""
        try:
            topic = await self.get_topic(record.topic)
            await self._storage.attach_subscription(record, topic.partition_count)
        except Exception as e:
            log.warning("attach at storage failed; its watch will attach it",
                        extra=fields(subscription=record.name, error=repr(e)))

    def _check_ack_deadline(self, record: pubsub_pb2.Subscription) -> None:
        """Within the configured bounds, or the default when unset."""
        config = self._config
        if record.HasField("ack_deadline"):
            validation.seconds_between("ack deadline", record.ack_deadline.ToMilliseconds() / 1000,
                                       config.min_ack_deadline_s, config.max_ack_deadline_s)
        else:
            record.ack_deadline.FromMilliseconds(int(config.default_ack_deadline_s * 1000))

    def _topics_exist(self, record: pubsub_pb2.Subscription) -> list:
        """The compares of a subscription's create: its topic and dead-letter topic exist."""
        names = [record.topic] + ([record.dead_letter_topic] if record.dead_letter_topic else [])
        return [self._txn.version(TOPICS + n.encode()) > 0 for n in names]

    async def _check_delivery_policy(self, record: pubsub_pb2.Subscription) -> None:
        """Validates the retry policy, dead-lettering and push endpoint, filling in
        defaults (and the push signing secret)."""
        if record.HasField("push_config"):
            push = record.push_config
            url = urllib.parse.urlsplit(push.endpoint)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise errors.InvalidArgument(f"push endpoint {push.endpoint!r} is not an http(s) URL")
            await egress.check_url("push endpoint", push.endpoint, parse_networks(self._config.allowed_networks))
            push.secret = secrets.token_hex(32)
            push.ClearField("previous_secret")  # only a rotation sets these
            push.ClearField("previous_secret_expire_time")
            push.max_in_flight = push.max_in_flight or 16
            validation.count_between("push max in flight", push.max_in_flight, 1, 1000)
            if not push.HasField("timeout"):
                push.timeout.FromSeconds(10)
            validation.seconds_between("push timeout", push.timeout.ToMilliseconds() / 1000, 1, 60)
            record.retry_policy.SetInParent()  # a failing endpoint is retried with backoff, not at once
        if record.HasField("retry_policy"):
            policy = record.retry_policy
            if not policy.HasField("minimum_backoff"):
                policy.minimum_backoff.FromSeconds(1)
            if not policy.HasField("maximum_backoff"):
                policy.maximum_backoff.FromSeconds(60)
            policy.multiplier = policy.multiplier or 2.0
            low = policy.minimum_backoff.ToMilliseconds() / 1000
            high = policy.maximum_backoff.ToMilliseconds() / 1000
            validation.seconds_between("minimum backoff", low, 0, MAX_BACKOFF_S)
            validation.seconds_between("maximum backoff", high, low, MAX_BACKOFF_S)
            if not 1.0 <= policy.multiplier <= 10.0:
                raise errors.InvalidArgument(f"backoff multiplier {policy.multiplier:g} out of range: 1 to 10")
        if record.max_delivery_attempts or record.dead_letter_topic:
            validation.count_between("max delivery attempts", record.max_delivery_attempts, 1, 100)
            if not record.dead_letter_topic:
                raise errors.InvalidArgument("max delivery attempts needs a dead-letter topic")
            if record.dead_letter_topic == record.topic:
                raise errors.InvalidArgument("the dead-letter topic must differ from the subscription's topic")
            await self.get_topic(record.dead_letter_topic)  # NOT_FOUND when missing
        check_redrive_rules(record)

    async def get_subscription(self, name: str) -> pubsub_pb2.Subscription:
        kv = await self._etcd.get(SUBSCRIPTIONS + validation.name("subscription", name).encode())
        if kv is None:
            raise errors.NotFound(f"subscription {name!r} not found")
        return sealing.parse_subscription(kv.value)

    async def list_subscriptions(self, topic: str, page: Page) -> tuple[list[pubsub_pb2.Subscription], str]:
        """(a page of the subscriptions (of topic, when set) by name, the next page's
        token or ""). Records are keyed by name alone: a topic's page reads on, a page
        of records at a time, until it is full, the records end, or it has read
        MAX_SCANNED_PER_PAGE (a short page then, with a token)."""
        listed: list[pubsub_pb2.Subscription] = []
        after, more, scanned = page.after, True, 0
        while more and len(listed) < page.size and scanned < MAX_SCANNED_PER_PAGE:
            kvs, more = await self._range(SUBSCRIPTIONS, after, page.size)
            scanned += len(kvs)
            for index, kv in enumerate(kvs):
                record = sealing.parse_subscription(kv.value)
                after = record.name
                if not topic or record.topic == topic:
                    listed.append(record)
                    if len(listed) == page.size:
                        more = more or index < len(kvs) - 1
                        break
        return listed, Page.token("subscription", after) if more else ""

    async def update_subscription(self, subscription: pubsub_pb2.Subscription,
                                  paths: list[str]) -> pubsub_pb2.Subscription:
        """Changes the fields paths name (update_mask) in one transaction on the
        record as read, which also needs a dead-letter topic it names to exist. The
        name stays, so storage keeps the subscription's cursor and leases (its backlog)
        and takes the new delivery policy when it attaches the new record."""
        name = validation.name("subscription", subscription.name)
        mask = update_mask(paths)
        key = SUBSCRIPTIONS + name.encode()
        for _ in range(UPDATE_TRIES):
            kv = await self._etcd.get(key)
            if kv is None:
                raise errors.NotFound(f"subscription {name!r} not found")
            current = sealing.parse_subscription(kv.value)
            record = pubsub_pb2.Subscription()
            record.CopyFrom(current)
            # A message field named whole is replaced (unset: back to its default).
            mask.MergeMessage(subscription, record, replace_message_field=True, replace_repeated_field=True)
            await self._check_update(record, mask)
            if record.push_config.endpoint and current.push_config.secret:
                record.push_config.secret = current.push_config.secret  # receivers keep verifying
                _keep_previous_secret(current.push_config, record.push_config)
            updated, _ = await self._etcd.transaction(
                compare=[self._txn.mod(key) == kv.mod_revision, *self._topics_exist(record)],
                success=[self._txn.put(key, sealing.subscription_value(record))], failure=[])
            if updated:
                break
            if record.dead_letter_topic and await self._etcd.get(TOPICS + record.dead_letter_topic.encode()) is None:
                raise errors.NotFound(f"dead-letter topic {record.dead_letter_topic!r} not found")
        else:
            raise errors.Aborted(f"subscription {name!r} changed meanwhile; try again")
        log.info("subscription updated", extra=fields(subscription=name, fields=",".join(mask.paths)))
        await self._attach(record)
        answer = pubsub_pb2.Subscription()
        answer.CopyFrom(record)
        if current.push_config.secret and answer.push_config.secret:  # shown once: when it is made
            answer.push_config.secret, answer.push_config.secret_set = "", True
        if answer.push_config.previous_secret:
            answer.push_config.previous_secret = ""  # never shown
        return answer

    async def rotate_push_secret(self, name: str, previous_ttl_s: float | None = None) -> pubsub_pb2.Subscription:
        """A new signing secret for the push subscription, in a compare-and-swap on the
        record as read; FAILED_PRECONDITION for a pull subscription. The replaced secret
        keeps signing beside the new one for previous_ttl_s (None: a day; 0: not at all),
        taking the place of any earlier previous secret: at most two secrets sign."""
        key = SUBSCRIPTIONS + validation.name("subscription", name).encode()
        ttl_s = DEFAULT_PREVIOUS_SECRET_TTL_S if previous_ttl_s is None else validation.seconds_between(
            "previous secret ttl", previous_ttl_s, 0, MAX_PREVIOUS_SECRET_TTL_S)
        for _ in range(UPDATE_TRIES):
            kv = await self._etcd.get(key)
            if kv is None:
                raise errors.NotFound(f"subscription {name!r} not found")
            # Not strict: a secret that no longer opens (a lost master key) is what a
            # rotation replaces; it just cannot sign beside the new one.
            record = sealing.parse_subscription(kv.value, strict=False)
            push = record.push_config
            if not push.endpoint:
                raise errors.FailedPrecondition(f"subscription {name!r} is not a push subscription: it has no secret")
            replaced, push.secret = push.secret, secrets.token_hex(32)
            push.ClearField("previous_secret")
            push.ClearField("previous_secret_expire_time")
            if ttl_s and replaced:
                push.previous_secret = replaced
                push.previous_secret_expire_time.CopyFrom(timestamp(now_ms() + round(ttl_s * 1000)))
            updated, _ = await self._etcd.transaction(
                compare=[self._txn.mod(key) == kv.mod_revision],
                success=[self._txn.put(key, sealing.subscription_value(record))], failure=[])
            if updated:
                log.info("push secret rotated", extra=fields(subscription=name, previous_secret_ttl_s=ttl_s))
                push.previous_secret = ""  # the answer shows the new secret (once), never the old
                return record
        raise errors.Aborted(f"subscription {name!r} changed meanwhile; try again")

    async def _check_update(self, record: pubsub_pb2.Subscription, mask: field_mask_pb2.FieldMask) -> None:
        """An updated record's checks: those of a new one."""
        self._check_ack_deadline(record)
        if "push_config" in mask.paths and not record.push_config.endpoint:
            record.ClearField("push_config")  # push config unset (or empty): a pull subscription
        await self._check_delivery_policy(record)

    async def delete_subscription(self, name: str) -> None:
        validation.name("subscription", name)
        if not await self._etcd.delete(SUBSCRIPTIONS + name.encode()):
            raise errors.NotFound(f"subscription {name!r} not found")
        log.info("subscription deleted", extra=fields(subscription=name))
