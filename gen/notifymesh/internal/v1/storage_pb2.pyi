from gen.notifymesh.v1 import pubsub_pb2 as _pubsub_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TableOp(_message.Message):
    __slots__ = ("key", "value", "delete", "erase", "expire_ms")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    ERASE_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_MS_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    delete: bool
    erase: bool
    expire_ms: int
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., delete: _Optional[bool] = ..., erase: _Optional[bool] = ..., expire_ms: _Optional[int] = ...) -> None: ...

class TableOps(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[TableOp]
    def __init__(self, ops: _Optional[_Iterable[_Union[TableOp, _Mapping]]] = ...) -> None: ...

class TableWriteRequest(_message.Message):
    __slots__ = ("partition", "ops")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    partition: int
    ops: _containers.RepeatedCompositeFieldContainer[TableOp]
    def __init__(self, partition: _Optional[int] = ..., ops: _Optional[_Iterable[_Union[TableOp, _Mapping]]] = ...) -> None: ...

class TableWriteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TableReadRequest(_message.Message):
    __slots__ = ("partition", "keys")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    partition: int
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, partition: _Optional[int] = ..., keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class TableReadResponse(_message.Message):
    __slots__ = ("values", "found")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bytes]
    found: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, values: _Optional[_Iterable[bytes]] = ..., found: _Optional[_Iterable[bool]] = ...) -> None: ...

class TableScanRequest(_message.Message):
    __slots__ = ("partition", "prefix", "start_after", "limit", "reverse")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REVERSE_FIELD_NUMBER: _ClassVar[int]
    partition: int
    prefix: bytes
    start_after: bytes
    limit: int
    reverse: bool
    def __init__(self, partition: _Optional[int] = ..., prefix: _Optional[bytes] = ..., start_after: _Optional[bytes] = ..., limit: _Optional[int] = ..., reverse: _Optional[bool] = ...) -> None: ...

class TableScanResponse(_message.Message):
    __slots__ = ("keys", "values", "more")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    values: _containers.RepeatedScalarFieldContainer[bytes]
    more: bool
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ..., values: _Optional[_Iterable[bytes]] = ..., more: _Optional[bool] = ...) -> None: ...

class TableScanManyRequest(_message.Message):
    __slots__ = ("partition", "prefixes", "limit")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    PREFIXES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    partition: int
    prefixes: _containers.RepeatedScalarFieldContainer[bytes]
    limit: int
    def __init__(self, partition: _Optional[int] = ..., prefixes: _Optional[_Iterable[bytes]] = ..., limit: _Optional[int] = ...) -> None: ...

class TableScanManyResponse(_message.Message):
    __slots__ = ("scans",)
    SCANS_FIELD_NUMBER: _ClassVar[int]
    scans: _containers.RepeatedCompositeFieldContainer[TableScanResponse]
    def __init__(self, scans: _Optional[_Iterable[_Union[TableScanResponse, _Mapping]]] = ...) -> None: ...

class RateAcquireRequest(_message.Message):
    __slots__ = ("partition", "acquires", "ops")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    ACQUIRES_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    partition: int
    acquires: _containers.RepeatedCompositeFieldContainer[RateAcquire]
    ops: _containers.RepeatedCompositeFieldContainer[TableOp]
    def __init__(self, partition: _Optional[int] = ..., acquires: _Optional[_Iterable[_Union[RateAcquire, _Mapping]]] = ..., ops: _Optional[_Iterable[_Union[TableOp, _Mapping]]] = ...) -> None: ...

class RateAcquire(_message.Message):
    __slots__ = ("key", "limit", "period_ms", "token", "force")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_MS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    limit: int
    period_ms: int
    token: str
    force: bool
    def __init__(self, key: _Optional[bytes] = ..., limit: _Optional[int] = ..., period_ms: _Optional[int] = ..., token: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RateAcquireResponse(_message.Message):
    __slots__ = ("decisions", "ops_written")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    OPS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[RateDecision]
    ops_written: bool
    def __init__(self, decisions: _Optional[_Iterable[_Union[RateDecision, _Mapping]]] = ..., ops_written: _Optional[bool] = ...) -> None: ...

class RateDecision(_message.Message):
    __slots__ = ("allowed", "retry_after_ms", "count")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    retry_after_ms: int
    count: int
    def __init__(self, allowed: _Optional[bool] = ..., retry_after_ms: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("topic", "messages", "partition", "retry")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    topic: str
    messages: _containers.RepeatedCompositeFieldContainer[_pubsub_pb2.PubsubMessage]
    partition: int
    retry: bool
    def __init__(self, topic: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_pubsub_pb2.PubsubMessage, _Mapping]]] = ..., partition: _Optional[int] = ..., retry: _Optional[bool] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("message_ids",)
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("topic", "partition", "wait_ms", "subscriptions", "sender_addr")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    SENDER_ADDR_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    wait_ms: int
    subscriptions: _containers.RepeatedCompositeFieldContainer[SubscriptionPull]
    sender_addr: str
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., wait_ms: _Optional[int] = ..., subscriptions: _Optional[_Iterable[_Union[SubscriptionPull, _Mapping]]] = ..., sender_addr: _Optional[str] = ...) -> None: ...

class SubscriptionPull(_message.Message):
    __slots__ = ("name", "max_messages", "ack_deadline_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ACK_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    max_messages: int
    ack_deadline_ms: int
    def __init__(self, name: _Optional[str] = ..., max_messages: _Optional[int] = ..., ack_deadline_ms: _Optional[int] = ...) -> None: ...

class PullResponse(_message.Message):
    __slots__ = ("subscriptions",)
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    subscriptions: _containers.RepeatedCompositeFieldContainer[PulledMessages]
    def __init__(self, subscriptions: _Optional[_Iterable[_Union[PulledMessages, _Mapping]]] = ...) -> None: ...

class PulledMessages(_message.Message):
    __slots__ = ("name", "received_messages", "ack_ids", "not_found", "ready")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ACK_IDS_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    name: str
    received_messages: _containers.RepeatedScalarFieldContainer[bytes]
    ack_ids: _containers.RepeatedScalarFieldContainer[str]
    not_found: bool
    ready: bool
    def __init__(self, name: _Optional[str] = ..., received_messages: _Optional[_Iterable[bytes]] = ..., ack_ids: _Optional[_Iterable[str]] = ..., not_found: _Optional[bool] = ..., ready: _Optional[bool] = ...) -> None: ...

class StorageAcknowledgeRequest(_message.Message):
    __slots__ = ("topic", "subscription", "ack_ids", "partition")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACK_IDS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    topic: str
    subscription: str
    ack_ids: _containers.RepeatedScalarFieldContainer[str]
    partition: int
    def __init__(self, topic: _Optional[str] = ..., subscription: _Optional[str] = ..., ack_ids: _Optional[_Iterable[str]] = ..., partition: _Optional[int] = ...) -> None: ...

class StorageAcknowledgeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StorageModifyAckDeadlineRequest(_message.Message):
    __slots__ = ("topic", "subscription", "ack_ids", "ack_deadline_ms", "partition")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACK_IDS_FIELD_NUMBER: _ClassVar[int]
    ACK_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    topic: str
    subscription: str
    ack_ids: _containers.RepeatedScalarFieldContainer[str]
    ack_deadline_ms: int
    partition: int
    def __init__(self, topic: _Optional[str] = ..., subscription: _Optional[str] = ..., ack_ids: _Optional[_Iterable[str]] = ..., ack_deadline_ms: _Optional[int] = ..., partition: _Optional[int] = ...) -> None: ...

class StorageModifyAckDeadlineResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StorageNackRequest(_message.Message):
    __slots__ = ("topic", "partition", "subscription", "ack_ids", "delay_ms", "terminal", "reason", "deferred")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACK_IDS_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    subscription: str
    ack_ids: _containers.RepeatedScalarFieldContainer[str]
    delay_ms: int
    terminal: bool
    reason: str
    deferred: bool
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., subscription: _Optional[str] = ..., ack_ids: _Optional[_Iterable[str]] = ..., delay_ms: _Optional[int] = ..., terminal: _Optional[bool] = ..., reason: _Optional[str] = ..., deferred: _Optional[bool] = ...) -> None: ...

class StorageNackResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StorageListDeadLettersRequest(_message.Message):
    __slots__ = ("topic", "partition", "subscription", "max_messages", "after_seq")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    subscription: str
    max_messages: int
    after_seq: int
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., subscription: _Optional[str] = ..., max_messages: _Optional[int] = ..., after_seq: _Optional[int] = ...) -> None: ...

class StorageListDeadLettersResponse(_message.Message):
    __slots__ = ("dead_letters", "seqs", "more")
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[_pubsub_pb2.DeadLetter]
    seqs: _containers.RepeatedScalarFieldContainer[int]
    more: bool
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[_pubsub_pb2.DeadLetter, _Mapping]]] = ..., seqs: _Optional[_Iterable[int]] = ..., more: _Optional[bool] = ...) -> None: ...

class StorageRedriveDeadLettersRequest(_message.Message):
    __slots__ = ("topic", "partition", "subscription")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    subscription: str
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., subscription: _Optional[str] = ...) -> None: ...

class StorageSeekRequest(_message.Message):
    __slots__ = ("topic", "partition", "subscription", "time_ms", "to_end")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    TO_END_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    subscription: str
    time_ms: int
    to_end: bool
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., subscription: _Optional[str] = ..., time_ms: _Optional[int] = ..., to_end: _Optional[bool] = ...) -> None: ...

class StorageSeekResponse(_message.Message):
    __slots__ = ("limited",)
    LIMITED_FIELD_NUMBER: _ClassVar[int]
    limited: bool
    def __init__(self, limited: _Optional[bool] = ...) -> None: ...

class StorageGetMessageStatusRequest(_message.Message):
    __slots__ = ("topic", "partition", "message_id")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    message_id: str
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., message_id: _Optional[str] = ...) -> None: ...

class AttachSubscriptionRequest(_message.Message):
    __slots__ = ("subscription", "partition")
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    subscription: _pubsub_pb2.Subscription
    partition: int
    def __init__(self, subscription: _Optional[_Union[_pubsub_pb2.Subscription, _Mapping]] = ..., partition: _Optional[int] = ...) -> None: ...

class AttachSubscriptionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeSubscriptionsRequest(_message.Message):
    __slots__ = ("topic", "partition", "subscriptions")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    subscriptions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., subscriptions: _Optional[_Iterable[str]] = ...) -> None: ...

class DescribeSubscriptionsResponse(_message.Message):
    __slots__ = ("subscriptions",)
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    subscriptions: _containers.RepeatedCompositeFieldContainer[SubscriptionDeliveryStats]
    def __init__(self, subscriptions: _Optional[_Iterable[_Union[SubscriptionDeliveryStats, _Mapping]]] = ...) -> None: ...

class SubscriptionDeliveryStats(_message.Message):
    __slots__ = ("name", "stats")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    name: str
    stats: _pubsub_pb2.DeliveryStats
    def __init__(self, name: _Optional[str] = ..., stats: _Optional[_Union[_pubsub_pb2.DeliveryStats, _Mapping]] = ...) -> None: ...

class ReplicateRequest(_message.Message):
    __slots__ = ("leader", "shards")
    LEADER_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    leader: str
    shards: _containers.RepeatedCompositeFieldContainer[ShardEntries]
    def __init__(self, leader: _Optional[str] = ..., shards: _Optional[_Iterable[_Union[ShardEntries, _Mapping]]] = ...) -> None: ...

class ShardEntries(_message.Message):
    __slots__ = ("topic", "partition", "epoch", "start", "prev_epoch", "entries", "commit", "first", "has_subscriptions", "subscriptions", "state_delta", "removed_subscriptions", "state_epoch", "state_version", "message_ids", "dedup_keys", "dedup_until_ms", "last_entry_epoch", "delivery_keys", "delivery_records")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    PREV_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    HAS_SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_DELTA_FIELD_NUMBER: _ClassVar[int]
    REMOVED_SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    DEDUP_KEYS_FIELD_NUMBER: _ClassVar[int]
    DEDUP_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_ENTRY_EPOCH_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_KEYS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_RECORDS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    epoch: int
    start: int
    prev_epoch: int
    entries: _containers.RepeatedScalarFieldContainer[bytes]
    commit: int
    first: int
    has_subscriptions: bool
    subscriptions: _containers.RepeatedCompositeFieldContainer[SubscriptionState]
    state_delta: bool
    removed_subscriptions: _containers.RepeatedScalarFieldContainer[str]
    state_epoch: int
    state_version: int
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    dedup_keys: _containers.RepeatedScalarFieldContainer[str]
    dedup_until_ms: _containers.RepeatedScalarFieldContainer[int]
    last_entry_epoch: int
    delivery_keys: _containers.RepeatedScalarFieldContainer[bytes]
    delivery_records: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., epoch: _Optional[int] = ..., start: _Optional[int] = ..., prev_epoch: _Optional[int] = ..., entries: _Optional[_Iterable[bytes]] = ..., commit: _Optional[int] = ..., first: _Optional[int] = ..., has_subscriptions: _Optional[bool] = ..., subscriptions: _Optional[_Iterable[_Union[SubscriptionState, _Mapping]]] = ..., state_delta: _Optional[bool] = ..., removed_subscriptions: _Optional[_Iterable[str]] = ..., state_epoch: _Optional[int] = ..., state_version: _Optional[int] = ..., message_ids: _Optional[_Iterable[str]] = ..., dedup_keys: _Optional[_Iterable[str]] = ..., dedup_until_ms: _Optional[_Iterable[int]] = ..., last_entry_epoch: _Optional[int] = ..., delivery_keys: _Optional[_Iterable[bytes]] = ..., delivery_records: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ReplicateResponse(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[ShardResult]
    def __init__(self, shards: _Optional[_Iterable[_Union[ShardResult, _Mapping]]] = ...) -> None: ...

class ShardResult(_message.Message):
    __slots__ = ("topic", "partition", "ok", "end", "newer_epoch")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    NEWER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    ok: bool
    end: int
    newer_epoch: int
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., ok: _Optional[bool] = ..., end: _Optional[int] = ..., newer_epoch: _Optional[int] = ...) -> None: ...

class SubscriptionState(_message.Message):
    __slots__ = ("name", "cursor", "dead_letters", "leases", "lease_errors", "redrives")
    class LeaseErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    class RedrivesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    LEASE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    REDRIVES_FIELD_NUMBER: _ClassVar[int]
    name: str
    cursor: int
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetterRecord]
    leases: bytes
    lease_errors: _containers.ScalarMap[int, str]
    redrives: _containers.ScalarMap[int, int]
    def __init__(self, name: _Optional[str] = ..., cursor: _Optional[int] = ..., dead_letters: _Optional[_Iterable[_Union[DeadLetterRecord, _Mapping]]] = ..., leases: _Optional[bytes] = ..., lease_errors: _Optional[_Mapping[int, str]] = ..., redrives: _Optional[_Mapping[int, int]] = ...) -> None: ...

class DeliveryState(_message.Message):
    __slots__ = ("subscriptions", "epoch", "version")
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    subscriptions: _containers.RepeatedCompositeFieldContainer[SubscriptionState]
    epoch: int
    version: int
    def __init__(self, subscriptions: _Optional[_Iterable[_Union[SubscriptionState, _Mapping]]] = ..., epoch: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class StoredMessage(_message.Message):
    __slots__ = ("message", "append_ms", "epoch", "dedup_key", "dedup_until_ms", "table_ops")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    APPEND_MS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    DEDUP_KEY_FIELD_NUMBER: _ClassVar[int]
    DEDUP_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    TABLE_OPS_FIELD_NUMBER: _ClassVar[int]
    message: _pubsub_pb2.PubsubMessage
    append_ms: int
    epoch: int
    dedup_key: str
    dedup_until_ms: int
    table_ops: bool
    def __init__(self, message: _Optional[_Union[_pubsub_pb2.PubsubMessage, _Mapping]] = ..., append_ms: _Optional[int] = ..., epoch: _Optional[int] = ..., dedup_key: _Optional[str] = ..., dedup_until_ms: _Optional[int] = ..., table_ops: _Optional[bool] = ...) -> None: ...

class DeadLetterRecord(_message.Message):
    __slots__ = ("seq", "delivery_attempts", "dead_ms", "last_error", "dead_letter_message_id", "redrives")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DEAD_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REDRIVES_FIELD_NUMBER: _ClassVar[int]
    seq: int
    delivery_attempts: int
    dead_ms: int
    last_error: str
    dead_letter_message_id: str
    redrives: int
    def __init__(self, seq: _Optional[int] = ..., delivery_attempts: _Optional[int] = ..., dead_ms: _Optional[int] = ..., last_error: _Optional[str] = ..., dead_letter_message_id: _Optional[str] = ..., redrives: _Optional[int] = ...) -> None: ...

class ShardPlacement(_message.Message):
    __slots__ = ("topic", "partition", "replicas", "replication_factor")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    replicas: _containers.RepeatedScalarFieldContainer[str]
    replication_factor: int
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., replicas: _Optional[_Iterable[str]] = ..., replication_factor: _Optional[int] = ...) -> None: ...
