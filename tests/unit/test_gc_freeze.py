"""notifymesh.server.gc_freeze.FrozenSurvivors: what the process holds at start and
what survives a collection of generation 1 or 2 is left out of later collections;
past its bound (the frozen set grown past THAW_GROWTH times the last walk and
FROZEN_FLOOR) everything is walked once again."""

import gc
import weakref

import pytest

from notifymesh.server import gc_freeze


class Node:
    def __init__(self):
        self.other = self


class Leaf:
    """Tracked by the collector, in no cycle: freed by its count."""


def tracked_ids() -> set[int]:
    return {id(o) for o in gc.get_objects()}  # every generation; the frozen are in none


@pytest.fixture
async def survivors():
    frozen = gc_freeze.FrozenSurvivors()
    old = Node()
    frozen.start()
    assert id(old) not in tracked_ids() and frozen.walked == gc.get_freeze_count() > 0
    yield frozen
    await frozen.stop()
    assert gc.get_freeze_count() == 0 and frozen._collected not in gc.callbacks


async def test_the_survivors_of_a_generation_1_collection_are_frozen_and_those_of_generation_0_not(survivors):
    young = [Node() for _ in range(100)]
    gc.collect(0)
    assert all(id(o) in tracked_ids() for o in young)
    gc.collect(1)
    tracked = tracked_ids()
    assert not any(id(o) in tracked for o in young)


async def test_a_frozen_object_that_dies_in_a_cycle_waits_while_most_of_the_frozen_set_lives(survivors):
    cycle = Node()
    ref = weakref.ref(cycle)
    gc.collect(1)
    del cycle
    survivors.check()
    gc.collect(2)
    assert ref() is not None  # the bound's price: kept until everything is walked again


async def test_frozen_objects_freed_by_count_go_and_bring_no_walk(survivors):
    held = [Leaf() for _ in range(2 * gc.get_freeze_count())]
    gc.collect(1)
    frozen = gc.get_freeze_count()
    ref = weakref.ref(held[0])
    del held
    assert ref() is None and gc.get_freeze_count() < frozen / 2
    walked = survivors.walked
    survivors.check()
    assert gc.get_freeze_count() > 0 and survivors.walked == walked  # a walk costs what lives: none for what went


async def test_a_frozen_set_grown_past_its_bound_is_walked_again(survivors, monkeypatch):
    monkeypatch.setattr(gc_freeze, "FROZEN_FLOOR", 0)
    monkeypatch.setattr(gc_freeze, "THAW_GROWTH", 1)
    walked = survivors.walked
    grown = [Node() for _ in range(1000)]
    cycle = Node()
    ref = weakref.ref(cycle)
    gc.collect(1)
    del cycle
    assert gc.get_freeze_count() > walked
    survivors.check()
    assert ref() is None and survivors.walked == gc.get_freeze_count() != walked
    assert id(grown[0]) not in tracked_ids()


async def test_below_the_floor_a_grown_frozen_set_stays_frozen(survivors, monkeypatch):
    monkeypatch.setattr(gc_freeze, "THAW_GROWTH", 1)
    cycle = Node()
    ref = weakref.ref(cycle)
    gc.collect(1)
    del cycle
    survivors.check()
    assert ref() is not None


async def test_the_task_dump_says_what_a_full_collection_walks_and_what_is_frozen(survivors, caplog):
    from notifymesh.server.process import log_tasks
    log_tasks()
    [record] = [r for r in caplog.records if r.getMessage() == "garbage collector"]
    assert record.fields["frozen"] == gc.get_freeze_count() > 0 and len(record.fields["tracked_by_generation"]) == 3
