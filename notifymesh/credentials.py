"""How a client finds the credentials it connects to a mesh with.

Each field: the explicit argument (Client keywords; the CLI's --ca/--cert/--key) ->
the environment (NOTIFYMESH_CA, NOTIFYMESH_CERT, NOTIFYMESH_KEY: file paths) -> the
local-mesh registry: LocalMesh.start writes $NOTIFYMESH_HOME (default ~/.notifymesh)
/meshes/<host>_<port>.json = {"data_dir": ...} per frontend address, and the files of
that data dir are read (tls/ca.pem, tls/client.pem, tls/client.key, and admin.key:
the bootstrap admin API key; NOTIFYMESH_API_KEY before it). Nothing found: TLS
against the system's roots, with no client certificate and no key. Non-Python
clients read the same files.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

TLS_DIR = "tls"  # in a local mesh's data dir
CA_FILE = "ca.pem"
CLIENT_NAME = "client"  # tls/client.pem, tls/client.key: the CLI's certificate
ADMIN_KEY_FILE = "admin.key"  # in a local mesh's data dir: its bootstrap admin API key


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
    return home() / "meshes" / (address.replace("[", "").replace("]", "").replace(":", "_") + ".json")


def register_local_mesh(frontend_addresses: Sequence[str], data_dir: Path, plaintext: bool = False) -> None:
    """Records where each frontend's mesh keeps its credentials; one file per
    address, overwritten by the next mesh on that port (bounded by ports)."""
    record = json.dumps({"data_dir": str(Path(data_dir).resolve()), **({"plaintext": True} if plaintext else {})})
    for address in frontend_addresses:
        path = _registry_file(address)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(record)
        tmp.replace(path)


def _local_mesh(addresses: Sequence[str]) -> dict:
    for address in addresses:
        try:
            return json.loads(_registry_file(address).read_text())
        except (OSError, ValueError):
            continue
    return {}


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def resolve(addresses: Sequence[str], *, ca=None, cert=None, key=None, api_key=None) -> Credentials:
    """ca/cert/key: file paths (or PEM bytes); see the module's docstring for the order."""
    mesh = _local_mesh(addresses)
    tls = Path(mesh["data_dir"]) / TLS_DIR if "data_dir" in mesh else None

    def pick(given, env: str, local_file: str) -> bytes | None:
        if isinstance(given, bytes):
            return given
        if given or os.environ.get(env):
            return _read(given or os.environ[env])
        local = tls / local_file if tls else None
        return local.read_bytes() if local and local.exists() else None

    plaintext = os.environ.get("NOTIFYMESH_PLAINTEXT", "") not in ("", "0") or bool(mesh.get("plaintext"))
    if not api_key and not os.environ.get("NOTIFYMESH_API_KEY") and "data_dir" in mesh:
        local_key = Path(mesh["data_dir"]) / ADMIN_KEY_FILE
        try:
            api_key = local_key.read_text().strip() or None
        except OSError:
            api_key = None
    return Credentials(ca_pem=pick(ca, "NOTIFYMESH_CA", CA_FILE),
                       cert_pem=pick(cert, "NOTIFYMESH_CERT", f"{CLIENT_NAME}.pem"),
                       key_pem=pick(key, "NOTIFYMESH_KEY", f"{CLIENT_NAME}.key"),
                       api_key=api_key or os.environ.get("NOTIFYMESH_API_KEY") or None, plaintext=plaintext)
