from gen.notifymesh.v1 import notify_pb2 as _notify_pb2
from gen.notifymesh.v1 import pubsub_pb2 as _pubsub_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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

class RelayUp(_message.Message):
    __slots__ = ("opens", "closes")
    class Open(_message.Message):
        __slots__ = ("stream", "request")
        STREAM_FIELD_NUMBER: _ClassVar[int]
        REQUEST_FIELD_NUMBER: _ClassVar[int]
        stream: int
        request: _pubsub_pb2.SubscribeRequest
        def __init__(self, stream: _Optional[int] = ..., request: _Optional[_Union[_pubsub_pb2.SubscribeRequest, _Mapping]] = ...) -> None: ...
    OPENS_FIELD_NUMBER: _ClassVar[int]
    CLOSES_FIELD_NUMBER: _ClassVar[int]
    opens: _containers.RepeatedCompositeFieldContainer[RelayUp.Open]
    closes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, opens: _Optional[_Iterable[_Union[RelayUp.Open, _Mapping]]] = ..., closes: _Optional[_Iterable[int]] = ...) -> None: ...

class RelayDown(_message.Message):
    __slots__ = ("frames", "ends")
    class Frame(_message.Message):
        __slots__ = ("stream", "received_messages")
        STREAM_FIELD_NUMBER: _ClassVar[int]
        RECEIVED_MESSAGES_FIELD_NUMBER: _ClassVar[int]
        stream: int
        received_messages: _containers.RepeatedScalarFieldContainer[bytes]
        def __init__(self, stream: _Optional[int] = ..., received_messages: _Optional[_Iterable[bytes]] = ...) -> None: ...
    class End(_message.Message):
        __slots__ = ("stream", "code", "details")
        STREAM_FIELD_NUMBER: _ClassVar[int]
        CODE_FIELD_NUMBER: _ClassVar[int]
        DETAILS_FIELD_NUMBER: _ClassVar[int]
        stream: int
        code: int
        details: str
        def __init__(self, stream: _Optional[int] = ..., code: _Optional[int] = ..., details: _Optional[str] = ...) -> None: ...
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ENDS_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[RelayDown.Frame]
    ends: _containers.RepeatedCompositeFieldContainer[RelayDown.End]
    def __init__(self, frames: _Optional[_Iterable[_Union[RelayDown.Frame, _Mapping]]] = ..., ends: _Optional[_Iterable[_Union[RelayDown.End, _Mapping]]] = ...) -> None: ...
