"""Templates rendered for one recipient on one channel: Jinja2 in its sandbox,
with strict undefined variables, HTML autoescaped (and nothing else), bounded
output and bounded range() work.

check(template) compiles every content field of a template (the metadata
service refuses one that does not compile); Renderer renders a stored version
with locale fallback; context() builds the names a template sees.
"""

import contextvars
import functools
import json
import re
import time
from collections import OrderedDict
from typing import Any, Callable, NamedTuple

import jinja2
import jinja2.meta
import jinja2.nodes
from jinja2 import sandbox
from jinja2.compiler import CodeGenerator

from gen.notifymesh.v1 import notify_pb2
from notifymesh import errors
from notifymesh.server import validation
from notifymesh.server.internal_topics import channel_name

# What one field may render to: a runaway loop stops here rather than filling memory.
MAX_OUTPUT_CHARS = 1 << 20
# Items all range() calls of one render may produce together: nested loops over
# range() multiply (the sandbox alone bounds each range, not their product).
MAX_RANGE_ITEMS = 1_000_000
# CPU time one render of one field may take: a loop over a big list in data, nested,
# runs billions of empty iterations that neither range() nor the output bound sees.
MAX_RENDER_SECONDS = 1.0
# An int argument a call or filter may get ("x".ljust(10**9), "x"|center(10**9)).
MAX_ARGUMENT = MAX_OUTPUT_CHARS
# Compiled template versions kept (each compiled once, then rendered per recipient).
CACHE_SIZE = 256
# A field that uses only the notification's own names renders the same for each of
# its recipients: rendered once a notification (Renderer, _Field.per_notification).
# Fields kept (the newest) and the characters they may hold together (an HTML
# body is typically a few thousand: 4 Mi characters, at most 16 MiB, hold hundreds
# of notifications' fields).
RENDERED_CACHE_FIELDS = 1024
RENDERED_CACHE_CHARS = 4 << 20
# The names a template sees that are the same for every recipient of a notification (context()).
NOTIFICATION_NAMES = frozenset({"data", "notification_id", "category"})
# Filters whose output is not a function of their input: such a field renders per recipient.
UNREPEATABLE_FILTERS = frozenset({"random"})
# The content fields of each channel, in rendering order.
FIELDS = {notify_pb2.EMAIL: ("subject", "text", "html"), notify_pb2.SMS: ("text",),
          notify_pb2.WEBHOOK: ("json_body",), notify_pb2.PUSH: ("subject", "text", "json_body"),
          notify_pb2.IN_APP: ("subject", "text", "json_body")}  # in-app: title, body, data
MAX_PUSH_PAYLOAD_BYTES = 4096  # APNs' and FCM's bound of one notification: title, body and data


class MissingVariable(errors.InvalidArgument):
    """A variable the template uses is not in the context: permanent for this recipient."""

    def __init__(self, variable: str, details: str):
        super().__init__(details)
        self.variable = variable


class RenderError(errors.InvalidArgument):
    """The template failed while rendering (unsafe access, too much output, a
    webhook body that is not JSON...)."""


class _Missing(jinja2.UndefinedError):
    def __init__(self, message: str, variable: str):
        super().__init__(message)
        self.variable = variable


class _Undefined(jinja2.StrictUndefined):
    """StrictUndefined whose error carries the missing name. The sandbox's refusals
    use other exception classes (SecurityError) and keep them."""
    __slots__ = ()

    def __init__(self, hint=None, obj=jinja2.utils.missing, name=None, exc=jinja2.UndefinedError):
        if exc is jinja2.UndefinedError:
            def exc(message, _name=name or "?"):
                return _Missing(message, _name)
        super().__init__(hint, obj, name, exc)


_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("render_deadline", default=float("inf"))


def _tick() -> None:
    """Called at the start of every block body (each loop iteration, macro call, if
    branch): ends a render past its deadline."""
    if time.monotonic() > _deadline.get():
        raise RenderError(f"rendering took over {MAX_RENDER_SECONDS:g} s")


class _TickingCodeGenerator(CodeGenerator):
    def blockvisit(self, nodes, frame) -> None:
        self.writeline("environment.tick()")
        super().blockvisit(nodes, frame)


def _checked_arguments(args, kwargs) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ARGUMENT:
            raise RenderError(f"an argument of {value} is over {MAX_ARGUMENT:,}")
        if isinstance(value, str) and _BIG_NUMBER.search(value):
            raise RenderError("a format width or precision over 7 digits")


# A format string's width or precision ("%999999999d", "{:>999999999}"): the output it makes.
_BIG_NUMBER = re.compile(r"\d{7,}")


def _bounded_filter(function):
    """A filter refusing huge int arguments ("x"|center(10**9)) and huge format
    widths before it runs; jinja's pass_context & co. markers kept."""
    @functools.wraps(function)
    def bounded(*args, **kwargs):
        _checked_arguments(args, kwargs)
        return function(*args, **kwargs)
    return bounded


_range_budget: contextvars.ContextVar[int] = contextvars.ContextVar("range_budget", default=MAX_RANGE_ITEMS)


def _budgeted_range(*args: int) -> range:
    """range() that draws from the render's budget of items."""
    items = range(*args)
    left = _range_budget.get() - len(items)
    if left < 0:
        raise RenderError(f"range() would produce over {MAX_RANGE_ITEMS:,} items in one render")
    _range_budget.set(left)
    return items


class _Environment(sandbox.SandboxedEnvironment):
    """The sandbox, also refusing `*` and `**` results that are huge ("x" * 10**9, 9**9**9)."""
    intercepted_binops = frozenset(["*", "**", "%"])
    code_generator_class = _TickingCodeGenerator
    tick = staticmethod(_tick)

    def call(self, context, obj, *args, **kwargs):
        """Every call a template makes: no huge int argument or format width in its arguments."""
        _checked_arguments(args, kwargs)
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value):
        """str.format and format_map, as the sandbox wraps them: no huge width in the string."""
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _checked_arguments((value.__self__,), {})
        return wrapped

    def call_binop(self, context, operator, left, right):
        if operator == "%":
            if isinstance(left, str):
                _checked_arguments((left,), {})
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and \
                    max(abs(left).bit_length(), 1) * right > 8 * MAX_OUTPUT_CHARS:
                raise RenderError(f"{left} ** {right} is too large")
        else:
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, (str, list, tuple)) and isinstance(count, int) and \
                        len(sequence) * count > MAX_OUTPUT_CHARS:
                    raise RenderError(f"a sequence repeated {count} times is over {MAX_OUTPUT_CHARS:,} items")
        return super().call_binop(context, operator, left, right)


def _environment(autoescape: bool) -> _Environment:
    env = _Environment(undefined=_Undefined, autoescape=autoescape, keep_trailing_newline=True)
    env.globals["range"] = _budgeted_range
    del env.globals["lipsum"]  # lipsum(n=10**6): megabytes of text from one call
    env.filters = {name: _bounded_filter(f) for name, f in env.filters.items()}
    return env


_TEXT, _HTML = _environment(False), _environment(True)


def _label(content: notify_pb2.TemplateContent) -> str:
    return f"{channel_name(content.channel)}/{content.locale or 'default'}"


def _compile(content: notify_pb2.TemplateContent, field: str) -> "_Field":
    """The field, compiled; InvalidArgument naming the content, the field and the line."""
    env = _HTML if field == "html" else _TEXT
    try:
        parsed = env.parse(getattr(content, field))
        compiled = env.from_string(parsed)
    except jinja2.TemplateSyntaxError as e:
        raise errors.InvalidArgument(f"{_label(content)} {field} line {e.lineno}: {e.message}") from None
    except (RecursionError, MemoryError):  # "{{ ((((...)))) }}" nested past the parser's stack
        raise errors.InvalidArgument(f"{_label(content)} {field}: nested too deeply to compile") from None
    # Each render makes a context of the globals and the values: from a ChainMap (the
    # template's over the environment's) that took two Python-level walks a field,
    # 40 % of rendering (py-spy of a sender, docs/benchmarks.md 2026-12-01). Nothing
    # changes the environments' globals after _environment().
    compiled.globals = dict(compiled.globals)
    per_notification = jinja2.meta.find_undeclared_variables(parsed) <= NOTIFICATION_NAMES and \
        not any(f.name in UNREPEATABLE_FILTERS for f in parsed.find_all(jinja2.nodes.Filter))
    return _Field(compiled, f"{_label(content)} {field}", per_notification)


def check(template: notify_pb2.Template) -> None:
    """Compiles every set field of every content (INVALID_ARGUMENT at the first that fails)."""
    for content in template.contents:
        for field in FIELDS.get(content.channel, ()):
            if getattr(content, field):
                _compile(content, field)


def context(recipient: notify_pb2.Recipient | None, data: dict, notification_id: str, category: str,
            unsubscribe_url: str = "") -> dict[str, Any]:
    """The names a template sees (notify.proto's TemplateContent)."""
    recipient = recipient or notify_pb2.Recipient()
    return {"data": data, "notification_id": notification_id, "category": category,
            "unsubscribe_url": unsubscribe_url,
            "recipient": {"id": recipient.id, "email": recipient.email, "phone": recipient.phone,
                          "locale": recipient.locale, "timezone": recipient.timezone,
                          "attributes": dict(recipient.attributes)}}


def _locales(locale: str, default_locale: str) -> list[str]:
    """Where a locale's content is looked for, in order: "de-CH", "de", the default, ""."""
    locale = locale.lower()
    language = locale.replace("_", "-").split("-")[0]
    return [locale, language, default_locale.lower(), ""]


def _indexes(template: notify_pb2.Template, channel: int) -> dict[str, int]:
    """The channel's contents of the template: lowercase locale -> index."""
    return {c.locale.lower(): i for i, c in enumerate(template.contents) if c.channel == channel}


def pick(template: notify_pb2.Template, channel: int, locale: str,
         indexes: dict[str, int] | None = None) -> int:
    """The index of the content used for channel and locale (locale fallback);
    FAILED_PRECONDITION when the template has none for the channel. indexes: the
    template's _indexes for the channel, when known."""
    found = _indexes(template, channel) if indexes is None else indexes
    for candidate in _locales(locale or template.default_locale, template.default_locale):
        if candidate in found:
            return found[candidate]
    raise errors.FailedPrecondition(f"template {template.name!r} version {template.version} has no "
                                    f"{channel_name(channel)} content")


class _Key(NamedTuple):
    """A version's cache key: create_time too, since a template deleted and made
    again starts its versions at 1 once more."""
    name: str
    version: int
    created_ns: int


def _render(compiled: jinja2.Template, label: str, values: dict) -> str:
    parts, size = [], 0
    try:
        for part in compiled.generate(values):
            size += len(part)
            if size > MAX_OUTPUT_CHARS:
                raise RenderError(f"{label}: renders to over {MAX_OUTPUT_CHARS:,} characters")
            parts.append(part)
    except _Missing as e:
        raise MissingVariable(e.variable, f"{label}: template variable {e.variable!r} is missing: {e.message}") \
            from None
    except jinja2.exceptions.SecurityError as e:
        raise RenderError(f"{label}: refused by the sandbox: {e}") from None
    except RenderError as e:
        raise RenderError(f"{label}: {e.details}") from None
    except (RecursionError, MemoryError) as e:  # a macro calling itself; data nested deeply
        raise RenderError(f"{label}: {type(e).__name__}: too deep or too large") from None
    except (jinja2.TemplateError, ArithmeticError, TypeError, ValueError, LookupError, AttributeError) as e:
        # The template's own fault on this data (1/0, a filter given the wrong type...).
        raise RenderError(f"{label}: {type(e).__name__}: {e}") from None
    return "".join(parts)


class _Field(NamedTuple):
    """A content's field, compiled."""
    template: jinja2.Template
    label: str  # "email/en subject": what its errors name
    per_notification: bool  # it uses no recipient's name (NOTIFICATION_NAMES), nor a random filter


class _RenderedKey(NamedTuple):
    version: _Key
    index: int  # the content's
    field: str
    notification_id: str


class _Version(NamedTuple):
    """A template version, compiled once for all its renders."""
    key: _Key
    fields: dict[tuple[int, str], _Field]  # (content index, field) of every set field
    indexes: dict[int, dict[str, int]]  # channel -> its contents' _indexes


class Renderer:
    """Renders stored template versions, compiling each version once (a bounded
    LRU of CACHE_SIZE versions)."""

    def __init__(self, cache_size: int = CACHE_SIZE, rendered_fields: int = RENDERED_CACHE_FIELDS,
                 rendered_chars: int = RENDERED_CACHE_CHARS):
        self._cache: OrderedDict[_Key, _Version] = OrderedDict()
        self._size = cache_size
        # Per-notification fields as rendered, the newest (both bounds held).
        self._rendered: OrderedDict[_RenderedKey, str] = OrderedDict()
        self._rendered_fields, self._rendered_chars, self._chars = rendered_fields, rendered_chars, 0

    def _compiled(self, template: notify_pb2.Template) -> _Version:
        key = _Key(template.name, template.version, template.create_time.ToNanoseconds())
        compiled = self._cache.get(key)
        if compiled is None:
            compiled = _Version(
                key, {(i, field): _compile(content, field) for i, content in enumerate(template.contents)
                 for field in FIELDS.get(content.channel, ()) if getattr(content, field)},
                {c.channel: _indexes(template, c.channel) for c in template.contents})
            self._cache[key] = compiled
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return compiled

    def render(self, template: notify_pb2.Template, channel: int, locale: str,
               values: dict[str, Any], notification_id: str = "") -> notify_pb2.RenderedContent:
        """The content of channel for locale (fallback: its language, the default
        locale, the content without locale), rendered with values (context()).
        notification_id: the notification values are of ("": a preview): the fields
        that use only its names (the same data for all its recipients) are rendered
        once for all of them. Raises MissingVariable, RenderError, FailedPrecondition
        (no content)."""
        return self.render_lazily(template, channel, locale, lambda: values, notification_id)

    def render_lazily(self, template: notify_pb2.Template, channel: int, locale: str,
                      make_values: Callable[[], dict[str, Any]], notification_id: str) -> notify_pb2.RenderedContent:
        """As render(), the values made only if a field is to be rendered: not when
        each was rendered once for the notification already (a recipient's context
        and the data's JSON were a fifth of a channel worker's rendering)."""
        compiled = self._compiled(template)
        index = pick(template, channel, locale, compiled.indexes.get(channel, {}))
        content = template.contents[index]
        out = notify_pb2.RenderedContent(channel=channel, locale=content.locale or template.default_locale,
                                         version=template.version)
        values = None
        token = _range_budget.set(MAX_RANGE_ITEMS)
        try:
            for field in FIELDS[channel]:
                compiled_field = compiled.fields.get((index, field))
                if compiled_field is None:
                    continue
                key = _RenderedKey(compiled.key, index, field, notification_id) \
                    if compiled_field.per_notification and notification_id else None
                text = self._rendered.get(key) if key is not None else None
                if text is not None:
                    self._rendered.move_to_end(key)
                else:
                    values = values if values is not None else make_values()
                    text = _timed_render(compiled_field, values)
                    if key is not None:
                        self._keep(key, text)
                setattr(out, field, text)
        finally:
            _range_budget.reset(token)
        # A header is one line: data with a line break must not end the subject early.
        out.subject = " ".join(out.subject.splitlines())
        if channel == notify_pb2.WEBHOOK or (channel == notify_pb2.IN_APP and out.json_body):
            try:
                json.loads(out.json_body, parse_constant=validation.not_json)
            except ValueError as e:
                raise RenderError(f"{_label(content)} json_body does not render to a JSON document: {e}") from None
        if channel == notify_pb2.PUSH:
            out.json_body = push_data(out, _label(content))
        return out

    def _keep(self, key: _RenderedKey, text: str) -> None:
        self._rendered[key] = text
        self._chars += len(text)
        while self._rendered and (len(self._rendered) > self._rendered_fields or self._chars > self._rendered_chars):
            self._chars -= len(self._rendered.popitem(last=False)[1])


def _timed_render(field: _Field, values: dict) -> str:
    """One field rendered within MAX_RENDER_SECONDS."""
    deadline = _deadline.set(time.monotonic() + MAX_RENDER_SECONDS)
    try:
        return _render(field.template, field.label, values)
    finally:
        _deadline.reset(deadline)


def push_data(out: notify_pb2.RenderedContent, label: str) -> str:
    """The rendered data payload as a JSON object of strings (FCM's data map; a
    value that is not a string becomes its JSON text), "" for none; RenderError
    when it is not an object or the notification is over MAX_PUSH_PAYLOAD_BYTES."""
    data = {}
    if out.json_body.strip():
        try:
            value = json.loads(out.json_body)
        except ValueError as e:
            raise RenderError(f"{label} json_body does not render to a JSON object: {e}") from None
        if not isinstance(value, dict):
            raise RenderError(f"{label} json_body renders to a JSON {type(value).__name__}, not an object")
        data = {k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for k, v in value.items()}
    payload = json.dumps(data, separators=(",", ":")) if data else ""
    size = len(out.subject.encode()) + len(out.text.encode()) + len(payload.encode())
    if size > MAX_PUSH_PAYLOAD_BYTES:
        raise RenderError(f"{label}: title, body and data are {size:,} bytes; a push notification holds "
                          f"{MAX_PUSH_PAYLOAD_BYTES:,}")
    return payload
