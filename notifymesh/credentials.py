"""How a client finds its credentials (client side: imports no server code).

Per field, the first found: an explicit argument (CLI --ca/--cert/--key/--api-key,
Client keyword arguments), the environment (NOTIFYMESH_CA, NOTIFYMESH_CERT,
NOTIFYMESH_KEY as file paths, NOTIFYMESH_API_KEY), then the local-mesh registry:
LocalMesh.start records each frontend address's data dir in
$NOTIFYMESH_HOME (default ~/.notifymesh)/meshes/<host>_<port>.json, and its files
are read from there: tls/ca.pem, tls/client.pem, tls/client.key and admin.key
(the bootstrap admin key). Non-Python clients read the same files.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class Credentials:
    ca_pem: bytes | None = None      # trust these roots (None: system roots)
    cert_pem: bytes | None = None    # client certificate (mTLS, optional on the public port)
    key_pem: bytes | None = None
    api_key: str | None = None       # sent as `authorization: Bearer <key>`
    plaintext: bool = False          # only for a mesh explicitly run without TLS


def home() -> Path:
    return Path(os.environ.get("NOTIFYMESH_HOME") or Path.home() / ".notifymesh")


def _registry_file(address: str) -> Path:
    return home() / "meshes" / (address.replace(":", "_").replace("/", "_").strip("[]") + ".json")


def register_local_mesh(frontend_addresses: Sequence[str], data_dir: Path) -> None:
    """Records data_dir for each frontend address (one small file per address,
    overwritten: bounded by the ports)."""
    for address in frontend_addresses:
        path = _registry_file(address)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"data_dir": str(Path(data_dir).resolve())}))


def local_data_dir(addresses: Sequence[str]) -> Path | None:
    """The data dir of the local mesh serving the first registered address."""
    for address in addresses:
        try:
            return Path(json.loads(_registry_file(address).read_text())["data_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _read(path: Path | str | None) -> bytes | None:
    try:
        return Path(path).read_bytes() if path else None
    except OSError:
        return None


def resolve(addresses: Sequence[str], *, ca=None, cert=None, key=None, api_key=None) -> Credentials:
    data_dir = local_data_dir(addresses)
    local = (lambda name: data_dir / name if data_dir else None)
    api_key = api_key or os.environ.get("NOTIFYMESH_API_KEY") or (
        (_read(local("admin.key")) or b"").decode().strip() or None)
    return Credentials(ca_pem=_read(ca or os.environ.get("NOTIFYMESH_CA") or local("tls/ca.pem")),
                       cert_pem=_read(cert or os.environ.get("NOTIFYMESH_CERT") or local("tls/client.pem")),
                       key_pem=_read(key or os.environ.get("NOTIFYMESH_KEY") or local("tls/client.key")),
                       api_key=api_key)
