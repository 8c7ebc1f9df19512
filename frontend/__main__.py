from notifymesh.server import process  # first: it chooses gRPC's I/O path before grpc loads
from frontend.service import build

process.main("frontend", build)
