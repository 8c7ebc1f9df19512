"""Templates: locale fallback, strict undefined variables, the sandbox, compile
errors naming their line, HTML-only autoescape, webhook JSON bodies, bounds."""

import collections
import time

import pytest

from gen.notifymesh.v1 import notify_pb2
from notifymesh import errors
from notifymesh.server import templating
from notifymesh.server.templating import MissingVariable, Renderer, RenderError, check, context

EMAIL, SMS, WEBHOOK = notify_pb2.EMAIL, notify_pb2.SMS, notify_pb2.WEBHOOK


def template(*contents, default_locale="en", version=1) -> notify_pb2.Template:
    return notify_pb2.Template(name="invoice-due", version=version, default_locale=default_locale,
                               contents=list(contents))


def content(channel=SMS, locale="", **fields) -> notify_pb2.TemplateContent:
    return notify_pb2.TemplateContent(channel=channel, locale=locale, **fields)


def values(data=None, **recipient) -> dict:
    return context(notify_pb2.Recipient(id="alice", **recipient), data or {}, "nid-1", "billing")


def render(tpl, channel=SMS, locale="", data=None, **recipient) -> notify_pb2.RenderedContent:
    return Renderer().render(tpl, channel, locale, values(data, **recipient))


@pytest.mark.parametrize("locale,expected", [
    ("de-CH", "de-CH"), ("de-AT", "de"), ("de", "de"), ("DE-ch", "de-CH"),
    ("fr", "en"), ("", "en"),
])
def test_locale_falls_back_to_the_language_then_the_default(locale, expected):
    tpl = template(content(locale="en", text="en"), content(locale="de", text="de"),
                   content(locale="de-CH", text="de-CH"))
    rendered = render(tpl, locale=locale)
    assert (rendered.text, rendered.locale) == (expected, expected)


def test_content_without_locale_is_the_last_fallback():
    tpl = template(content(locale="de", text="de"), content(text="any"), default_locale="en")
    rendered = render(tpl, locale="fr")
    assert (rendered.text, rendered.locale, rendered.version) == ("any", "en", 1)
    # The default locale's content comes before the one without locale.
    tpl = template(content(locale="en", text="en"), content(text="any"))
    assert render(tpl, locale="fr").text == "en"


def test_no_content_for_the_channel_is_failed_precondition():
    with pytest.raises(errors.FailedPrecondition, match="no email content"):
        render(template(content(text="x")), channel=EMAIL)


def test_a_missing_variable_names_it():
    tpl = template(content(text="Hello {{ recipient.id }}, you owe {{ data.amount }}"))
    assert render(tpl, data={"amount": "12.00"}).text == "Hello alice, you owe 12.00"
    with pytest.raises(MissingVariable) as info:
        render(tpl, data={})
    assert info.value.variable == "amount" and "'amount'" in info.value.details
    assert isinstance(info.value, errors.InvalidArgument)
    with pytest.raises(MissingVariable) as info:
        render(template(content(text="{{ nothing_like_this }}")))
    assert info.value.variable == "nothing_like_this"


def test_the_context_exposes_the_recipient():
    tpl = template(content(text="{{ recipient.email }} {{ recipient.phone }} {{ recipient.locale }} "
                                "{{ recipient.timezone }} {{ recipient.attributes.plan }} {{ notification_id }} "
                                "{{ category }} [{{ unsubscribe_url }}]"))
    recipient = notify_pb2.Recipient(id="alice", email="a@example.com", phone="+14155550100", locale="en",
                                     timezone="UTC", attributes={"plan": "pro"})
    rendered = Renderer().render(tpl, SMS, "", context(recipient, {}, "nid-1", "billing"))
    assert rendered.text == "a@example.com +14155550100 en UTC pro nid-1 billing []"
    assert context(None, {}, "n", "c")["recipient"]["id"] == ""


@pytest.mark.parametrize("source", ["{{ ''.__class__ }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}",
                                    "{{ data.__init__.__globals__ }}", "{{ cycler.__init__.__globals__.os }}"])
def test_the_sandbox_refuses_unsafe_attributes(source):
    with pytest.raises(RenderError, match="sms/default text: refused by the sandbox"):
        render(template(content(text=source)))


@pytest.mark.parametrize("source", ["{{ 'x' * 100000000 }}", "{{ [1] * 100000000 }}", "{{ 9 ** 9999999 }}",
                                    "{% for i in range(1000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
                                    "{% for i in range(100000) %}{{ 'x' * 20 }}{% endfor %}"])
def test_runaway_work_and_output_are_refused(source):
    with pytest.raises(RenderError):
        render(template(content(text=source)))


@pytest.mark.parametrize("source,reason", [
    ("{% for a in data.l %}{% for b in data.l %}{% for c in data.l %}{% endfor %}{% endfor %}{% endfor %}",
     "rendering took over 1 s"),
    ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "RecursionError"),
    ("{{ 'x'|center(10**9) }}", "argument of 1000000000"), ("{{ 'x'.ljust(999999999) }}", "argument of 999999999"),
    ("{{ '{:>999999999}'.format(1) }}", "format width"), ("{{ '%999999999d' % 1 }}", "format width"),
    ("{{ '%999999999d'|format(1) }}", "format width"), ("{{ lipsum(1000000) }}", "variable 'lipsum' is missing"),
    ("{{ data.s|replace('a', 'x' * 1000000) }}", "MemoryError|over 1,048,576 characters")])
def test_an_expensive_render_fails_within_a_bounded_time(source, reason):
    """Work a hostile template makes from a big data list or a huge argument: refused
    in about MAX_RENDER_SECONDS at most, not minutes of CPU or gigabytes of memory."""
    started = time.monotonic()
    with pytest.raises(errors.InvalidArgument, match=reason):  # RenderError or MissingVariable
        render(template(content(text=source)), data={"l": list(range(3000)), "s": "a" * 60000})
    assert time.monotonic() - started < templating.MAX_RENDER_SECONDS + 1


def test_a_template_nested_past_the_parser_stack_is_refused_at_check():
    with pytest.raises(errors.InvalidArgument, match="nested too deeply"):
        check(template(content(text="{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}")))


def test_a_bounded_template_still_renders():
    tpl = template(content(text="{{ '%5d' % 3 }}|{{ 'ab'|center(6) }}|{{ '{:>4}'.format(7) }}|{% for i in data.l %}"
                                "{{ i }}{% endfor %}"))
    assert render(tpl, data={"l": [1, 2]}).text == "    3|  ab  |   7|12"


def test_a_compile_error_names_channel_locale_field_and_line():
    bad = template(content(EMAIL, "de", subject="Hallo", text="ok", html="<p>\n{{ a }}\n{{ b }</p>"))
    with pytest.raises(errors.InvalidArgument) as info:
        check(bad)
    assert info.value.details == "email/de html line 3: unexpected '}'"
    with pytest.raises(errors.InvalidArgument, match=r"sms/default text line 1: Unexpected end"):
        check(template(content(text="{% if x %}")))
    check(template(content(EMAIL, subject="{{ a }}", text="{{ b }}", html="{{ c }}")))  # compiles


def test_html_is_autoescaped_and_nothing_else():
    tpl = template(content(EMAIL, subject="{{ data.v }}", text="{{ data.v }}", html="<b>{{ data.v }}</b>"))
    rendered = render(tpl, channel=EMAIL, data={"v": "<a & 'b'>"})
    assert rendered.subject == rendered.text == "<a & 'b'>"
    assert rendered.html == "<b>&lt;a &amp; &#39;b&#39;&gt;</b>"
    assert render(template(content(text="{{ data.v }}")), data={"v": "<x>"}).text == "<x>"


def test_a_subject_is_one_line():
    tpl = template(content(EMAIL, subject="Re: {{ data.v }}", text="{{ data.v }}"))
    rendered = render(tpl, channel=EMAIL, data={"v": "a\r\nBcc: x@example.com\nc"})
    assert rendered.subject == "Re: a Bcc: x@example.com c"
    assert rendered.text == "a\r\nBcc: x@example.com\nc"


def test_a_webhook_body_must_render_to_json():
    tpl = template(content(WEBHOOK, json_body='{"amount": {{ data.amount | tojson }}, "to": "{{ recipient.id }}"}'))
    assert render(tpl, channel=WEBHOOK, data={"amount": 'say "hi"'}).json_body == \
        '{"amount": "say \\"hi\\"", "to": "alice"}'
    with pytest.raises(RenderError, match="json_body does not render to a JSON document"):
        render(template(content(WEBHOOK, json_body='{"amount": {{ data.amount }}}')), channel=WEBHOOK,
               data={"amount": "twelve"})
    with pytest.raises(RenderError, match="NaN is not a JSON value"):  # a template's own constant
        render(template(content(WEBHOOK, json_body='{"amount": NaN}')), channel=WEBHOOK, data={})


def test_compiled_versions_are_cached_and_bounded():
    renderer = Renderer(cache_size=2)
    for version in (1, 2, 3):
        renderer.render(template(content(text=f"v{version}"), version=version), SMS, "", values())
    assert [key.version for key in renderer._cache] == [2, 3]
    # A version made again (the template deleted and created anew) is not served from the cache.
    again = template(content(text="new"), version=3)
    again.create_time.FromMilliseconds(5)
    assert renderer.render(again, SMS, "", values()).text == "new"


def test_a_render_walks_no_chain_of_globals(monkeypatch):
    """Each field's context is made from the globals: walking them as a ChainMap was
    40 % of a sender's rendering."""
    tpl = template(content(text="{{ range(2) | list }} {{ data.n }}"))
    renderer = Renderer()
    renderer.render(tpl, SMS, "", values({"n": 1}))  # compiled

    def walked(self):
        raise AssertionError("a ChainMap walked")

    monkeypatch.setattr(collections.ChainMap, "__iter__", walked)
    assert renderer.render(tpl, SMS, "", values({"n": 2})).text == "[0, 1] 2"


def test_a_render_error_from_the_data_is_invalid_argument():
    with pytest.raises(RenderError, match="ZeroDivisionError"):
        render(template(content(text="{{ 1 / data.n }}")), data={"n": 0})


def test_output_is_bounded():
    tpl = template(content(text="{% for i in range(50000) %}{{ data.chunk }}{% endfor %}"))
    with pytest.raises(RenderError, match="renders to over"):
        render(tpl, data={"chunk": "y" * 100})
    assert templating.MAX_OUTPUT_CHARS == 1 << 20


def test_a_field_of_the_notifications_names_alone_renders_once_for_all_its_recipients(monkeypatch):
    """What uses no recipient's name (nor a random filter) is the same for each of a
    notification's recipients: rendered once, the rest per recipient."""
    renders = collections.Counter()
    tpl = template(content(EMAIL, subject="Invoice {{ data.n }} ({{ category }})",
                           text="Hi {{ recipient.id }}, invoice {{ data.n }}",
                           html="{% for i in range(2) %}{{ data.n }}{% endfor %}"),
                   content(SMS, text="{{ ['a', 'b'] | random }} {{ data.n }}"))
    renderer = Renderer()
    original = templating._render

    def counted(compiled, label, values):
        renders[label] += 1
        return original(compiled, label, values)

    monkeypatch.setattr(templating, "_render", counted)
    for rid in ("alice", "bob", "carol"):
        values = context(notify_pb2.Recipient(id=rid), {"n": 17}, "nid-1", "billing")
        email = renderer.render(tpl, EMAIL, "", values, "nid-1")
        assert (email.subject, email.text, email.html) == ("Invoice 17 (billing)", f"Hi {rid}, invoice 17", "1717")
        renderer.render(tpl, SMS, "", values, "nid-1")
    values = context(notify_pb2.Recipient(id="dave"), {"n": 18}, "nid-2", "billing")
    assert renderer.render(tpl, EMAIL, "", values, "nid-2").subject == "Invoice 18 (billing)"
    assert renderer.render(tpl, EMAIL, "", values).html == "1818"  # no notification (a preview): rendered
    # once a notification (and once for the preview), but text (a recipient's name) and the random SMS
    assert renders == {"email/default subject": 3, "email/default html": 3, "email/default text": 5,
                       "sms/default text": 3}


def test_fields_rendered_once_are_kept_within_their_bounds():
    renderer = Renderer(rendered_fields=2, rendered_chars=10)
    tpl = template(content(text="{{ data.s }}"))
    for nid, text in (("n1", "aaaa"), ("n2", "bbbb"), ("n3", "cccc")):
        assert renderer.render(tpl, SMS, "", values({"s": text}), nid).text == text
    assert [key.notification_id for key in renderer._rendered] == ["n2", "n3"]
    renderer.render(tpl, SMS, "", values({"s": "d" * 8}), "n4")  # 16 characters over 10: the oldest go
    assert [key.notification_id for key in renderer._rendered] == ["n4"]
    renderer.render(tpl, SMS, "", values({"s": "e" * 11}), "n5")  # over the bound alone: not kept
    assert not renderer._rendered and renderer._chars == 0


def test_the_values_are_made_only_when_a_field_is_to_be_rendered():
    """A recipient's context and the data's JSON cost a channel worker more than a
    cached field: not made when every field of the content is rendered already."""
    made = []

    def make_values(rid: str):
        def make():
            made.append(rid)
            return context(notify_pb2.Recipient(id=rid), {"n": 17}, "nid-1", "billing")
        return make

    tpl = template(content(SMS, text="Invoice {{ data.n }}"), content(EMAIL, subject="{{ data.n }}",
                                                                      text="Hi {{ recipient.id }}"))
    renderer = Renderer()
    assert [renderer.render_lazily(tpl, SMS, "", make_values(rid), "nid-1").text
            for rid in ("alice", "bob")] == ["Invoice 17", "Invoice 17"]
    assert made == ["alice"]  # bob's SMS was rendered for alice already
    assert renderer.render_lazily(tpl, EMAIL, "", make_values("carol"), "nid-1").text == "Hi carol"
    assert made == ["alice", "carol"]
