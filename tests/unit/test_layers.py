"""The layers hold: the client library loads no server code, and no service
imports another (the contracts in pyproject.toml's [tool.importlinter])."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# (Not grpc_health or grpc_reflection: grpc's own __init__ imports them whenever
# they are installed, as they are beside the server side.)
SERVER_MODULES = ("aetcd", "rocksdict", "uhashring", "httpx", "pycurl", "uvloop", "frontend", "metadata", "storage", "sender",
                  "deploy", "notifymesh.server", "notifymesh.bench", "gen.notifymesh.internal")

# What a user of the client library does, in a fresh interpreter.
CLIENT_USE = """
import json, os, sys
before = dict(os.environ)
import notifymesh
from notifymesh import Client, Delivery, Message, NotFound, NotifymeshError, Publisher, Subscriber
import notifymesh.cli
print(json.dumps({"modules": sorted(sys.modules), "environ_changed": dict(os.environ) != before,
                  "all": notifymesh.__all__}))
"""


def test_the_client_library_loads_no_server_module():
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    out = subprocess.run([sys.executable, "-c", CLIENT_USE], capture_output=True, text=True, check=True,
                         cwd=ROOT, env=env).stdout
    report = json.loads(out)
    loaded = [m for m in report["modules"] if any(m == s or m.startswith(s + ".") for s in SERVER_MODULES)]
    assert loaded == []
    assert not report["environ_changed"]  # importing notifymesh has no side effects
    assert {"Client", "Publisher", "Subscriber", "Message", "Delivery", "NotifymeshError"} <= set(report["all"])


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "broken" not in result.stdout.split("Contracts:")[-1].replace("0 broken", "")
