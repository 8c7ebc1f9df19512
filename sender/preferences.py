"""Which channels one recipient of a notification gets, and why not the others:
a pure decision over the rows the fan-out read (contact, unsubscribe flag,
preference rows) and the category.

Opt-outs: the most specific preference wins, (category, channel) over
(category, every channel) over (every category, channel) over (every, every);
without one, the global unsubscribe; without that, opted in. A mandatory
category ignores every opt-out. A channel the recipient has no contact for is
suppressed as such before any opt-out is looked at.
"""

from enum import Enum
from typing import Iterable, NamedTuple

from gen.notifymesh.v1 import notify_pb2
from notifymesh.server.internal_topics import channel_name


class Action(Enum):
    SEND = "send"
    OPTED_OUT = "opted_out"
    NO_CONTACT = "no_contact"


class Decision(NamedTuple):
    channel: int
    action: Action
    reason: str = ""  # for a suppression: the rule or the missing contact


class Preference(NamedTuple):
    """A P row: category "" is every category, channel "" every channel."""
    category: str
    channel: str
    enabled: bool


def contact(recipient: notify_pb2.Recipient | None, channel: int) -> str:
    """The recipient's address on channel ("" for none)."""
    if recipient is None:
        return ""
    if channel == notify_pb2.EMAIL:
        return recipient.email
    if channel == notify_pb2.SMS:
        return recipient.phone
    if channel == notify_pb2.WEBHOOK:
        return recipient.webhook_url
    if channel == notify_pb2.IN_APP:  # every stored recipient has an inbox
        return recipient.id
    return ""


def reachable(recipient: notify_pb2.Recipient | None, channel: int, has_devices: bool) -> bool:
    """Whether the recipient can be sent anything on channel: push to its devices
    (rows.has_devices_key), the others at its contact address."""
    if channel == notify_pb2.PUSH:
        return recipient is not None and has_devices
    return bool(contact(recipient, channel))


def _rule(category: str, channel: str) -> str:
    return f"opted out of {'category ' + category if category else 'every category'} on " \
           f"{channel if channel else 'every channel'}"


def opt_out(preferences: Iterable[Preference], unsubscribed: bool, category: str, channel: str) -> str | None:
    """The rule that opts the recipient out of (category, channel), or None when opted in."""
    by_scope = {(p.category, p.channel): p.enabled for p in preferences}
    for scope in ((category, channel), (category, ""), ("", channel), ("", "")):
        if scope in by_scope:
            return None if by_scope[scope] else _rule(*scope)
    return "unsubscribed from everything" if unsubscribed else None


def decide(recipient: notify_pb2.Recipient | None, unsubscribed: bool, preferences: Iterable[Preference],
           category: notify_pb2.Category, requested: Iterable[int], template_channels: Iterable[int],
           has_devices: bool = False) -> list[Decision]:
    """One decision per channel: the requested channels; with none requested, the
    template's channels the recipient has a contact for (all of the template's,
    each suppressed for no contact, when it has none of them, so the log says why)."""
    requested = list(dict.fromkeys(requested))
    if requested:
        channels = requested
    else:
        template_channels = list(dict.fromkeys(template_channels))
        channels = [c for c in template_channels if reachable(recipient, c, has_devices)] or template_channels
    preferences = list(preferences)
    decisions = []
    for channel in channels:
        if not reachable(recipient, channel, has_devices):
            what = "recipient not found" if recipient is None else \
                "no push device" if channel == notify_pb2.PUSH else f"no {channel_name(channel)} contact"
            decisions.append(Decision(channel, Action.NO_CONTACT, what))
            continue
        rule = None if category.mandatory else opt_out(preferences, unsubscribed, category.name,
                                                       channel_name(channel))
        decisions.append(Decision(channel, Action.OPTED_OUT, rule) if rule else Decision(channel, Action.SEND))
    return decisions
