"""The HTTP client of the providers that post to one base URL (APNs, the SMS
API): libcurl's multi interface (pycurl) driven by the asyncio loop. Over
HTTP/2 every request is a stream multiplexed on one connection per host; over
HTTP/1.1 a request takes one of up to max_connections kept-alive connections.

Why libcurl: APNs-shaped sends to the local fake at 32 in flight cost this
process 0.06-0.10 ms of CPU each here, against 1.4 ms through httpx (http2=True)
and 0.8 ms through niquests (bench/http_client.py --protocol http2,
docs/benchmarks.md 2026-12-01): libcurl and nghttp2 do the framing, HPACK and
flow control in C, where the others do them in Python. SMS-shaped form posts
over HTTP/1.1: 52 µs against aiohttp's 114 (bench/http_client.py, 2026-12-02).

What it keeps of the httpx and aiohttp clients it replaced:
- connections only to allowed addresses (egress.curl_socket_opener: libcurl asks
  for each connection's socket with the address it resolved, so the address
  checked is the one connected to; a refused address makes it try the host's
  next one, and none left is ForbiddenAddress);
- no proxy from the environment, http and https only, no redirects followed;
- TLS verified against certifi's roots (as httpx did), the host named (SNI);
- HTTP/2 only (http2=True): prior knowledge on http:// (the local fake), ALPN on
  https://; else HTTP/1.1 only;
- one timeout for a whole request, connecting included.
"""

import asyncio
import urllib.parse
from typing import NamedTuple

import certifi
import pycurl

from notifymesh.server import egress

# Streams one connection carries at once (libcurl's default: 100). APNs allows
# 1,000 per connection; the server's own SETTINGS lower it. Requests beyond it
# wait for a stream (one connection per host), within their timeout.
MAX_STREAMS = 1000
MAX_BODY_BYTES = 64 * 1024  # of an answer kept (APNs answers a JSON reason, under 1 KiB)


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # names in lower case; of a repeated header, the last
    content: bytes
    http_version: str  # "HTTP/2" or "HTTP/1.1"


# libcurl's failures a redrive rule or a person looks for, in the words the aiohttp
# client used for them (a rule matching "Cannot connect" goes on matching).
_FAILURES = {pycurl.E_COULDNT_CONNECT: "Cannot connect to host", pycurl.E_COULDNT_RESOLVE_HOST: "Cannot resolve host",
             pycurl.E_OPERATION_TIMEDOUT: "Timeout"}


class CurlError(Exception):
    """No answer: the connection failed, the request timed out, TLS refused the peer."""


class _Transfer:
    """One request under way: its easy handle, the answer so far and who waits."""

    def __init__(self, easy: pycurl.Curl, done: asyncio.Future):
        self.easy, self.done = easy, done
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.refused: list[str] = []  # why each address was refused (egress)

    def header(self, line: bytes) -> None:
        name, colon, value = line.decode("latin-1").partition(":")
        if colon:
            self.headers[name.strip().lower()] = value.strip()

    def write(self, data: bytes) -> None:
        self.body += data[:MAX_BODY_BYTES - len(self.body)]


class CurlClient:
    """POSTs to one base URL. Used on one event loop (its first request's)."""

    def __init__(self, allowed: egress.Allowed, base_url: str, timeout_s: float, http2: bool = True,
                 max_connections: int = 1):
        """max_connections: HTTP/1.1's (a request each at a time); HTTP/2 keeps one."""
        self._allowed, self._base_url = allowed, base_url.rstrip("/")
        self._host = urllib.parse.urlsplit(base_url).hostname or ""
        self._timeout_ms = max(1, int(timeout_s * 1000))
        self._http2 = http2
        self._max_connections = 1 if http2 else max(1, max_connections)
        if not http2:
            self._version = pycurl.CURL_HTTP_VERSION_1_1
        elif base_url.startswith("http://"):
            self._version = pycurl.CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE
        else:
            self._version = pycurl.CURL_HTTP_VERSION_2TLS
        self._multi: pycurl.CurlMulti | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The requests under way: at most the provider's max_concurrency (its sends
        # are bounded by PrioritySlots), keyed by their easy handle's id.
        self._transfers: dict[int, _Transfer] = {}
        self._fds: set[int] = set()  # sockets the loop watches for libcurl
        self._timer: asyncio.TimerHandle | None = None

    def _start(self) -> pycurl.CurlMulti:
        self._loop = asyncio.get_running_loop()
        multi = pycurl.CurlMulti()
        multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX if self._http2 else pycurl.PIPE_NOTHING)
        multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, self._max_connections)
        # Kept open between requests (by default 4 a request under way: a pool that
        # shrinks as requests end would close connections only to open them again).
        multi.setopt(pycurl.M_MAXCONNECTS, self._max_connections)
        multi.setopt(pycurl.M_MAX_CONCURRENT_STREAMS, MAX_STREAMS)
        multi.setopt(pycurl.M_SOCKETFUNCTION, self._watch)
        multi.setopt(pycurl.M_TIMERFUNCTION, self._set_timer)
        self._multi = multi
        return multi

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> Response:
        """The answer (any status); CurlError when there is none, ForbiddenAddress
        when the host has no address the mesh may connect to."""
        multi = self._multi or self._start()
        transfer = _Transfer(pycurl.Curl(), self._loop.create_future())
        easy = self._request(transfer, path, body, headers)
        self._transfers[id(easy)] = transfer
        multi.add_handle(easy)
        try:
            return await transfer.done
        finally:
            if self._transfers.pop(id(easy), None) is not None:  # cancelled: no longer wanted
                multi.remove_handle(easy)
            easy.close()

    def _request(self, transfer: _Transfer, path: str, body: bytes, headers: dict[str, str]) -> pycurl.Curl:
        easy = transfer.easy
        easy.setopt(pycurl.URL, self._base_url + path)
        easy.setopt(pycurl.HTTP_VERSION, self._version)
        if self._http2:
            easy.setopt(pycurl.PIPEWAIT, 1)  # wait for the connection under way to multiplex, not a second one
        easy.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        easy.setopt(pycurl.PROXY, "")  # none, whatever the environment says
        easy.setopt(pycurl.CAINFO, certifi.where())
        easy.setopt(pycurl.NOSIGNAL, 1)
        easy.setopt(pycurl.TIMEOUT_MS, self._timeout_ms)
        easy.setopt(pycurl.OPENSOCKETFUNCTION, egress.curl_socket_opener(self._allowed, self._host, transfer.refused))
        easy.setopt(pycurl.POSTFIELDS, body)
        # libcurl would add a form content type and "Accept: */*" (and over HTTP/1.1
        # "Expect: 100-continue" for a large body, a round trip more): none unless given
        given = {name.lower() for name in headers}
        easy.setopt(pycurl.HTTPHEADER, [f"{name}: {value}" for name, value in headers.items()]
                    + [f"{name}:" for name in ("Content-Type", "Accept", "Expect") if name.lower() not in given])
        easy.setopt(pycurl.HEADERFUNCTION, transfer.header)
        easy.setopt(pycurl.WRITEFUNCTION, transfer.write)
        return easy

    # -- libcurl's callbacks, and the loop's on its sockets ------------------------------

    def _watch(self, what: int, fd: int, _multi, _socket_data) -> None:
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        if what == pycurl.POLL_REMOVE:
            self._fds.discard(fd)
            return
        self._fds.add(fd)
        if what in (pycurl.POLL_IN, pycurl.POLL_INOUT):
            self._loop.add_reader(fd, self._act, fd, pycurl.CSELECT_IN)
        if what in (pycurl.POLL_OUT, pycurl.POLL_INOUT):
            self._loop.add_writer(fd, self._act, fd, pycurl.CSELECT_OUT)

    def _set_timer(self, ms: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if ms < 0 else self._loop.call_later(ms / 1000, self._act, pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, events: int) -> None:
        if self._multi is None:
            return
        self._multi.socket_action(fd, events)
        while True:
            queued, ended, failed = self._multi.info_read()
            for easy in ended:
                self._finish(easy, None)
            for easy, code, message in failed:
                self._finish(easy, (code, message))
            if not queued:
                return

    def _finish(self, easy: pycurl.Curl, failure: tuple[int, str] | None) -> None:
        transfer = self._transfers.pop(id(easy), None)
        self._multi.remove_handle(easy)
        if transfer is None or transfer.done.done():
            return
        if failure is None:
            version = "HTTP/2" if easy.getinfo(pycurl.INFO_HTTP_VERSION) == pycurl.CURL_HTTP_VERSION_2_0 else "HTTP/1.1"
            transfer.done.set_result(Response(easy.getinfo(pycurl.RESPONSE_CODE), transfer.headers,
                                              bytes(transfer.body), version))
        elif failure[0] == pycurl.E_COULDNT_CONNECT and transfer.refused:
            transfer.done.set_exception(egress.ForbiddenAddress(transfer.refused[0]))
        else:
            code, message = failure
            what = _FAILURES.get(code)
            message = message or f"libcurl error {code}"
            transfer.done.set_exception(CurlError(f"{what} {self._host}: {message}" if what else message))

    async def aclose(self) -> None:
        multi, self._multi = self._multi, None
        if multi is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        for fd in self._fds:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        self._fds.clear()
        for transfer in list(self._transfers.values()):
            multi.remove_handle(transfer.easy)
            if not transfer.done.done():
                transfer.done.set_exception(CurlError("the client was closed"))
        self._transfers.clear()
        multi.close()
