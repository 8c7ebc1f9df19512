"""The Python client covers the public API; config sources merge in their documented order."""

import json
import re

import pytest

from gen.notifymesh.v1 import cluster_pb2, pubsub_pb2
from notifymesh.client import Client
from notifymesh.server import config


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_client_has_a_method_for_every_public_rpc():
    rpcs = [m.name for d in (pubsub_pb2.DESCRIPTOR, cluster_pb2.DESCRIPTOR)
            for s in d.services_by_name.values() for m in s.methods]
    assert len(rpcs) == 23
    missing = [rpc for rpc in rpcs if not hasattr(Client, snake(rpc).replace("subscribe", "subscribe_frames"))
               and not hasattr(Client, snake(rpc))]
    assert not missing


def test_config_precedence(tmp_path):
    assert config.load(env={}) == config.Config()
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"max_message_bytes": 10, "max_batch_messages": 20, "member_lease_ttl_s": 7}))
    merged = config.load(file, env={"NOTIFYMESH_MAX_BATCH_MESSAGES": "30", "NOTIFYMESH_MEMBER_LEASE_TTL_S": "8"},
                         etcd_values={"member_lease_ttl_s": 9})
    assert (merged.max_message_bytes, merged.max_batch_messages, merged.member_lease_ttl_s) == (10, 30, 9)
    with pytest.raises(ValueError, match="unknown config key 'nope'"):
        config.load(env={}, etcd_values={"nope": 1})
