"""How notifymesh signs what it POSTs (push subscriptions, the webhook channel), and
how a receiver checks it: both sides use this module (the client library's part).

    Notifymesh-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">

keyed with the push subscription's (or webhook provider's) secret. The time is
signed with the body, so a receiver that refuses a t older than a few minutes
refuses a replayed request. Deprecated, sent for one more version beside it:

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


def sign(secret: str, body: bytes, now_s: float | None = None) -> str:
    """The Notifymesh-Signature value for body sent now."""
    t = int(time.time() if now_s is None else now_s)
    return f"t={t},v1={_mac(secret, b'%d.' % t + body)}"


def legacy_signature(secret: str, body: bytes) -> str:
    """The deprecated X-Notifymesh-Signature value."""
    return "sha256=" + _mac(secret, body)


def headers(secret: str, body: bytes, now_s: float | None = None) -> dict[str, str]:
    """Both signature headers of a request."""
    return {HEADER: sign(secret, body, now_s), LEGACY_HEADER: legacy_signature(secret, body)}


def verify(secret: str, header: str, body: bytes, tolerance_s: float = DEFAULT_TOLERANCE_S,
           now_s: float | None = None) -> bool:
    """A receiver's check: the header's v1 signs its t and this body with secret, and t
    is within tolerance_s of now (either way: clocks differ a little)."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    now = time.time() if now_s is None else now_s
    return abs(now - t) <= tolerance_s and hmac.compare_digest(_mac(secret, b"%d." % t + body), parts.get("v1", ""))
