"""The partition checker's accounting (tests/audit.py) on synthetic inputs: each
failure it must report, it does report."""

from audit import Leading, Ledger, attribute, audit_epochs

from notifymesh.contracts import MessageId


def ids(partition: int, count: int) -> list[str]:
    return MessageId.new_batch("topic", partition, count, 1_000)


def audited(claims, grants, stored, acknowledged):
    return audit_epochs(claims, grants, attribute(stored, acknowledged))


def test_one_leader_per_epoch_passes():
    a, b = ids(0, 2), ids(1, 1)
    claims = [Leading("storage-1", 0, 10), Leading("storage-2", 0, 20), Leading("storage-3", 1, 12)]
    grants = {(0, 10): "storage-1", (0, 20): "storage-2", (1, 12): "storage-3"}
    stored = {a[0]: {10}, a[1]: {20}, b[0]: {12}}
    audit = audited(claims, grants, stored, [*a, *b])
    assert audit.one_leader_per_epoch
    assert audit.epochs_led == 3 and audit.leaders_per_epoch == {1: 3}
    assert audit.epochs_not_one_leader == []


def test_two_nodes_leading_one_epoch_are_reported():
    (message,) = ids(0, 1)
    claims = [Leading("storage-1", 0, 10), Leading("storage-2", 0, 10)]
    audit = audited(claims, {(0, 10): "storage-1"}, {message: {10}}, [message])
    assert not audit.one_leader_per_epoch
    assert audit.leaders_per_epoch == {2: 1}
    assert audit.epochs_not_one_leader == [dict(partition=0, epoch=10, leaders=("storage-1", "storage-2"),
                                                granted="storage-1", acknowledged=1)]


def test_a_claim_etcd_granted_to_another_node_is_two_leaders():
    (message,) = ids(0, 1)
    audit = audited([Leading("storage-1", 0, 10)], {(0, 10): "storage-2"}, {message: {10}}, [message])
    assert not audit.one_leader_per_epoch
    assert audit.epochs_not_one_leader[0]["leaders"] == ("storage-1", "storage-2")


def test_a_claim_of_an_epoch_etcd_never_granted_is_reported_even_without_acknowledged_writes():
    (message,) = ids(0, 1)
    claims = [Leading("storage-1", 0, 10), Leading("storage-2", 0, 11)]
    audit = audited(claims, {(0, 10): "storage-1", (0, 11): None}, {message: {10}}, [message])
    assert not audit.one_leader_per_epoch
    assert audit.leaders_per_epoch == {1: 1}  # the epoch with writes was fine
    assert [bad["epoch"] for bad in audit.epochs_not_one_leader] == [11]


def test_an_epoch_with_acknowledged_writes_and_no_leader_is_reported():
    (message,) = ids(0, 1)
    audit = audited([], {(0, 10): None}, {message: {10}}, [message])
    assert not audit.one_leader_per_epoch
    assert audit.leaders_per_epoch == {0: 1}


def test_acknowledged_messages_without_an_entry_leave_the_check_undone():
    message, other = ids(0, 2)
    audit = audited([Leading("storage-1", 0, 10)], {(0, 10): "storage-1"}, {message: {10}}, [message, other])
    assert audit.acknowledged_without_entry == 1
    assert not audit.one_leader_per_epoch


def test_entries_of_one_message_in_two_epochs_are_counted_and_both_epochs_checked():
    (message,) = ids(0, 1)
    attribution = attribute({message: {10, 20}}, [message])
    assert attribution.in_two_epochs == 1
    assert attribution.epochs([]) == {(0, 10), (0, 20)}


def test_lost_and_duplicates_by_cause():
    ledger = Ledger(partitions=1, now=0.0)
    acked = ids(0, 3)
    ledger.acknowledge(acked, [b"a", b"b", b"c"], now=1.0)
    ledger.deliver(acked[0], b"a", attempt=1)
    ledger.deliver(acked[0], b"a", attempt=2)  # the ack was lost: the mesh counted a second attempt
    ledger.deliver(acked[1], b"b", attempt=1)
    ledger.deliver(acked[1], b"b", attempt=1)  # attempt 1 again: the delivery state was forgotten
    (again,) = ids(0, 1)
    ledger.deliver(again, b"b", attempt=1)  # the same payload under another id: stored twice
    assert ledger.lost() == {acked[2]}
    assert ledger.duplicates_by_cause() == {"redelivered": 1, "forgotten": 1, "stored_twice": 1}


def test_unavailability_is_per_partition():
    ledger = Ledger(partitions=2, now=0.0)
    for at, partition in ((1.0, 0), (1.5, 1), (2.0, 0), (3.0, 0), (9.0, 0)):
        ledger.acknowledge(ids(partition, 1), [b"%f" % at], now=at)
    ledger.fail(5, "UNAVAILABLE")
    ledger.publishing_ended(now=10.0)
    assert ledger.unavailable_s == {0: 6.0, 1: 8.5}  # partition 1: from its last ack to the end
    assert ledger.longest_stall_s == 6.0
    assert ledger.failed == 5 and ledger.errors == {"UNAVAILABLE": 1}
