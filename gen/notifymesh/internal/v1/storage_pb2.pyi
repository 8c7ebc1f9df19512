from gen.notifymesh.v1 import pubsub_pb2 as _pubsub_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AppendRequest(_message.Message):
    __slots__ = ("topic", "messages")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    topic: str
    messages: _containers.RepeatedCompositeFieldContainer[_pubsub_pb2.PubsubMessage]
    def __init__(self, topic: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_pubsub_pb2.PubsubMessage, _Mapping]]] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("message_ids",)
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("topic", "subscription", "max_messages", "ack_deadline_ms", "wait_ms")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ACK_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    subscription: str
    max_messages: int
    ack_deadline_ms: int
    wait_ms: int
    def __init__(self, topic: _Optional[str] = ..., subscription: _Optional[str] = ..., max_messages: _Optional[int] = ..., ack_deadline_ms: _Optional[int] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class PullResponse(_message.Message):
    __slots__ = ("received_messages",)
    RECEIVED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    received_messages: _containers.RepeatedCompositeFieldContainer[_pubsub_pb2.ReceivedMessage]
    def __init__(self, received_messages: _Optional[_Iterable[_Union[_pubsub_pb2.ReceivedMessage, _Mapping]]] = ...) -> None: ...

class StorageAcknowledgeRequest(_message.Message):
    __slots__ = ("topic", "subscription", "ack_ids")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACK_IDS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    subscription: str
    ack_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, topic: _Optional[str] = ..., subscription: _Optional[str] = ..., ack_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StorageAcknowledgeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StorageModifyAckDeadlineRequest(_message.Message):
    __slots__ = ("topic", "subscription", "ack_ids", "ack_deadline_ms")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACK_IDS_FIELD_NUMBER: _ClassVar[int]
    ACK_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    subscription: str
    ack_ids: _containers.RepeatedScalarFieldContainer[str]
    ack_deadline_ms: int
    def __init__(self, topic: _Optional[str] = ..., subscription: _Optional[str] = ..., ack_ids: _Optional[_Iterable[str]] = ..., ack_deadline_ms: _Optional[int] = ...) -> None: ...

class StorageModifyAckDeadlineResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HandoffRequest(_message.Message):
    __slots__ = ("topic", "messages")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    topic: str
    messages: _containers.RepeatedCompositeFieldContainer[StoredMessage]
    def __init__(self, topic: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[StoredMessage, _Mapping]]] = ...) -> None: ...

class HandoffResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AttachSubscriptionRequest(_message.Message):
    __slots__ = ("subscription",)
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    subscription: _pubsub_pb2.Subscription
    def __init__(self, subscription: _Optional[_Union[_pubsub_pb2.Subscription, _Mapping]] = ...) -> None: ...

class AttachSubscriptionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StoredMessage(_message.Message):
    __slots__ = ("message", "append_ms", "only_subscriptions")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    APPEND_MS_FIELD_NUMBER: _ClassVar[int]
    ONLY_SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    message: _pubsub_pb2.PubsubMessage
    append_ms: int
    only_subscriptions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message: _Optional[_Union[_pubsub_pb2.PubsubMessage, _Mapping]] = ..., append_ms: _Optional[int] = ..., only_subscriptions: _Optional[_Iterable[str]] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("deadline_ms", "delivery_attempt")
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    deadline_ms: int
    delivery_attempt: int
    def __init__(self, deadline_ms: _Optional[int] = ..., delivery_attempt: _Optional[int] = ...) -> None: ...
