from gen.notifymesh.v1 import notify_pb2 as _notify_pb2
from gen.notifymesh.v1 import pubsub_pb2 as _pubsub_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CountStreamsRequest(_message.Message):
    __slots__ = ("subscriptions",)
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    subscriptions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, subscriptions: _Optional[_Iterable[str]] = ...) -> None: ...

class CountStreamsResponse(_message.Message):
    __slots__ = ("streams",)
    class StreamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    streams: _containers.ScalarMap[str, int]
    def __init__(self, streams: _Optional[_Mapping[str, int]] = ...) -> None: ...

class SubscribeFrame(_message.Message):
    __slots__ = ("received_messages",)
    RECEIVED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    received_messages: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, received_messages: _Optional[_Iterable[bytes]] = ...) -> None: ...
