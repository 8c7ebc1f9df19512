import notifymesh  # noqa: F401  first: it chooses gRPC's I/O path before grpc loads
from frontend.service import build
from notifymesh import server

server.main("frontend", build)
