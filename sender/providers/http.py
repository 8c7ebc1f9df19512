"""The HTTP providers, on one aiohttp session each (bench/http_client.py: aiohttp
took 0.10 ms of CPU per send where httpx took 2.2 ms, at 32 in flight).

- sms_http, in the shape of the common SMS APIs: POST {base_url}/accounts/{account}/messages,
  form To, From, Body (and StatusCallback, the delivery receipt's URL), HTTP basic auth (account, secret), answer JSON {"id", "status"}.
  Settings: base_url, account, from, timeout_seconds (default 10).
- webhook: POST the rendered JSON to the recipient's URL, signed as push
  subscriptions are (notifymesh/webhooks.py, with the provider's secret, and
  for a while after SetProvider changed it, with the replaced one too).
  Settings: timeout_seconds (default 10).

Failures: a timeout, a connection error, 5xx and 429 (with its Retry-After) are
transient; any other status (a redirect too) and a URL that is not http(s) are
permanent, with the provider's error message.
"""

import asyncio
import json

import aiohttp

from gen.notifymesh.v1 import notify_pb2
from notifymesh import webhooks
from notifymesh.clock import now_ms
from notifymesh.server import egress
from sender.providers.base import (OutgoingMessage, PermanentSendError, SendResult, TransientSendError, retry_after_s,
                                   setting)

DEFAULT_TIMEOUT_S = 10.0


def _session(record: notify_pb2.Provider, allowed: egress.Allowed) -> aiohttp.ClientSession:
    """Connections only to public addresses and allowed() networks, checked as each is made."""
    timeout = aiohttp.ClientTimeout(total=float(setting(record.settings, "timeout_seconds", str(DEFAULT_TIMEOUT_S))))
    return aiohttp.ClientSession(connector=egress.GuardedConnector(allowed, limit=record.max_concurrency or 32),
                                 timeout=timeout)


def _error_message(body: bytes) -> str:
    """The provider's own words: a JSON answer's message or error, else the text."""
    try:
        answer = json.loads(body)
        if isinstance(answer, dict):
            for key in ("message", "error", "detail"):
                if isinstance(answer.get(key), str):
                    return answer[key]
    except ValueError:
        pass
    return body.decode(errors="replace").strip()[:200]


def refused(status: int, body: bytes, retry_after: str | None) -> TransientSendError | PermanentSendError:
    """The failure of a non-2xx answer."""
    reason = f"HTTP {status}: {_error_message(body)}".rstrip(": ")
    if status == 429 or status >= 500:
        return TransientSendError(reason, retry_after_s(retry_after))
    return PermanentSendError(reason)


async def _post(session: aiohttp.ClientSession, url: str, **kwargs) -> tuple[int, bytes]:
    """(status, body); raises TransientSendError on a timeout or connection error and
    the classified error on a non-2xx status."""
    try:
        async with session.post(url, allow_redirects=False, **kwargs) as response:
            body = await response.read()
            if not 200 <= response.status < 300:
                raise refused(response.status, body, response.headers.get("Retry-After"))
            return response.status, body
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as e:  # the same URL will not do next time
        raise PermanentSendError(f"not an http(s) URL: {e}") from None
    except egress.ForbiddenAddress as e:
        raise PermanentSendError(f"refused: {e}") from None
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise TransientSendError(f"{type(e).__name__}: {e}".rstrip(": ")) from None


class SmsHttpProvider:
    name = "sms_http"

    def __init__(self, record: notify_pb2.Provider, allowed: egress.Allowed):
        s = record.settings
        self._url = f"{setting(s, 'base_url').rstrip('/')}/accounts/{setting(s, 'account')}/messages"
        self._from = setting(s, "from")
        self._auth = {"Authorization": aiohttp.encode_basic_auth(setting(s, "account"), record.secret)}
        self._session = _session(record, allowed)

    async def send(self, msg: OutgoingMessage) -> SendResult:
        form = {"To": msg.to, "From": self._from, "Body": msg.text}
        if msg.status_callback:  # the provider reports delivered / failed there (frontend/http.py)
            form["StatusCallback"] = msg.status_callback
        _, body = await _post(self._session, self._url, headers=self._auth, data=form)
        try:
            message_id = json.loads(body)["id"]
        except (ValueError, KeyError, TypeError):
            # Accepted, perhaps sent: not retried (a retry could send it twice).
            raise PermanentSendError(f"accepted, but the answer names no message id: {body[:200]!r}") from None
        return SendResult(self.name, str(message_id))

    async def close(self) -> None:
        await self._session.close()


class WebhookProvider:
    name = "webhook"

    def __init__(self, record: notify_pb2.Provider, allowed: egress.Allowed):
        self._secret = record.secret
        # A replaced signing key signs beside the new one until it expires (SetProvider's previous_secret_ttl).
        self._previous = record.previous_secret
        self._previous_until_ms = record.previous_secret_expire_time.ToMilliseconds()
        self._session = _session(record, allowed)

    async def send(self, msg: OutgoingMessage) -> SendResult:
        body = msg.json_body.encode()
        previous = self._previous if now_ms() < self._previous_until_ms else ""
        headers = {"Content-Type": "application/json", **webhooks.headers(self._secret, body, previous=previous),
                   "X-Notifymesh-Notification-Id": msg.notification_id,
                   "X-Notifymesh-Idempotency-Key": msg.idempotency_key}
        await _post(self._session, msg.to, data=body, headers=headers)
        # A webhook answer carries no id of its own: ours, which the receiver also got.
        return SendResult(self.name, msg.idempotency_key)

    async def close(self) -> None:
        await self._session.close()
