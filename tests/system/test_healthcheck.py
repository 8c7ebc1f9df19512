"""deploy/healthcheck.py, the container probe of deploy/kubernetes, against a real
mesh: SERVING through mutual TLS with the mesh's certificate, and a failure
(exit 1) for a plaintext probe, which the TLS port refuses."""

import subprocess
import sys


def probe(*args: str) -> int:
    return subprocess.run([sys.executable, "-m", "deploy.healthcheck", *args], capture_output=True,
                          timeout=60).returncode


def test_the_probe_reaches_every_process_through_mutual_tls_only(mesh):
    members = mesh.members()
    assert {name.split("-")[0] for name in members} == {"frontend", "metadata", "storage", "sender"}
    for name, addr in members.items():
        assert probe(addr, "--tls-dir", str(mesh.tls_dir), "--tls-name", "client") == 0, name
    storage = next(addr for name, addr in members.items() if name.startswith("storage-"))
    assert probe(storage) == 1  # plaintext against a TLS port
