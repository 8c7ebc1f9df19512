"""Helpers of the system tests: the real mesh, the CLI, receiving, a webhook endpoint."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc

from deploy.local import HA, LocalMesh, PortInUse, free_frontend_port, free_port
from notifymesh.client import Client
from notifymesh.credentials import CA_FILE, CLIENT_NAME, TLS_DIR
from notifymesh.server import sealing
from notifymesh.server.cluster import connect_etcd
from notifymesh.server.tls import TlsFiles, client_channel


START_ATTEMPTS = 3  # a mesh whose ports another took before it bound them starts again on others


def new_mesh(path, etcd_members: int = 1, frontends: int = 1, **kwargs) -> LocalMesh:
    """A started mesh on free ports; kwargs as LocalMesh takes them (metadata_services, senders, ...).
    Free ports can be taken before the mesh binds them (parallel workers and meshes):
    a new data dir's mesh then starts again, afresh, on other ports."""
    path = Path(path)
    fresh = not path.exists() or not any(path.iterdir())
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return started(LocalMesh(
                path, frontend_ports=[free_frontend_port() for _ in range(frontends)], frontends=frontends,
                etcd_ports=[(free_port(), free_port()) for _ in range(etcd_members)],
                **{"provider_ports": (free_port(), free_port(), free_port()), **kwargs}))
        except PortInUse:
            if not fresh or attempt == START_ATTEMPTS:
                raise
            shutil.rmtree(path)  # its etcd keeps the ports it was created with


def started(mesh: LocalMesh) -> LocalMesh:
    """mesh, started; stopped again when it does not start."""
    try:
        mesh.start()
    except BaseException:
        mesh.stop()
        raise
    return mesh


def new_ha_mesh(path, **kwargs) -> LocalMesh:
    """The mesh of `notifymesh up --ha`: no process the only one of its kind."""
    return new_mesh(path, **{**HA, **kwargs})


async def key_ring(mesh: LocalMesh) -> sealing.KeyRing:
    """The mesh's data keys (encryption at rest), to open what its storage nodes wrote."""
    ring = sealing.KeyRing(sealing.LocalMasterKey.from_file(mesh.master_key_file))
    etcd = connect_etcd(mesh.etcd_endpoint, mesh.client_tls())
    try:
        await sealing.load(etcd, ring)
    finally:
        await etcd.close()
    return ring


def frontend_log_lines(mesh: LocalMesh, text: str) -> dict[str, int]:
    """frontend name -> how many lines of its log contain text."""
    counts = {}
    for name in mesh.frontend_names():
        with open(mesh.processes[name].log_path, errors="replace") as log:
            counts[name] = sum(text in line for line in log)
    return counts


class _AioAuth(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, metadata):
        self._metadata = metadata

    def _with(self, details):
        return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), *self._metadata))

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._with(details), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._with(details), request)


class _SyncAuth(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, metadata):
        self._metadata = metadata

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(details._replace(metadata=[*(details.metadata or ()), *self._metadata]), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(details._replace(metadata=[*(details.metadata or ()), *self._metadata]), request)


class authed:
    """A stub over client's channel whose calls carry the client's credentials, as the
    Client's own calls do: authed(pubsub_pb2_grpc.SubscriberStub, client).Pull(request)."""

    def __init__(self, stub_class, client: Client):
        self._stub, self._metadata = stub_class(client._channel), client._metadata

    def __getattr__(self, name):
        method = getattr(self._stub, name)
        return lambda request, **kwargs: method(request, metadata=self._metadata, **kwargs)


def frontend_channel(mesh, addr: str | None = None, sync: bool = False):
    """A raw grpc channel to a frontend (default the first) whose calls carry the mesh's
    bootstrap admin key, as Client's do."""
    target = addr or mesh.frontend_addr
    if sync:
        return grpc.intercept_channel(mesh.channel(target), _SyncAuth(mesh.auth_metadata()))
    return aio_channel(mesh.data_dir, target, interceptors=[_AioAuth(mesh.auth_metadata())])


def cli(mesh, *args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """The notifymesh command against mesh (all its frontends)."""
    env = {**os.environ, "NOTIFYMESH_ADDR": mesh.frontend_target}
    return subprocess.run(cli_argv(*args), input=stdin, capture_output=True, env=env, timeout=120)


NOTIFYMESH = Path(sys.executable).with_name("notifymesh")  # the installed entry point, beside the venv's python


def cli_argv(*args: str) -> list[str]:
    """The command line of the installed `notifymesh` entry point (python -m notifymesh.cli without one)."""
    return [str(NOTIFYMESH), *args] if NOTIFYMESH.exists() else [sys.executable, "-m", "notifymesh.cli", *args]


def aio_channel(data_dir: Path, addr: str, interceptors=None) -> grpc.aio.Channel:
    """A channel for raw calls to any process of the mesh in data_dir, with its CLI
    certificate (plaintext when the mesh runs without TLS)."""
    tls = Path(data_dir) / TLS_DIR
    files = TlsFiles(tls, CLIENT_NAME) if (tls / CA_FILE).exists() else None
    return client_channel(addr, files, aio=True, interceptors=interceptors)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def new_topic(client: Client, prefix: str, subscription_prefix: str | None = None,
                    topic_options: dict | None = None, **subscription_options) -> tuple[str, str]:
    """(topic, subscription): a new topic with one subscription, the setup most
    tests start from; names are unique per call."""
    topic, subscription = unique(prefix), unique(subscription_prefix or f"{prefix}-sub")
    await client.create_topic(topic, **(topic_options or {}))
    await client.create_subscription(subscription, topic, **subscription_options)
    return topic, subscription


async def receive(client: Client, subscription: str, count: int, timeout: float = 30, ack: bool = True,
                  max_outstanding: int = 0, wanted: set[str] | None = None) -> list:
    """Messages received over one Subscribe stream until count distinct message ids
    (and every id of wanted) arrived or timeout passed; acknowledges each frame when ack."""
    received, ids = [], set()
    deadline = time.monotonic() + timeout

    async def run():
        async for frame in client.subscribe_frames(subscription, max_outstanding=max_outstanding):
            received.extend(frame)
            ids.update(m.message.message_id for m in frame)
            if ack:
                await client.acknowledge(subscription, [m.ack_id for m in frame])
            if len(ids) >= count and (wanted is None or wanted <= ids):
                return

    try:
        await asyncio.wait_for(run(), max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        pass
    return received


def ids_of(received) -> list[str]:
    return [m.message.message_id for m in received]


class Receiver:
    """A webhook endpoint: answers each POST with the next status of a script
    (then `otherwise`), after an optional delay, and records every request."""

    def __init__(self, statuses=(), otherwise=200, delay_s=0.0):
        self.requests: list[tuple[float, dict, bytes]] = []
        self.concurrent = self.most_concurrent = 0
        lock = threading.Lock()
        self._statuses, self._otherwise, self._delay = list(statuses), otherwise, delay_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((time.monotonic(), dict(self.headers), body))
                with lock:
                    receiver.concurrent += 1
                    receiver.most_concurrent = max(receiver.most_concurrent, receiver.concurrent)
                time.sleep(receiver._delay)
                with lock:
                    receiver.concurrent -= 1
                status = receiver._statuses.pop(0) if receiver._statuses else receiver._otherwise
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def messages(self) -> list[dict]:
        return [json.loads(body) for _, _, body in self.requests]
