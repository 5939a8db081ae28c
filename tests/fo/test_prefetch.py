"""The read-ahead worker of compute_region_embeddings: order, overlap, errors, early stops."""

import threading

import pytest

from fiftyone_maskinversion.fo.prefetch import prefetched


def test_items_come_in_order_and_are_prepared_ahead():
    started = [threading.Event() for _ in range(6)]

    def prepare(i):
        started[i].set()
        return i * i

    got = []
    for i, value in enumerate(prefetched(range(6), prepare)):
        if i + 1 < 6:  # while item i is being used, item i + 1 is already being prepared
            assert started[i + 1].wait(timeout=10)
        got.append(value)
    assert got == [i * i for i in range(6)]


def test_an_error_surfaces_at_its_item():
    def prepare(i):
        if i == 2:
            raise KeyError("bad item")
        return i

    got = []
    with pytest.raises(KeyError, match="bad item"):
        for value in prefetched(range(5), prepare):
            got.append(value)
    assert got == [0, 1]


def test_stopping_early_stops_the_worker():
    seen = []
    stream = prefetched(range(10_000), lambda i: seen.append(i) or i, depth=2)
    assert next(stream) == 0
    stream.close()
    count = len(seen)
    assert count < 10 and not any(t.name == "maskinversion-prefetch" and t.is_alive() for t in threading.enumerate())
