from gen.notifymesh.v1 import notify_pb2 as _notify_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NotificationJob(_message.Message):
    __slots__ = ("request", "template_version", "accepted_ms")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_MS_FIELD_NUMBER: _ClassVar[int]
    request: _notify_pb2.NotifyRequest
    template_version: int
    accepted_ms: int
    def __init__(self, request: _Optional[_Union[_notify_pb2.NotifyRequest, _Mapping]] = ..., template_version: _Optional[int] = ..., accepted_ms: _Optional[int] = ...) -> None: ...

class ChannelTask(_message.Message):
    __slots__ = ("notification_id", "recipient", "channel", "template", "template_version", "category", "priority", "data", "accepted_ms", "recipients", "attempts_before", "not_before_ms", "log_group")
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_MS_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    LOG_GROUP_FIELD_NUMBER: _ClassVar[int]
    notification_id: str
    recipient: str
    channel: _notify_pb2.Channel
    template: str
    template_version: int
    category: str
    priority: _notify_pb2.Priority
    data: str
    accepted_ms: int
    recipients: _containers.RepeatedScalarFieldContainer[str]
    attempts_before: int
    not_before_ms: int
    log_group: str
    def __init__(self, notification_id: _Optional[str] = ..., recipient: _Optional[str] = ..., channel: _Optional[_Union[_notify_pb2.Channel, str]] = ..., template: _Optional[str] = ..., template_version: _Optional[int] = ..., category: _Optional[str] = ..., priority: _Optional[_Union[_notify_pb2.Priority, str]] = ..., data: _Optional[str] = ..., accepted_ms: _Optional[int] = ..., recipients: _Optional[_Iterable[str]] = ..., attempts_before: _Optional[int] = ..., not_before_ms: _Optional[int] = ..., log_group: _Optional[str] = ...) -> None: ...

class LoggedEvents(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[LoggedEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[LoggedEvent, _Mapping]]] = ...) -> None: ...

class LoggedEvent(_message.Message):
    __slots__ = ("recipient", "event")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    event: _notify_pb2.SendEvent
    def __init__(self, recipient: _Optional[str] = ..., event: _Optional[_Union[_notify_pb2.SendEvent, _Mapping]] = ...) -> None: ...

class LogGroupTag(_message.Message):
    __slots__ = ("log_group",)
    LOG_GROUP_FIELD_NUMBER: _ClassVar[int]
    log_group: str
    def __init__(self, log_group: _Optional[str] = ...) -> None: ...

class FanoutCheckpoint(_message.Message):
    __slots__ = ("after_recipient", "recipients_done")
    AFTER_RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_DONE_FIELD_NUMBER: _ClassVar[int]
    after_recipient: str
    recipients_done: int
    def __init__(self, after_recipient: _Optional[str] = ..., recipients_done: _Optional[int] = ...) -> None: ...

class NotificationRecord(_message.Message):
    __slots__ = ("id", "request", "template_version", "accepted_ms", "recipient_count", "trace_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_MS_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    request: _notify_pb2.NotifyRequest
    template_version: int
    accepted_ms: int
    recipient_count: int
    trace_id: str
    def __init__(self, id: _Optional[str] = ..., request: _Optional[_Union[_notify_pb2.NotifyRequest, _Mapping]] = ..., template_version: _Optional[int] = ..., accepted_ms: _Optional[int] = ..., recipient_count: _Optional[int] = ..., trace_id: _Optional[str] = ...) -> None: ...

class PreferenceRow(_message.Message):
    __slots__ = ("enabled",)
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    def __init__(self, enabled: _Optional[bool] = ...) -> None: ...

class RateLimitRow(_message.Message):
    __slots__ = ("rate_limit",)
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    rate_limit: _notify_pb2.RateLimit
    def __init__(self, rate_limit: _Optional[_Union[_notify_pb2.RateLimit, _Mapping]] = ...) -> None: ...

class RateCounter(_message.Message):
    __slots__ = ("sent_ms", "tokens")
    SENT_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    sent_ms: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sent_ms: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ...) -> None: ...
