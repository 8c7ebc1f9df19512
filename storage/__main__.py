from notifymesh.server import process  # first: it chooses gRPC's I/O path before grpc loads
from storage.service import build


def _arguments(parser):
    parser.add_argument("--data-dir", required=True, help="RocksDB directory of this node")


process.main("storage", build, _arguments)
