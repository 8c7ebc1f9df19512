"""fcm: Firebase Cloud Messaging's HTTP v1 API, for the push channel's fcm devices.

Auth: OAuth2 for a service account (RFC 7523): a JWT signed RS256 with the
account's private key (the provider's secret; iss: client_email, scope: the
messaging scope, aud: the token endpoint) is exchanged at token_url for an access
token, cached until 5 minutes before it expires (push_auth.CachedBearer).
Send: POST {base_url}/v1/projects/{project_id}/messages:send, the bearer token,
JSON {"message": {"token", "notification": {"title", "body"}, "data",
"android": {"collapse_key"}}} -> {"name": "projects/p/messages/ID"}.

Answers: 404 or errorCode UNREGISTERED: the token is dead (DeadAddressError);
429 or QUOTA_EXCEEDED: throttled (every send backs off, Retry-After honoured);
401: the access token is dropped and the send retried later; 5xx, timeouts,
refused connections: transient; any other: permanent.
Settings: project_id, client_email, token_url (default Google's), base_url
(default FCM's), timeout_seconds (default 10).
"""

import asyncio
import hashlib
import json
import time

import aiohttp

from gen.notifymesh.v1 import notify_pb2
from notifymesh.server import egress
from sender.providers.base import (DeadAddressError, OutgoingMessage, PermanentSendError, SendResult,
                                   TransientSendError, retry_after_s, setting)
from sender.providers.push_auth import Bearer, CachedBearer, Clock, Throttle, signed_jwt

TOKEN_URL = "https://oauth2.googleapis.com/token"
BASE_URL = "https://fcm.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
ASSERTION_LIFETIME_S = 3600  # the longest Google takes
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEAD = ("UNREGISTERED",)
THROTTLED = ("QUOTA_EXCEEDED",)


def collapse_key(idempotency_key: str) -> str:
    """The same task sent again replaces, not adds to, what the device shows."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def _error(body: bytes) -> tuple[str, str]:
    """(errorCode or status, message) of an FCM error answer."""
    try:
        error = json.loads(body)["error"]
        code = next((d.get("errorCode", "") for d in error.get("details", []) if isinstance(d, dict)
                     and d.get("errorCode")), "") or error.get("status", "")
        return code, str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", body.decode(errors="replace")[:200]


class FcmProvider:
    name = "fcm"
    platform = "fcm"

    def __init__(self, record: notify_pb2.Provider, allowed: egress.Allowed = lambda: (), clock: Clock = time.time):
        """allowed(): the non-public networks it may connect to (egress.py)."""
        s = record.settings
        self._project, self._email, self._key = setting(s, "project_id"), setting(s, "client_email"), record.secret
        self._token_url = setting(s, "token_url", TOKEN_URL)
        self._url = f"{setting(s, 'base_url', BASE_URL).rstrip('/')}/v1/projects/{self._project}/messages:send"
        self._clock = clock
        self._bearer = CachedBearer(self._access_token, clock)
        self._throttle = Throttle(self.name, clock)
        timeout = aiohttp.ClientTimeout(total=float(setting(s, "timeout_seconds", "10")))
        self._session = aiohttp.ClientSession(
            connector=egress.GuardedConnector(allowed, limit=record.max_concurrency or 32), timeout=timeout)

    def assertion(self) -> str:
        now = int(self._clock())
        return signed_jwt({"iss": self._email, "scope": SCOPE, "aud": self._token_url, "iat": now,
                           "exp": now + ASSERTION_LIFETIME_S}, self._key, "RS256")

    async def _access_token(self) -> Bearer:
        try:
            assertion = self.assertion()
        except (ValueError, TypeError) as e:  # a key that is not RSA
            raise PermanentSendError(f"fcm: the service account key does not sign: {e}") from None
        try:
            async with self._session.post(self._token_url, data={"grant_type": GRANT_TYPE,
                                                                 "assertion": assertion}) as response:
                body = await response.read()
                if response.status != 200:
                    reason = f"fcm token endpoint: HTTP {response.status}: {body[:200].decode(errors='replace')}"
                    if response.status >= 500 or response.status == 429:
                        raise TransientSendError(reason, retry_after_s(response.headers.get("Retry-After")))
                    raise PermanentSendError(reason)
                answer = json.loads(body)
                return Bearer(answer["access_token"], self._clock() + float(answer.get("expires_in", 3600)))
        except egress.ForbiddenAddress as e:
            raise PermanentSendError(f"fcm token endpoint refused: {e}") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise TransientSendError(f"fcm token endpoint: {type(e).__name__}: {e}".rstrip(": ")) from None
        except (ValueError, KeyError, TypeError):
            raise TransientSendError("fcm token endpoint: an answer without access_token") from None

    def body(self, msg: OutgoingMessage) -> dict:
        message = {"token": msg.to, "notification": {"title": msg.subject, "body": msg.text},
                   "android": {"collapse_key": collapse_key(msg.idempotency_key)}}
        if msg.json_body:
            message["data"] = json.loads(msg.json_body)
        return {"message": message}

    async def send(self, msg: OutgoingMessage) -> SendResult:
        if msg.platform != self.platform:
            raise PermanentSendError(f"a {msg.platform} device; the push provider sends to {self.platform} devices")
        self._throttle.check()
        token = await self._bearer.get()
        try:
            async with self._session.post(self._url, json=self.body(msg),
                                          headers={"Authorization": f"Bearer {token}"}) as response:
                status, body = response.status, await response.read()
                retry_after = response.headers.get("Retry-After")
        except egress.ForbiddenAddress as e:
            raise PermanentSendError(f"fcm refused: {e}") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise TransientSendError(f"fcm: {type(e).__name__}: {e}".rstrip(": ")) from None
        if status == 200:
            self._throttle.ok()
            try:
                return SendResult(self.name, json.loads(body)["name"].rsplit("/", 1)[-1])
            except (ValueError, KeyError, TypeError, AttributeError):
                raise PermanentSendError(f"fcm: sent, but the answer names no message: {body[:200]!r}") from None
        code, message = _error(body)
        reason = f"fcm HTTP {status} {code}: {message}".rstrip(": ")
        if status == 404 or code in DEAD:
            raise DeadAddressError(reason)
        if status == 429 or code in THROTTLED:
            raise self._throttle.throttled(retry_after_s(retry_after), reason)
        if status == 401:
            self._bearer.invalidate(token)
            raise TransientSendError(reason)
        if status >= 500:
            raise TransientSendError(reason, retry_after_s(retry_after))
        raise PermanentSendError(reason)

    async def close(self) -> None:
        await self._session.close()
