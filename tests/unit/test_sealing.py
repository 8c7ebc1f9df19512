"""Encryption at rest (notifymesh/server/sealing.py): values open only under their
own key and row, data keys rotate with old ones still opening, master keys
re-wrap, the KMS command hook, and a storage engine that writes no payload in
the clear."""

import base64
import json
import sys

import pytest
from rocksdict import Options, Rdict

from gen.notifymesh.v1 import notify_pb2, pubsub_pb2
from notifymesh.server import sealing
from notifymesh.server.sealing import (CommandMasterKey, DataKeyRecord, KeyRing, LocalMasterKey, SealError,
                                       new_master_key_line)
from storage import keys
from storage.engine import StorageEngine
from tests.unit.test_storage_engine import SHARD, append, pull, subscription


def master(*lines: str) -> LocalMasterKey:
    text = "\n".join(lines)
    return LocalMasterKey(lambda: text, "test")


def data_key(ring: KeyRing, number: int, active_ms: int = 0) -> DataKeyRecord:
    record = DataKeyRecord(number, ring.master.wrap(bytes([number]) * 32, sealing._wrap_context(number)), 0,
                           active_ms)
    ring.add(record)
    return record


@pytest.fixture
def ring() -> KeyRing:
    ring = KeyRing(master(new_master_key_line()))
    data_key(ring, 1)
    return ring


def test_a_sealed_value_opens_under_its_own_key_only(ring):
    sealed = ring.seal(b"alice@example.com", b"t orders/0\0C alice")
    assert b"alice" not in sealed and len(sealed) == len(b"alice@example.com") + sealing.OVERHEAD
    assert ring.open(sealed, b"t orders/0\0C alice") == b"alice@example.com"
    with pytest.raises(SealError):  # moved to another row
        ring.open(sealed, b"t orders/0\0C mallory")
    relabelled = sealed[:3] + (2).to_bytes(4, "big") + sealed[7:]
    data_key(ring, 2)
    with pytest.raises(SealError):  # the same bytes said to be under another data key
        ring.open(relabelled, b"t orders/0\0C alice")
    assert ring.seal(b"x", b"k") != ring.seal(b"x", b"k")  # a nonce of its own each time
    assert ring.open(b"written in the clear", b"k") == b"written in the clear"  # encryption was off then


def test_storage_values_moved_to_another_key_do_not_open(ring):
    layout = keys.ShardKeys(SHARD)
    entry = keys.seal_entry(ring, layout.message(1), b"entry one")
    assert keys.open_entry(ring, layout.message(1), entry) == b"entry one"
    assert keys.open_entry(ring, layout.message(2), entry) is None  # as a corrupted entry: never delivered
    assert keys.open_entry(ring, layout.message(1), keys.sealed(b"old")) == b"old"  # the CRC form still reads
    row_key = layout.row_prefix + b"C alice"
    row = keys.row_value(5, 1, 0, b"contact", ring, row_key)
    assert keys.parse_row_value(row).seq == 5 and keys.open_row_value(ring, row_key, row) == b"contact"
    with pytest.raises(SealError):
        keys.open_row_value(ring, layout.row_prefix + b"C bob", row)
    with pytest.raises(SealError):  # the clear head is bound too: an expiry cannot be moved
        keys.open_row_value(ring, row_key, keys.ROW_HEAD.pack(5, 1, 99) + row[keys.ROW_HEAD.size:])
    record_key = layout.delivery(1, "audit", 10, 1)
    record = keys.error_record(ring, record_key, 11, pubsub_pb2.NACKED, "550 alice@example.com unknown")
    assert b"alice" not in record
    assert keys.parse_delivery(record_key, record, ring).error == "550 alice@example.com unknown"
    assert keys.error_record(ring, record_key, 11, pubsub_pb2.ACKED, "") == keys.delivery_record(11, pubsub_pb2.ACKED)


def test_new_writes_use_a_rotated_data_key_once_active_and_old_values_still_open(ring):
    old = ring.seal(b"before", b"k")
    data_key(ring, 2, active_ms=2 ** 62)  # not yet active: writes stay on key 1
    assert ring.current == 1
    ring.choose_current(now=2 ** 62)
    assert ring.current == 2
    new = ring.seal(b"after", b"k")
    assert int.from_bytes(new[3:7], "big") == 2
    assert ring.open(old, b"k") == b"before" and ring.open(new, b"k") == b"after"


def test_a_new_master_key_rewraps_data_keys_and_older_master_keys_still_unwrap():
    first, second = new_master_key_line(), new_master_key_line()
    old_master = master(first)
    wrapped = old_master.wrap(b"k" * 32, sealing._wrap_context(1))
    both = master(second, first)  # the new one first: it wraps, both unwrap
    assert both.unwrap(wrapped, sealing._wrap_context(1)) == b"k" * 32
    rewrapped = both.wrap(b"k" * 32, sealing._wrap_context(1))
    assert both.current_id() != old_master.current_id() and rewrapped[:8].hex() == both.current_id()
    with pytest.raises(SealError):  # the old master alone does not hold the new one
        old_master.unwrap(rewrapped, sealing._wrap_context(1))
    with pytest.raises(SealError):  # a wrapped key moved to another number
        both.unwrap(rewrapped, sealing._wrap_context(2))


def test_the_kms_command_hook_wraps_and_unwraps(tmp_path):
    key = base64.b64encode(b"m" * 32).decode()
    script = tmp_path / "kms.py"
    script.write_text(f"""import base64, json, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
aes, action = AESGCM(base64.b64decode({key!r})), sys.argv[1]
if action == "id":
    print(json.dumps({{"data": base64.b64encode(b"kms-v1").decode()}}))
    sys.exit()
request = json.load(sys.stdin)
data, context = base64.b64decode(request["data"]), base64.b64decode(request["context"])
if action == "wrap":
    out = b"n" * 12 + aes.encrypt(b"n" * 12, data, context)
else:
    out = aes.decrypt(data[:12], data[12:], context)
print(json.dumps({{"data": base64.b64encode(out).decode()}}))
""")
    kms = CommandMasterKey(f"{sys.executable} {script}")
    ring = KeyRing(kms)
    ring.add(DataKeyRecord(1, kms.wrap(b"d" * 32, sealing._wrap_context(1)), 0, 0))
    assert ring.open(ring.seal(b"v", b"k"), b"k") == b"v" and kms.current_id() == "kms-v1"
    with pytest.raises(SealError, match="failed to unwrap"):
        kms.unwrap(b"garbage" * 4, b"")


def test_secrets_in_etcd_records_are_sealed_to_their_record(ring, monkeypatch):
    monkeypatch.setattr(sealing, "_installed", ring)
    subscription_ = pubsub_pb2.Subscription(name="orders-push", topic="orders",
                                            push_config=pubsub_pb2.PushConfig(endpoint="http://h/x", secret="s3cret"))
    stored = sealing.subscription_value(subscription_)
    assert b"s3cret" not in stored and subscription_.push_config.secret == "s3cret"  # the caller's copy untouched
    assert sealing.parse_subscription(stored).push_config.secret == "s3cret"
    renamed = pubsub_pb2.Subscription.FromString(stored)
    renamed.name = "mallory-push"  # the sealed secret copied into another record
    with pytest.raises(SealError):
        sealing.parse_subscription(renamed.SerializeToString())
    provider = notify_pb2.Provider(channel=notify_pb2.EMAIL, name="relay", kind="smtp", secret="hunter2")
    assert b"hunter2" not in sealing.provider_value(provider)
    assert sealing.parse_provider(sealing.provider_value(provider)).secret == "hunter2"
    assert sealing.parse_provider(provider.SerializeToString()).secret == "hunter2"  # stored before: as it was


def test_a_rotated_push_secret_kept_as_the_previous_one_is_sealed_apart(ring, monkeypatch):
    monkeypatch.setattr(sealing, "_installed", ring)
    push = pubsub_pb2.PushConfig(endpoint="http://h/x", secret="n3w", previous_secret="0ld")
    stored = sealing.subscription_value(pubsub_pb2.Subscription(name="orders-push", topic="orders", push_config=push))
    assert b"n3w" not in stored and b"0ld" not in stored
    opened = sealing.parse_subscription(stored).push_config
    assert (opened.secret, opened.previous_secret) == ("n3w", "0ld")
    swapped = pubsub_pb2.Subscription.FromString(stored)  # the sealed previous secret passed off as the current
    swapped.push_config.secret = swapped.push_config.previous_secret
    with pytest.raises(SealError):
        sealing.parse_subscription(swapped.SerializeToString())


def test_a_webhook_provider_s_replaced_signing_key_is_sealed_apart(ring, monkeypatch):
    monkeypatch.setattr(sealing, "_installed", ring)
    provider = notify_pb2.Provider(channel=notify_pb2.WEBHOOK, name="default", kind="webhook", secret="n3w-key",
                                   previous_secret="0ld-key")
    stored = sealing.provider_value(provider)
    assert b"n3w-key" not in stored and b"0ld-key" not in stored
    opened = sealing.parse_provider(stored)
    assert (opened.secret, opened.previous_secret) == ("n3w-key", "0ld-key")
    swapped = notify_pb2.Provider.FromString(stored)  # the sealed previous key passed off as the current
    swapped.secret = swapped.previous_secret
    with pytest.raises(SealError):
        sealing.parse_provider(swapped.SerializeToString())


def test_a_key_file_with_a_bad_line_is_refused(tmp_path):
    path = tmp_path / "master.key"
    assert sealing.create_key_file(path) and not sealing.create_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    LocalMasterKey.from_file(path)
    path.write_text("not a key\n")
    with pytest.raises(SystemExit, match="32 bytes in base64"):
        LocalMasterKey.from_file(path)
    with pytest.raises(SystemExit, match="needs a master key"):
        KeyRing(None)


async def test_a_storage_engine_writes_no_payload_in_the_clear_and_reads_it_back(tmp_path, ring):
    engine = StorageEngine(tmp_path / "node", "storage-1", ring)
    engine.start()
    engine.attach(SHARD, subscription("audit"))
    await append(engine, SHARD, [pubsub_pb2.PubsubMessage(data=b"secret-payload", attributes={"a": "secret-attr"})])
    [received] = await pull(engine, SHARD, "audit", 10, 10_000, 0)
    engine.nack(SHARD, "audit", [received.ack_id], reason="secret-reason")
    engine.save_state(SHARD)
    await engine.close()
    db = Rdict(str(tmp_path / "node" / "rocksdb"), Options(raw_mode=True))
    try:
        values = b"".join(value for _, value in db.items())
    finally:
        db.close()
    assert values and b"secret-" not in values
    reopened = StorageEngine(tmp_path / "node", "storage-1", ring)  # recovery reads the sealed entries
    reopened.start()
    try:
        [again] = await pull(reopened, SHARD, "audit", 10, 10_000, 0)
        assert again.message.data == b"secret-payload" and again.message.attributes["a"] == "secret-attr"
        status = reopened.message_status(SHARD, again.message.message_id)
        assert [a.error for d in status.deliveries for a in d.attempts if a.error] == ["secret-reason"]
    finally:
        await reopened.close()


def test_every_recorded_data_key_parses_back():
    record = DataKeyRecord(3, b"w" * 60, 1, 2)
    assert DataKeyRecord.parse(record.encode()) == record
    assert json.loads(record.encode())["number"] == 3


def test_the_cluster_view_goes_on_when_a_secret_does_not_open(ring, monkeypatch):
    """A process without the data key (a tool's Cluster) still mirrors the records."""
    monkeypatch.setattr(sealing, "_installed", ring)
    stored = sealing.provider_value(notify_pb2.Provider(channel=notify_pb2.SMS, name="default", secret="hunter2"))
    monkeypatch.setattr(sealing, "_installed", KeyRing(None, enabled=False))
    with pytest.raises(SealError):
        sealing.parse_provider(stored)
    assert sealing.mirrored_provider(stored).secret == "" and sealing.mirrored_provider(stored).name == "default"


async def test_the_identities_of_messages_collected_together_are_one_sealed_value(tmp_path, ring):
    """What message status shows of a collected message (its id and attributes) is
    sealed once for the chunk collected, bound to the chunk's key, and read back."""
    engine = StorageEngine(tmp_path / "node", "storage-1", ring)
    engine.start()
    try:
        engine.attach(SHARD, subscription("audit"))
        ids = await append(engine, SHARD, [pubsub_pb2.PubsubMessage(data=b"secret-payload", attributes={"a": f"secret-{i}"})
                                           for i in range(3)])
        received = await pull(engine, SHARD, "audit", 10, 10_000, 0)
        assert engine.acknowledge(SHARD, "audit", [r.ack_id for r in received]) == 3
        assert engine.collect(SHARD, None) == 3
        layout = engine.shard(SHARD).layout
        [(key, value)] = list(engine.db.prefixed(layout.identities_prefix))
        assert key == layout.identities(2) and sealing.is_sealed(value) and b"secret-" not in value
        with pytest.raises(SealError):  # moved to another chunk's key
            keys.open_value(ring, layout.identities(5), value)
        for i, message_id in enumerate(ids):
            status = engine.message_status(SHARD, message_id)
            assert (status.message.message_id, dict(status.message.attributes), status.message.data) == (
                message_id, {"a": f"secret-{i}"}, b"")
    finally:
        await engine.close()
