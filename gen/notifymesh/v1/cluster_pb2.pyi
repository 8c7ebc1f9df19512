import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterMember(_message.Message):
    __slots__ = ("kind", "node_id", "addr", "metrics_addr", "draining")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDR_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    kind: str
    node_id: str
    addr: str
    metrics_addr: str
    draining: bool
    def __init__(self, kind: _Optional[str] = ..., node_id: _Optional[str] = ..., addr: _Optional[str] = ..., metrics_addr: _Optional[str] = ..., draining: _Optional[bool] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("node_id", "role", "end", "lag")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: str
    end: int
    lag: int
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[str] = ..., end: _Optional[int] = ..., lag: _Optional[int] = ...) -> None: ...

class ShardStatus(_message.Message):
    __slots__ = ("topic", "partition", "replicas", "leader", "epoch", "commit", "replica_status", "backlogs")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    REPLICA_STATUS_FIELD_NUMBER: _ClassVar[int]
    BACKLOGS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition: int
    replicas: _containers.RepeatedScalarFieldContainer[str]
    leader: str
    epoch: int
    commit: int
    replica_status: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    backlogs: _containers.RepeatedCompositeFieldContainer[SubscriptionBacklog]
    def __init__(self, topic: _Optional[str] = ..., partition: _Optional[int] = ..., replicas: _Optional[_Iterable[str]] = ..., leader: _Optional[str] = ..., epoch: _Optional[int] = ..., commit: _Optional[int] = ..., replica_status: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ..., backlogs: _Optional[_Iterable[_Union[SubscriptionBacklog, _Mapping]]] = ...) -> None: ...

class SubscriptionBacklog(_message.Message):
    __slots__ = ("subscription", "backlog")
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    subscription: str
    backlog: int
    def __init__(self, subscription: _Optional[str] = ..., backlog: _Optional[int] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("members", "shards", "draining")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[ClusterMember]
    shards: _containers.RepeatedCompositeFieldContainer[ShardStatus]
    draining: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, members: _Optional[_Iterable[_Union[ClusterMember, _Mapping]]] = ..., shards: _Optional[_Iterable[_Union[ShardStatus, _Mapping]]] = ..., draining: _Optional[_Iterable[str]] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class ConfigSetting(_message.Message):
    __slots__ = ("key", "value", "default_value", "stored", "restart_required")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    RESTART_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    default_value: str
    stored: bool
    restart_required: bool
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., default_value: _Optional[str] = ..., stored: _Optional[bool] = ..., restart_required: _Optional[bool] = ...) -> None: ...

class ClusterConfig(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: _containers.RepeatedCompositeFieldContainer[ConfigSetting]
    def __init__(self, settings: _Optional[_Iterable[_Union[ConfigSetting, _Mapping]]] = ...) -> None: ...

class SetConfigRequest(_message.Message):
    __slots__ = ("key", "value", "reset")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    reset: bool
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., reset: _Optional[bool] = ...) -> None: ...

class RotateKeysRequest(_message.Message):
    __slots__ = ("master",)
    MASTER_FIELD_NUMBER: _ClassVar[int]
    master: bool
    def __init__(self, master: _Optional[bool] = ...) -> None: ...

class RotateKeysResponse(_message.Message):
    __slots__ = ("data_key", "active_time", "rewrapped", "master_key_id")
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    REWRAPPED_FIELD_NUMBER: _ClassVar[int]
    MASTER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    data_key: int
    active_time: _timestamp_pb2.Timestamp
    rewrapped: int
    master_key_id: str
    def __init__(self, data_key: _Optional[int] = ..., active_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rewrapped: _Optional[int] = ..., master_key_id: _Optional[str] = ...) -> None: ...

class DrainNodeRequest(_message.Message):
    __slots__ = ("node_id", "undrain")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    UNDRAIN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    undrain: bool
    def __init__(self, node_id: _Optional[str] = ..., undrain: _Optional[bool] = ...) -> None: ...

class NodeDrain(_message.Message):
    __slots__ = ("node_id", "draining", "replicas", "leading", "since")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    LEADING_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    draining: bool
    replicas: int
    leading: int
    since: _timestamp_pb2.Timestamp
    def __init__(self, node_id: _Optional[str] = ..., draining: _Optional[bool] = ..., replicas: _Optional[int] = ..., leading: _Optional[int] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
