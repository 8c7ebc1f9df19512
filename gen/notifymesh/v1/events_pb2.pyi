import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gen.notifymesh.v1 import notify_pb2 as _notify_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NotificationEvent(_message.Message):
    __slots__ = ("notification_id", "recipient", "channel", "template", "category", "event")
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    notification_id: str
    recipient: str
    channel: _notify_pb2.Channel
    template: str
    category: str
    event: _notify_pb2.SendEvent
    def __init__(self, notification_id: _Optional[str] = ..., recipient: _Optional[str] = ..., channel: _Optional[_Union[_notify_pb2.Channel, str]] = ..., template: _Optional[str] = ..., category: _Optional[str] = ..., event: _Optional[_Union[_notify_pb2.SendEvent, _Mapping]] = ...) -> None: ...

class NotificationEvents(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[NotificationEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[NotificationEvent, _Mapping]]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("template", "category", "start_time")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    template: str
    category: str
    start_time: _timestamp_pb2.Timestamp
    def __init__(self, template: _Optional[str] = ..., category: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("start_time", "queued", "sent", "delivered", "failed", "opened", "clicked", "unsubscribed", "dead_lettered", "suppressed", "delivery_rate", "open_rate", "click_rate", "failure_rate")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    CLICKED_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_RATE_FIELD_NUMBER: _ClassVar[int]
    OPEN_RATE_FIELD_NUMBER: _ClassVar[int]
    CLICK_RATE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_RATE_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    queued: int
    sent: int
    delivered: int
    failed: int
    opened: int
    clicked: int
    unsubscribed: int
    dead_lettered: int
    suppressed: int
    delivery_rate: float
    open_rate: float
    click_rate: float
    failure_rate: float
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., queued: _Optional[int] = ..., sent: _Optional[int] = ..., delivered: _Optional[int] = ..., failed: _Optional[int] = ..., opened: _Optional[int] = ..., clicked: _Optional[int] = ..., unsubscribed: _Optional[int] = ..., dead_lettered: _Optional[int] = ..., suppressed: _Optional[int] = ..., delivery_rate: _Optional[float] = ..., open_rate: _Optional[float] = ..., click_rate: _Optional[float] = ..., failure_rate: _Optional[float] = ...) -> None: ...
