"""A small HTTP/2 client for the APNs adapter: requests multiplexed over one
connection (TLS with ALPN h2 for https, prior knowledge for http), made on first
use and made again after it closes, at most the server's MAX_CONCURRENT_STREAMS
requests at once, flow control honoured.

Why not httpx (http2=True), which the adapter first used: on the push bench
(bench/notify.py --mode push, docs/benchmarks.md) httpx's HTTP/2 took 2.1 ms of
the sender's CPU per send more than the same pipeline to FCM over aiohttp, which
bounded push at a few hundred sends/s on two cores; h2 itself, driven directly,
costs a fraction of that.
"""

import asyncio
import ssl
import urllib.parse
from typing import NamedTuple

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class H2Error(Exception):
    """The request may not have reached the server's application (the connection
    failed or closed, the stream was reset, no answer within the timeout)."""


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


class _Stream:
    __slots__ = ("answer", "status", "headers", "body")

    def __init__(self, answer: asyncio.Future):
        self.answer, self.status, self.headers, self.body = answer, 0, {}, bytearray()


class _Connection(asyncio.Protocol):
    def __init__(self):
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.streams: dict[int, _Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.usable = True
        # Requests waiting for a stream ended, a window or the settings changed, or the close.
        self._waiting: list[asyncio.Future] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._fail(H2Error(f"HTTP/2 protocol error: {e}"))
            self.transport.close()
            return
        wake = False
        for event in events:
            stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.ResponseReceived) and stream is not None:
                stream.headers = dict(event.headers)
                stream.status = int(stream.headers.get(":status", "0"))
            elif isinstance(event, h2.events.DataReceived):
                if stream is not None:
                    stream.body.extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and stream is not None:
                del self.streams[event.stream_id]
                if not stream.answer.done():
                    stream.answer.set_result(Response(stream.status, stream.headers, bytes(stream.body)))
                wake = True
            elif isinstance(event, h2.events.StreamReset) and stream is not None:
                del self.streams[event.stream_id]
                if not stream.answer.done():
                    stream.answer.set_exception(H2Error(f"stream reset by the server (error {event.error_code})"))
                wake = True
            elif isinstance(event, h2.events.ConnectionTerminated):  # GOAWAY: no new stream here
                self.usable = False
                self._fail(H2Error(f"the server closed the connection (GOAWAY {event.error_code})"),
                           above=event.last_stream_id or 0)
                wake = True
            elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                wake = True
        self.transport.write(self.conn.data_to_send())
        if wake:
            self._wake()

    def connection_lost(self, exc) -> None:
        self.usable = False
        self._fail(H2Error(f"connection lost: {exc}" if exc else "connection closed"))
        self._wake()

    def _fail(self, error: H2Error, above: int = 0) -> None:
        for stream_id in [s for s in self.streams if s > above]:
            answer = self.streams.pop(stream_id).answer
            if not answer.done():
                answer.set_exception(error)

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for future in waiting:
            if not future.done():
                future.set_result(None)

    async def _until(self, ready) -> None:
        while not ready():
            future = asyncio.get_running_loop().create_future()
            self._waiting.append(future)
            await future

    def _room(self) -> bool:
        return not self.usable or len(self.streams) < self.conn.remote_settings.max_concurrent_streams

    async def request(self, headers: list[tuple[str, str]], body: bytes, answer: asyncio.Future) -> Response:
        await self._until(self._room)
        if not self.usable:
            raise H2Error("the connection closed")
        stream_id = self.conn.get_next_available_stream_id()
        self.streams[stream_id] = _Stream(answer)
        self.conn.send_headers(stream_id, headers, end_stream=not body)
        sent = 0
        while sent < len(body):
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.transport.write(self.conn.data_to_send())
                await self._until(lambda: not self.usable or stream_id not in self.streams or
                                  self.conn.local_flow_control_window(stream_id) > 0)
                if not self.usable or stream_id not in self.streams:
                    break
                continue
            chunk = body[sent:sent + window]
            sent += len(chunk)
            self.conn.send_data(stream_id, chunk, end_stream=sent == len(body))
        self.transport.write(self.conn.data_to_send())
        return await answer

    def reset(self, answer: asyncio.Future) -> None:
        """Gives up the stream awaited by answer (its slot is free again)."""
        for stream_id, stream in list(self.streams.items()):
            if stream.answer is answer:
                del self.streams[stream_id]
                if self.usable:
                    self.conn.reset_stream(stream_id)
                    self.transport.write(self.conn.data_to_send())
                self._wake()


class H2Client:
    def __init__(self, base_url: str, timeout_s: float):
        url = urllib.parse.urlsplit(base_url)
        self._scheme, self._host = url.scheme, url.hostname or ""
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._authority = url.netloc
        self._timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()

    async def _connect(self) -> _Connection:
        async with self._connecting:
            if self._connection is not None and self._connection.usable:
                return self._connection
            context = None
            if self._scheme == "https":
                context = ssl.create_default_context()
                context.set_alpn_protocols(["h2"])
            try:
                _, connection = await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                    _Connection, self._host, self._port, ssl=context), self._timeout_s)
            except (OSError, asyncio.TimeoutError) as e:
                raise H2Error(f"cannot connect to {self._authority}: {type(e).__name__}: {e}") from None
            self._connection = connection
            return connection

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> Response:
        """Raises H2Error when no answer came (a connection failure, a reset, the timeout)."""
        connection = await self._connect()
        request = [(":method", "POST"), (":scheme", self._scheme), (":authority", self._authority), (":path", path),
                   *headers.items(), ("content-length", str(len(body)))]
        answer = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(connection.request(request, body, answer), self._timeout_s)
        except asyncio.TimeoutError:
            raise H2Error(f"no answer within {self._timeout_s:g}s") from None
        except h2.exceptions.H2Error as e:  # e.g. no stream id left on this connection
            connection.usable = False
            raise H2Error(f"HTTP/2: {type(e).__name__}: {e}") from None
        finally:
            if answer.cancelled() or not answer.done():  # timed out or cancelled: the stream is given up
                answer.cancel()
                connection.reset(answer)

    async def close(self) -> None:
        if self._connection is not None and self._connection.transport is not None:
            self._connection.usable = False
            self._connection.conn.close_connection()
            self._connection.transport.write(self._connection.conn.data_to_send())
            self._connection.transport.close()
