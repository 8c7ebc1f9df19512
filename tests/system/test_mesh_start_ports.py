"""A test mesh whose frontend HTTP port (its port + 25) was taken between the choice
of ports and the start (another worker's mesh, under pytest-xdist) starts again on
other ports instead of failing the test."""

import socket

import helpers
from helpers import new_mesh

from deploy.local import free_frontend_port
from notifymesh.client import Client
from notifymesh.server.config import Config


async def test_a_mesh_whose_http_port_was_taken_starts_again_on_other_ports(tmp_path, monkeypatch):
    taken = free_frontend_port()
    chosen = [taken]
    monkeypatch.setattr(helpers, "free_frontend_port", lambda: chosen.pop() if chosen else free_frontend_port())
    with socket.socket() as holder:  # another mesh's frontend, on this one's HTTP port
        holder.bind(("127.0.0.1", taken + Config.frontend_http_port_offset))
        holder.listen()
        mesh = new_mesh(tmp_path / "mesh")
        try:
            assert mesh.frontend_ports != [taken]
            async with Client(mesh.frontend_addr) as client:
                assert await client.list_topics() is not None
        finally:
            mesh.stop()
