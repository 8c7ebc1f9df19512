"""gRPC channel options shared by the client and every service, and the client's
target: one frontend address, or several that its calls are spread over."""

import json
import socket
from typing import NamedTuple, Sequence

from notifymesh import errors

# Targets gRPC resolves itself (https://github.com/grpc/grpc/blob/master/doc/naming.md):
# passed through as given.
URI_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")

# Several frontends: a call that fails UNAVAILABLE (its frontend died under it, or
# every frontend looked down) is tried again, on the next frontend of the round
# robin, before the caller sees it. 5 attempts (gRPC's most), waiting up to 0.1,
# 0.2, 0.4, 0.8 s between them: up to 1.5 s, beyond the channel's reconnect backoff
# (1 s at most: grpc.max_reconnect_backoff_ms above), so a call made while one frontend
# just died and the other is back from a restart the channel has not yet noticed
# reaches the one that is back (tests/unit/test_client_addresses.py).
FAILOVER_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "notifymesh.v1.Publisher"}, {"service": "notifymesh.v1.Subscriber"},
             {"service": "notifymesh.v1.ClusterAdmin"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "0.8s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


class Target(NamedTuple):
    """What a client channel dials: target for grpc, with its extra options."""
    target: str
    addresses: tuple[str, ...]  # host:port of each frontend, as given
    options: tuple[tuple[str, object], ...]


def channel_options(max_message_bytes: int) -> list[tuple[str, object]]:
    """Options of every channel and server: size limits and keep-alives that notice
    a dead peer within seconds, not minutes."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    ]


def parse_addresses(addr: str | Sequence[str]) -> list[str]:
    """'host:port[,host:port...]' or a list of them -> each host:port (IPv6 as
    [::1]:port). Raises InvalidArgument for an empty list or an address without a port."""
    parts = addr.split(",") if isinstance(addr, str) else [a for item in addr for a in item.split(",")]
    addresses = [part.strip() for part in parts if part.strip()]
    if not addresses:
        raise errors.InvalidArgument("no frontend address given: expected host:port[,host:port...]")
    if len(addresses) == 1 and addresses[0].startswith(URI_SCHEMES):
        return addresses
    for address in addresses:
        _split(address)
    return addresses


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if address.startswith("[") and not host.endswith("]"):  # [::1] without a port
        sep = ""
    if not sep or not host or not port:
        raise errors.InvalidArgument(f"frontend address {address!r} has no port: expected host:port, "
                                     "e.g. 127.0.0.1:50051")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.InvalidArgument(f"frontend address {address!r}: port {port!r} is not a number from 1 to 65535")
    return host.strip("[]"), int(port)


def client_target(addr: str | Sequence[str]) -> Target:
    """One address: dialled as given (gRPC resolves it). Several: each host name
    resolved now to its addresses, all of them dialled with round_robin, so calls
    are spread over the frontends and go to the others while one is down."""
    addresses = tuple(parse_addresses(addr))
    if len(addresses) == 1:
        return Target(addresses[0], addresses, ())
    resolved = [_resolve(*_split(address)) for address in addresses]
    if all(v4 for v4, _ in resolved):
        target = "ipv4:" + ",".join(dict.fromkeys(a for v4, _ in resolved for a in v4))
    elif all(v6 for _, v6 in resolved):
        target = "ipv6:" + ",".join(dict.fromkeys(a for _, v6 in resolved for a in v6))
    else:
        raise errors.InvalidArgument(f"frontend addresses {','.join(addresses)}: some resolve only to IPv4 and "
                                     "others only to IPv6; give addresses of one family")
    return Target(target, addresses, (("grpc.lb_policy_name", "round_robin"),
                                      ("grpc.service_config", FAILOVER_SERVICE_CONFIG)))


def _resolve(host: str, port: int) -> tuple[list[str], list[str]]:
    """(IPv4 host:port list, IPv6 [host]:port list) of host."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise errors.InvalidArgument(f"frontend host {host!r} does not resolve: {e.strerror}") from None
    v4 = [f"{info[4][0]}:{port}" for info in infos if info[0] == socket.AF_INET]
    v6 = [f"[{info[4][0]}]:{port}" for info in infos if info[0] == socket.AF_INET6]
    return list(dict.fromkeys(v4)), list(dict.fromkeys(v6))
