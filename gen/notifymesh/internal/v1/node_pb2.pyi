from gen.notifymesh.v1 import cluster_pb2 as _cluster_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeRequest(_message.Message):
    __slots__ = ("topics", "subscriptions")
    TOPICS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    topics: _containers.RepeatedScalarFieldContainer[str]
    subscriptions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, topics: _Optional[_Iterable[str]] = ..., subscriptions: _Optional[_Iterable[str]] = ...) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("kind", "node_id", "members", "topic_owners", "subscription_owners", "shards")
    class TopicOwnersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SubscriptionOwnersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    TOPIC_OWNERS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_OWNERS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    node_id: str
    members: _containers.RepeatedCompositeFieldContainer[_cluster_pb2.ClusterMember]
    topic_owners: _containers.ScalarMap[str, str]
    subscription_owners: _containers.ScalarMap[str, str]
    shards: _containers.RepeatedCompositeFieldContainer[_cluster_pb2.ShardStatus]
    def __init__(self, kind: _Optional[str] = ..., node_id: _Optional[str] = ..., members: _Optional[_Iterable[_Union[_cluster_pb2.ClusterMember, _Mapping]]] = ..., topic_owners: _Optional[_Mapping[str, str]] = ..., subscription_owners: _Optional[_Mapping[str, str]] = ..., shards: _Optional[_Iterable[_Union[_cluster_pb2.ShardStatus, _Mapping]]] = ...) -> None: ...
