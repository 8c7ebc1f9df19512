"""The notification commands' parts, without a process: argument types, parsing,
import files, a template's next version, and an import against a fake client."""

import argparse
import io
import json

import pytest

from gen.notifymesh.v1 import notify_pb2
from notifymesh import cli, errors, notify_cli
from notifymesh.client import Client


def test_rate_limits_are_n_per_a_period():
    assert notify_cli.rate_limit("3/1h") == (3, 3600)
    assert notify_cli.rate_limit("100/1d") == (100, 86400)
    assert notify_cli.rate_limit("10/30") == (10, 30)
    for bad in ("3", "0/1h", "x/1h", "3/", "3/500ms", "3/1.5s", "-1/1h"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a rate limit"):
            notify_cli.rate_limit(bad)


def test_the_issues_commands_parse():
    parse = cli.parser().parse_args
    args = parse(["recipient", "set", "alice", "--email", "alice@example.com", "--phone", "+14155550100",
                  "--locale", "en", "--attr", "plan=pro"])
    assert (args.id, args.email, args.attr) == ("alice", "alice@example.com", [("plan", "pro")])
    args = parse(["prefs", "set", "alice", "--category", "marketing", "--channel", "email", "--off"])
    assert (args.category, args.channel, args.enabled, args.unsubscribed) == ("marketing", "email", False, None)
    args = parse(["category", "create", "marketing", "--limit", "3/1h", "--mandatory", "--over-limit", "delay"])
    assert (args.limit, args.mandatory, args.over_limit) == ((3, 3600), True, "delay")
    args = parse(["notify", "invoice-due", "--to", "alice,bob", "--data", '{"amount": "12.00"}',
                  "--category", "billing", "--key", "K", "--output", "table"])
    assert (args.to, args.key, args.priority, args.channel, args.output) == ("alice,bob", "K", "normal", None, "table")
    args = parse(["template", "preview", "invoice-due", "--data", '{"amount": "12.00"}', "--recipient", "alice"])
    assert (args.channel, args.recipient) == (None, "alice")
    args = parse(["notification", "list", "--recipient", "alice", "--since", "2026-11-30T10:00:00Z"])
    assert args.since.year == 2026
    assert parse(["audience", "add", "beta-users", "a", "b"]).recipients == ["a", "b"]
    assert parse(["provider", "get", "sms"]).channel == notify_pb2.SMS


@pytest.mark.parametrize("argv", [
    ["notify", "t", "--category", "billing"],  # neither --to nor --audience
    ["notify", "t", "--to", "a", "--audience", "x", "--category", "billing"],
    ["notify", "t", "--to", "a", "--category", "billing", "--data", "[1]"],
    ["notify", "t", "--to", "a", "--category", "billing", "--channel", "fax"],
    ["prefs", "set", "alice", "--on", "--off"],
    ["category", "create", "m", "--limit", "3"],
    ["template", "create", "t"],  # no --channel
    ["provider", "set", "sms", "--secret", "hunter2"],  # a secret never on the command line
    ["recipient", "import", "f.csv", "--batch", "1001"],
])
def test_bad_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.parser().parse_args(argv)
    assert exit.value.code == 2


def test_csv_rows_take_extra_columns_as_attributes_and_report_bad_rows():
    text = ("id,email,phone,plan,team\n"
            "alice,alice@example.com,+14155550100,pro,\n"
            ",nobody@example.com,,,\n"
            "bob,bob@example.com\n"
            "\n"
            '"carol","carol@example.com","","free","a\nb"\n')
    rows = list(notify_cli._csv_rows(io.StringIO(text)))
    assert [(r.line, r.error) for r in rows] == [(2, None), (3, "no id"), (4, "2 cells; the header has 5"),
                                                 (7, None)]
    assert rows[0].recipient == notify_pb2.Recipient(id="alice", email="alice@example.com", phone="+14155550100",
                                                     attributes={"plan": "pro"})
    assert rows[3].recipient.attributes == {"plan": "free", "team": "a\nb"}
    with pytest.raises(SystemExit, match="header"):
        list(notify_cli._csv_rows(io.StringIO("email\nx@example.com\n")))


def test_json_lines_take_attributes_and_other_keys():
    text = ('{"id": "alice", "email": "a@example.com", "attributes": {"plan": "pro"}, "age": 31}\n'
            "not json\n"
            '{"id": 7}\n'
            "[1]\n")
    rows = list(notify_cli._json_rows(io.StringIO(text)))
    assert rows[0].recipient == notify_pb2.Recipient(id="alice", email="a@example.com",
                                                     attributes={"plan": "pro", "age": "31"})
    assert [r.line for r in rows[1:]] == [2, 3, 4]
    assert rows[2].error == "id must be a string" and rows[3].error == "not a JSON object"


class FakeClient:
    def __init__(self, latest: notify_pb2.Template | None = None):
        self.latest = latest
        self.imported: list[list[str]] = []

    async def get_template(self, name, version=0):
        if self.latest is None:
            raise errors.NotFound(f"template {name!r} not found")
        return self.latest

    import_recipients = Client.import_recipients  # the real batching, over upsert_recipients below

    async def upsert_recipients(self, batch):
        self.imported.append([r.id for r in batch])
        refused = [notify_pb2.RecipientError(index=i, id=r.id, reason="invalid phone")
                   for i, r in enumerate(batch) if r.phone == "bad"]
        return notify_pb2.UpsertRecipientsResponse(stored=len(batch) - len(refused), errors=refused)


def _template_args(**given) -> argparse.Namespace:
    fields = {"name": "invoice-due", "channel": notify_pb2.EMAIL, "locale": None, "subject": None,
              "body_file": None, "html_file": None, "json_file": None, "description": None, "default_locale": None}
    return argparse.Namespace(**{**fields, **given})


async def test_a_template_version_keeps_the_other_channels_and_locales_contents():
    new = await notify_cli._new_version(_template_args(subject="Hi", body_file="Due"), FakeClient())
    assert [(c.channel, c.locale, c.subject, c.text) for c in new.contents] == [(notify_pb2.EMAIL, "", "Hi", "Due")]
    latest = notify_pb2.Template(name="invoice-due", version=4, default_locale="en", description="d", contents=[
        notify_pb2.TemplateContent(channel=notify_pb2.EMAIL, text="old"),
        notify_pb2.TemplateContent(channel=notify_pb2.EMAIL, locale="de", text="alt"),
        notify_pb2.TemplateContent(channel=notify_pb2.SMS, text="sms")])
    new = await notify_cli._new_version(_template_args(body_file="new"), FakeClient(latest))
    assert [(c.channel, c.locale, c.text) for c in new.contents] == [
        (notify_pb2.EMAIL, "de", "alt"), (notify_pb2.SMS, "", "sms"), (notify_pb2.EMAIL, "", "new")]
    assert (new.description, new.default_locale, new.version) == ("d", "en", 0)


async def test_an_import_reports_each_refused_row_by_line_and_a_summary(tmp_path, capsys):
    path = tmp_path / "people.csv"
    path.write_text("id,phone\n" + "".join(f"r{i},{'bad' if i % 4 == 0 else ''}\n" for i in range(10))
                    + ",+14155550100\n")
    client = FakeClient()
    args = argparse.Namespace(file=str(path), format=None, batch=4, out=cli.Output())
    assert await notify_cli._import(args, client) == 1
    assert client.imported == [["r0", "r1", "r2", "r3"], ["r4", "r5", "r6", "r7"], ["r8", "r9"]]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # Rows are read ahead of the calls' answers: refusals come as found, each naming its line.
    assert sorted(lines[:-1], key=lambda line: line["line"]) == [
        {"line": 2, "id": "r0", "error": "invalid phone"}, {"line": 6, "id": "r4", "error": "invalid phone"},
        {"line": 10, "id": "r8", "error": "invalid phone"}, {"line": 12, "error": "no id"}]
    assert {k: lines[-1][k] for k in ("imported", "refused")} == {"imported": 7, "refused": 4}
