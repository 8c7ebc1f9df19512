"""`python -m deploy.healthcheck HOST:PORT [--tls-dir DIR --tls-name NAME]`: exit 0
when the service there answers SERVING to the standard gRPC health check
(grpc.health.v1), 1 otherwise. The container probes of deploy/kubernetes run it,
where the kubelet's own gRPC probe cannot: it speaks neither TLS nor mutual TLS,
which every port of the mesh requires (notifymesh.server.tls)."""

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from notifymesh.server.tls import TlsFiles, client_channel


def serving(addr: str, timeout_s: float, files: TlsFiles | None = None) -> bool:
    with client_channel(addr, files) as ch:
        try:
            answer = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.healthcheck", description=__doc__.split("\n\n")[0])
    p.add_argument("addr", help="host:port of a notifymesh service")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds")
    p.add_argument("--tls-dir", type=Path, help="ca.pem and the certificate to present (omit: plaintext)")
    p.add_argument("--tls-name", default="client", help="the certificate's file name in --tls-dir")
    args = p.parse_args(argv)
    files = TlsFiles(args.tls_dir, args.tls_name) if args.tls_dir else None
    return 0 if serving(args.addr, args.timeout, files) else 1


if __name__ == "__main__":
    sys.exit(main())
