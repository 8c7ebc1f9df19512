"""Cluster configuration: one frozen dataclass with documented defaults.

Precedence, lowest first: the defaults below, a JSON config file (--config),
NOTIFYMESH_<FIELD> environment variables, then the JSON object stored in etcd
at contracts.CONFIG, which every service of the mesh reads at start and then
follows (LiveConfig): `notifymesh config set KEY VALUE` writes it through the
metadata service, which checks keys and values (setting_value, check).
"""

import dataclasses
import ipaddress
import json
import logging
import math
import os
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

from notifymesh.errors import InvalidArgument
from notifymesh.log import fields as log_fields

log = logging.getLogger(__name__)


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
    # Frontend: its HTTP server (one-click unsubscribe, frontend/http.py) listens at its
    # gRPC port plus this (deploy/local.py's port plan: P+25 for the first frontend).
    frontend_http_port_offset: int = 25
    # Frontend: its mutual-TLS gRPC port (internal RPCs, client certificates) at its
    # gRPC port plus this (deploy/local.py: P+5+i, free while there are at most 5 frontends).
    frontend_mtls_port_offset: int = 5
    # The frontends' HTTP base URL as recipients reach it, for the unsubscribe links of
    # emails; empty: http://<a frontend's host>:<its HTTP port>.
    public_base_url: str = ""
    # Where a recipient's erasure is announced (frontend/erasure_hook.py): a POST of
    # {"recipient", "addresses"} after DeleteRecipient erased it; empty: nowhere.
    erasure_hook_url: str = ""
    # How long the notification log (a notification, its events, a recipient's index
    # of it) is kept after the notification was accepted.
    notification_log_retention_s: float = 30 * 24 * 3600.0
    # The per-recipient rate limit of a category without one of its own (and no
    # recipient override): at most notify_default_rate_limit notifications per
    # notify_default_rate_period_s; 0 (the default): no limit.
    notify_default_rate_limit: int = 0
    notify_default_rate_period_s: float = 0.0
    # Sender: a provider's circuit breaker opens after this many transient failures in
    # a row, and half-opens (one trial send) this long after (sender/breaker.py).
    provider_breaker_failures: int = 5
    provider_breaker_cooldown_s: float = 30.0
    # Email tracking (notifymesh/server/tracking.py): 1, links go through the frontends'
    # click redirect and an open pixel is added; 0: emails go out as rendered.
    email_tracking: int = 1
    # Frontend: 1, every public call needs credentials (frontend/auth.py); 0 only to
    # measure what auth costs (docs/benchmarks.md): every caller is then an admin.
    auth_enabled: int = 1
    # Per API key, cluster-wide (each frontend enforces its share; frontend/limits.py),
    # unless the key has its own (`notifymesh auth key limits`).
    auth_publish_messages_per_s: float = 100_000.0
    auth_publish_bytes_per_s: float = 256 * 1024 * 1024.0
    auth_admin_calls_per_s: float = 1000.0
    auth_max_streams: int = 50_000
    # Networks (CIDR, comma-separated) the mesh may connect to on a user's behalf
    # besides public addresses: push endpoints, webhook URLs, the erasure hook, HTTP
    # providers (notifymesh/server/egress.py). "": public addresses only. The local
    # mesh (deploy/local.py) allows loopback.
    allowed_networks: str = ""
    # Encryption at rest (notifymesh/server/sealing.py): 1, storage nodes seal what
    # clients sent and etcd keeps secrets sealed; 0 (for measuring its cost): new
    # values are written in the clear (sealed ones still open).
    encrypt_at_rest: int = 1


# Read once when a process starts (its gRPC server's size limits and channels, its
# member lease, the sender's fixed budgets): a change reaches a service at its next
# start. Every other setting is read where it is used, so it follows etcd at run time.
RESTART_REQUIRED = frozenset({"max_grpc_message_bytes", "member_lease_ttl_s", "sender_max_outstanding",
                              "sender_max_push_in_flight", "frontend_http_port_offset", "encrypt_at_rest",
                              "frontend_mtls_port_offset"})

FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# Settings whose 0 means "off" (every other one is a positive number).
ZERO_ALLOWED = frozenset({"notify_default_rate_limit", "notify_default_rate_period_s", "email_tracking",
                          "auth_enabled", "encrypt_at_rest"})
MAX_ALLOWED_NETWORKS = 64
LOOPBACK_NETWORKS = "127.0.0.0/8,::1/128"  # allowed_networks of the local mesh (deploy/local.py)
MAX_RATE_LIMIT, MAX_RATE_PERIOD_S = 1_000_000, 30 * 24 * 3600.0  # as a category's (metadata/notify_store.py)
Layer = tuple[str, Mapping[str, Any]]  # (source, values)


def load(file: Path | None = None, env: Mapping[str, str] | None = None,
         etcd_values: Mapping[str, Any] | None = None) -> Config:
    """Merges the sources in precedence order; unknown keys are an error, not ignored."""
    return _merge([*_local_layers(file, env), ("etcd", etcd_values or {})])


def _local_layers(file: Path | None, env: Mapping[str, str] | None) -> list[Layer]:
    """The file's and the environment's values: a process's own, below etcd's."""
    env = os.environ if env is None else env
    layers: list[Layer] = []
    if file is not None:
        layers.append((str(file), json.loads(Path(file).read_text())))
    layers.append(("environment", {k[len("NOTIFYMESH_"):].lower(): v for k, v in env.items()
                                   if k.startswith("NOTIFYMESH_") and k[len("NOTIFYMESH_"):].lower() in FIELDS}))
    return layers


def _merge(layers: list[Layer]) -> Config:
    merged: dict[str, Any] = {}
    for source, values in layers:
        for key, value in values.items():
            if key not in FIELDS:
                raise ValueError(f"unknown config key {key!r} in {source}")
            merged[key] = FIELDS[key].type(value)  # int, float: strings from the environment too
    return Config(**merged)


def setting_value(key: str, text: str) -> int | float:
    """A value for key from its text (as `config set` gives it): a positive number of
    the setting's type. Raises InvalidArgument naming what is allowed."""
    if key not in FIELDS:
        raise InvalidArgument(f"unknown config key {key!r}; the keys: {', '.join(FIELDS)}")
    kind = FIELDS[key].type
    if key == "allowed_networks":
        return ",".join(map(str, parse_networks(text)))
    if kind is str:
        return _url(key, text)
    try:
        value = kind(text)
    except ValueError:
        raise InvalidArgument(f"{key}: {text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if key in ZERO_ALLOWED and value == 0:
        return value
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"{key}: {text!r} out of range: a number above 0")
    return value


def parse_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """allowed_networks: networks in CIDR notation separated by commas ("": none)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if len(parts) > MAX_ALLOWED_NETWORKS:
        raise InvalidArgument(f"allowed_networks: {len(parts)} networks; at most {MAX_ALLOWED_NETWORKS}")
    try:
        return tuple(ipaddress.ip_network(part, strict=False) for part in parts)
    except ValueError as e:
        raise InvalidArgument(f"allowed_networks: {e}; want networks like 10.0.0.0/8,::1/128") from None


def _url(key: str, text: str) -> str:
    """An http(s) base URL, or "" for the default."""
    parsed = urllib.parse.urlsplit(text)
    if text and (parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query or parsed.fragment):
        raise InvalidArgument(f"{key}: {text!r} is not an http(s) base URL like https://notify.example.com")
    return text.rstrip("/")


def check(config: Config) -> None:
    """What no single value shows: the ack deadline bounds in order (and allowed_networks
    parses, when it came from a file or the environment)."""
    parse_networks(config.allowed_networks)
    if not config.min_ack_deadline_s <= config.default_ack_deadline_s <= config.max_ack_deadline_s:
        raise InvalidArgument(
            f"ack deadlines out of order: min_ack_deadline_s {config.min_ack_deadline_s:g} <= default_ack_deadline_s "
            f"{config.default_ack_deadline_s:g} <= max_ack_deadline_s {config.max_ack_deadline_s:g} must hold")
    limit, period = config.notify_default_rate_limit, config.notify_default_rate_period_s
    if limit and not (limit <= MAX_RATE_LIMIT and 1 <= period <= MAX_RATE_PERIOD_S):
        raise InvalidArgument(
            f"default rate limit {limit} per {period:g}s: a limit up to {MAX_RATE_LIMIT:,} needs "
            f"notify_default_rate_period_s from 1 to {MAX_RATE_PERIOD_S:,.0f} (30 days; set the period first)")


class LiveConfig:
    """The config of a running service, read like a Config (live.max_message_bytes):
    update() takes in a new etcd object, the settings in RESTART_REQUIRED keep the
    value they had at start. A value that does not load leaves the config as it was."""

    def __init__(self, file: Path | None = None, env: Mapping[str, str] | None = None,
                 etcd_values: Mapping[str, Any] | None = None):
        self._local = _local_layers(file, env)
        self._started = _merge([*self._local, ("etcd", etcd_values or {})])
        self._take(self._started)

    def _take(self, config: Config) -> None:
        # Each setting an attribute of this object: read per message on the publish path,
        # where a __getattr__ cost 300 ns a read, a plain attribute 15 ns.
        self.current = config
        self.__dict__.update({key: getattr(config, key) for key in FIELDS})

    def update(self, etcd_values: Mapping[str, Any] | None) -> None:
        try:
            if not isinstance(etcd_values, Mapping):
                raise ValueError(f"not a JSON object: {etcd_values!r}")
            config = _merge([*self._local, ("etcd", etcd_values)])
            check(config)
        except (ValueError, TypeError, InvalidArgument) as e:
            log.warning("cluster config in etcd not taken in; keeping the current one",
                        extra=log_fields(error=str(e)))
            return
        config = dataclasses.replace(config, **{key: getattr(self._started, key) for key in RESTART_REQUIRED})
        if config != self.current:
            log.info("cluster config changed", extra=log_fields(changed={
                key: getattr(config, key) for key in FIELDS if getattr(config, key) != getattr(self.current, key)}))
            self._take(config)
