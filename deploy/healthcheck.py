"""`python -m deploy.healthcheck HOST:PORT`: exit 0 when the service there answers
SERVING to the standard gRPC health check (grpc.health.v1), 1 otherwise. The
container probes of deploy/kubernetes run it, where the kubelet's own gRPC probe
cannot: it speaks plaintext only."""

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def serving(addr: str, timeout_s: float) -> bool:
    with grpc.insecure_channel(addr) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.healthcheck", description=__doc__.split("\n\n")[0])
    p.add_argument("addr", help="host:port of a notifymesh service")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds")
    args = p.parse_args(argv)
    return 0 if serving(args.addr, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
