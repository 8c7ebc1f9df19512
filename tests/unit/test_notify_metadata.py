"""Checks of categories, templates and providers before they are stored in etcd,
and the notification settings of the cluster config."""

import pytest

from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from metadata.notify_store import check_category, check_provider, check_template
from metadata.store import check_redrive_rules
from notifymesh import errors
from notifymesh.server import config

EMAIL, SMS, WEBHOOK = notify_pb2.EMAIL, notify_pb2.SMS, notify_pb2.WEBHOOK


def email(locale="", **fields):
    return notify_pb2.TemplateContent(channel=EMAIL, locale=locale, **({"subject": "s", "text": "t"} | fields))


def tpl(*contents, **fields) -> notify_pb2.Template:
    return notify_pb2.Template(name=fields.pop("name", "invoice-due"), contents=list(contents), **fields)


def test_a_template_gets_its_default_locale_and_no_version_of_its_own():
    record = check_template(tpl(email(), version=7))
    assert (record.default_locale, record.version) == ("en", 0)


@pytest.mark.parametrize("template,message", [
    (tpl(email(), name="x"), "invalid template name 'x'"),
    (tpl(), "has no content"),
    (tpl(notify_pb2.TemplateContent(channel=9, text="x")), "unknown channel 9"),
    (tpl(notify_pb2.TemplateContent(text="x")), "unknown channel 0"),
    (tpl(email(), email()), "two email/default contents"),
    (tpl(email("de"), email("DE")), "two email/DE contents"),
    (tpl(email(subject="")), "email/default: a email content needs subject"),
    (tpl(email(text="")), "needs text"),
    (tpl(notify_pb2.TemplateContent(channel=SMS)), "sms/default: a sms content needs text"),
    (tpl(notify_pb2.TemplateContent(channel=SMS, text="x", subject="y")), "a sms content has no subject"),
    (tpl(notify_pb2.TemplateContent(channel=WEBHOOK)), "needs json_body"),
    (tpl(email(html="x" * (64 * 1024 + 1))), "email/default html is 65,537 bytes; at most 65,536"),
    (tpl(email(html="x" * 60_000), email("de", html="x" * 60_000), email("fr", html="x" * 60_000)),
     "at most 131,072 together"),
    (tpl(email("not a locale")), "'not a locale' is not a locale"),
    (tpl(email(), default_locale="e"), "default locale 'e'"),
    (tpl(email(text="{% for %}")), "email/default text line 1: "),
])
def test_bad_templates_are_invalid_argument(template, message):
    with pytest.raises(errors.InvalidArgument) as info:
        check_template(template)
    assert message in info.value.details


def test_a_category_is_stored_with_an_explicit_policy():
    hourly = notify_pb2.RateLimit(limit=3, period_seconds=3600)
    record = check_category(notify_pb2.Category(name="marketing", rate_limit=hourly))
    assert record.over_limit == notify_pb2.DROP and record.rate_limit.limit == 3
    # No limit: no period either.
    record = check_category(notify_pb2.Category(name="billing", rate_limit=notify_pb2.RateLimit(period_seconds=60)))
    assert not record.HasField("rate_limit")


@pytest.mark.parametrize("limit,period,message", [
    (-1, 60, "rate limit -1 out of range: 0 to 1000000"), (1_000_001, 60, "rate limit 1000001"),
    (3, 0, r"rate limit period 0s out of range: 1s to 2,592,000s \(30 days\)"),
    (3, 30 * 86400 + 1, "rate limit period"),
])
def test_bad_rate_limits_are_invalid_argument(limit, period, message):
    category = notify_pb2.Category(name="marketing", rate_limit=notify_pb2.RateLimit(limit=limit,
                                                                                      period_seconds=period))
    with pytest.raises(errors.InvalidArgument, match=message):
        check_category(category)
    with pytest.raises(errors.InvalidArgument, match="invalid category name"):
        check_category(notify_pb2.Category(name="9x"))
    with pytest.raises(errors.InvalidArgument, match="unknown over-limit policy 7"):
        check_category(notify_pb2.Category(name="marketing", over_limit=7))


def smtp(**settings):
    return notify_pb2.Provider(channel=EMAIL, kind="smtp",
                               settings={"host": "localhost", "port": "25", "from": "n@example.com"} | settings)


def test_a_provider_gets_its_defaults():
    record = check_provider(smtp())
    assert (record.max_concurrency, record.secret_set) == (32, False)
    record = check_provider(notify_pb2.Provider(channel=SMS, kind="sms_http", secret="token", max_concurrency=1000,
                                                settings={"base_url": "http://127.0.0.1:9", "account": "a",
                                                          "from": "+14155550100"}))
    assert (record.max_concurrency, record.secret_set, record.secret) == (1000, True, "token")
    assert check_provider(notify_pb2.Provider(channel=WEBHOOK, kind="webhook")).kind == "webhook"


def test_an_apns_provider_sends_256_at_once_by_default():
    """Its sends are streams of one HTTP/2 connection; the others' are connections."""
    apns = notify_pb2.Provider(channel=notify_pb2.PUSH, kind="apns",
                               settings={"key_id": "K", "team_id": "T", "topic": "com.example.app"})
    assert check_provider(apns).max_concurrency == 256
    apns.max_concurrency = 32
    assert check_provider(apns).max_concurrency == 32
    fcm = notify_pb2.Provider(channel=notify_pb2.PUSH, kind="fcm", settings={"project_id": "p", "client_email": "e"})
    assert check_provider(fcm).max_concurrency == 32


def test_a_provider_is_named_default_without_a_name_and_its_priority_is_bounded():
    assert (check_provider(smtp()).name, check_provider(smtp()).priority) == ("default", 0)
    named = notify_pb2.Provider(channel=WEBHOOK, kind="webhook", name="relay-2", priority=1000)
    assert check_provider(named).name == "relay-2"
    named.priority = -1
    with pytest.raises(errors.InvalidArgument, match="provider priority -1 out of range: 0 to 1000"):
        check_provider(named)
    named.name = "b/c"  # a name is the last part of its etcd key
    with pytest.raises(errors.InvalidArgument, match="invalid provider name 'b/c'"):
        check_provider(named)


def test_redrive_rules_are_checked_and_get_their_defaults():
    rule = pubsub_pb2.RedriveRule(reason="^provider unavailable")
    record = pubsub_pb2.Subscription(name="s", max_delivery_attempts=5, dead_letter_topic="d", redrive_rules=[rule])
    check_redrive_rules(record)
    assert (record.redrive_rules[0].after.seconds, record.redrive_rules[0].max_redrives) == (600, 3)
    for rules, message in (([pubsub_pb2.RedriveRule(reason="(")], "is not a regular expression"),
                           ([pubsub_pb2.RedriveRule(reason="")], "a regular expression of 1 to 256 bytes"),
                           ([pubsub_pb2.RedriveRule(reason="x", max_redrives=101)], "max redrives 101 out of range"),
                           ([pubsub_pb2.RedriveRule(reason="x")] * 11, "redrive rules 11 out of range: 0 to 10")):
        with pytest.raises(errors.InvalidArgument, match=message):
            check_redrive_rules(pubsub_pb2.Subscription(name="s", max_delivery_attempts=5, redrive_rules=rules))
    with pytest.raises(errors.InvalidArgument, match="redrive rules need dead-lettering"):
        check_redrive_rules(pubsub_pb2.Subscription(name="s", redrive_rules=[rule]))


def test_the_sink_provider_serves_every_channel_without_settings():
    for channel in (EMAIL, SMS, WEBHOOK):
        assert check_provider(notify_pb2.Provider(channel=channel, kind="sink")).kind == "sink"
    with pytest.raises(errors.InvalidArgument, match="sink provider: unknown setting 'host'"):
        check_provider(notify_pb2.Provider(channel=EMAIL, kind="sink", settings={"host": "h"}))


@pytest.mark.parametrize("provider,message", [
    (notify_pb2.Provider(kind="smtp"), "unknown channel 0"),
    (notify_pb2.Provider(channel=EMAIL, kind="sms_http"), "the email channel's kind is 'smtp' (or 'sink')"),
    (notify_pb2.Provider(channel=EMAIL, kind="smtp", settings={"host": "h"}), "missing setting(s) port, from"),
    (notify_pb2.Provider(channel=SMS, kind="sms_http"), "missing setting(s) base_url, account, from"),
    (smtp(port="0"), "setting port '0': a whole number from 1 to 65535"),
    (smtp(port="25x"), "setting port '25x'"),
    (smtp(starttls="yes"), "setting starttls 'yes': 'true' or 'false'"),
    (smtp(colour="blue"), "unknown setting 'colour'"),
    (smtp(host="h" * 1025), "setting host is 1,025 bytes"),
    (notify_pb2.Provider(channel=SMS, kind="sms_http", settings={"base_url": "ftp://x", "account": "a", "from": "f"}),
     "base_url 'ftp://x' is not an http(s) URL"),
    (notify_pb2.Provider(channel=WEBHOOK, kind="webhook", max_concurrency=1001),
     "max concurrency 1001 out of range: 1 to 1000"),
    (notify_pb2.Provider(channel=WEBHOOK, kind="webhook", max_concurrency=-1), "max concurrency -1"),
    (notify_pb2.Provider(channel=WEBHOOK, kind="webhook", secret="s" * 4097), "secret is 4,097 bytes"),
])
def test_bad_providers_are_invalid_argument(provider, message):
    with pytest.raises(errors.InvalidArgument) as info:
        check_provider(provider)
    assert message in info.value.details


def test_notification_settings_have_their_defaults_and_bounds():
    defaults = config.Config()
    assert defaults.notification_log_retention_s == 30 * 24 * 3600
    assert (defaults.notify_default_rate_limit, defaults.notify_default_rate_period_s) == (0, 0)
    assert config.setting_value("notify_default_rate_limit", "0") == 0  # 0: no default limit
    with pytest.raises(errors.InvalidArgument, match="out of range"):
        config.setting_value("notification_log_retention_s", "0")
    # A limit needs its period, within 1 s to 30 days.
    with pytest.raises(errors.InvalidArgument, match="needs notify_default_rate_period_s from 1"):
        config.check(config.load(env={}, etcd_values={"notify_default_rate_limit": 5}))
    config.check(config.load(env={}, etcd_values={"notify_default_rate_limit": 5,
                                                  "notify_default_rate_period_s": 3600}))
    with pytest.raises(errors.InvalidArgument):
        config.check(config.load(env={}, etcd_values={"notify_default_rate_limit": 1_000_001,
                                                      "notify_default_rate_period_s": 3600}))
