"""The server factory's pieces that need no running server."""

import logging
import time

from notifymesh.server import process


def test_slow_calls_are_logged_once_per_interval_with_their_count(caplog, monkeypatch):
    monkeypatch.setattr(process, "SLOW_CALL_LOG_EVERY_S", 0.2)
    slow_calls = process.SlowCalls()
    with caplog.at_level(logging.WARNING, logger="notifymesh.server.process"):
        for seconds in (1.5, 2.5, 1.2):
            slow_calls.record("/A", seconds)
        slow_calls.record("/B", 3.0)
        time.sleep(0.25)
        slow_calls.record("/A", 1.1)
    lines = [(r.fields["method"], r.fields["calls"], r.fields["slowest_s"]) for r in caplog.records
             if r.getMessage() == "slow calls"]
    assert lines == [("/A", 1, 1.5), ("/B", 1, 3.0), ("/A", 3, 2.5)]
