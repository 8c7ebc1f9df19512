"""What the metadata service makes of UpdateSubscription's mask and of a
listing's page size and token, before it reads etcd."""

import pytest

from gen.notifymesh.v1 import pubsub_pb2
from metadata.store import MAX_PAGE_SIZE, PAGE_SIZE, Page, update_mask
from notifymesh import errors


def test_an_update_mask_names_settings_or_their_fields():
    mask = update_mask(["ack_deadline", "retry_policy.minimum_backoff", "push_config.endpoint",
                        "max_delivery_attempts", "dead_letter_topic"])
    current = pubsub_pb2.Subscription(name="orders-sub", topic="orders", max_delivery_attempts=5,
                                      dead_letter_topic="dead")
    current.retry_policy.maximum_backoff.FromSeconds(60)
    change = pubsub_pb2.Subscription(name="orders-sub")
    change.ack_deadline.FromSeconds(30)
    change.retry_policy.minimum_backoff.FromSeconds(2)
    change.push_config.endpoint = "http://127.0.0.1:9/hook"
    mask.MergeMessage(change, current, replace_message_field=True, replace_repeated_field=True)
    assert current.ack_deadline.seconds == 30 and current.push_config.endpoint == "http://127.0.0.1:9/hook"
    assert (current.retry_policy.minimum_backoff.seconds, current.retry_policy.maximum_backoff.seconds) == (2, 60)
    assert (current.max_delivery_attempts, current.dead_letter_topic, current.topic) == (0, "", "orders")


@pytest.mark.parametrize("paths, message", [
    ([], "names no field"),
    (["topic"], "topic cannot be changed"),
    (["name"], "name cannot be changed"),
    (["create_time"], "create_time cannot be changed"),
    (["ack_deadlines"], "not a field that can be updated"),
    (["retry_policy.nope"], "not a field that can be updated"),
    (["push_config.secret"], "set by the server"),
    (["push_config.previous_secret"], "set by the server"),
    (["push_config.previous_secret_expire_time"], "set by the server"),
])
def test_an_update_mask_without_settings_that_can_change_is_refused(paths, message):
    with pytest.raises(errors.InvalidArgument, match=message):
        update_mask(paths)


def test_a_page_token_names_where_the_listing_goes_on():
    assert Page.of("topic", 0, "") == Page("", PAGE_SIZE)
    token = Page.token("topic", "orders-7")
    assert Page.of("topic", 5, token) == Page("orders-7", 5)
    assert Page.of("topic", MAX_PAGE_SIZE, "").size == MAX_PAGE_SIZE


@pytest.mark.parametrize("size, token", [
    (MAX_PAGE_SIZE + 1, ""), (-1, ""), (10, "garbage!"), (10, "b3JkZXJz"),  # base64 of "orders": no listing
    (10, Page.token("subscription", "orders-sub")),  # another listing's token
    (10, Page.token("topic", "0bad name")),
])
def test_a_page_size_out_of_range_or_a_malformed_token_is_refused(size, token):
    with pytest.raises(errors.InvalidArgument):
        Page.of("topic", size, token)
