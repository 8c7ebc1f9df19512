"""Signed one-click unsubscribe tokens (RFC 8058), made by the sender for an
email's List-Unsubscribe link and checked by the frontend's HTTP server.

A token is base64url(recipient NUL category NUL channel NUL issued seconds) "."
base64url(HMAC-SHA256 of those bytes), so it names what it unsubscribes from and
cannot be altered or made without the key. The key is 32 random bytes in etcd
(SIGNING_KEY), created at first use by whichever process needs it first, in a
create-if-absent transaction so every frontend and sender uses the same one.
"""

import base64
import binascii
import hashlib
import hmac
import secrets
import time
import urllib.parse
from typing import NamedTuple

SIGNING_KEY = b"/notifymesh/unsubscribe-key"
KEY_BYTES = 32
# How long a link works: an email may be read long after it was sent.
MAX_AGE_S = 365 * 24 * 3600
_SEP = "\0"


class InvalidToken(ValueError):
    """Not a token we made, altered, or too old (the message says which)."""


class Unsubscribe(NamedTuple):
    recipient: str
    category: str
    channel: str  # internal_topics.channel_name: "email"
    issued_s: int


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(self, key: bytes):
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def issue(self, recipient: str, category: str, channel: str, now_s: float | None = None) -> str:
        issued = int(time.time() if now_s is None else now_s)
        payload = _SEP.join((recipient, category, channel, str(issued))).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str, now_s: float | None = None, max_age_s: float = MAX_AGE_S) -> Unsubscribe:
        try:
            payload_text, mac_text = token.split(".")
            payload, mac = _unb64(payload_text), _unb64(mac_text)
        except (ValueError, binascii.Error):
            raise InvalidToken("not an unsubscribe token") from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidToken("the token's signature does not match: altered or not ours")
        try:
            recipient, category, channel, issued = payload.decode().split(_SEP)
            request = Unsubscribe(recipient, category, channel, int(issued))
        except (ValueError, UnicodeError):
            raise InvalidToken("not an unsubscribe token") from None
        if (time.time() if now_s is None else now_s) - request.issued_s > max_age_s:
            raise InvalidToken("the unsubscribe link has expired")
        return request


async def signer(etcd) -> TokenSigner:
    """The cluster's signer: its key read from etcd, or made there first."""
    txn = etcd.transactions
    await etcd.transaction(compare=[txn.version(SIGNING_KEY) == 0],
                           success=[txn.put(SIGNING_KEY, secrets.token_bytes(KEY_BYTES))], failure=[])
    kv = await etcd.get(SIGNING_KEY)  # ours, or the one another process put first
    return TokenSigner(kv.value)


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/unsubscribe?{urllib.parse.urlencode({'token': token})}"


def public_base_url(configured: str, frontend_addrs: list[str], http_port_offset: int) -> str:
    """config.public_base_url, else the first frontend's HTTP server (its gRPC address
    with the port moved by config.frontend_http_port_offset), e.g. from
    sorted(cluster.live("frontend").values())."""
    if configured:
        return configured
    if not frontend_addrs:
        return ""
    host, _, port = frontend_addrs[0].rpartition(":")
    return f"http://{host}:{int(port) + http_port_offset}"
