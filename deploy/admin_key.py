"""The bootstrap admin API key: made once outside the mesh, given to the metadata
service (`--admin-key-file`), which registers it at start unless its key id is in
etcd already. The local runner keeps it as <data dir>/admin.key; in Kubernetes it
is the Secret notifymesh-admin-key (docs/operations.md):

    python -m deploy.admin_key admin.key
    kubectl create secret generic notifymesh-admin-key --from-file=admin.key
"""

import argparse
import os
from pathlib import Path

from notifymesh.server import principal


def create(path: Path) -> bool:
    """Writes a new admin key (nm_<key id>_<secret>) to path, 0600, unless the file
    exists; whether it did."""
    if path.exists():
        return False
    _, _, key = principal.new_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m deploy.admin_key",
                                description="make the bootstrap admin API key file (kept if it exists)")
    p.add_argument("file", type=Path, help="where the key goes (0600), e.g. admin.key")
    args = p.parse_args(argv)
    made = create(args.file)
    print(f"{args.file}: {'a new admin key' if made else 'kept (exists)'}; its key id: "
          f"{principal.parse_key(args.file.read_text().strip())[0]}")


if __name__ == "__main__":
    main()
