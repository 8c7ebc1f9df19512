"""The .proto files are the contract for clients in any language: a Node.js client
(grpc-js, its service definitions loaded from protos/ at run time, as the README
tells a Node user to) publishes, receives over the streaming Subscribe, notifies
a recipient on two channels and meets the API's errors as their precise status
codes. Node and npm are installed by .ci/run; without them this fails."""

import json
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "tests" / "clients" / "node"


def test_a_node_client_built_from_the_protos_publishes_subscribes_and_notifies(tmp_path, mesh):
    for tool in ("node", "npm"):
        assert shutil.which(tool), f"{tool} is not installed (.ci/run installs Debian's nodejs and npm)"
    for name in ("package.json", "package-lock.json", "client.js"):
        shutil.copy(CLIENT / name, tmp_path / name)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=tmp_path, check=True,
                   timeout=300)
    run = subprocess.run(
        ["node", "client.js", str(ROOT / "protos"), mesh.frontend_addr, str(mesh.tls_dir / "ca.pem"),
         str(mesh.admin_key_path), str(os.getpid())],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert "failed" not in report and "stream_error" not in report, report

    assert report["received"] == {"id": report["published_ids"][0], "data": "hello from node",
                                  "attributes": {"language": "javascript"}, "attempt": 1}
    assert report["ack"] == {"code": "OK"}
    codes = {name: error["code"] for name, error in {**report["errors"], **report["errors_notify"]}.items()}
    assert codes == {"publish_to_unknown_topic": "NOT_FOUND", "bad_topic_name": "INVALID_ARGUMENT",
                     "topic_again": "ALREADY_EXISTS", "no_credentials": "UNAUTHENTICATED",
                     "wrong_key": "UNAUTHENTICATED", "bad_phone": "INVALID_ARGUMENT",
                     "template_not_compiling": "INVALID_ARGUMENT", "unknown_template": "NOT_FOUND",
                     "data_not_json": "INVALID_ARGUMENT"}
    assert "line 2" in report["errors_notify"]["template_not_compiling"]["details"]
    assert "not found" in report["errors"]["publish_to_unknown_topic"]["details"]

    assert sorted(s["channel"] for s in report["sends"]) == ["EMAIL", "SMS"]
    for send in report["sends"]:
        assert send["state"] in ("SEND_SENT", "SEND_DELIVERED"), report["sends"]
        assert send["timeline"][:3] == ["SEND_QUEUED", "SEND_RENDERED", "SEND_SENT"]
    assert report["repeat_id"] == report["notification_id"]
