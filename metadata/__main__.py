from notifymesh.server import process  # first: it chooses gRPC's I/O path before grpc loads
from metadata.service import build

process.main("metadata", build)
