"""notifymesh.server.gc_freeze.FrozenSurvivors: the survivors of a full collection
are left out of later ones, and thawed by its bounds (half of them gone, or the
frozen set grown past THAW_GROWTH times the last full walk's survivors)."""

import gc
import weakref

import pytest

from notifymesh.server import gc_freeze


class Node:
    def __init__(self):
        self.other = self


def tracked_ids() -> set[int]:
    return {id(o) for o in gc.get_objects()}  # every generation; the frozen are in none


@pytest.fixture
async def survivors():
    frozen = gc_freeze.FrozenSurvivors()
    frozen.start()
    yield frozen
    await frozen.stop()
    assert gc.get_freeze_count() == 0 and frozen._collected not in gc.callbacks


async def test_the_survivors_of_a_full_collection_are_not_walked_again_and_newer_objects_are(survivors):
    old = [Node() for _ in range(100)]
    gc.collect(2)
    assert gc.get_freeze_count() >= len(old) and survivors.walked == survivors.frozen == gc.get_freeze_count()
    new = [Node() for _ in range(100)]
    tracked = tracked_ids()
    assert not any(id(o) in tracked for o in old)
    assert all(id(o) in tracked for o in new)
    gc.collect(2)  # walks only what was made since: survivors.walked stays
    assert survivors.walked < survivors.frozen


async def test_a_frozen_object_that_dies_in_a_cycle_waits_while_most_of_the_frozen_set_lives(survivors):
    gc.collect(2)
    cycle = Node()
    ref = weakref.ref(cycle)
    gc.collect(2)
    del cycle
    survivors.check()
    gc.collect(2)
    assert gc.get_freeze_count() > 0 and ref() is not None  # the bound's price: kept until a thaw


async def test_frozen_objects_freed_by_count_thaw_the_rest(survivors):
    held = [[object()] for _ in range(2 * len(gc.get_objects()))]  # lists: tracked, no cycles
    gc.collect(2)
    frozen = gc.get_freeze_count()
    cycle = Node()
    gc.collect(2)
    ref = weakref.ref(cycle)
    del cycle
    gc.collect(2)
    assert ref() is not None  # frozen in its cycle
    del held  # freed by count: over half of what was frozen
    assert gc.get_freeze_count() < frozen / 2
    survivors.check()
    assert gc.get_freeze_count() == 0
    gc.collect(2)
    assert ref() is None  # walked again, and collected


async def test_a_frozen_set_grown_past_its_bound_is_thawed(survivors, monkeypatch):
    gc.collect(2)
    assert survivors.walked > 0
    monkeypatch.setattr(gc_freeze, "THAW_GROWTH", 1)
    grown = [Node() for _ in range(1000)]
    gc.collect(2)  # freezes them too: past 1 x the last full walk's survivors
    assert gc.get_freeze_count() > survivors.walked
    survivors.check()
    assert gc.get_freeze_count() == 0
    gc.collect(2)  # walks everything: the new bound
    assert survivors.walked == gc.get_freeze_count() and id(grown[0]) not in tracked_ids()


async def test_the_task_dump_says_what_a_full_collection_walks_and_what_is_frozen(survivors, caplog):
    from notifymesh.server.process import log_tasks
    gc.collect(2)
    log_tasks()
    [record] = [r for r in caplog.records if r.getMessage() == "garbage collector"]
    assert record.fields["frozen"] == gc.get_freeze_count() > 0 and len(record.fields["tracked_by_generation"]) == 3
