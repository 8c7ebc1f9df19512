"""Signed one-click unsubscribe tokens (RFC 8058), made by the sender for an
email's List-Unsubscribe link and checked by the frontend's HTTP server.

A token is base64url(recipient NUL category NUL channel [NUL notification id NUL
accepted ms] NUL issued seconds) "." base64url(HMAC-SHA256 of those bytes), so it
names what it unsubscribes from (and the notification whose link it was) and
cannot be altered or made without the key. The key is 32 random bytes in etcd
(SIGNING_KEY), created at first use by whichever process needs it first, in a
create-if-absent transaction so every frontend and sender uses the same one.
Tracking links (tracking.py) sign with keys derived from it (TokenSigner.derived),
and the inbox's Wake calls carry MACs keyed with another (derived_key).
"""

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
import urllib.parse
from typing import NamedTuple

from notifymesh.server import sealing

SIGNING_KEY = b"/notifymesh/unsubscribe-key"
KEY_BYTES = 32
# How long a link works: an email may be read long after it was sent.
MAX_AGE_S = 365 * 24 * 3600
_SEP = "\0"
_URL_SAFE = re.compile(r"[A-Za-z0-9_.-]*")  # a token's characters (base64url and "."): none is quoted in a URL


class InvalidToken(ValueError):
    """Not a token we made, altered, or too old (the message says which)."""


class Unsubscribe(NamedTuple):
    recipient: str
    category: str
    channel: str  # internal_topics.channel_name: "email"
    issued_s: int
    # The notification whose link it is (its SEND_UNSUBSCRIBED event); "" in a token
    # made without one.
    notification_id: str = ""
    accepted_ms: int = 0


_URLSAFE_ALPHABET = bytes.maketrans(b"+/", b"-_")


def _b64(raw: bytes) -> str:
    """base64url without padding (base64.urlsafe_b64encode's output, without its two
    Python-level wrappers: two a token)."""
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE_ALPHABET).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Signs fields (strings without NUL) with the time issued. Other kinds of token
    (notifymesh/server/tracking.py) sign with a key derived for their purpose, so a
    token of one kind never opens as another."""

    def __init__(self, key: bytes):
        self._key = key
        # The key's HMAC state, copied for each MAC: the key schedule (its inner and
        # outer pads hashed) once, not per token; 1.4 us a MAC against 1.9 here.
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def derived(self, purpose: str) -> "TokenSigner":
        return TokenSigner(hmac.new(self._key, purpose.encode(), hashlib.sha256).digest())

    def _mac(self, payload: bytes) -> bytes:
        keyed = self._keyed.copy()
        keyed.update(payload)
        return keyed.digest()

    def sign(self, fields: tuple[str, ...], now_s: float | None = None) -> str:
        issued = int(time.time() if now_s is None else now_s)
        payload = _SEP.join((*fields, str(issued))).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def open(self, token: str, counts: tuple[int, ...], now_s: float | None = None, max_age_s: float = MAX_AGE_S,
             what: str = "an unsubscribe token") -> tuple[list[str], int]:
        """(the fields sign() was given, the time issued); InvalidToken for anything
        sign() did not make with one of counts fields, or older than max_age_s."""
        try:
            payload_text, mac_text = token.split(".")
            payload, mac = _unb64(payload_text), _unb64(mac_text)
        except (ValueError, binascii.Error):
            raise InvalidToken(f"not {what}") from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidToken("the token's signature does not match: altered or not ours")
        try:
            *fields, issued_text = payload.decode().split(_SEP)
            issued = int(issued_text)
            if len(fields) not in counts:
                raise ValueError
        except (ValueError, UnicodeError):
            raise InvalidToken(f"not {what}") from None
        if (time.time() if now_s is None else now_s) - issued > max_age_s:
            raise InvalidToken("the link has expired")
        return fields, issued

    def issue(self, recipient: str, category: str, channel: str, now_s: float | None = None,
              notification_id: str = "", accepted_ms: int = 0) -> str:
        extra = (notification_id, str(accepted_ms)) if notification_id else ()
        return self.sign((recipient, category, channel, *extra), now_s)

    def verify(self, token: str, now_s: float | None = None, max_age_s: float = MAX_AGE_S) -> Unsubscribe:
        fields, issued = self.open(token, (3, 5), now_s, max_age_s)
        try:
            return Unsubscribe(*fields[:3], issued, *fields[3:4], *(int(ms) for ms in fields[4:]))
        except ValueError:
            raise InvalidToken("not an unsubscribe token") from None


async def _cluster_secret(etcd) -> bytes:
    """The cluster's signing key: read from etcd, or made there first (sealed by
    the master key there, notifymesh/server/sealing.py)."""
    txn = etcd.transactions
    sealed = sealing.seal(secrets.token_bytes(KEY_BYTES), SIGNING_KEY)
    await etcd.transaction(compare=[txn.version(SIGNING_KEY) == 0],
                           success=[txn.put(SIGNING_KEY, sealed)], failure=[])
    return sealing.open((await etcd.get(SIGNING_KEY)).value, SIGNING_KEY)  # ours, or one another process put first


async def signer(etcd) -> TokenSigner:
    """The cluster's signer."""
    return TokenSigner(await _cluster_secret(etcd))


async def derived_key(etcd, purpose: str) -> bytes:
    """A key of the cluster's for one purpose (e.g. the inbox's Wake calls), derived
    from its signing key: a MAC made with it opens nothing else."""
    return hmac.new(await _cluster_secret(etcd), purpose.encode(), hashlib.sha256).digest()


def unsubscribe_url(base_url: str, token: str) -> str:
    if _URL_SAFE.fullmatch(token):  # every token sign() makes: urlencode would keep it as it is (7.8 us a call)
        return f"{base_url.rstrip('/')}/unsubscribe?token={token}"
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
