"""Channel providers: one adapter per kind of provider behind one interface
(ChannelProvider.send), each classifying its failures as transient (retried by
the subscription's retry policy) or permanent (the recipient-channel fails)."""

from gen.notifymesh.v1 import notify_pb2
from notifymesh.server.egress import Allowed
from sender.providers.apns import ApnsProvider
from sender.providers.base import (ChannelProvider, DeadAddressError, OutgoingMessage, PermanentSendError, SendError,
                                   SendResult, TransientSendError)
from sender.providers.fcm import FcmProvider
from sender.providers.http import SmsHttpProvider, WebhookProvider
from sender.providers.sink import SinkProvider
from sender.providers.smtp import SmtpProvider

KINDS = {"smtp": SmtpProvider, "sms_http": SmsHttpProvider, "webhook": WebhookProvider, "sink": SinkProvider,
         "fcm": FcmProvider, "apns": ApnsProvider}

__all__ = ["ChannelProvider", "DeadAddressError", "OutgoingMessage", "PermanentSendError", "SendError", "SendResult",
           "TransientSendError", "KINDS", "provider_for"]


def provider_for(record: notify_pb2.Provider, allowed: Allowed = lambda: ()) -> ChannelProvider:
    """A provider for the record (as the etcd mirror holds it, secret included).
    allowed(): the non-public networks the providers may connect to (egress.py).
    Raises ValueError for a kind no adapter has (the metadata service refuses those)."""
    kind = KINDS.get(record.kind)
    if kind is None:
        raise ValueError(f"no provider of kind {record.kind!r}; the kinds: {', '.join(KINDS)}")
    return kind(record) if kind is SinkProvider else kind(record, allowed)
