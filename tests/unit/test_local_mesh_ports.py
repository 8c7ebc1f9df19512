"""The local mesh's processes and ports, as LocalMesh lays them out (nothing started)."""

import json

from deploy.local import ETCD_PORTS_FILE, HA, LocalMesh


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
