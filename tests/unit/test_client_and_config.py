"""The Python client covers the public API; config sources merge in their documented order."""

import argparse
import json
import re

import pytest

from gen.notifymesh.v1 import cluster_pb2, notify_pb2, pubsub_pb2
from notifymesh import cli, errors
from notifymesh.client import Client
from notifymesh.server import config


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_client_has_a_method_for_every_public_rpc():
    rpcs = [m.name for d in (pubsub_pb2.DESCRIPTOR, cluster_pb2.DESCRIPTOR)
            for s in d.services_by_name.values() for m in s.methods]
    assert len(rpcs) == 28  # + Subscriber.RotatePushSecret, ClusterAdmin.RotateKeys (issue 17), DrainNode (18)
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


def test_a_live_config_follows_etcd_but_keeps_what_needs_a_restart():
    live = config.LiveConfig(env={"NOTIFYMESH_MAX_BATCH_MESSAGES": "30"}, etcd_values={"member_lease_ttl_s": 4})
    assert (live.max_batch_messages, live.member_lease_ttl_s) == (30, 4)
    live.update({"max_batch_messages": 2, "member_lease_ttl_s": 9, "storage_gc_interval_s": 0.5})
    assert (live.max_batch_messages, live.storage_gc_interval_s) == (2, 0.5)
    assert live.member_lease_ttl_s == 4, "read once at start: a change waits for a restart"
    live.update({})  # the key deleted: back to the file's and environment's values
    assert live.max_batch_messages == 30
    for bad in ({"nope": 1}, {"max_batch_messages": "many"}, [1], {"min_ack_deadline_s": 700}):
        live.update(bad)
        assert live.current == config.load(env={"NOTIFYMESH_MAX_BATCH_MESSAGES": "30"},
                                           etcd_values={"member_lease_ttl_s": 4}), bad


def test_a_setting_takes_a_positive_number_of_its_type():
    assert config.setting_value("max_batch_messages", "10") == 10
    assert config.setting_value("storage_gc_interval_s", "0.25") == 0.25
    for key, text, says in (("nope", "1", "unknown config key 'nope'"), ("max_batch_messages", "1.5", "an integer"),
                            ("storage_gc_interval_s", "soon", "a number"), ("max_batch_messages", "0", "above 0"),
                            ("storage_gc_interval_s", "inf", "above 0")):
        with pytest.raises(errors.InvalidArgument, match=says):
            config.setting_value(key, text)
    with pytest.raises(errors.InvalidArgument, match="ack deadlines out of order"):
        config.check(config.Config(min_ack_deadline_s=20))
    assert config.RESTART_REQUIRED < set(config.FIELDS)


def test_every_command_and_flag_of_the_cli_has_help():
    missing = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {choice.dest for choice in action._choices_actions if choice.help}
                for name, command in action.choices.items():
                    if name not in helped:
                        missing.append(f"{path} {name}")
                    walk(command, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(cli.parser(), "notifymesh")
    assert not missing


async def test_a_page_token_handed_back_unchanged_ends_a_listing_with_an_error():
    """A server that never moves on does not make the client loop forever."""
    client = Client("127.0.0.1:1")

    async def stuck(method, request):
        return pubsub_pb2.ListTopicsResponse(topics=[pubsub_pb2.Topic(name="t")], next_page_token="same")

    client._call = stuck
    pages = []
    with pytest.raises(errors.Internal, match="with itself"):
        async for page in client.topic_pages():
            pages.append(page)
    assert len(pages) == 2
    await client.close()


def test_client_has_a_method_for_every_notifications_rpc():
    rpcs = [m.name for s in notify_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods]
    assert len(rpcs) == 37  # 28, failover 2, devices 3, inbox 4
    assert [rpc for rpc in rpcs if not hasattr(Client, snake(rpc))] == []


def test_client_has_a_method_for_every_analytics_rpc():
    from gen.notifymesh.v1 import events_pb2
    rpcs = [m.name for s in events_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods]
    assert rpcs == ["GetStats"] and all(hasattr(Client, snake(rpc)) for rpc in rpcs)
