"""The local push providers (deploy/local_providers.py runs them): an FCM fake on
the HTTP server (its OAuth2 token endpoint and the HTTP v1 send) and an APNs fake
serving HTTP/2 on a port of its own (jh2, cleartext with prior knowledge). Each
checks what the real one checks (the JWT's signature with the configured key's
public half, its claims, the bearer token, the request's headers and format),
answers errors in the real one's shape, and stores what it accepts in the outbox
("push"). A token marked dead is answered as unregistered (FCM 404 UNREGISTERED,
APNs 410 Unregistered); the "push" fault of /_faults answers the next requests
with a status in each provider's shape (429: throttled, with Retry-After).

jh2, not h2: the same state machine and header checks (a fork of h2), with HPACK
in compiled code. With h2 a request cost this process 0.38-0.41 ms of CPU, half
of it HPACK (Huffman-decoding the JWT, the device path and the collapse id that
libcurl sends unindexed); with jh2 0.16-0.22 (docs/benchmarks.md, 2026-12-01, issue 16).
"""

import asyncio
import json
import os
import re
import secrets
import time
import uuid
from typing import Protocol

import jh2.config
import jh2.connection
import jh2.events
import jh2.exceptions
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gen.notifymesh.v1 import notify_pb2

FCM_PROJECT = "notifymesh-local"
FCM_CLIENT_EMAIL = "notifymesh@notifymesh-local.iam.gserviceaccount.com"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ACCESS_TOKEN_S = 3600
APNS_KEY_ID, APNS_TEAM_ID, APNS_TOPIC = "LOCALKEY01", "LOCALTEAM1", "com.notifymesh.local"
APNS_TOKEN_MAX_AGE_S = 3600  # APNs refuses a JWT issued longer ago (ExpiredProviderToken)
APNS_PUSH_TYPES = ("alert", "background", "voip", "complication", "fileprovider", "mdm", "liveactivity")
APNS_TOKEN = re.compile(r"[0-9a-fA-F]{64,200}")
MAX_PAYLOAD_BYTES = 4096
MAX_DEAD_TOKENS = 10_000  # tokens marked dead, at most (the oldest forgotten)
MAX_TOKENS = 1_000  # access tokens issued and JWTs checked, remembered at most (the oldest forgotten)
FCM_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
FCM_CODE = {404: "UNREGISTERED", 429: "QUOTA_EXCEEDED", 500: "INTERNAL", 503: "UNAVAILABLE"}
APNS_REASON = {400: "BadDeviceToken", 403: "InvalidProviderToken", 410: "Unregistered", 413: "PayloadTooLarge",
               429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}


def new_rsa_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def new_ec_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _public(private_pem: str):
    return serialization.load_pem_private_key(private_pem.encode(), password=None).public_key()


def fcm_record(key: str, host: str, http_port: int) -> notify_pb2.Provider:
    return notify_pb2.Provider(channel=notify_pb2.PUSH, kind="fcm", name="fcm", secret=key, settings={
        "project_id": FCM_PROJECT, "client_email": FCM_CLIENT_EMAIL,
        "token_url": f"http://{host}:{http_port}/fcm/token", "base_url": f"http://{host}:{http_port}/fcm"})


def apns_record(key: str, host: str, apns_port: int) -> notify_pb2.Provider:
    return notify_pb2.Provider(channel=notify_pb2.PUSH, kind="apns", name="apns", secret=key, settings={
        "key_id": APNS_KEY_ID, "team_id": APNS_TEAM_ID, "topic": APNS_TOPIC, "base_url": f"http://{host}:{apns_port}"})


class Owner(Protocol):
    """deploy.local_providers.LocalProviders: its outbox and faults."""
    outbox: object

    def take_fault(self, channel: str): ...


def _remember(store: dict, key, value) -> None:
    store[key] = value
    if len(store) > MAX_TOKENS:
        del store[next(iter(store))]


class PushFakes:
    def __init__(self, owner: Owner, fcm_key: str, apns_key: str, host: str, apns_port: int):
        self._owner, self._host, self.apns_port = owner, host, apns_port
        self._fcm_public, self._apns_public = _public(fcm_key), _public(apns_key)
        self._token_url = ""
        self._dead: dict[str, None] = {}
        self._access: dict[str, float] = {}  # FCM access token -> expiry
        self._checked: dict[str, float] = {}  # APNs JWT -> its iat, once its signature was checked
        # APNs requests accepted and not yet in the outbox: those of one read from a
        # connection, stored together before their answers are written (store_accepted).
        # At most what one read holds: about 1,000 requests of a 256 KiB read.
        self._accepted: list[dict] = []
        self._server: asyncio.Server | None = None

    def dead(self, token: str) -> None:
        self._dead[token.lower()] = None
        if len(self._dead) > MAX_DEAD_TOKENS:
            del self._dead[next(iter(self._dead))]

    def _is_dead(self, token: str) -> bool:
        return token.lower() in self._dead

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/fcm/token", self._fcm_token)
        app.router.add_post("/fcm/v1/projects/{project}/messages:send", self._fcm_send)

    async def start(self, http_port: int) -> None:
        self._token_url = f"http://{self._host}:{http_port}/fcm/token"
        self._server = await asyncio.get_running_loop().create_server(lambda: _H2Server(self), self._host,
                                                                      self.apns_port)
        self.apns_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    # -- FCM ------------------------------------------------------------------------

    async def _fcm_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != FCM_GRANT:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            claims = jwt.decode(str(form.get("assertion", "")), self._fcm_public, algorithms=["RS256"],
                                audience=self._token_url, options={"require": ["iss", "aud", "iat", "exp"]})
        except jwt.InvalidTokenError as e:
            return web.json_response({"error": "invalid_grant", "error_description": str(e)}, status=400)
        if claims["iss"] != FCM_CLIENT_EMAIL or claims.get("scope") != FCM_SCOPE:
            return web.json_response({"error": "invalid_grant", "error_description": "wrong iss or scope"},
                                     status=400)
        token = "ya29.local-" + secrets.token_urlsafe(24)
        _remember(self._access, token, time.time() + ACCESS_TOKEN_S)
        return web.json_response({"access_token": token, "expires_in": ACCESS_TOKEN_S, "token_type": "Bearer"})

    async def _fcm_send(self, request: web.Request) -> web.Response:
        fault = self._owner.take_fault("push")
        if fault is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return _fcm_error(fault.status, "fault injected", headers)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or self._access.get(auth[7:], 0) < time.time():
            return _fcm_error(401, "Request had invalid authentication credentials.")
        if request.match_info["project"] != FCM_PROJECT:
            return _fcm_error(403, "SenderId mismatch")
        try:
            message = (await request.json())["message"]
            token = message["token"]
            notification, data = message.get("notification", {}), message.get("data", {})
            if not isinstance(token, str) or not token or not isinstance(notification, dict) or \
                    not all(isinstance(v, str) for v in notification.values()) or not isinstance(data, dict) or \
                    not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return _fcm_error(400, "Invalid JSON payload: want {\"message\": {\"token\", \"notification\", "
                                   "\"data\": {string: string}}}")
        if self._is_dead(token):
            return _fcm_error(404, "Requested entity was not found.")
        message_id = str(uuid.uuid4().int)[:19]
        self._owner.outbox.store("push", {
            "provider": "fcm", "to": token, "title": notification.get("title", ""),
            "body": notification.get("body", ""), "data": data,
            "collapse_key": message.get("android", {}).get("collapse_key", ""), "id": message_id})
        return web.json_response({"name": f"projects/{FCM_PROJECT}/messages/{message_id}"})

    # -- APNs -----------------------------------------------------------------------

    def _apns_auth(self, header: str) -> str | None:
        """None for a good token, else the reason APNs gives."""
        if not header.lower().startswith("bearer "):
            return "MissingProviderToken"
        token = header[7:]
        iat = self._checked.get(token)
        if iat is None:
            try:
                if jwt.get_unverified_header(token).get("kid") != APNS_KEY_ID:
                    return "InvalidProviderToken"
                claims = jwt.decode(token, self._apns_public, algorithms=["ES256"], options={"require": ["iss", "iat"]})
            except jwt.InvalidTokenError:
                return "InvalidProviderToken"
            if claims["iss"] != APNS_TEAM_ID:
                return "InvalidProviderToken"
            iat = float(claims["iat"])
            _remember(self._checked, token, iat)
        return "ExpiredProviderToken" if time.time() - iat > APNS_TOKEN_MAX_AGE_S else None

    def apns(self, headers: dict[str, str], body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, body) of one APNs request."""
        fault = self._owner.take_fault("push")
        if fault is not None:
            return _apns_error(fault.status, APNS_REASON.get(fault.status, "BadRequest"),
                               [("retry-after", fault.retry_after)] if fault.retry_after else [])
        path = headers.get(":path", "")
        if headers.get(":method") != "POST":
            return _apns_error(405, "MethodNotAllowed")
        if not path.startswith("/3/device/"):
            return _apns_error(404, "BadPath")
        token = path[len("/3/device/"):]
        refused = self._apns_auth(headers.get("authorization", ""))
        if refused:
            return _apns_error(403, refused)
        if not APNS_TOKEN.fullmatch(token):
            return _apns_error(400, "BadDeviceToken")
        if headers.get("apns-topic") != APNS_TOPIC:
            return _apns_error(400, "MissingTopic" if "apns-topic" not in headers else "TopicDisallowed")
        if headers.get("apns-push-type", "alert") not in APNS_PUSH_TYPES:
            return _apns_error(400, "InvalidPushType")
        if len(body) > MAX_PAYLOAD_BYTES:
            return _apns_error(413, "PayloadTooLarge")
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
                raise ValueError
        except ValueError:
            return _apns_error(400, "PayloadEmpty")
        if self._is_dead(token):
            return _apns_error(410, "Unregistered", body={"timestamp": int(time.time() * 1000)})
        apns_id = _apns_id()
        alert = payload["aps"].get("alert", {})
        alert = alert if isinstance(alert, dict) else {"body": str(alert)}
        self._accepted.append({
            "provider": "apns", "to": token, "topic": APNS_TOPIC, "title": alert.get("title", ""),
            "body": alert.get("body", ""), "data": {k: v for k, v in payload.items() if k != "aps"},
            "collapse_id": headers.get("apns-collapse-id", ""), "id": apns_id})
        return 200, [("apns-id", apns_id)], b""

    def store_accepted(self) -> None:
        """The accepted APNs requests' records in the outbox, in one write: called
        before their answers are sent, so a request answered is a request stored."""
        if self._accepted:
            accepted, self._accepted = self._accepted, []
            self._owner.outbox.store_many("push", accepted)


def _apns_id() -> str:
    """A random (version 4) UUID in upper case, as APNs's apns-id: what
    str(uuid.uuid4()).upper() gives, without making a UUID object."""
    n = int.from_bytes(os.urandom(16)) & ~(0xF000 << 64) & ~(0xC000 << 48) | (0x4000 << 64) | (0x8000 << 48)
    h = f"{n:032X}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _fcm_error(status: int, message: str, headers: dict | None = None) -> web.Response:
    error = {"code": status, "message": message, "status": FCM_STATUS.get(status, "INVALID_ARGUMENT")}
    if status in FCM_CODE:
        error["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                             "errorCode": FCM_CODE[status]}]
    return web.json_response({"error": error}, status=status, headers=headers)


def _apns_error(status: int, reason: str, headers: list | None = None, body: dict | None = None):
    return status, headers or [], json.dumps({"reason": reason, **(body or {})}).encode()


class _H2Server(asyncio.Protocol):
    """One HTTP/2 connection to the APNs fake: requests gathered per stream,
    answered when their stream ends."""

    def __init__(self, fakes: PushFakes):
        self._fakes = fakes
        # Headers as jh2 checked them, in bytes: decoded here in one comprehension, not
        # by jh2's generator remaking each header tuple (3-4 % of this process).
        self._conn = jh2.connection.H2Connection(jh2.config.H2Configuration(client_side=False,
                                                                          header_encoding=None))
        self._streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._conn.initiate_connection()
        transport.write(self._conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self._conn.receive_data(data)
        except jh2.exceptions.ProtocolError:
            self._transport.write(self._conn.data_to_send())
            self._transport.close()
            return
        for event in events:
            if isinstance(event, jh2.events.RequestReceived):
                self._streams[event.stream_id] = (
                    {name.decode("utf-8", "replace"): value.decode("utf-8", "replace") for name, value in event.headers},
                    bytearray())
            elif isinstance(event, jh2.events.DataReceived):
                if event.stream_id in self._streams:
                    self._streams[event.stream_id][1].extend(event.data)
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, jh2.events.StreamEnded):
                headers, body = self._streams.pop(event.stream_id, ({}, bytearray()))
                self._respond(event.stream_id, *self._fakes.apns(headers, bytes(body)))
            elif isinstance(event, jh2.events.StreamReset):
                self._streams.pop(event.stream_id, None)
            elif isinstance(event, jh2.events.ConnectionTerminated):
                self._transport.close()
        self._fakes.store_accepted()
        self._transport.write(self._conn.data_to_send())

    def _respond(self, stream_id: int, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._conn.send_headers(stream_id, [(":status", str(status)), *headers,
                                            ("content-length", str(len(body)))], end_stream=not body)
        if body:
            self._conn.send_data(stream_id, body, end_stream=True)
