"""How notifymesh signs what it POSTs (push subscriptions, the webhook channel), and
how a receiver checks it: both sides use this module (the client library's part).

    Notifymesh-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">

keyed with the push subscription's (or webhook provider's) secret. The time is
signed with the body, so a receiver that refuses a t older than a few minutes
refuses a replayed request. While a rotated push secret's overlap lasts the header
carries one v1 per live secret, the new one first (as Stripe's and Standard
Webhooks' signature headers do), so a receiver holding either secret verifies:

    Notifymesh-Signature: t=<unix seconds>,v1=<with the new secret>,v1=<with the previous one>

Deprecated, sent for one more version beside it, with the current secret only (a
receiver compares it whole, so a second value would fail it with either secret):

    X-Notifymesh-Signature: sha256=<hex HMAC-SHA256 of the body>
"""

import hashlib
import hmac
import time

HEADER = "Notifymesh-Signature"
LEGACY_HEADER = "X-Notifymesh-Signature"  # deprecated: no timestamp, so a replay passes
DEFAULT_TOLERANCE_S = 300.0


def _mac(secret: str, signed: bytes) -> str:
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, now_s: float | None = None, previous: str = "") -> str:
    """The Notifymesh-Signature value for body sent now; with previous (a rotated
    secret still in its overlap) a second v1, made with it."""
    t = int(time.time() if now_s is None else now_s)
    signed = b"%d." % t + body
    return f"t={t}," + ",".join(f"v1={_mac(key, signed)}" for key in (secret, previous) if key)


def legacy_signature(secret: str, body: bytes) -> str:
    """The deprecated X-Notifymesh-Signature value."""
    return "sha256=" + _mac(secret, body)


def headers(secret: str, body: bytes, now_s: float | None = None, previous: str = "") -> dict[str, str]:
    """Both signature headers of a request (the deprecated one with secret alone)."""
    return {HEADER: sign(secret, body, now_s, previous), LEGACY_HEADER: legacy_signature(secret, body)}


def verify(secret: str, header: str, body: bytes, tolerance_s: float = DEFAULT_TOLERANCE_S,
           now_s: float | None = None) -> bool:
    """A receiver's check: one of the header's v1 entries (two during a secret's
    rotation) signs its t and this body with secret, and t is within tolerance_s of
    now (either way: clocks differ a little). A header with no t or several is refused."""
    parts = [part.strip().split("=", 1) for part in header.split(",") if "=" in part]
    stamps = [value for key, value in parts if key == "t"]
    if len(stamps) != 1 or not (stamps[0].isascii() and stamps[0].isdigit()):
        return False
    t = int(stamps[0])
    now = time.time() if now_s is None else now_s
    if abs(now - t) > tolerance_s:
        return False
    expected = _mac(secret, b"%d." % t + body)
    return any(hmac.compare_digest(expected, value) for key, value in parts if key == "v1")
