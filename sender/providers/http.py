"""The HTTP providers.

- sms_http, in the shape of the common SMS APIs: POST {base_url}/accounts/{account}/messages,
  form To, From, Body (and StatusCallback, the delivery receipt's URL), HTTP basic auth (account, secret), answer JSON {"id", "status"}.
  Settings: base_url, account, from, timeout_seconds (default 10). Over HTTP/1.1
  on libcurl (curl_client: max_concurrency kept-alive connections): a post cost
  52 µs of CPU against aiohttp's 114 (bench/http_client.py, medians, 32 in
  flight; docs/benchmarks.md 2026-12-02).
- webhook: POST the rendered JSON to the recipient's URL, signed as push
  subscriptions are (notifymesh/webhooks.py, with the provider's secret, and
  for a while after SetProvider changed it, with the replaced one too).
  Settings: timeout_seconds (default 10). On one aiohttp session (every
  recipient's URL a host of its own: aiohttp took 0.10 ms of CPU per send where
  httpx took 2.2 ms, at 32 in flight, bench/http_client.py).

Failures: a timeout, a connection error, 5xx and 429 (with its Retry-After) are
transient; any other status (a redirect too) and a URL that is not http(s) are
permanent, with the provider's error message.
"""

import asyncio
import json
import urllib.parse

import aiohttp

from gen.notifymesh.v1 import notify_pb2
from notifymesh import webhooks
from notifymesh.clock import now_ms
from notifymesh.server import egress
from sender.providers.base import (OutgoingMessage, PermanentSendError, SendResult, TransientSendError, retry_after_s,
                                   setting)
from sender.providers.curl_client import CurlClient, CurlError

DEFAULT_TIMEOUT_S = 10.0


def _timeout_s(record: notify_pb2.Provider) -> float:
    return float(setting(record.settings, "timeout_seconds", str(DEFAULT_TIMEOUT_S)))


def _session(record: notify_pb2.Provider, allowed: egress.Allowed) -> aiohttp.ClientSession:
    """Connections only to public addresses and allowed() networks, checked as each is made."""
    timeout = aiohttp.ClientTimeout(total=_timeout_s(record))
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
        self._path = f"/accounts/{setting(s, 'account')}/messages"
        self._from = setting(s, "from")
        self._headers = {"Authorization": aiohttp.encode_basic_auth(setting(s, "account"), record.secret),
                         "Content-Type": "application/x-www-form-urlencoded"}
        self._client = CurlClient(allowed, setting(s, "base_url"), _timeout_s(record), http2=False,
                                  max_connections=record.max_concurrency or 32)

    async def send(self, msg: OutgoingMessage) -> SendResult:
        form = {"To": msg.to, "From": self._from, "Body": msg.text}
        if msg.status_callback:  # the provider reports delivered / failed there (frontend/http.py)
            form["StatusCallback"] = msg.status_callback
        try:
            response = await self._client.post(self._path, urllib.parse.urlencode(form).encode(), self._headers)
        except egress.ForbiddenAddress as e:
            raise PermanentSendError(f"refused: {e}") from None
        except CurlError as e:
            raise TransientSendError(f"sms_http: {e}") from None
        if not 200 <= response.status < 300:
            raise refused(response.status, response.content, response.headers.get("retry-after"))
        try:
            message_id = json.loads(response.content)["id"]
        except (ValueError, KeyError, TypeError):
            # Accepted, perhaps sent: not retried (a retry could send it twice).
            raise PermanentSendError(f"accepted, but the answer names no message id: {response.content[:200]!r}") \
                from None
        return SendResult(self.name, str(message_id))

    async def close(self) -> None:
        await self._client.aclose()


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
