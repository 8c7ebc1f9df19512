"""The local mesh's certificate authority: a CA and one certificate per process
(and the CLI's, client.pem), made with `cryptography` on first start and reused after.

Every certificate is valid as a server and as a client (mutual TLS between services)
and names INTERNAL_NAME, which services dial each other by (notifymesh.server.tls),
beside the process's own addresses for clients that dial an address (the frontend's
public port, etcd's peers). Keys are ECDSA P-256: quick to make, and quick handshakes.
"""

import datetime
import ipaddress
import os
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from notifymesh.credentials import CA_FILE
from notifymesh.server.tls import INTERNAL_NAME

CA_KEY_FILE = "ca.key"
CA_DAYS = 3650
CERT_DAYS = 825  # as long as browsers accept a server certificate
LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Written to a temporary file then renamed: a reader sees the old file or the new."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    if private:
        tmp.chmod(0o600)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "notifymesh local mesh"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def new_ca(tls_dir: Path, common_name: str = "notifymesh local CA") -> None:
    """Writes tls_dir/ca.pem and ca.key (0600): a new CA, replacing any there."""
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write(tls_dir / CA_KEY_FILE, _key_pem(key), private=True)
    _write(tls_dir / CA_FILE, cert.public_bytes(serialization.Encoding.PEM))


def issue(tls_dir: Path, name: str, hosts: Iterable[str] = ()) -> None:
    """Writes tls_dir/<name>.pem and <name>.key (0600), signed by the CA of tls_dir,
    for INTERNAL_NAME, the local addresses and hosts; replaces any there (rotation)."""
    ca_cert = x509.load_pem_x509_certificate((tls_dir / CA_FILE).read_bytes())
    ca_key = serialization.load_pem_private_key((tls_dir / CA_KEY_FILE).read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(INTERNAL_NAME)]
    for host in dict.fromkeys((*LOCAL_HOSTS, *hosts)):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    # The key first: a reader that sees the new certificate finds its key
    # (notifymesh.server.tls also checks they match before using them).
    _write(tls_dir / f"{name}.key", _key_pem(key), private=True)
    _write(tls_dir / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))


def ensure(tls_dir: Path, hosts_by_name: dict[str, Iterable[str]]) -> None:
    """The CA and each named certificate, made only where missing (a restart keeps them)."""
    if not (tls_dir / CA_FILE).exists() or not (tls_dir / CA_KEY_FILE).exists():
        new_ca(tls_dir)
    os.chmod(tls_dir, 0o700)
    for name, hosts in hosts_by_name.items():
        if not (tls_dir / f"{name}.pem").exists() or not (tls_dir / f"{name}.key").exists():
            issue(tls_dir, name, hosts)


def main(argv: list[str] | None = None) -> None:
    """`python -m deploy.pki DIR NAME... [--host HOST]`: a CA (made where missing)
    and a certificate per name, for a cluster beyond the local runner: in
    Kubernetes, one per workload (etcd, storage, metadata, sender, frontend, and
    client for the CLI), put in the Secret docs/operations.md names."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m deploy.pki", description=main.__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path, help="where ca.pem, ca.key and <name>.pem/.key go")
    p.add_argument("names", nargs="+", help="one certificate each (existing ones are kept)")
    p.add_argument("--host", action="append", default=[],
                   help="a DNS name or address the certificates also name (the frontend's public name, etcd's "
                        "member names); repeatable")
    args = p.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    ensure(args.dir, {name: args.host for name in args.names})
    print(f"{args.dir}: ca.pem and {', '.join(f'{n}.pem' for n in args.names)}")


if __name__ == "__main__":
    main()
