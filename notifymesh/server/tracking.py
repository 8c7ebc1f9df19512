"""Tracking of what recipients do with a sent notification, through the
frontends' HTTP server (frontend/http.py): signed, expiring links made by the
sender and checked by the frontend.

  GET  /t/o/<token>   an email's tracking pixel: records SEND_OPENED (the first
                      open of the send only), answers a 1x1 GIF
  GET  /t/c/<token>   a rewritten link of an email: records SEND_CLICKED (the first
                      click of the send only), redirects (302) to the URL the
                      token signs, and nowhere else
  POST /t/s/<token>   an SMS provider's status callback (form MessageSid,
                      MessageStatus): "delivered" records SEND_DELIVERED,
                      "failed"/"undelivered" SEND_FAILED; others are ignored

A token signs the send it belongs to (notification id, recipient, channel, the
notification's accepted time: where its events go, with no lookup) and, for a
click, the URL. Each kind signs with its own key derived from the cluster's
unsubscribe signing key (unsubscribe.TokenSigner.derived), so no token opens as
another kind; it expires with the notification log (notification_log_retention_s):
after that there is no send left to record anything on.
"""

import html
import re
import urllib.parse
from typing import NamedTuple

from notifymesh.server.unsubscribe import InvalidToken, TokenSigner

OPEN, CLICK, STATUS = "o", "c", "s"  # the path segment of each kind: /t/<kind>/<token>
_PURPOSES = {OPEN: "tracking-open", CLICK: "tracking-click", STATUS: "sms-status"}
# An <a> element's absolute http(s) href: what a click can be tracked on (mailto:,
# tel: and #anchors are left alone).
_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(https?://[^"']+)\2""", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
# The smallest transparent GIF: what the pixel answers.
PIXEL_GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")

__all__ = ["InvalidToken", "PIXEL_GIF", "Send", "Tracker", "Tracking"]


class Send(NamedTuple):
    """One recipient's notification on one channel, as a token names it."""
    notification_id: str
    recipient: str
    channel: str  # internal_topics.channel_name
    accepted_ms: int


class Tracking:
    """Makes and checks the tokens of every kind."""

    def __init__(self, signer: TokenSigner):
        self._signers = {kind: signer.derived(purpose) for kind, purpose in _PURPOSES.items()}

    def token(self, kind: str, send: Send, url: str = "", now_s: float | None = None) -> str:
        fields = (send.notification_id, send.recipient, send.channel, str(send.accepted_ms))
        return self._signers[kind].sign(fields + ((url,) if kind == CLICK else ()), now_s)

    def verify(self, kind: str, token: str, max_age_s: float, now_s: float | None = None) -> tuple[Send, str]:
        """(the send, the URL of a click token, else ""); InvalidToken for anything
        token() did not make for this kind, or older than max_age_s."""
        if kind not in self._signers:
            raise InvalidToken(f"no tracking of kind {kind!r}")
        count = 5 if kind == CLICK else 4
        fields, _ = self._signers[kind].open(token, (count,), now_s, max_age_s, what="a tracking token")
        try:
            send = Send(fields[0], fields[1], fields[2], int(fields[3]))
        except ValueError:
            raise InvalidToken("not a tracking token") from None
        return send, fields[4] if kind == CLICK else ""


def url(base_url: str, kind: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/t/{kind}/{token}"


class Tracker:
    """The links of one email: its http(s) links rewritten to go through the click
    redirect, and the open pixel added. Links to base_url itself (the unsubscribe
    link) are left as they are."""

    def __init__(self, tracking: Tracking, base_url: str, send: Send):
        self._tracking, self._base, self._send = tracking, base_url.rstrip("/"), send

    def html(self, body: str) -> str:
        def rewrite(match: re.Match) -> str:
            target = html.unescape(match.group(3))
            if target.startswith(self._base + "/"):
                return match.group(0)
            tracked = url(self._base, CLICK, self._tracking.token(CLICK, self._send, target))
            return f"{match.group(1)}{match.group(2)}{tracked}{match.group(2)}"

        body = _HREF.sub(rewrite, body)
        pixel = (f'<img src="{url(self._base, OPEN, self._tracking.token(OPEN, self._send))}" width="1" '
                 'height="1" alt="" style="display:block;border:0">')
        ends = list(_BODY_END.finditer(body))
        if ends:
            at = ends[-1].start()
            return body[:at] + pixel + body[at:]
        return body + pixel

    def status_callback(self) -> str:
        return url(self._base, STATUS, self._tracking.token(STATUS, self._send))


def without_query(target: str) -> str:
    """A clicked URL as the log keeps it: scheme, host and path (a query may hold a
    recipient's address or a token of someone else's)."""
    parts = urllib.parse.urlsplit(target)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
