"""stages.threads: a producer thread ahead of its consumer, and an ordered thread map."""

from __future__ import annotations

import random
import threading
import time

import pytest

from dubline.stages.threads import ordered_map, prefetched, worker_cpus


def test_prefetched_keeps_order_and_runs_in_another_thread():
    producers = set()

    def produce():
        for i in range(50):
            producers.add(threading.get_ident())
            yield i

    assert list(prefetched(produce(), depth=3)) == list(range(50))
    assert producers and threading.get_ident() not in producers


def test_prefetched_runs_at_most_depth_ahead():
    produced = []

    def produce():
        for i in range(100):
            produced.append(i)
            yield i

    items = prefetched(produce(), depth=4)
    assert next(items) == 0
    time.sleep(0.3)
    # taken 1, at most 4 waiting, and one more held by the producer while it waits to put it
    assert len(produced) <= 1 + 4 + 1
    items.close()


def test_prefetched_raises_the_producers_error_at_its_place():
    def produce():
        yield 1
        yield 2
        raise ValueError("bad frame 3")

    seen = []
    with pytest.raises(ValueError, match="bad frame 3"):
        for item in prefetched(produce()):
            seen.append(item)
    assert seen == [1, 2]


def test_leaving_a_prefetched_loop_early_stops_and_closes_the_producer():
    closed = threading.Event()

    def produce():
        try:
            for i in range(10_000):
                yield i
        finally:
            closed.set()

    before = threading.active_count()
    for item in prefetched(produce(), depth=2):
        if item == 5:
            break
    assert closed.wait(2.0)
    assert threading.active_count() == before  # the producer thread has ended


def test_ordered_map_keeps_order_with_uneven_work():
    def slow_square(x):
        time.sleep(random.uniform(0, 0.005))
        return x * x

    assert list(ordered_map(slow_square, range(40), workers=3)) == [x * x for x in range(40)]


def test_ordered_map_one_worker_maps_in_this_thread():
    here = threading.get_ident()
    assert list(ordered_map(lambda x: threading.get_ident() == here, range(3), workers=1)) == [True] * 3


def test_ordered_map_bounds_the_items_taken_ahead():
    taken = []

    def items():
        for i in range(100):
            taken.append(i)
            yield i

    results = ordered_map(lambda x: x, items(), workers=2, depth=4)
    assert next(results) == 0
    assert len(taken) <= 4
    results.close()


def test_ordered_map_raises_at_the_failing_items_place():
    def check(x):
        if x == 3:
            raise RuntimeError("item 3")
        return x

    seen = []
    with pytest.raises(RuntimeError, match="item 3"):
        for value in ordered_map(check, range(10), workers=2):
            seen.append(value)
    assert seen == [0, 1, 2]


def test_worker_cpus_follows_the_cpus_ray_gave(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert worker_cpus() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert worker_cpus() >= 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert worker_cpus() >= 1
