"""In-memory fakes of what the notification pipeline asks of the table, the
metadata mirrors, rendering, providers and publishing, behind the Protocols of
sender/fanout.py, sender/channel_worker.py and notifymesh/server/notification_log.py."""

import bisect
import string

from gen.notifymesh.internal.v1 import storage_pb2
from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from notifymesh import errors
from notifymesh.clock import now_ms
from notifymesh.server import rows
from notifymesh.server.table import Acquire, RateDecision, Scanned
from sender.channel_worker import Failed, Outgoing, Sent

PARTITIONS = 8


class FakeTable:
    """The table client's calls over one sorted dict per partition; each call is
    recorded (calls), and write calls can be made to fail (fail_writes)."""

    def __init__(self):
        self.rows: list[dict[bytes, tuple[bytes, int]]] = [{} for _ in range(PARTITIONS)]
        self.calls: list[tuple[str, object]] = []
        self.fail_writes: Exception | None = None
        self.counters: dict[bytes, list[tuple[int, str]]] = {}

    def partition(self, partition_key: str) -> int:
        return rows.partition_of(partition_key, PARTITIONS)

    def _apply(self, partition_key: str, ops) -> None:
        shard = self.rows[self.partition(partition_key)]
        for op in ops:
            if op.delete or op.erase:
                shard.pop(op.key, None)
            else:
                shard[op.key] = (op.value, op.expire_ms)

    async def write(self, partition_key: str, ops: list[storage_pb2.TableOp]) -> None:
        self.calls.append(("write", {partition_key: list(ops)}))
        if self.fail_writes is not None:
            raise self.fail_writes
        self._apply(partition_key, ops)

    async def write_many(self, ops_by_partition_key: dict[str, list[storage_pb2.TableOp]]) -> None:
        self.calls.append(("write_many", {k: list(v) for k, v in ops_by_partition_key.items()}))
        if self.fail_writes is not None:
            raise self.fail_writes
        for partition_key, ops in ops_by_partition_key.items():
            self._apply(partition_key, ops)

    def get(self, partition_key: str, key: bytes) -> bytes | None:
        found = self.rows[self.partition(partition_key)].get(key)
        return None if found is None else found[0]

    def expire_of(self, partition_key: str, key: bytes) -> int:
        return self.rows[self.partition(partition_key)][key][1]

    async def read(self, partition_key: str, keys: list[bytes]) -> list[bytes | None]:
        self.calls.append(("read", {partition_key: list(keys)}))
        return [self.get(partition_key, key) for key in keys]

    async def read_many(self, keys_by_partition_key: dict[str, list[bytes]]) -> dict[bytes, bytes | None]:
        self.calls.append(("read_many", {k: list(v) for k, v in keys_by_partition_key.items()}))
        return {key: self.get(pk, key) for pk, keys in keys_by_partition_key.items() for key in keys}

    async def scan(self, partition_key: str, prefix: bytes, start_after: bytes = b"", limit: int = 1000,
                   reverse: bool = False) -> Scanned:
        """Forward: keys above start_after; reverse: keys below it (b"": from the end), highest first."""
        self.calls.append(("scan", partition_key))
        keys = sorted(k for k in self.rows[self.partition(partition_key)] if k.startswith(prefix))
        if reverse:
            keys = keys[:bisect.bisect_left(keys, start_after)] if start_after else keys
            keys.reverse()
        else:
            keys = keys[bisect.bisect_right(keys, start_after):]
        page = keys[:limit]
        return Scanned(page, [self.get(partition_key, k) for k in page], len(keys) > limit)

    async def scan_many(self, scans: list[tuple[str, bytes]], limit: int) -> list[Scanned]:
        self.calls.append(("scan_many", [partition_key for partition_key, _ in scans]))
        found = []
        for partition_key, prefix in scans:
            keys = sorted(k for k in self.rows[self.partition(partition_key)] if k.startswith(prefix))
            found.append(Scanned(keys[:limit], [self.get(partition_key, k) for k in keys[:limit]], len(keys) > limit))
        return found

    async def rate_acquire(self, partition_key: str, key: bytes, limit: int, period_ms: int, token: str,
                           force: bool = False) -> RateDecision:
        """A sliding log of (ms, token): a token counted already is allowed again."""
        self.calls.append(("rate_acquire", (partition_key, key, limit, period_ms, token, force)))
        now = now_ms()
        sent = [(ms, t) for ms, t in self.counters.get(key, []) if ms > now - period_ms]
        if any(t == token for _, t in sent):
            return RateDecision(True, 0, len(sent))
        if len(sent) >= limit and not force:
            return RateDecision(False, sent[0][0] + period_ms - now, len(sent))
        sent.append((now, token))
        self.counters[key] = sent
        return RateDecision(True, 0, len(sent))

    async def rate_acquire_many(self, acquires: list[Acquire],
                                writes: dict[str, list[storage_pb2.TableOp]] | None = None) -> list[RateDecision]:
        self.calls.append(("rate_acquire_many", [a.partition_key for a in acquires]))
        if writes:  # recorded as the write_many they ride with
            self.calls.append(("rate_acquire_writes", {k: list(v) for k, v in writes.items()}))
            if self.fail_writes is not None:
                raise self.fail_writes
        # Each acquire's arguments recorded after it as a rate_acquire of its own.
        decisions = [await self.rate_acquire(a.partition_key, a.key, a.limit, a.period_ms, a.token, a.force)
                     for a in acquires]
        for partition_key, ops in (writes or {}).items():
            self._apply(partition_key, ops)
        return decisions

    def count(self, kind: str) -> int:
        return sum(1 for call, _ in self.calls if call == kind)


class FakeMetadata:
    def __init__(self):
        self.categories: dict[str, notify_pb2.Category] = {}
        self.templates: dict[tuple[str, int], notify_pb2.Template] = {}
        self.providers: dict[int, notify_pb2.Provider] = {}
        self.subscriptions: dict[str, pubsub_pb2.Subscription] = {}
        self.topics: dict[str, pubsub_pb2.Topic] = {}

    @staticmethod
    def _found(what: str, item):
        if item is None:
            raise errors.NotFound(f"{what} not found")
        return item

    async def category(self, name: str) -> notify_pb2.Category:
        return self._found("category", self.categories.get(name))

    async def template(self, name: str, version: int = 0) -> notify_pb2.Template:
        return self._found("template", self.templates.get((name, version)))

    async def provider(self, channel: int) -> notify_pb2.Provider:
        return self._found("provider", self.providers.get(channel))

    async def subscription(self, name: str) -> pubsub_pb2.Subscription:
        return self._found("subscription", self.subscriptions.get(name))

    async def topic(self, name: str) -> pubsub_pb2.Topic:
        return self._found("topic", self.topics.get(name))


class _Values(dict):
    def __missing__(self, name):
        raise errors.InvalidArgument(f"template variable {name!r} is missing")


class FakeRendering:
    """Templates as string.Template text over the data ($amount); a name the data
    lacks fails like a Jinja2 strict undefined."""

    def render_lazily(self, template, channel, locale, make_values, notification_id):
        for content in template.contents:
            if content.channel == channel:
                data = _Values(make_values()["data"])
                return notify_pb2.RenderedContent(
                    channel=channel, version=template.version,
                    subject=string.Template(content.subject).substitute(data),
                    text=string.Template(content.text).substitute(data),
                    html=string.Template(content.html).substitute(data))
        raise errors.FailedPrecondition(f"template {template.name!r} has no content for channel {channel}")

    def context(self, recipient, data, notification_id, category, unsubscribe_url=""):
        return {"data": data, "recipient": recipient, "notification_id": notification_id, "category": category,
                "unsubscribe_url": unsubscribe_url}

    def unsubscribe_url(self, recipient: str, category: str, channel: str, notification_id: str = "",
                        accepted_ms: int = 0) -> str:
        return f"http://unsubscribe.test/{recipient}/{category}/{channel}"

    def track_html(self, html: str, notification_id: str, recipient: str, accepted_ms: int) -> str:
        return html + f"<img src=http://track.test/{notification_id}/{recipient}>"

    def status_callback_url(self, notification_id: str, recipient: str, channel: int, accepted_ms: int) -> str:
        return f"http://track.test/status/{notification_id}/{recipient}"


class FakeProviders:
    """Answers each send with the next scripted result (then Sent); records what it was given."""

    def __init__(self):
        self.sent: list[Outgoing] = []
        self.script: list[Sent | Failed] = []

    async def send(self, message: Outgoing) -> Sent | Failed:
        self.sent.append(message)
        if self.script:
            return self.script.pop(0)
        return Sent("fake", f"pm-{len(self.sent)}")


class FakePublisher:
    """Storage's idempotency: a message whose key the topic has seen is dropped."""

    def __init__(self):
        self.calls: list[tuple[str, list[pubsub_pb2.PubsubMessage]]] = []
        self.stored: dict[str, dict[str, pubsub_pb2.PubsubMessage]] = {}
        self.fail: Exception | None = None

    async def publish(self, topic: str, messages) -> list[str]:
        self.calls.append((topic, list(messages)))
        if self.fail is not None:
            raise self.fail
        stored = self.stored.setdefault(topic, {})
        for message in messages:
            stored.setdefault(message.idempotency_key, message)
        return [f"id-{m.idempotency_key}" for m in messages]

    def published(self) -> int:
        """Messages published, repeats included."""
        return sum(len(messages) for _, messages in self.calls)


async def accepted_with_index(log, record, recipients: list[str]) -> None:
    """A notification's header and its recipients' index rows, as the fan-out writes
    them (the index rows with its duplicate checks)."""
    await log.accepted(record)
    await log._table.write_many(log.index_ops(record.id, record.accepted_ms, recipients))
