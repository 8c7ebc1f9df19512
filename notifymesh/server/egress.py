"""Where the mesh may connect on a user's behalf (push endpoints, webhook URLs,
the erasure hook, HTTP providers): public addresses only, unless the cluster
setting allowed_networks holds the address (server-side request forgery: a URL
naming 169.254.169.254, localhost or an internal service would otherwise make the
mesh call it from inside).

Checked twice: when the URL is given (check_url: INVALID_ARGUMENT with the reason)
and at each connection, on what the host resolves to then, connecting only to an
address just checked (pinned: GuardedConnector for aiohttp, GuardedBackend for httpx,
curl_socket_opener for libcurl), so a DNS answer that changes between the check and
the connection (rebinding) gains nothing."""

import asyncio
import ipaddress
import logging
import socket
import urllib.parse
from typing import Callable

import aiohttp
import httpcore
import httpx
import pycurl

from notifymesh import errors
from notifymesh.log import fields
from notifymesh.server.config import parse_networks

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Allowed = Callable[[], tuple[Network, ...]]  # the live setting, parsed
RESOLVE_TIMEOUT_S = 2.0  # a URL given whose name does not resolve in time is checked at send


class ForbiddenAddress(Exception):
    """The host resolves to no address the mesh may connect to."""


def networks_of(config) -> Allowed:
    """The live allowed_networks of a config (parsed once per value)."""
    parsed: dict[str, tuple[Network, ...]] = {}

    def allowed() -> tuple[Network, ...]:
        text = config.allowed_networks
        if text not in parsed:
            parsed.clear()  # one value at a time: bounded
            parsed[text] = parse_networks(text)
        return parsed[text]
    return allowed


def refusal(address: str, allowed: tuple[Network, ...]) -> str:
    """Why the mesh may not connect to address ("" when it may)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # no IPv6 zone
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in allowed if network.version == ip.version):
        return ""
    for kind in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return "" if ip.is_global else "not public"


def _explain(host: str, address: str, why: str) -> str:
    named = address if host == address else f"{host} ({address})"
    kind = "not a public" if why == "not public" else f"a {why}"
    return (f"{named} is {kind} address; the mesh connects only to public ones unless the cluster setting "
            "allowed_networks holds it (notifymesh config set allowed_networks ...)")


async def resolve(host: str, port: int) -> list[str]:
    """The addresses host resolves to now (an address literal: itself)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


async def check_url(what: str, url: str, allowed: tuple[Network, ...]) -> None:
    """INVALID_ARGUMENT when url's host is, or resolves to, an address the mesh may not
    connect to. A name that does not resolve now passes: it is checked at each send."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        port = urllib.parse.urlsplit(url).port or 443
        addresses = await asyncio.wait_for(resolve(host, port), RESOLVE_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError, UnicodeError):
        return
    for address in addresses:
        why = refusal(address, allowed)
        if why:
            raise errors.InvalidArgument(f"{what} {url[:200]!r}: {_explain(host, address, why)}")


async def pinned_address(host: str, port: int, allowed: tuple[Network, ...]) -> str:
    """An address of host to connect to now, checked; ForbiddenAddress when none may be."""
    addresses = await resolve(host, port)
    kept = [address for address in addresses if not refusal(address, allowed)]
    if not kept:
        reason = _explain(host, addresses[0], refusal(addresses[0], allowed)) if addresses else \
            f"{host} resolves to nothing"
        log.warning("connection refused: forbidden address", extra=fields(host=host[:200], addresses=addresses[:4]))
        raise ForbiddenAddress(reason)
    return kept[0]


class GuardedConnector(aiohttp.TCPConnector):
    """An aiohttp connector that connects only to allowed addresses: it filters every
    resolution (address literals too) and refuses a host left with none."""

    def __init__(self, allowed: Allowed, **kwargs):
        super().__init__(**kwargs)
        self._allowed = allowed

    async def _resolve_host(self, host, port, traces=None):
        resolved = await super()._resolve_host(host, port, traces=traces)
        kept = [r for r in resolved if not refusal(r["host"], self._allowed())]
        if not kept:
            first = resolved[0]["host"] if resolved else host
            log.warning("connection refused: forbidden address", extra=fields(host=host[:200], address=first))
            raise ForbiddenAddress(_explain(host, first, refusal(first, self._allowed()) or "not public"))
        return kept


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpx's network backend (under its connection pool) that connects only to a
    checked address of the host; TLS still names the host (SNI, certificate check)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend, allowed: Allowed):
        self._inner, self._allowed = inner, allowed

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            address = await asyncio.wait_for(pinned_address(host, port, self._allowed()), timeout or RESOLVE_TIMEOUT_S)
        except (OSError, TimeoutError) as e:  # does not resolve: a failed connection, as httpx says it
            raise httpcore.ConnectError(f"{host}: {e or 'no answer'}") from None
        return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise ForbiddenAddress("unix sockets are not reachable from outside")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_http_client(allowed: Allowed, limits: httpx.Limits | None = None, **client_options) -> httpx.AsyncClient:
    """An httpx client whose connections go only where allowed (no proxy from the
    environment); client_options: httpx.AsyncClient's."""
    transport = httpx.AsyncHTTPTransport(limits=limits or httpx.Limits())
    pool = transport._pool  # httpx takes no backend of its own: wrap the pool's
    pool._network_backend = GuardedBackend(pool._network_backend, allowed)
    return httpx.AsyncClient(transport=transport, **client_options)


def curl_socket_opener(allowed: Allowed, host: str, refused: list[str]):
    """libcurl's OPENSOCKETFUNCTION (pycurl): libcurl asks it for the socket of each
    connection, with the address it resolved and will connect that socket to, so
    the address checked is the one connected to. A refused address (its reason
    appended to refused) makes libcurl try the host's next one; with none left the
    request fails to connect, which the caller reports as ForbiddenAddress."""
    def open_socket(_purpose: int, address) -> socket.socket | int:
        ip = address.addr[0]
        why = refusal(ip, allowed())
        if why:
            log.warning("connection refused: forbidden address", extra=fields(host=host[:200], address=ip))
            refused.append(_explain(host, ip, why))
            return pycurl.SOCKET_BAD
        return socket.socket(address.family, address.socktype, address.protocol)
    return open_socket


async def guarded_socket(host: str, port: int, allowed: Allowed, timeout_s: float) -> socket.socket:
    """A TCP socket connected to a checked address of host (for clients that take a
    connected socket, as aiosmtplib does); ForbiddenAddress when none may be."""
    address = await asyncio.wait_for(pinned_address(host, port, allowed()), timeout_s)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (address, port)), timeout_s)
    except BaseException:
        sock.close()
        raise
    return sock
