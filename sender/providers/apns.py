"""apns: Apple Push Notification service over HTTP/2 (libcurl through
curl_client: one HTTP/2 connection multiplexes every send), for the push channel's
apns devices.

Auth: token based: a JWT signed ES256 with the .p8 key (the provider's secret),
header kid: key_id, claims iss: team_id and iat; made again every 50 minutes
(APNs refuses one older than an hour, and one made more often than every 20).
Send: POST {base_url}/3/device/{token}, headers authorization: bearer JWT,
apns-topic (the app's bundle id), apns-push-type: alert, apns-collapse-id;
body {"aps": {"alert": {"title", "body"}}, ...data} -> 200 with apns-id.

Answers: 410, or reason Unregistered or BadDeviceToken: the token is dead
(DeadAddressError); 429: throttled (every send backs off, Retry-After honoured);
403 ExpiredProviderToken: a new JWT, the send retried later; 5xx, timeouts,
refused connections: transient; any other: permanent.
Settings: key_id, team_id, topic, base_url (default Apple's), timeout_seconds.
"""

import hashlib
import json
import time

from gen.notifymesh.v1 import notify_pb2
from notifymesh.server import egress
from sender.providers.base import (DeadAddressError, OutgoingMessage, PermanentSendError, SendResult,
                                   TransientSendError, retry_after_s, setting)
from sender.providers.curl_client import CurlClient, CurlError
from sender.providers.push_auth import Bearer, CachedBearer, Clock, Throttle, signed_jwt

BASE_URL = "https://api.push.apple.com"
TOKEN_REFRESH_S = 50 * 60  # a JWT is used this long
DEAD = ("Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic")
EXPIRED = ("ExpiredProviderToken",)


class ApnsProvider:
    name = "apns"
    platform = "apns"

    def __init__(self, record: notify_pb2.Provider, allowed: egress.Allowed = lambda: (), clock: Clock = time.time):
        """allowed(): the non-public networks it may connect to (egress.py)."""
        s = record.settings
        self._key_id, self._team_id, self._key = setting(s, "key_id"), setting(s, "team_id"), record.secret
        self._topic = setting(s, "topic")
        self._clock = clock
        self._bearer = CachedBearer(self._jwt, clock, refresh_margin_s=0)
        self._throttle = Throttle(self.name, clock)
        self._client = CurlClient(allowed, setting(s, "base_url", BASE_URL),
                                  float(setting(s, "timeout_seconds", "10")))

    async def _jwt(self) -> Bearer:
        now = self._clock()
        try:
            token = signed_jwt({"iss": self._team_id, "iat": int(now)}, self._key, "ES256", self._key_id)
        except (ValueError, TypeError) as e:  # a key that is not EC P-256
            raise PermanentSendError(f"apns: the .p8 key does not sign: {e}") from None
        return Bearer(token, now + TOKEN_REFRESH_S)

    def body(self, msg: OutgoingMessage) -> bytes:
        """The data's members, then "aps" (replacing the data's own "aps")."""
        aps = {"alert": {"title": msg.subject, "body": msg.text}}
        data = msg.json_body
        if data.startswith('{"') and data.endswith('"}') and '"aps":' not in data:
            # The rendered data as push_data makes it (compact JSON, string values, no
            # "aps" key: one would show as `"aps":`): aps appended to its text gives the
            # bytes of loading it and dumping it again, without either (1 % of the sender).
            return f'{data[:-1]},"aps":{json.dumps(aps, separators=(",", ":"))}}}'.encode()
        payload = json.loads(data) if data else {}
        payload["aps"] = aps
        return json.dumps(payload, separators=(",", ":")).encode()

    async def send(self, msg: OutgoingMessage) -> SendResult:
        if msg.platform != self.platform:
            raise PermanentSendError(f"a {msg.platform} device; the push provider sends to {self.platform} devices")
        self._throttle.check()
        token = await self._bearer.get()
        headers = {"authorization": f"bearer {token}", "apns-topic": self._topic, "apns-push-type": "alert",
                   "apns-collapse-id": hashlib.sha256(msg.idempotency_key.encode()).hexdigest()[:64]}
        try:
            response = await self._client.post(f"/3/device/{msg.to}", self.body(msg), headers)
        except egress.ForbiddenAddress as e:
            raise PermanentSendError(f"apns refused: {e}") from None
        except CurlError as e:
            raise TransientSendError(f"apns: {e}") from None
        if response.status == 200:
            self._throttle.ok()
            return SendResult(self.name, response.headers.get("apns-id", ""))
        try:
            code = str(json.loads(response.content).get("reason", ""))
        except (ValueError, AttributeError):
            code = ""
        reason = f"apns HTTP {response.status} {code}".rstrip()
        status = response.status
        if status == 410 or code in DEAD:
            raise DeadAddressError(reason)
        if status == 429:
            raise self._throttle.throttled(retry_after_s(response.headers.get("retry-after")), reason)
        if code in EXPIRED:
            self._bearer.invalidate(token)
            raise TransientSendError(reason)
        if status >= 500:
            raise TransientSendError(reason, retry_after_s(response.headers.get("retry-after")))
        raise PermanentSendError(reason)

    async def close(self) -> None:
        await self._client.aclose()
