from notifymesh import server
from storage.service import build


def _arguments(parser):
    parser.add_argument("--data-dir", required=True, help="RocksDB directory of this node")


server.main("storage", build, _arguments)
