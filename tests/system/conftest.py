"""Fixtures that run the real mesh: etcd and every service as OS processes on
ephemeral loopback ports, with RocksDB under a temporary directory."""

import pytest
from helpers import new_ha_mesh, new_mesh

from notifymesh.client import Client


@pytest.fixture(scope="session")
def mesh(tmp_path_factory):
    """One mesh shared by the tests that do not break it (each uses its own names)."""
    mesh = new_mesh(tmp_path_factory.mktemp("mesh"))
    yield mesh
    mesh.stop()


@pytest.fixture
def own_mesh(tmp_path):
    """A mesh for one test alone: fault tests kill and restart its processes."""
    mesh = new_mesh(tmp_path / "mesh")
    yield mesh
    mesh.stop()


@pytest.fixture
def ha_mesh(tmp_path):
    """The mesh of `notifymesh up --ha` for one test: 3 etcd members, 2 metadata
    services, 3 storage nodes, 2 senders, 2 frontends."""
    mesh = new_ha_mesh(tmp_path / "mesh")
    yield mesh
    mesh.stop()


@pytest.fixture
async def client(mesh):
    async with Client(mesh.frontend_addr) as client:
        yield client
