from gen.notifymesh.v1 import notify_pb2 as _notify_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WakeInboxRequest(_message.Message):
    __slots__ = ("changes", "mac")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    changes: bytes
    mac: bytes
    def __init__(self, changes: _Optional[bytes] = ..., mac: _Optional[bytes] = ...) -> None: ...

class InboxChanges(_message.Message):
    __slots__ = ("items", "acked")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[InboxDelivery]
    acked: _containers.RepeatedCompositeFieldContainer[InboxAcked]
    def __init__(self, items: _Optional[_Iterable[_Union[InboxDelivery, _Mapping]]] = ..., acked: _Optional[_Iterable[_Union[InboxAcked, _Mapping]]] = ...) -> None: ...

class WakeInboxResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InboxDelivery(_message.Message):
    __slots__ = ("recipient", "accepted_ms", "item")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_MS_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    accepted_ms: int
    item: _notify_pb2.InboxItem
    def __init__(self, recipient: _Optional[str] = ..., accepted_ms: _Optional[int] = ..., item: _Optional[_Union[_notify_pb2.InboxItem, _Mapping]] = ...) -> None: ...

class InboxAcked(_message.Message):
    __slots__ = ("recipient", "notification_ids")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_IDS_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    notification_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, recipient: _Optional[str] = ..., notification_ids: _Optional[_Iterable[str]] = ...) -> None: ...
