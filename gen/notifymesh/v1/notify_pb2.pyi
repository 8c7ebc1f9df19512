import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OverLimitPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OVER_LIMIT_POLICY_UNSPECIFIED: _ClassVar[OverLimitPolicy]
    DROP: _ClassVar[OverLimitPolicy]
    DELAY: _ClassVar[OverLimitPolicy]

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    EMAIL: _ClassVar[Channel]
    SMS: _ClassVar[Channel]
    WEBHOOK: _ClassVar[Channel]
    PUSH: _ClassVar[Channel]
    IN_APP: _ClassVar[Channel]

class BreakerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREAKER_STATE_UNSPECIFIED: _ClassVar[BreakerState]
    BREAKER_CLOSED: _ClassVar[BreakerState]
    BREAKER_OPEN: _ClassVar[BreakerState]
    BREAKER_HALF_OPEN: _ClassVar[BreakerState]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    NORMAL: _ClassVar[Priority]
    HIGH: _ClassVar[Priority]

class SendState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEND_STATE_UNSPECIFIED: _ClassVar[SendState]
    SEND_QUEUED: _ClassVar[SendState]
    SUPPRESSED_OPTED_OUT: _ClassVar[SendState]
    SUPPRESSED_RATE_LIMITED: _ClassVar[SendState]
    SUPPRESSED_DUPLICATE: _ClassVar[SendState]
    SUPPRESSED_NO_CONTACT: _ClassVar[SendState]
    SEND_DELAYED: _ClassVar[SendState]
    SEND_RENDERED: _ClassVar[SendState]
    SEND_SENT: _ClassVar[SendState]
    SEND_FAILED: _ClassVar[SendState]
    SEND_DEAD_LETTERED: _ClassVar[SendState]
    SEND_DELIVERED: _ClassVar[SendState]
    SEND_OPENED: _ClassVar[SendState]
    SEND_CLICKED: _ClassVar[SendState]
    SEND_UNSUBSCRIBED: _ClassVar[SendState]
OVER_LIMIT_POLICY_UNSPECIFIED: OverLimitPolicy
DROP: OverLimitPolicy
DELAY: OverLimitPolicy
CHANNEL_UNSPECIFIED: Channel
EMAIL: Channel
SMS: Channel
WEBHOOK: Channel
PUSH: Channel
IN_APP: Channel
BREAKER_STATE_UNSPECIFIED: BreakerState
BREAKER_CLOSED: BreakerState
BREAKER_OPEN: BreakerState
BREAKER_HALF_OPEN: BreakerState
PRIORITY_UNSPECIFIED: Priority
NORMAL: Priority
HIGH: Priority
SEND_STATE_UNSPECIFIED: SendState
SEND_QUEUED: SendState
SUPPRESSED_OPTED_OUT: SendState
SUPPRESSED_RATE_LIMITED: SendState
SUPPRESSED_DUPLICATE: SendState
SUPPRESSED_NO_CONTACT: SendState
SEND_DELAYED: SendState
SEND_RENDERED: SendState
SEND_SENT: SendState
SEND_FAILED: SendState
SEND_DEAD_LETTERED: SendState
SEND_DELIVERED: SendState
SEND_OPENED: SendState
SEND_CLICKED: SendState
SEND_UNSUBSCRIBED: SendState

class Recipient(_message.Message):
    __slots__ = ("id", "email", "phone", "locale", "timezone", "attributes", "webhook_url", "update_time")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    PHONE_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    email: str
    phone: str
    locale: str
    timezone: str
    attributes: _containers.ScalarMap[str, str]
    webhook_url: str
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., email: _Optional[str] = ..., phone: _Optional[str] = ..., locale: _Optional[str] = ..., timezone: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., webhook_url: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpsertRecipientRequest(_message.Message):
    __slots__ = ("recipient",)
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    recipient: Recipient
    def __init__(self, recipient: _Optional[_Union[Recipient, _Mapping]] = ...) -> None: ...

class UpsertRecipientsRequest(_message.Message):
    __slots__ = ("recipients",)
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    recipients: _containers.RepeatedCompositeFieldContainer[Recipient]
    def __init__(self, recipients: _Optional[_Iterable[_Union[Recipient, _Mapping]]] = ...) -> None: ...

class UpsertRecipientsResponse(_message.Message):
    __slots__ = ("stored", "errors")
    STORED_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    stored: int
    errors: _containers.RepeatedCompositeFieldContainer[RecipientError]
    def __init__(self, stored: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[RecipientError, _Mapping]]] = ...) -> None: ...

class RecipientError(_message.Message):
    __slots__ = ("index", "id", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    id: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetRecipientRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteRecipientRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteRecipientResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Preference(_message.Message):
    __slots__ = ("category", "channel", "enabled")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    category: str
    channel: str
    enabled: bool
    def __init__(self, category: _Optional[str] = ..., channel: _Optional[str] = ..., enabled: _Optional[bool] = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("limit", "period_seconds")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    limit: int
    period_seconds: int
    def __init__(self, limit: _Optional[int] = ..., period_seconds: _Optional[int] = ...) -> None: ...

class CategoryRateLimit(_message.Message):
    __slots__ = ("category", "rate_limit")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    category: str
    rate_limit: RateLimit
    def __init__(self, category: _Optional[str] = ..., rate_limit: _Optional[_Union[RateLimit, _Mapping]] = ...) -> None: ...

class Preferences(_message.Message):
    __slots__ = ("recipient", "unsubscribed", "preferences", "rate_limits")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    unsubscribed: bool
    preferences: _containers.RepeatedCompositeFieldContainer[Preference]
    rate_limits: _containers.RepeatedCompositeFieldContainer[CategoryRateLimit]
    def __init__(self, recipient: _Optional[str] = ..., unsubscribed: _Optional[bool] = ..., preferences: _Optional[_Iterable[_Union[Preference, _Mapping]]] = ..., rate_limits: _Optional[_Iterable[_Union[CategoryRateLimit, _Mapping]]] = ...) -> None: ...

class GetPreferencesRequest(_message.Message):
    __slots__ = ("recipient",)
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    def __init__(self, recipient: _Optional[str] = ...) -> None: ...

class UpdatePreferencesRequest(_message.Message):
    __slots__ = ("recipient", "preferences", "unsubscribed", "rate_limits")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    preferences: _containers.RepeatedCompositeFieldContainer[Preference]
    unsubscribed: bool
    rate_limits: _containers.RepeatedCompositeFieldContainer[CategoryRateLimit]
    def __init__(self, recipient: _Optional[str] = ..., preferences: _Optional[_Iterable[_Union[Preference, _Mapping]]] = ..., unsubscribed: _Optional[bool] = ..., rate_limits: _Optional[_Iterable[_Union[CategoryRateLimit, _Mapping]]] = ...) -> None: ...

class Category(_message.Message):
    __slots__ = ("name", "description", "mandatory", "rate_limit", "over_limit", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MANDATORY_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    OVER_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    mandatory: bool
    rate_limit: RateLimit
    over_limit: OverLimitPolicy
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., mandatory: _Optional[bool] = ..., rate_limit: _Optional[_Union[RateLimit, _Mapping]] = ..., over_limit: _Optional[_Union[OverLimitPolicy, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateCategoryRequest(_message.Message):
    __slots__ = ("category",)
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    category: Category
    def __init__(self, category: _Optional[_Union[Category, _Mapping]] = ...) -> None: ...

class GetCategoryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListCategoriesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCategoriesResponse(_message.Message):
    __slots__ = ("categories",)
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedCompositeFieldContainer[Category]
    def __init__(self, categories: _Optional[_Iterable[_Union[Category, _Mapping]]] = ...) -> None: ...

class UpdateCategoryRequest(_message.Message):
    __slots__ = ("category",)
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    category: Category
    def __init__(self, category: _Optional[_Union[Category, _Mapping]] = ...) -> None: ...

class DeleteCategoryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCategoryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TemplateContent(_message.Message):
    __slots__ = ("channel", "locale", "subject", "text", "html", "json_body")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    JSON_BODY_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    locale: str
    subject: str
    text: str
    html: str
    json_body: str
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., locale: _Optional[str] = ..., subject: _Optional[str] = ..., text: _Optional[str] = ..., html: _Optional[str] = ..., json_body: _Optional[str] = ...) -> None: ...

class Template(_message.Message):
    __slots__ = ("name", "description", "version", "default_locale", "contents", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_LOCALE_FIELD_NUMBER: _ClassVar[int]
    CONTENTS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    version: int
    default_locale: str
    contents: _containers.RepeatedCompositeFieldContainer[TemplateContent]
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., version: _Optional[int] = ..., default_locale: _Optional[str] = ..., contents: _Optional[_Iterable[_Union[TemplateContent, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateTemplateRequest(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: Template
    def __init__(self, template: _Optional[_Union[Template, _Mapping]] = ...) -> None: ...

class GetTemplateRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListTemplatesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTemplatesResponse(_message.Message):
    __slots__ = ("templates",)
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[Template]
    def __init__(self, templates: _Optional[_Iterable[_Union[Template, _Mapping]]] = ...) -> None: ...

class DeleteTemplateRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteTemplateResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PreviewTemplateRequest(_message.Message):
    __slots__ = ("name", "version", "channel", "locale", "data", "recipient")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    channel: Channel
    locale: str
    data: str
    recipient: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., channel: _Optional[_Union[Channel, str]] = ..., locale: _Optional[str] = ..., data: _Optional[str] = ..., recipient: _Optional[str] = ...) -> None: ...

class RenderedContent(_message.Message):
    __slots__ = ("channel", "locale", "version", "subject", "text", "html", "json_body")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    HTML_FIELD_NUMBER: _ClassVar[int]
    JSON_BODY_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    locale: str
    version: int
    subject: str
    text: str
    html: str
    json_body: str
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., locale: _Optional[str] = ..., version: _Optional[int] = ..., subject: _Optional[str] = ..., text: _Optional[str] = ..., html: _Optional[str] = ..., json_body: _Optional[str] = ...) -> None: ...

class Audience(_message.Message):
    __slots__ = ("name", "description", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateAudienceRequest(_message.Message):
    __slots__ = ("audience",)
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    audience: Audience
    def __init__(self, audience: _Optional[_Union[Audience, _Mapping]] = ...) -> None: ...

class GetAudienceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteAudienceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteAudienceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AudienceMembersRequest(_message.Message):
    __slots__ = ("audience", "recipients")
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    audience: str
    recipients: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, audience: _Optional[str] = ..., recipients: _Optional[_Iterable[str]] = ...) -> None: ...

class AudienceMembersResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAudienceMembersRequest(_message.Message):
    __slots__ = ("audience", "page_size", "page_token")
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    audience: str
    page_size: int
    page_token: str
    def __init__(self, audience: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAudienceMembersResponse(_message.Message):
    __slots__ = ("recipients", "next_page_token")
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    recipients: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    def __init__(self, recipients: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("platform", "token", "app_id", "last_seen")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    platform: str
    token: str
    app_id: str
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, platform: _Optional[str] = ..., token: _Optional[str] = ..., app_id: _Optional[str] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AddDeviceRequest(_message.Message):
    __slots__ = ("recipient", "device")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    device: Device
    def __init__(self, recipient: _Optional[str] = ..., device: _Optional[_Union[Device, _Mapping]] = ...) -> None: ...

class RemoveDeviceRequest(_message.Message):
    __slots__ = ("recipient", "platform", "token")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    platform: str
    token: str
    def __init__(self, recipient: _Optional[str] = ..., platform: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class RemoveDeviceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ("recipient",)
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    def __init__(self, recipient: _Optional[str] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class Provider(_message.Message):
    __slots__ = ("channel", "kind", "settings", "secret", "secret_set", "max_concurrency", "name", "priority", "previous_secret_expire_time", "previous_secret")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    SECRET_SET_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SECRET_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SECRET_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    kind: str
    settings: _containers.ScalarMap[str, str]
    secret: str
    secret_set: bool
    max_concurrency: int
    name: str
    priority: int
    previous_secret_expire_time: _timestamp_pb2.Timestamp
    previous_secret: str
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., kind: _Optional[str] = ..., settings: _Optional[_Mapping[str, str]] = ..., secret: _Optional[str] = ..., secret_set: _Optional[bool] = ..., max_concurrency: _Optional[int] = ..., name: _Optional[str] = ..., priority: _Optional[int] = ..., previous_secret_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_secret: _Optional[str] = ...) -> None: ...

class SetProviderRequest(_message.Message):
    __slots__ = ("provider", "keep_secret", "previous_secret_ttl")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KEEP_SECRET_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SECRET_TTL_FIELD_NUMBER: _ClassVar[int]
    provider: Provider
    keep_secret: bool
    previous_secret_ttl: _duration_pb2.Duration
    def __init__(self, provider: _Optional[_Union[Provider, _Mapping]] = ..., keep_secret: _Optional[bool] = ..., previous_secret_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetProviderRequest(_message.Message):
    __slots__ = ("channel", "name")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    name: str
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., name: _Optional[str] = ...) -> None: ...

class DeleteProviderRequest(_message.Message):
    __slots__ = ("channel", "name")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    name: str
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., name: _Optional[str] = ...) -> None: ...

class DeleteProviderResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProviderStatus(_message.Message):
    __slots__ = ("sender", "channel", "name", "priority", "state", "sends", "failures", "error_rate", "consecutive_failures", "retry_time", "last_error")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SENDS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    RETRY_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    sender: str
    channel: Channel
    name: str
    priority: int
    state: BreakerState
    sends: int
    failures: int
    error_rate: float
    consecutive_failures: int
    retry_time: _timestamp_pb2.Timestamp
    last_error: str
    def __init__(self, sender: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., name: _Optional[str] = ..., priority: _Optional[int] = ..., state: _Optional[_Union[BreakerState, str]] = ..., sends: _Optional[int] = ..., failures: _Optional[int] = ..., error_rate: _Optional[float] = ..., consecutive_failures: _Optional[int] = ..., retry_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ...) -> None: ...

class GetProviderStatusRequest(_message.Message):
    __slots__ = ("channel",)
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ...) -> None: ...

class GetProviderStatusResponse(_message.Message):
    __slots__ = ("providers", "unanswered_senders")
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    UNANSWERED_SENDERS_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedCompositeFieldContainer[ProviderStatus]
    unanswered_senders: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, providers: _Optional[_Iterable[_Union[ProviderStatus, _Mapping]]] = ..., unanswered_senders: _Optional[_Iterable[str]] = ...) -> None: ...

class ListProvidersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProvidersResponse(_message.Message):
    __slots__ = ("providers",)
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedCompositeFieldContainer[Provider]
    def __init__(self, providers: _Optional[_Iterable[_Union[Provider, _Mapping]]] = ...) -> None: ...

class NotifyRequest(_message.Message):
    __slots__ = ("template", "template_version", "data", "category", "recipients", "audience", "channels", "idempotency_key", "priority")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    template: str
    template_version: int
    data: str
    category: str
    recipients: _containers.RepeatedScalarFieldContainer[str]
    audience: str
    channels: _containers.RepeatedScalarFieldContainer[Channel]
    idempotency_key: str
    priority: Priority
    def __init__(self, template: _Optional[str] = ..., template_version: _Optional[int] = ..., data: _Optional[str] = ..., category: _Optional[str] = ..., recipients: _Optional[_Iterable[str]] = ..., audience: _Optional[str] = ..., channels: _Optional[_Iterable[_Union[Channel, str]]] = ..., idempotency_key: _Optional[str] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class NotifyResponse(_message.Message):
    __slots__ = ("notification_id",)
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    notification_id: str
    def __init__(self, notification_id: _Optional[str] = ...) -> None: ...

class SendEvent(_message.Message):
    __slots__ = ("state", "time", "reason", "provider", "provider_message_id", "attempt")
    STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    state: SendState
    time: _timestamp_pb2.Timestamp
    reason: str
    provider: str
    provider_message_id: str
    attempt: int
    def __init__(self, state: _Optional[_Union[SendState, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., provider: _Optional[str] = ..., provider_message_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class RecipientSend(_message.Message):
    __slots__ = ("recipient", "channel", "state", "reason", "provider", "provider_message_id", "timeline")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    channel: Channel
    state: SendState
    reason: str
    provider: str
    provider_message_id: str
    timeline: _containers.RepeatedCompositeFieldContainer[SendEvent]
    def __init__(self, recipient: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., state: _Optional[_Union[SendState, str]] = ..., reason: _Optional[str] = ..., provider: _Optional[str] = ..., provider_message_id: _Optional[str] = ..., timeline: _Optional[_Iterable[_Union[SendEvent, _Mapping]]] = ...) -> None: ...

class Notification(_message.Message):
    __slots__ = ("id", "template", "template_version", "category", "priority", "create_time", "recipient_count", "audience", "sends", "next_page_token", "trace_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    SENDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    template: str
    template_version: int
    category: str
    priority: Priority
    create_time: _timestamp_pb2.Timestamp
    recipient_count: int
    audience: str
    sends: _containers.RepeatedCompositeFieldContainer[RecipientSend]
    next_page_token: str
    trace_id: str
    def __init__(self, id: _Optional[str] = ..., template: _Optional[str] = ..., template_version: _Optional[int] = ..., category: _Optional[str] = ..., priority: _Optional[_Union[Priority, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recipient_count: _Optional[int] = ..., audience: _Optional[str] = ..., sends: _Optional[_Iterable[_Union[RecipientSend, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., trace_id: _Optional[str] = ...) -> None: ...

class GetNotificationRequest(_message.Message):
    __slots__ = ("id", "page_size", "page_token")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    id: str
    page_size: int
    page_token: str
    def __init__(self, id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListNotificationsRequest(_message.Message):
    __slots__ = ("recipient", "start_time", "end_time", "page_size", "page_token")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, recipient: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListNotificationsResponse(_message.Message):
    __slots__ = ("notifications", "next_page_token")
    NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    notifications: _containers.RepeatedCompositeFieldContainer[Notification]
    next_page_token: str
    def __init__(self, notifications: _Optional[_Iterable[_Union[Notification, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class InboxItem(_message.Message):
    __slots__ = ("notification_id", "title", "body", "data", "category", "create_time", "read", "acked")
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    notification_id: str
    title: str
    body: str
    data: str
    category: str
    create_time: _timestamp_pb2.Timestamp
    read: bool
    acked: bool
    def __init__(self, notification_id: _Optional[str] = ..., title: _Optional[str] = ..., body: _Optional[str] = ..., data: _Optional[str] = ..., category: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., read: _Optional[bool] = ..., acked: _Optional[bool] = ...) -> None: ...

class SubscribeInboxRequest(_message.Message):
    __slots__ = ("recipient", "max_outstanding")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    max_outstanding: int
    def __init__(self, recipient: _Optional[str] = ..., max_outstanding: _Optional[int] = ...) -> None: ...

class SubscribeInboxResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[InboxItem]
    def __init__(self, items: _Optional[_Iterable[_Union[InboxItem, _Mapping]]] = ...) -> None: ...

class AckInboxRequest(_message.Message):
    __slots__ = ("recipient", "notification_ids")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_IDS_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    notification_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, recipient: _Optional[str] = ..., notification_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AckInboxResponse(_message.Message):
    __slots__ = ("acked",)
    ACKED_FIELD_NUMBER: _ClassVar[int]
    acked: int
    def __init__(self, acked: _Optional[int] = ...) -> None: ...

class MarkReadRequest(_message.Message):
    __slots__ = ("recipient", "notification_ids")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATION_IDS_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    notification_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, recipient: _Optional[str] = ..., notification_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class MarkReadResponse(_message.Message):
    __slots__ = ("marked",)
    MARKED_FIELD_NUMBER: _ClassVar[int]
    marked: int
    def __init__(self, marked: _Optional[int] = ...) -> None: ...

class ListInboxRequest(_message.Message):
    __slots__ = ("recipient", "unread_only", "page_size", "page_token")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    UNREAD_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    unread_only: bool
    page_size: int
    page_token: str
    def __init__(self, recipient: _Optional[str] = ..., unread_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListInboxResponse(_message.Message):
    __slots__ = ("items", "next_page_token", "unread_count")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    UNREAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[InboxItem]
    next_page_token: str
    unread_count: int
    def __init__(self, items: _Optional[_Iterable[_Union[InboxItem, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., unread_count: _Optional[int] = ...) -> None: ...
