"""Mutual TLS between the services and to etcd, from a directory of PEM files:
ca.pem (the cluster CA), <node-id>.pem and <node-id>.key (this process's
certificate, which serves as its server and its client certificate).

Internal ports require a client certificate signed by the cluster CA; the
frontend's public port does not ask for one (Python's gRPC either requires and
verifies one or does not request it: API keys authenticate public callers).
Services dial each other by INTERNAL_NAME, which every certificate of the cluster
CA names, so a peer is checked for being the cluster's, whatever address it has.

Rotation without downtime: a server re-reads its files at each new connection when
they changed (grpc's dynamic server credentials), and a process's channels are
rebuilt with new client credentials when its files change (ChannelCredentials);
the etcd client takes them at its next connect (cluster.TlsEtcdClient).
"""

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from notifymesh.credentials import CA_FILE
from notifymesh.log import fields

log = logging.getLogger(__name__)

INTERNAL_NAME = "notifymesh.internal"
CHECK_EVERY_S = 1.0  # channels look at the files' times at most this often


@dataclass(frozen=True)
class TlsFiles:
    dir: Path
    name: str  # the process's: its files are <name>.pem and <name>.key

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return self.dir / CA_FILE, self.dir / f"{self.name}.pem", self.dir / f"{self.name}.key"

    def stamp(self) -> tuple:
        """Changes whenever any of the files is replaced or rewritten."""
        stamps = []
        for path in self.paths:
            st = os.stat(path)
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA, certificate, key) PEM; ValueError while a rotation has replaced only
        one of the certificate and its key."""
        ca, cert, key = (path.read_bytes() for path in self.paths)
        public = serialization.load_pem_private_key(key, None).public_key()
        if x509.load_pem_x509_certificate(cert).public_key() != public:
            raise ValueError(f"{self.paths[1]} is not the certificate of {self.paths[2]}")
        return ca, cert, key


def server_credentials(files: TlsFiles, require_client_cert: bool) -> grpc.ServerCredentials:
    """Credentials that take in new files at the next connection after they change."""
    ca, cert, key = files.read()
    lock = threading.Lock()
    seen = [files.stamp()]

    def config(ca: bytes, cert: bytes, key: bytes):
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch():  # called by gRPC's core at each handshake: None keeps the current files
        with lock:
            try:
                stamp = files.stamp()
                if stamp == seen[0]:
                    return None
                loaded = config(*files.read())
            except (OSError, ValueError) as e:  # mid-rotation: keep the current ones, look again next time
                log.warning("certificate files not reloaded yet", extra=fields(error=repr(e)))
                return None
            seen[0] = stamp
            log.info("certificate files reloaded", extra=fields(name=files.name))
            return loaded

    return grpc.dynamic_ssl_server_credentials(config(ca, cert, key), fetch,
                                               require_client_authentication=require_client_cert)


class ChannelCredentials:
    """Client credentials from the files, rebuilt once they change; generation
    counts the changes, for a holder of channels to make new ones."""

    def __init__(self, files: TlsFiles):
        self._files = files
        self._stamp = files.stamp()
        self.credentials = grpc.ssl_channel_credentials(*self._ordered(files.read()))
        self.generation = 0
        self._checked = time.monotonic()

    @staticmethod
    def _ordered(read: tuple[bytes, bytes, bytes]) -> tuple[bytes, bytes, bytes]:
        ca, cert, key = read
        return ca, key, cert  # ssl_channel_credentials(root_certificates, private_key, certificate_chain)

    def current(self) -> grpc.ChannelCredentials:
        now = time.monotonic()
        if now - self._checked >= CHECK_EVERY_S:
            self._checked = now
            try:
                stamp = self._files.stamp()
                if stamp != self._stamp:
                    self.credentials = grpc.ssl_channel_credentials(*self._ordered(self._files.read()))
                    self._stamp, self.generation = stamp, self.generation + 1
                    log.info("client certificate reloaded", extra=fields(name=self._files.name))
            except (OSError, ValueError) as e:
                log.warning("certificate files not reloaded yet", extra=fields(error=repr(e)))
        return self.credentials


def internal_options() -> list[tuple[str, object]]:
    """Channel options of a service's channels to the others (see INTERNAL_NAME)."""
    return [("grpc.ssl_target_name_override", INTERNAL_NAME)]


def client_channel(addr: str, files: TlsFiles | None, aio: bool = False, interceptors=None):
    """A channel to any process of the mesh that presents files' certificate, trusts
    their CA and checks the peer for INTERNAL_NAME (what every internal port asks);
    plaintext when files is None. aio: a grpc.aio channel (with interceptors, if
    any); otherwise a blocking one. For tools and tests: a service's own channels
    follow rotations (ChannelCredentials)."""
    if files is None:
        return grpc.aio.insecure_channel(addr, interceptors=interceptors) if aio else grpc.insecure_channel(addr)
    credentials = grpc.ssl_channel_credentials(*ChannelCredentials._ordered(files.read()))
    if aio:
        return grpc.aio.secure_channel(addr, credentials, options=internal_options(), interceptors=interceptors)
    return grpc.secure_channel(addr, credentials, options=internal_options())
