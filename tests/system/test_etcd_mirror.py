"""The etcd mirror behind every service's metadata cache, against a real etcd."""

import asyncio

from helpers import unique

from notifymesh.server.cluster import PrefixMirror, connect_etcd


async def test_etcd_mirror_groups_items_and_names_each_change(mesh):
    """The metadata cache: a dict of the keys under a prefix, grouped (subscriptions
    by topic), with listeners told which name changed."""
    etcd = connect_etcd(mesh.etcd_endpoint, mesh.client_tls())
    prefix = f"/test-mirror/{unique('m')}/".encode()
    mirror = PrefixMirror(etcd, prefix, bytes.decode, group_by=lambda value: value.split(":")[0])
    changed = asyncio.Queue()
    mirror.on_change(changed.put_nowait)
    try:
        await etcd.put(prefix + b"a", b"orders:1")
        await mirror.start()
        assert await changed.get() is None  # read in full
        assert mirror.groups == {"orders": {"a": "orders:1"}}
        await etcd.put(prefix + b"b", b"orders:2")
        await etcd.put(prefix + b"a", b"audit:1")  # moves to another group
        assert [await changed.get(), await changed.get()] == ["b", "a"]
        assert mirror.groups == {"orders": {"b": "orders:2"}, "audit": {"a": "audit:1"}}
        await etcd.delete(prefix + b"a")
        assert await changed.get() == "a"
        assert mirror.groups == {"orders": {"b": "orders:2"}} and set(mirror.items) == {"b"}
    finally:
        await mirror.stop()
        await etcd.delete_prefix(prefix)
        await etcd.close()
