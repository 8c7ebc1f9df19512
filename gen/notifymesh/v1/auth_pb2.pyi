import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Grants(_message.Message):
    __slots__ = ("role", "topics", "subscriptions", "categories", "personal_data")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    PERSONAL_DATA_FIELD_NUMBER: _ClassVar[int]
    role: str
    topics: _containers.RepeatedScalarFieldContainer[str]
    subscriptions: _containers.RepeatedScalarFieldContainer[str]
    categories: _containers.RepeatedScalarFieldContainer[str]
    personal_data: bool
    def __init__(self, role: _Optional[str] = ..., topics: _Optional[_Iterable[str]] = ..., subscriptions: _Optional[_Iterable[str]] = ..., categories: _Optional[_Iterable[str]] = ..., personal_data: _Optional[bool] = ...) -> None: ...

class RateLimits(_message.Message):
    __slots__ = ("publish_messages_per_s", "publish_bytes_per_s", "admin_calls_per_s", "max_streams")
    PUBLISH_MESSAGES_PER_S_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    ADMIN_CALLS_PER_S_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    publish_messages_per_s: float
    publish_bytes_per_s: float
    admin_calls_per_s: float
    max_streams: int
    def __init__(self, publish_messages_per_s: _Optional[float] = ..., publish_bytes_per_s: _Optional[float] = ..., admin_calls_per_s: _Optional[float] = ..., max_streams: _Optional[int] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("key_id", "name", "grants", "create_time", "expire_time", "revoke_time", "limits")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    name: str
    grants: Grants
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    limits: RateLimits
    def __init__(self, key_id: _Optional[str] = ..., name: _Optional[str] = ..., grants: _Optional[_Union[Grants, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limits: _Optional[_Union[RateLimits, _Mapping]] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("name", "grants", "ttl")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    name: str
    grants: Grants
    ttl: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., grants: _Optional[_Union[Grants, _Mapping]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("key", "secret_key")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_KEY_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    secret_key: str
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ..., secret_key: _Optional[str] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class SetApiKeyLimitsRequest(_message.Message):
    __slots__ = ("key_id", "limits")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    limits: RateLimits
    def __init__(self, key_id: _Optional[str] = ..., limits: _Optional[_Union[RateLimits, _Mapping]] = ...) -> None: ...

class CertificatePrincipal(_message.Message):
    __slots__ = ("common_name", "grants")
    COMMON_NAME_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    common_name: str
    grants: Grants
    def __init__(self, common_name: _Optional[str] = ..., grants: _Optional[_Union[Grants, _Mapping]] = ...) -> None: ...

class MapCertificateRequest(_message.Message):
    __slots__ = ("principal", "remove")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    principal: CertificatePrincipal
    remove: bool
    def __init__(self, principal: _Optional[_Union[CertificatePrincipal, _Mapping]] = ..., remove: _Optional[bool] = ...) -> None: ...

class CreateRecipientTokenRequest(_message.Message):
    __slots__ = ("recipient", "ttl")
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    recipient: str
    ttl: _duration_pb2.Duration
    def __init__(self, recipient: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RecipientToken(_message.Message):
    __slots__ = ("token", "expire_time")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    token: str
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, token: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
