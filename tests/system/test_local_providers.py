"""The local mesh's embedded providers: `notifymesh up` runs them on ports from
--port, prints them, sets them as the channels' providers, and `notifymesh
outbox list` shows what they received; the frontend's unsubscribe endpoint
checks tokens signed with the cluster's key in etcd."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time

import aiohttp
from helpers import START_ATTEMPTS, aio_channel, cli_argv, key_ring

from deploy.local import LOCAL_APNS_OFFSET, LOCAL_HTTP_OFFSET, LOCAL_SMTP_OFFSET, _port_free, free_mesh_port
from deploy.local_providers import credentials, provider_records
from gen.notifymesh.internal.v1 import metadata_pb2_grpc, node_pb2, node_pb2_grpc
from gen.notifymesh.v1 import notify_pb2
from notifymesh.server import sealing
from notifymesh.server.cluster import connect_etcd
from notifymesh.server.config import LOOPBACK_NETWORKS, Config, parse_networks
from notifymesh.server.unsubscribe import TokenSigner, signer, unsubscribe_url
from sender.providers import OutgoingMessage, provider_for

UP_TIMEOUT_S = 90


def outbox(data_dir, *args) -> tuple[int, list]:
    done = subprocess.run(cli_argv("outbox", "list", "--data-dir", str(data_dir), *args), capture_output=True,
                          text=True, timeout=30)
    return done.returncode, done.stdout.splitlines()


async def start_up(data_dir) -> tuple[subprocess.Popen, int, str]:
    """`notifymesh up` on a free port plan, with what it said until the mesh was up;
    started again, afresh, when another process took one of its ports first (as
    helpers.new_mesh does)."""
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_mesh_port()
        up = subprocess.Popen(cli_argv("up", "--data-dir", str(data_dir), "--port", str(port), "--storage-nodes", "1"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        lines, deadline = [], time.monotonic() + UP_TIMEOUT_S
        while not any("mesh is up" in line for line in lines) and up.poll() is None and time.monotonic() < deadline:
            lines.append(await asyncio.to_thread(up.stdout.readline))
        said = "".join(lines)
        if "mesh is up" in said:
            return up, port, said
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGTERM)
        up.wait(60)
        if not any(taken in said for taken in ("took its port", "is in use")) or attempt == START_ATTEMPTS:
            raise AssertionError(said)
        shutil.rmtree(data_dir)  # its etcd keeps the ports it was created with


async def test_up_runs_the_local_providers_sets_them_and_outbox_list_shows_what_they_got(tmp_path):
    data_dir = tmp_path / "data"
    up, port, said = await start_up(data_dir)
    try:
        smtp_port, http_port = port + LOCAL_SMTP_OFFSET, port + LOCAL_HTTP_OFFSET
        assert f"local providers: smtp 127.0.0.1:{smtp_port}, sms api, webhooks and fcm http://127.0.0.1:{http_port}, " \
               f"apns (http/2) 127.0.0.1:{port + LOCAL_APNS_OFFSET}" in said, said
        assert "local providers set for email, sms, webhook, push" in said, said
        assert f"dashboard: http://127.0.0.1:{port + Config.frontend_http_port_offset}/dashboard (log in with the " \
               f"admin key in {data_dir / 'admin.key'})" in said, said

        # Set in etcd, through the metadata service.
        mtls = f"127.0.0.1:{port + Config.frontend_mtls_port_offset}"  # internal RPCs: the mutual-TLS port
        async with aio_channel(data_dir, mtls) as channel:
            described = await node_pb2_grpc.NodeStub(channel).Describe(node_pb2.DescribeRequest())
        metadata = next(m.addr for m in described.members if m.kind == "metadata")
        async with aio_channel(data_dir, metadata) as channel:
            listed = await metadata_pb2_grpc.MetadataStub(channel).ListProviders(notify_pb2.ListProvidersRequest())
        kinds = {p.channel: (p.kind, dict(p.settings)) for p in listed.providers}
        assert kinds[notify_pb2.EMAIL] == ("smtp", {"host": "127.0.0.1", "port": str(smtp_port),
                                                    "starttls": "false", "from": "notifymesh@localhost"})
        assert kinds[notify_pb2.SMS][0] == "sms_http"
        assert kinds[notify_pb2.SMS][1]["base_url"] == f"http://127.0.0.1:{http_port}"
        assert kinds[notify_pb2.WEBHOOK][0] == "webhook"
        assert kinds[notify_pb2.PUSH][0] == "fcm" and kinds[notify_pb2.PUSH][1]["base_url"] == \
            f"http://127.0.0.1:{http_port}/fcm"

        assert outbox(data_dir) == (0, [])
        providers = {r.channel: provider_for(r, lambda: parse_networks(LOOPBACK_NETWORKS))  # as the mesh allows
                     for r in provider_records(credentials(data_dir), "127.0.0.1", smtp_port, http_port)}
        try:
            await providers[notify_pb2.EMAIL].send(OutgoingMessage(notify_pb2.EMAIL, "alice@example.com",
                                                                   subject="Hello", text="Hi Alice"))
            sent = await providers[notify_pb2.SMS].send(OutgoingMessage(notify_pb2.SMS, "+14155550100", text="Hi"))
            await providers[notify_pb2.WEBHOOK].send(OutgoingMessage(
                notify_pb2.WEBHOOK, f"http://127.0.0.1:{http_port}/webhook/alice", json_body='{"hi": 1}'))
        finally:
            for provider in providers.values():
                await provider.close()
        code, listed_lines = outbox(data_dir)
        records = [json.loads(line) for line in listed_lines]
        assert code == 0 and [r["channel"] for r in records] == ["email", "sms", "webhook"]
        assert records[0]["to"] == ["alice@example.com"] and records[0]["subject"] == "Hello"
        assert records[1]["id"] == sent.provider_message_id and records[2]["body"] == {"hi": 1}
        code, table = outbox(data_dir, "--channel", "sms", "--output", "table")
        assert code == 0 and table[0].split() == ["CHANNEL", "TO", "MESSAGE", "ID"] and "+14155550100" in table[1]
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        up.wait(60)
    assert up.returncode == 0
    assert _port_free(port + LOCAL_SMTP_OFFSET) and _port_free(port + LOCAL_HTTP_OFFSET) and \
        _port_free(port + LOCAL_APNS_OFFSET)  # stopped with the rest


def test_outbox_list_without_an_outbox_says_so(tmp_path):
    done = subprocess.run(cli_argv("outbox", "list", "--data-dir", str(tmp_path)), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1 and "no outbox under" in done.stderr and "Traceback" not in done.stderr


async def test_the_cluster_has_one_unsubscribe_key_and_the_frontend_checks_tokens_with_it(mesh):
    etcd = connect_etcd(mesh.etcd_endpoint, mesh.client_tls())
    before = sealing.ring()
    sealing.install(await key_ring(mesh))  # the key is sealed in etcd: opened with the mesh's data keys
    try:
        first, second = await asyncio.gather(signer(etcd), signer(etcd))
    finally:
        sealing.install(before)
        await etcd.close()
    token = first.issue("alice", "marketing", "email")
    assert second.verify(token).recipient == "alice"
    base = f"http://127.0.0.1:{mesh.frontend_ports[0] + Config.frontend_http_port_offset}"
    forged = TokenSigner(b"not the cluster's key").issue("alice", "marketing", "email")
    async with aiohttp.ClientSession() as session:
        async with session.get(unsubscribe_url(base, token)) as page:
            assert page.status == 200 and "marketing" in await page.text()
        async with session.post(unsubscribe_url(base, forged), data="List-Unsubscribe=One-Click") as refused:
            assert refused.status == 400 and "signature" in await refused.text()
