"""The CLI's shared parts, without a process: the table output, range checks,
which refused message a server error names, and options after the command."""

import argparse

import pytest

from notifymesh import cli, errors


def test_a_table_aligns_the_columns_of_every_row(capsys):
    out = cli.Output("table")
    out.record({"name": "orders", "partitions": 4})
    out.record({"name": "a", "partitions": 12, "extra": {"k": "v"}})
    out.close()
    assert capsys.readouterr().out.splitlines() == [
        "NAME    PARTITIONS  EXTRA",
        "orders  4",
        'a       12          {"k": "v"}']


def test_json_lines_by_default_and_a_streaming_table_row_by_row(capsys):
    out = cli.Output()
    out.record({"message_id": "x", "data": "é"})
    assert capsys.readouterr().out == '{"message_id": "x", "data": "é"}\n'
    streaming = cli.Output("table", streaming=True)
    streaming.record({"line": 1, "message_id": "abcdefghijklm"})
    streaming.record({"line": 22222, "message_id": "b"})
    assert capsys.readouterr().out.splitlines() == [
        "LINE  MESSAGE_ID",
        "1     abcdefghijklm",
        "22222  b"]  # as wide as the first row: a wider cell pushes the rest


def test_counts_out_of_range_are_refused():
    assert cli.count(1)("3") == 3
    for text in ("0", "-2", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.count(1, 10)(text)
    with pytest.raises(argparse.ArgumentTypeError, match="1 to 10"):
        cli.count(1, 10)("11")


def test_the_refused_message_of_a_batch():
    assert cli._refused_message(errors.InvalidArgument("message 2: has neither data nor attributes"), 3) == (
        2, "has neither data nor attributes")
    assert cli._refused_message(errors.InvalidArgument("message 5: too big"), 3) is None
    assert cli._refused_message(errors.InvalidArgument("3 messages in one request; at most 2"), 3) is None
    assert cli._refused_message(errors.Unavailable("message 0: x"), 3) is None


def test_addr_and_output_after_any_client_command():
    args = cli.parser().parse_args(["dead-letters", "list", "s-1", "--addr", "h:1", "--output", "table"])
    assert (args.addr, args.output) == ("h:1", "table")
    args = cli.parser().parse_args(["--addr", "h:2", "topic", "list"])
    assert (args.addr, args.output) == ("h:2", "json")
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["completion", "bash", "--addr", "h:1"])  # calls no frontend
