"""notifymesh.credentials.resolve: an explicit argument, then the environment, then
the local-mesh registry that LocalMesh.start writes."""

import pytest

from notifymesh.credentials import Credentials, register_local_mesh, resolve


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFYMESH_HOME", str(tmp_path / "home"))
    for env in ("NOTIFYMESH_CA", "NOTIFYMESH_CERT", "NOTIFYMESH_KEY", "NOTIFYMESH_PLAINTEXT"):
        monkeypatch.delenv(env, raising=False)
    return tmp_path


def local_mesh(path, *addresses, plaintext=False):
    (path / "tls").mkdir(parents=True)
    for name in ("ca.pem", "client.pem", "client.key"):
        (path / "tls" / name).write_bytes(b"mesh " + name.encode())
    register_local_mesh(addresses, path, plaintext=plaintext)


def test_nothing_known_is_tls_against_the_system_roots(home):
    assert resolve(["example.com:443"]) == Credentials()


def test_a_registered_local_mesh_gives_its_ca_and_client_certificate(home):
    local_mesh(home / "data", "127.0.0.1:6000", "127.0.0.1:6001")
    for address in ("127.0.0.1:6000", "127.0.0.1:6001"):
        found = resolve([address])
        assert (found.ca_pem, found.cert_pem, found.key_pem) == (b"mesh ca.pem", b"mesh client.pem",
                                                                 b"mesh client.key")
        assert not found.plaintext
    assert resolve(["127.0.0.1:6002"]) == Credentials()


def test_the_environment_beats_the_registry_and_an_argument_beats_both(home, monkeypatch):
    local_mesh(home / "data", "[::1]:6000")
    (home / "env-ca.pem").write_bytes(b"env ca")
    (home / "arg-ca.pem").write_bytes(b"arg ca")
    monkeypatch.setenv("NOTIFYMESH_CA", str(home / "env-ca.pem"))
    assert resolve(["[::1]:6000"]).ca_pem == b"env ca"
    assert resolve(["[::1]:6000"]).cert_pem == b"mesh client.pem"  # per field
    assert resolve(["[::1]:6000"], ca=home / "arg-ca.pem").ca_pem == b"arg ca"
    assert resolve(["[::1]:6000"], ca=b"pem bytes").ca_pem == b"pem bytes"


def test_a_mesh_run_without_tls_is_recorded_so(home, monkeypatch):
    local_mesh(home / "data", "127.0.0.1:7000", plaintext=True)
    assert resolve(["127.0.0.1:7000"]).plaintext
    monkeypatch.setenv("NOTIFYMESH_PLAINTEXT", "1")
    assert resolve(["127.0.0.1:7001"]).plaintext
