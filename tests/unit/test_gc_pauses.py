"""notifymesh.server.telemetry.GcPauses: the collections a process made, timed by
gc's callback and logged when one held every thread for long."""

import gc

from notifymesh.server import telemetry


async def test_a_long_collection_is_logged_with_its_generation(caplog, monkeypatch):
    pauses = telemetry.GcPauses()
    pauses.start()
    try:
        monkeypatch.setattr(telemetry, "SLOW_GC_S", 0.0)  # every collection counts as long
        gc.collect(2)
        pauses.record()
    finally:
        await pauses.stop()
    slow = [r for r in caplog.records if r.getMessage().startswith("long garbage collection")]
    assert slow and slow[-1].fields["generation"] == 2 and slow[-1].fields["took_s"] >= 0
    assert pauses._timed not in gc.callbacks


async def test_a_short_collection_is_not_logged(caplog):
    pauses = telemetry.GcPauses()
    pauses.start()
    try:
        gc.collect(0)
        pauses.record()
    finally:
        await pauses.stop()
    assert not [r for r in caplog.records if r.getMessage().startswith("long garbage collection")]
