from notifymesh.server import process  # first: it chooses gRPC's I/O path before grpc loads
from sender.service import build

process.main("sender", build)
