"""The `notifymesh` command as people and scripts meet it, run as the installed
entry point: JSON lines by default and tables on request, errors without
tracebacks (exit 1; usage exit 2), what to do when no frontend answers, stdin
publishing by line, range checks, --version and completion, and the cluster
configuration in etcd that running services follow."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import cli, cli_argv, new_topic, receive, unique

from deploy.local import free_port
from notifymesh import errors
from notifymesh.client import Client
from notifymesh.server.config import FIELDS


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The command with no mesh (a local one at the default address is not assumed)."""
    return subprocess.run(cli_argv(*args), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def json_lines(out: bytes | str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def with_sigint(argv: list[str]) -> list[str]:
    """argv with SIGINT at its default, as run from a terminal: a test runner started
    in the background ignores SIGINT, and its children would inherit that."""
    return [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "os.execv(sys.argv[1], sys.argv[1:])", *argv]


def test_version_and_shell_completion():
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("notifymesh 0.")
    bash = run("completion", "bash")
    assert bash.returncode == 0 and "_shtab_notifymesh" in bash.stdout and "subscription" in bash.stdout
    zsh = run("completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef notifymesh")


def test_no_frontend_says_what_to_do_and_subscribe_does_not_hang():
    addr = f"127.0.0.1:{free_port()}"  # nothing listens there
    listed = run("topic", "list", "--addr", addr)  # --addr after the command too
    assert listed.returncode == 1
    assert listed.stderr == f"error: cannot reach the frontend at {addr}: is the mesh running? (make up)\n"
    started = time.monotonic()
    subscribed = run("subscribe", "orders-audit", env={"NOTIFYMESH_ADDR": addr})
    assert subscribed.returncode == 1 and "cannot reach the frontend" in subscribed.stderr
    assert time.monotonic() - started < 15
    no_port = run("topic", "list", "--addr", "127.0.0.1")
    assert no_port.returncode == 2 and "has no port" in no_port.stderr
    no_port = run("topic", "list", env={"NOTIFYMESH_ADDR": "localhost"})
    assert no_port.returncode == 1 and "has no port" in no_port.stderr and "Traceback" not in no_port.stderr


def test_out_of_range_numbers_are_usage_errors():
    for args in (("topic", "create", "t-range", "--partitions", "0"),
                 ("topic", "create", "t-range", "--replication-factor", "-1"),
                 ("topic", "update", "t-range", "--partitions", "0"),
                 ("subscription", "create", "s-range", "--topic", "t", "--max-delivery-attempts", "0"),
                 ("subscribe", "s-range", "--max", "0"),
                 ("dead-letters", "list", "s-range", "--max", "1001"),
                 ("up", "--storage-nodes", "0")):
        refused = run(*args)
        assert refused.returncode == 2 and "out of range" in refused.stderr, args


async def test_results_are_json_lines_or_a_table(mesh, client):
    topic, dead, sub = unique("contract"), unique("contract-dead"), unique("contract-sub")
    created = cli(mesh, "topic", "create", topic, "--partitions", "2")
    assert created.returncode == 0 and json.loads(created.stdout)["partitions"] == 2
    await client.create_topic(dead)
    # --dead-letter-topic alone: 5 attempts, as its help says
    made = cli(mesh, "subscription", "create", sub, "--topic", topic, "--dead-letter-topic", dead)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["max_delivery_attempts"] == 5

    published = cli(mesh, "publish", topic, "hello")
    assert published.returncode == 0 and list(json.loads(published.stdout)) == ["message_id"]
    binary = await client.publish(topic, [b"\xff\xfe"])
    received = json_lines(cli(mesh, "subscribe", sub, "--max", "2", "--no-ack").stdout)
    assert {m.get("data") for m in received} == {"hello", None}
    assert [m["data_base64"] for m in received if m["id"] == binary[0]] == ["//4="]
    nacked = cli(mesh, "nack", *(m["ack_id"] for m in received), "--delay", "0")
    assert json.loads(nacked.stdout) == {"subscription": sub, "nacked": 2, "terminal": False}

    table = cli(mesh, "--output", "table", "topic", "list").stdout.decode().splitlines()
    assert table[0].split()[:3] == ["NAME", "PARTITIONS", "REPLICATION_FACTOR"]
    assert any(line.split()[:2] == [topic, "2"] for line in table[1:])
    [status] = json_lines(cli(mesh, "cluster", "status").stdout)
    assert {m["kind"] for m in status["members"]} == {"metadata", "storage", "sender", "frontend"}
    assert sorted(s["partition"] for s in status["shards"] if s["topic"] == topic) == [0, 1]
    deleted = cli(mesh, "subscription", "delete", sub)
    assert json.loads(deleted.stdout) == {"subscription": sub, "deleted": True}


async def test_errors_without_tracebacks_and_a_closed_pipe(mesh, client):
    garbage = cli(mesh, "nack", "garbage")
    assert garbage.returncode == 1
    assert garbage.stderr.decode() == "error: INVALID_ARGUMENT: malformed ack id 'garbage'\n"

    topic, sub = await new_topic(client, "piped")
    await client.publish(topic, [b"first"])
    env = {**os.environ, "NOTIFYMESH_ADDR": mesh.frontend_target}
    reader = subprocess.Popen(cli_argv("subscribe", sub), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert json.loads(reader.stdout.readline())["data"] == "first"
        reader.stdout.close()  # as `| head -1` does once it has its line
        deadline = time.monotonic() + 30
        while reader.poll() is None and time.monotonic() < deadline:
            await client.publish(topic, [b"more"])  # the next line it prints meets the closed pipe
            time.sleep(0.2)
        assert reader.wait(5) == 128 + signal.SIGPIPE
        assert reader.stderr.read() == b"", "quietly"
    finally:
        reader.kill()
        reader.wait()


async def test_publishing_lines_names_the_refused_line(mesh, client):
    topic, sub = await new_topic(client, "lines")
    lines = b"one\n\nthree\n"  # line 2 is empty: neither data nor attributes
    refused = cli(mesh, "publish", topic, "-", stdin=lines)
    assert refused.returncode == 1
    assert b"error: line 2: INVALID_ARGUMENT: has neither data nor attributes" in refused.stderr
    assert b"--skip-invalid" in refused.stderr and 2 not in [r["line"] for r in json_lines(refused.stdout)]

    skipped = cli(mesh, "publish", topic, "-", "--skip-invalid", stdin=lines)
    assert skipped.returncode == 0, skipped.stderr
    results = json_lines(skipped.stdout)
    assert [r["line"] for r in results] == [1, 2, 3]
    assert "message_id" in results[0] and "message_id" in results[2]
    assert results[1]["error"] == "INVALID_ARGUMENT: has neither data nor attributes"
    assert b"read 3, acknowledged 2, not acknowledged 1" in skipped.stderr
    assert {m.message.data for m in await receive(client, sub, 2)} == {b"one", b"three"}


async def test_ctrl_c_while_publishing_lines_prints_a_summary(mesh, client):
    topic, _ = await new_topic(client, "interrupted")
    # PYTHONFAULTHANDLER: should it hang after Ctrl-C, SIGABRT makes it print every thread's stack.
    env = {**os.environ, "NOTIFYMESH_ADDR": mesh.frontend_target, "PYTHONFAULTHANDLER": "1"}
    publisher = subprocess.Popen(with_sigint(cli_argv("publish", topic, "-")), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        publisher.stdin.write(b"".join(b"line %d\n" % i for i in range(1200)))
        publisher.stdin.flush()  # and left open, as a terminal would be
        ids = [json.loads(publisher.stdout.readline())["message_id"] for _ in range(1200)]  # the last 200 too
        publisher.send_signal(signal.SIGINT)
        try:
            publisher.wait(15)
        except subprocess.TimeoutExpired:
            publisher.send_signal(signal.SIGABRT)
            publisher.wait(15)
            raise AssertionError("no exit within 15 s of SIGINT:\n" + publisher.stderr.read().decode()) from None
        assert publisher.returncode == 130
        stderr = publisher.stderr.read().decode()
        assert "interrupted: read 1200, acknowledged 1200, not acknowledged 0" in stderr
        assert "Traceback" not in stderr and len(set(ids)) == 1200
    finally:
        publisher.kill()
        publisher.wait()


async def test_cluster_config_is_live_and_says_what_waits_for_a_restart(own_mesh):
    def config(*args: str) -> subprocess.CompletedProcess:
        return cli(own_mesh, "config", *args)

    [before] = json_lines(config("get", "max_batch_messages").stdout)
    assert before == {"key": "max_batch_messages", "value": 1000, "default": 1000, "stored": False,
                      "takes_effect": "live"}
    assert [setting["key"] for setting in json_lines(config("get").stdout)] == list(FIELDS)
    async with Client(own_mesh.frontend_target) as client:
        topic = unique("configured")
        await client.create_topic(topic)
        set_ = config("set", "max_batch_messages", "2")
        assert set_.returncode == 0 and json.loads(set_.stdout)["value"] == 2
        assert set_.stderr == b""
        started = time.monotonic()
        while True:  # the frontend follows etcd: within moments, well under 5 s
            try:
                await client.publish(topic, [b"a", b"b", b"c"])
            except errors.InvalidArgument as e:
                assert "at most 2" in e.details
                break
            assert time.monotonic() - started < 5, "the frontend did not take the new limit in"
            time.sleep(0.1)
        lines = cli(own_mesh, "publish", topic, "-", stdin=b"1\n2\n3\n4\n5\n")  # in calls of 2 now
        assert lines.returncode == 0 and len(json_lines(lines.stdout)) == 5, lines.stderr
        assert config("set", "default_ack_deadline_s", "20").returncode == 0
        started = time.monotonic()
        while (await client.create_subscription(unique("configured-sub"), topic)).ack_deadline.seconds != 20:
            assert time.monotonic() - started < 5, "the metadata service did not take the new default in"
            time.sleep(0.1)

        restart = config("set", "member_lease_ttl_s", "5")
        assert restart.returncode == 0 and json.loads(restart.stdout)["takes_effect"] == "at restart"
        assert b"when restarted" in restart.stderr
        for args, says in ((("nope", "1"), b"unknown config key 'nope'"),
                           (("max_batch_messages", "0"), b"out of range"),
                           (("max_batch_messages", "2.5"), b"not an integer"),
                           (("min_ack_deadline_s", "30"), b"ack deadlines out of order")):
            bad = config("set", *args)
            assert bad.returncode == 1 and bad.stderr.startswith(b"error: INVALID_ARGUMENT") and says in bad.stderr

        assert json.loads(config("reset", "max_batch_messages").stdout)["stored"] is False
        started = time.monotonic()
        while True:
            try:
                await client.publish(topic, [b"a", b"b", b"c"])
                break
            except errors.InvalidArgument:
                assert time.monotonic() - started < 5, "the reset did not reach the frontend"
                time.sleep(0.1)


@pytest.mark.parametrize("shell", ["bash"])
def test_completion_script_loads_in_the_shell(shell, tmp_path):
    script = tmp_path / "notifymesh.bash"
    script.write_text(run("completion", shell).stdout)
    loaded = subprocess.run([shell, "-c", f"source {script} && complete -p notifymesh"], capture_output=True,
                            text=True, timeout=30)
    assert loaded.returncode == 0 and "notifymesh" in loaded.stdout, loaded.stderr
