"""Cluster configuration: one frozen dataclass with documented defaults.

Precedence, lowest first: the defaults below, a JSON config file (--config),
NOTIFYMESH_<FIELD> environment variables, then the JSON object stored in etcd
at contracts.CONFIG, which every service of the mesh reads at start.
"""

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Config:
    # Largest payload (data) of one message.
    max_message_bytes: int = 1024 * 1024
    # Most messages in one Publish or Acknowledge call.
    max_batch_messages: int = 1000
    # Largest gRPC message any service accepts (a full publish batch fits).
    max_grpc_message_bytes: int = 64 * 1024 * 1024
    # Ack deadline of a subscription created without one; and its bounds.
    default_ack_deadline_s: float = 10.0
    min_ack_deadline_s: float = 1.0
    max_ack_deadline_s: float = 600.0
    # Retention of a topic created without one: unacked messages older than this are dropped.
    default_retention_s: float = 7 * 24 * 3600.0
    # Copies of every message of a topic created without a replication factor
    # (capped by the live storage nodes when the topic is created).
    default_replication_factor: int = 3
    # How long a repeated idempotency key is answered with the original message id.
    dedup_window_s: float = 24 * 3600.0
    # etcd lease of every member registration: a dead process drops out of the
    # rings this long after its last keep-alive.
    member_lease_ttl_s: int = 3
    # Sender: delivered-but-unacked messages across all subscriptions of one sender.
    sender_max_outstanding: int = 100_000
    # Push requests in flight from one sender over all its push subscriptions (each
    # subscription also has its own push_config.max_in_flight).
    sender_max_push_in_flight: int = 256
    # Default per-stream flow control when the subscriber does not ask for one.
    stream_max_outstanding: int = 1000
    # Storage: how often acknowledged and expired messages are deleted.
    storage_gc_interval_s: float = 1.0
    # How long GetMessageStatus can answer for a message after it was delivered
    # (its delivery log outlives the message itself).
    delivery_log_retention_s: float = 24 * 3600.0


def load(file: Path | None = None, env: Mapping[str, str] | None = None,
         etcd_values: Mapping[str, Any] | None = None) -> Config:
    """Merges the sources in precedence order; unknown keys are an error, not ignored."""
    env = os.environ if env is None else env
    fields = {f.name: f for f in dataclasses.fields(Config)}
    merged: dict[str, Any] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if file is not None:
        layers.append((str(file), json.loads(Path(file).read_text())))
    layers.append(("environment", {k[len("NOTIFYMESH_"):].lower(): v for k, v in env.items()
                                   if k.startswith("NOTIFYMESH_") and k[len("NOTIFYMESH_"):].lower() in fields}))
    layers.append(("etcd", etcd_values or {}))
    for source, values in layers:
        for key, value in values.items():
            if key not in fields:
                raise ValueError(f"unknown config key {key!r} in {source}")
            merged[key] = fields[key].type(value)  # int, float: strings from the environment too
    return Config(**merged)
