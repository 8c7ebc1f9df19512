from pathlib import Path

from notifymesh.server import process  # first: it chooses gRPC's I/O path before grpc loads
from metadata.service import build


def _arguments(parser):
    parser.add_argument("--admin-key-file", type=Path,
                        help="a bootstrap admin API key (python -m deploy.admin_key FILE makes one), registered at "
                             "start unless its key id is in etcd already")


process.main("metadata", build, _arguments)
