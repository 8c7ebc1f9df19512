"""The partition harness itself (tests/netns.py): hosts reach each other over the
bridge, a cut stops exactly the frames between its two hosts, loss drops some,
and heal restores every link."""

import subprocess
import sys

import pytest
from netns import LAB_SELF, Lab

ECHO_SERVER = """
import socket, sys
s = socket.create_server((sys.argv[1], 7000))
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(c.recv(100))
    c.close()
"""

ECHO = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 7000), timeout=float(sys.argv[2])) as c:
        c.sendall(b"ping")
        sys.exit(0 if c.recv(100) == b"ping" else 1)
except OSError:
    sys.exit(1)
"""


def reaches(lab: Lab, source: str, target: str, timeout: float = 5.0) -> bool:
    """An echo over TCP within timeout (a few SYN retransmits: after a heal the
    sender's neighbour entry may first have to be learned again)."""
    argv = lab.wrap(source, [sys.executable, "-c", ECHO, lab.host(target).ip, str(timeout)])
    return subprocess.run(argv, timeout=timeout + 10).returncode == 0


@pytest.fixture
def lab():
    with Lab() as lab:
        servers = []
        for name in ("a", "b", "c"):
            server = subprocess.Popen(lab.wrap(name, [sys.executable, "-c", ECHO_SERVER, lab.host(name).ip]),
                                      stdout=subprocess.PIPE, text=True)
            assert server.stdout.readline().strip() == "ready"
            servers.append(server)
        try:
            yield lab
        finally:
            for server in servers:
                server.kill()
                server.wait()


def test_hosts_reach_each_other_until_cut_and_again_once_healed(lab):
    assert reaches(lab, "a", "b") and reaches(lab, "b", "c") and reaches(lab, LAB_SELF, "a")
    lab.cut("a", "b")
    assert not reaches(lab, "a", "b", 1) and not reaches(lab, "b", "a", 1)
    assert reaches(lab, "a", "c") and reaches(lab, "c", "b") and reaches(lab, LAB_SELF, "b")
    lab.isolate("c")
    assert not reaches(lab, LAB_SELF, "c", 1) and not reaches(lab, "a", "c", 1)
    lab.heal()
    assert reaches(lab, "a", "b") and reaches(lab, LAB_SELF, "c")


def test_loss_drops_some_frames_between_two_hosts(lab):
    lab.lose("a", "b", 100)
    assert not reaches(lab, "a", "b", 1)
    assert reaches(lab, "a", "c")
    lab.lose("a", "b", 30)
    # TCP retransmits through 30% loss. One exchange (handshake, data, answer) fails
    # within 20 s about one time in 25 (five SYNs, each through with p = 0.7 * 0.7):
    # three tries make that one in 15,000.
    assert any(reaches(lab, "a", "b", timeout=20) for _ in range(3))


def test_closing_removes_every_namespace():
    lab = Lab()
    lab.start()
    lab.host("x")
    namespaces = {h.namespace for h in lab.hosts.values() if h.namespace} | {lab.bridge_ns}
    lab.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [ns for ns in namespaces if ns in listed]
