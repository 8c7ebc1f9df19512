"""The formats shared across processes: each encode has a parse that gives it back,
and anything else is refused with InvalidArgument."""

import base64

import grpc
import pytest

from notifymesh import errors
from notifymesh.contracts import (AckGroup, AckId, Candidacy, DeadLetterPageToken, LeaderRecord, MemberRecord, MessageId, Shard,
                                  ack_ids_by_pair, ack_ids_by_partition, ack_ids_by_subscription, ack_seqs_by_pair, topic_hash)


def test_ack_ids_round_trip_and_the_fast_encoder_agrees():
    ack = AckId(partition=3, seq=0x1F2E, subscription="orders-audit")
    assert ack.encode() == "3:1f2e:orders-audit"
    assert AckId.parse(ack.encode()) == ack
    assert AckId.encoder(3, "orders-audit")(0x1F2E) == ack.encode()
    assert AckId.parse("2:ff:a:b") == AckId(2, 255, "a:b")  # the subscription is the rest


@pytest.mark.parametrize("value", ["", "junk", "1:2", "x:1:sub", "1:zz:sub", "-1:1:sub", "1:1:", "\u00b2:1:sub"])
def test_malformed_ack_ids_are_invalid_arguments(value):
    with pytest.raises(errors.InvalidArgument, match="malformed ack id"):
        AckId.parse(value)
    with pytest.raises(errors.InvalidArgument, match=f"malformed ack id {value!r}"):  # the storage leader's parse
        ack_seqs_by_pair(["0:1:a", value, "0:2:a"])


def test_ack_ids_are_grouped_in_one_place_keeping_their_order():
    ids = ["0:1:a", "1:2:a", "0:3:b", "0:4:a"]
    assert ack_seqs_by_pair(ids + ["2:ff:a:b"]) == {AckGroup("a", 0): [1, 4], AckGroup("a", 1): [2],
                                                    AckGroup("b", 0): [3], AckGroup("a:b", 2): [255]}
    assert {type(group) for group in ack_seqs_by_pair(ids)} == {AckGroup}
    assert ack_ids_by_subscription(ids) == {"a": ["0:1:a", "1:2:a", "0:4:a"], "b": ["0:3:b"]}
    assert ack_ids_by_partition(ids) == {0: ["0:1:a", "0:3:b", "0:4:a"], 1: ["1:2:a"]}
    assert {type(group) for group in ack_ids_by_pair(ids)} == {AckGroup}
    with pytest.raises(errors.InvalidArgument):
        ack_ids_by_subscription(["0:1:a", "bad"])


def test_message_ids_name_their_shard_and_sort_by_time():
    first = MessageId.new_batch("orders", 7, 3, publish_ms=1_700_000_000_000)
    later = MessageId.new_batch("orders", 7, 1, publish_ms=1_700_000_000_001)
    assert len(set(first)) == 3 and all(len(i) == 39 for i in first)
    parsed = MessageId.parse(first[0])
    assert (parsed.publish_ms, parsed.topic_hash, parsed.partition) == (1_700_000_000_000, topic_hash("orders"), 7)
    assert MessageId.parse(parsed.encode()) == parsed
    assert max(first) < later[0]
    assert MessageId.lowest_at(1_700_000_000_001) <= later[0] and MessageId.lowest_at(1_700_000_000_001) > max(first)
    for bad in ("", "x" * 39, first[0][:-1]):
        with pytest.raises(errors.InvalidArgument, match="not a notifymesh message id"):
            MessageId.parse(bad)


def test_shards_and_etcd_records_round_trip():
    assert Shard.parse(Shard("a.b-c", 12).encode()) == Shard("a.b-c", 12)
    for record in (MemberRecord("127.0.0.1:5", 42, 1.5, 7587), MemberRecord("127.0.0.1:5", table_ops=True),
                   LeaderRecord("storage-1", "127.0.0.1:6"),
                   Candidacy(end=10, last_epoch=3, state=(3, 7))):
        assert type(record).parse(record.encode()) == record
    # a record written before the lease was recorded: a peer cannot end its lease (0)
    assert MemberRecord.parse(b'{"addr": "127.0.0.1:5", "pid": 42, "started": 1.5}').lease == 0
    # nor had a storage node read table entries of many rows
    assert not MemberRecord.parse(b'{"addr": "127.0.0.1:5", "pid": 42, "started": 1.5}').table_ops


class _RpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def test_every_status_maps_to_one_class_of_the_family_keeping_code_and_details():
    for code, cls in errors.ERROR_CLASSES.items():
        error = errors.from_rpc_error(_RpcError(code, "why"))
        assert type(error) is cls and error.code == code and error.details == "why"
        assert str(error) == f"{code.name}: why"
    other = errors.from_rpc_error(_RpcError(grpc.StatusCode.DATA_LOSS, "lost"))
    assert type(other) is errors.NotifymeshError and other.code == grpc.StatusCode.DATA_LOSS
    assert errors.NotFound("topic 'x' not found").code == grpc.StatusCode.NOT_FOUND


def test_dead_letter_page_tokens_round_trip_for_their_subscription_alone():
    token = DeadLetterPageToken("orders-audit", {0: 0x1F, 3: 7})
    assert DeadLetterPageToken.parse(token.encode(), "orders-audit") == token
    assert DeadLetterPageToken.parse("", "orders-audit") == DeadLetterPageToken("orders-audit", {})
    assert DeadLetterPageToken.parse(DeadLetterPageToken("s.x", {}).encode(), "s.x").after == {}
    for value in ("garbage!", token.encode()[:-4], DeadLetterPageToken("orders-billing", {0: 1}).encode(),
                  base64.urlsafe_b64encode(b"dead-letters/orders-audit/x:1").decode(),
                  base64.urlsafe_b64encode(b"topic/orders-audit").decode()):
        with pytest.raises(errors.InvalidArgument, match="page_token .* not one of a dead letter listing"):
            DeadLetterPageToken.parse(value, "orders-audit")
