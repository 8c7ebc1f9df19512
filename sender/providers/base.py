"""What every channel provider shares: the message it sends, its result, the two
kinds of failure, and the interface the channel worker calls."""

import email.utils
import time
from typing import NamedTuple, Protocol

from notifymesh.server import validation


class OutgoingMessage(NamedTuple):
    """One rendered message to one address. `to`: an email address, an E.164 phone
    number or a webhook URL, by channel."""
    channel: int  # notify_pb2.Channel
    to: str
    subject: str = ""
    text: str = ""
    html: str = ""
    json_body: str = ""  # webhook: the rendered JSON text
    # email: extra headers (List-Unsubscribe, List-Unsubscribe-Post).
    headers: dict[str, str] = {}
    idempotency_key: str = ""
    notification_id: str = ""
    recipient: str = ""
    # sms: where the provider reports the message's delivery (StatusCallback).
    status_callback: str = ""
    platform: str = ""  # push: the device's, "apns" or "fcm" (`to` is its token)


class SendResult(NamedTuple):
    provider: str  # the provider's kind, e.g. "smtp"
    provider_message_id: str


class SendError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason[:validation.MAX_REASON_BYTES]


class TransientSendError(SendError):
    """Worth trying again (a timeout, a refused connection, 4xx SMTP, 5xx or 429 HTTP);
    retry_after_s: the provider said when (Retry-After), else None."""

    def __init__(self, reason: str, retry_after_s: float | None = None):
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class PermanentSendError(SendError):
    """Trying again would fail the same way (5xx SMTP, an HTTP 4xx other than 429)."""


class DeadAddressError(PermanentSendError):
    """The address will never work again (a push token the provider calls
    unregistered or bad): the sender removes it from the recipient."""


class ChannelProvider(Protocol):
    name: str  # the provider's kind, as SendResult.provider

    async def send(self, msg: OutgoingMessage) -> SendResult:
        """Raises TransientSendError or PermanentSendError, nothing else."""

    async def close(self) -> None: ...


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header's delay: seconds, or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def setting(settings, key: str, default: str = "") -> str:
    return settings.get(key, "") or default
