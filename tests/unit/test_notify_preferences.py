"""The channel decision of the fan-out (sender/preferences.py): the most specific
preference wins, then the global unsubscribe, then opted in; mandatory categories
ignore opt-outs; channels without a contact are suppressed as such."""

from gen.notifymesh.v1 import notify_pb2
from sender.preferences import Action, Decision, Preference, decide, opt_out

EMAIL, SMS, WEBHOOK = notify_pb2.EMAIL, notify_pb2.SMS, notify_pb2.WEBHOOK
ALICE = notify_pb2.Recipient(id="alice", email="alice@example.com", phone="+14155550100")
MARKETING = notify_pb2.Category(name="marketing")
SECURITY = notify_pb2.Category(name="security", mandatory=True)


def test_the_most_specific_preference_wins():
    everything_off = [Preference("", "", False)]
    assert opt_out(everything_off, False, "marketing", "email") == "opted out of every category on every channel"
    email_on = everything_off + [Preference("", "email", True)]
    assert opt_out(email_on, False, "marketing", "email") is None
    assert opt_out(email_on, False, "marketing", "sms") is not None
    marketing_off = email_on + [Preference("marketing", "", False)]
    assert opt_out(marketing_off, False, "marketing", "email") == "opted out of category marketing on every channel"
    assert opt_out(marketing_off, False, "billing", "email") is None
    marketing_email_on = marketing_off + [Preference("marketing", "email", True)]
    assert opt_out(marketing_email_on, False, "marketing", "email") is None
    assert opt_out(marketing_email_on, False, "marketing", "sms") is not None


def test_unsubscribed_applies_only_without_a_preference_and_default_is_opted_in():
    assert opt_out([], False, "marketing", "email") is None
    assert opt_out([], True, "marketing", "email") == "unsubscribed from everything"
    assert opt_out([Preference("", "", True)], True, "marketing", "email") is None
    assert opt_out([Preference("billing", "", True)], True, "marketing", "email") is not None


def test_mandatory_categories_ignore_every_opt_out():
    prefs = [Preference("", "", False), Preference("security", "email", False)]
    assert decide(ALICE, True, prefs, SECURITY, [EMAIL, SMS], []) == [Decision(EMAIL, Action.SEND),
                                                                        Decision(SMS, Action.SEND)]
    decided = decide(ALICE, False, [Preference("marketing", "sms", False)], MARKETING, [EMAIL, SMS], [])
    assert decided == [Decision(EMAIL, Action.SEND),
                       Decision(SMS, Action.OPTED_OUT, "opted out of category marketing on sms")]


def test_requested_channels_without_a_contact_are_suppressed_as_such():
    assert decide(ALICE, False, [], MARKETING, [EMAIL, WEBHOOK], []) == [
        Decision(EMAIL, Action.SEND), Decision(WEBHOOK, Action.NO_CONTACT, "no webhook contact")]
    assert decide(None, False, [], SECURITY, [SMS], []) == [Decision(SMS, Action.NO_CONTACT, "recipient not found")]


def test_without_requested_channels_the_templates_channels_the_recipient_has():
    email_only = notify_pb2.Recipient(id="bob", email="bob@example.com")
    assert decide(email_only, False, [], MARKETING, [], [EMAIL, SMS]) == [Decision(EMAIL, Action.SEND)]
    # none of them: each suppressed, so the log says why nothing went out
    assert decide(notify_pb2.Recipient(id="carol"), False, [], MARKETING, [], [EMAIL, SMS]) == [
        Decision(EMAIL, Action.NO_CONTACT, "no email contact"), Decision(SMS, Action.NO_CONTACT, "no sms contact")]
