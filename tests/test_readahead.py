"""``analyzer.readahead``: the reader thread of ``wslog analyze`` changes nothing but timing."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from analyzer.readahead import read_ahead


def test_items_arrive_in_order_and_the_thread_ends() -> None:
    assert list(read_ahead(lambda: iter(range(1000)), depth=3)) == list(range(1000))
    assert not [t for t in threading.enumerate() if t.name == "wslog-read-ahead"]


def test_an_error_is_raised_after_the_items_before_it() -> None:
    def produce() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("line 3 is bad")

    got: list[int] = []
    with pytest.raises(ValueError, match="line 3 is bad"):
        for item in read_ahead(produce):
            got.append(item)
    assert got == [1, 2]


def test_a_consumer_that_stops_stops_the_producer_and_its_cleanup_runs() -> None:
    produced: list[int] = []
    closed = threading.Event()

    def produce() -> Iterator[int]:
        try:
            for i in range(1_000_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    items = read_ahead(produce, depth=2)
    assert [next(items) for _ in range(5)] == [0, 1, 2, 3, 4]
    items.close()
    assert closed.wait(5)
    assert len(produced) <= 5 + 2 + 1  # what was read, the queue, the item being put
