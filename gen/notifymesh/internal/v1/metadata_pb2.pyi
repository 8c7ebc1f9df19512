from gen.notifymesh.v1 import auth_pb2 as _auth_pb2
from gen.notifymesh.v1 import cluster_pb2 as _cluster_pb2
from gen.notifymesh.v1 import notify_pb2 as _notify_pb2
from gen.notifymesh.v1 import pubsub_pb2 as _pubsub_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
