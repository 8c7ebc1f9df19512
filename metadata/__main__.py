import notifymesh  # noqa: F401  first: it chooses gRPC's I/O path before grpc loads
from metadata.service import build
from notifymesh import server

server.main("metadata", build)
