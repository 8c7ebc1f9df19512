"""The local mesh's processes and ports, as LocalMesh lays them out (nothing started)."""

import json

import pytest

from deploy.local import ETCD_PORTS_FILE, FRONTEND_PORTS_FROM, HA, LocalMesh, PortInUse, free_frontend_port
from notifymesh.server.config import Config


def test_every_port_derives_from_the_frontend_port(tmp_path):
    mesh = LocalMesh(tmp_path / "a", frontend_port=6000, **HA)
    assert mesh.frontend_addrs == ["127.0.0.1:6000", "127.0.0.1:6001"]
    assert mesh.frontend_target == "127.0.0.1:6000,127.0.0.1:6001"
    assert mesh.etcd_ports == [(6010, 6020), (6011, 6021), (6012, 6022)]
    assert mesh.provider_ports == (6018, 6019, 6017) and mesh.frontend_http_ports() == [6025, 6026]
    assert [n for n in mesh.processes if not n.startswith("storage-")] == [
        "etcd-1", "etcd-2", "etcd-3", "local-providers", "metadata-1", "metadata-2", "sender-1", "sender-2",
        "frontend-1", "frontend-2"]
    other = LocalMesh(tmp_path / "b", frontend_port=6030, **HA)  # side by side: no port in common
    ports = lambda m: [*m.frontend_ports, *(p for pair in m.etcd_ports for p in pair), *m.provider_ports,  # noqa: E731
                       *m.frontend_http_ports()]
    assert not set(ports(mesh)) & set(ports(other)) and len(set(ports(mesh))) == len(ports(mesh))
    assert all(6000 <= port < 6030 for port in ports(mesh))


def test_an_existing_etcd_keeps_the_ports_it_was_made_with(tmp_path):
    (tmp_path / "legacy" / "etcd-1").mkdir(parents=True)  # made before ports were recorded
    assert LocalMesh(tmp_path / "legacy", frontend_port=6000).etcd_ports == [(23790, 23800)]
    (tmp_path / "recorded" / "etcd-1").mkdir(parents=True)
    (tmp_path / "recorded" / ETCD_PORTS_FILE).write_text(json.dumps([[7010, 7020]]))
    assert LocalMesh(tmp_path / "recorded", frontend_port=6000).etcd_ports == [(7010, 7020)]


def test_frontend_ports_come_from_below_the_ephemeral_range_with_their_http_port_free():
    """Outside the range bind(0) and outgoing connections take ports from, so nothing
    but another mesh takes P+25 between its choice and the frontend's bind."""
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = [free_frontend_port() for _ in range(20)]
    assert all(FRONTEND_PORTS_FROM <= port and port + Config.frontend_http_port_offset < low for port in ports)
    assert len(set(ports)) > 1  # random: parallel workers seldom choose alike


def test_a_service_that_exited_on_a_taken_port_says_port_in_use(tmp_path):
    mesh = LocalMesh(tmp_path / "m", frontend_port=6000)
    frontend = mesh.processes["frontend-1"]
    frontend.log_path.parent.mkdir(parents=True, exist_ok=True)
    frontend.log_path.write_text("OSError: [Errno 98] error while attempting to bind on address "
                                 "('127.0.0.1', 6025): address already in use\n")
    with pytest.raises(PortInUse, match="frontend-1 exited"):
        mesh.wait_serving(["frontend-1"])  # never started: not alive
    frontend.log_path.write_text("ValueError: something else\n")
    with pytest.raises(RuntimeError, match="frontend-1 exited") as raised:
        mesh.wait_serving(["frontend-1"])
    assert not isinstance(raised.value, PortInUse)


def test_etcd_or_the_local_providers_exited_on_a_taken_port_say_port_in_use(tmp_path):
    """A bench gives them ports bind(0) chose, which an outgoing connection can take
    before they bind: the mesh then starts again on others (bench/fresh_mesh.py)."""
    mesh = LocalMesh(tmp_path / "m", frontend_port=6000)
    for name, wait in (("local-providers", mesh._wait_local_providers), ("etcd-1", lambda: mesh._wait_etcd("etcd-1"))):
        log_path = mesh.processes[name].log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("local providers: [Errno 98] error while attempting to bind on address "
                            "('127.0.0.1', 47967): address already in use\n")
        with pytest.raises(PortInUse, match=f"{name} exited"):
            wait()  # never started: not alive
        log_path.write_text("ValueError: something else\n")
        with pytest.raises(RuntimeError, match=f"{name} exited") as raised:
            wait()
        assert not isinstance(raised.value, PortInUse)
