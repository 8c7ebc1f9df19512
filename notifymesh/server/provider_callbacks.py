"""How a provider's callback to the frontends proves it comes from the provider.

The status callbacks of the common SMS API (sms_http: POST /t/s/<token>, form
MessageSid, MessageStatus) carry that API's request signature: the header
X-Twilio-Signature, base64 of HMAC-SHA1 keyed with the account's auth token (the
provider's secret) over the full URL called followed by each form field's name and
value, sorted by name. The token in the URL names the send; the signature shows the
caller holds the provider's secret, so a callback URL seen in a log cannot be
replayed with another status. deploy/local_providers.py signs its callbacks so.
"""

import base64
import hashlib
import hmac
from typing import Iterable, Mapping

SMS_SIGNATURE_HEADER = "X-Twilio-Signature"


def sms_signature(secret: str, url: str, form: Mapping[str, str]) -> str:
    signed = url + "".join(name + form[name] for name in sorted(form))
    return base64.b64encode(hmac.new(secret.encode(), signed.encode(), hashlib.sha1).digest()).decode()


def sms_signed(secrets: Iterable[str], signature: str, url: str, form: Mapping[str, str]) -> bool:
    """The signature is one of these secrets' (the channel's sms_http providers': the
    callback does not say which provider took the message)."""
    return any(hmac.compare_digest(sms_signature(secret, url, form), signature) for secret in secrets if secret)
