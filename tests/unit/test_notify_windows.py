"""A channel worker's window (the tasks it holds) against its provider's
concurrency (the sends at once, PrioritySlots)."""

from sender.notifications import MIN_WINDOW, window


def test_a_small_provider_concurrency_still_gets_a_batching_window():
    assert window(4) == window(32) == window(1000) == MIN_WINDOW == 2048
    assert window(5000) == 5000
