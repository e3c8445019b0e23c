"""Reading ahead and writing in background threads: order, bounded depth, errors where they belong."""
from __future__ import annotations

import threading
import time
from typing import Callable

import pytest

from automedsam.errors import AutomedsamError
from automedsam.inference.background import BackgroundWriter, read_ahead


def test_read_ahead_yields_every_item_in_order_reading_at_most_depth_ahead() -> None:
    started: list[int] = []
    reader_threads = set()

    def read(item: int) -> int:
        started.append(item)
        reader_threads.add(threading.get_ident())
        return item * 10

    seen = []
    for item, loaded in read_ahead(range(7), read, depth=2):
        time.sleep(0.01)  # let the reader run ahead as far as it may
        assert max(started) <= item + 2
        seen.append((item, loaded))
    assert seen == [(item, item * 10) for item in range(7)]
    assert reader_threads and threading.get_ident() not in reader_threads


def started_reaches(started: list[int], expected: int) -> int:
    """The furthest item the reader has started, once it has got to `expected` (or 5 s have passed) and had time to
    go further if it would."""
    deadline = time.monotonic() + 5
    while max(started) < expected and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(0.03)
    return max(started)


@pytest.mark.parametrize("weights", [[1] * 6, [100] * 6, [100, 1, 1, 100, 100, 1, 100, 1, 1]])
def test_a_heavy_item_read_ahead_is_not_joined_by_another_while_light_ones_overlap_by_depth(
        weights: list[int]) -> None:
    started: list[int] = []

    def read(item: int) -> int:
        started.append(item)
        return weights[item]

    last = len(weights) - 1
    seen = []
    for item, loaded in read_ahead(range(len(weights)), read, depth=2, weight=lambda loaded: loaded, budget=10):
        # the next item is always read; the one after it only while the next weighs no more than the budget
        ahead = 1 if item == last or weights[item + 1] > 10 else 2
        assert started_reaches(started, min(item + ahead, last)) == min(item + ahead, last)
        seen.append((item, loaded))
    assert seen == list(enumerate(weights))


def test_reading_ahead_ends_when_the_consumer_stops_even_with_a_read_held_back() -> None:
    started: list[int] = []

    def read(item: int) -> int:
        started.append(item)
        return item

    items = read_ahead(range(5), read, weight=lambda loaded: 100, budget=10)
    assert next(items) == (0, 0)
    assert started_reaches(started, 1) == 1  # item 2 waits for item 1, heavy, to be taken
    items.close()  # returns (the reader thread ends) without reading item 2
    time.sleep(0.03)
    assert started == [0, 1]


@pytest.mark.parametrize("weight", [None, lambda loaded: 100])
def test_a_read_error_is_raised_when_its_item_comes(weight: Callable[[int], int] | None) -> None:
    def read(item: int) -> int:
        if item == 2:
            raise AutomedsamError("image 2 is unreadable")
        return item

    got = []
    with pytest.raises(AutomedsamError, match="image 2 is unreadable"):
        for item, _ in read_ahead(range(5), read, weight=weight, budget=10):
            got.append(item)
    assert got == [0, 1]


def test_the_writer_writes_in_order_in_another_thread_and_waits_at_the_end() -> None:
    written: list[tuple[int, int]] = []

    def write(item: int) -> None:
        time.sleep(0.005)
        written.append((item, threading.get_ident()))

    with BackgroundWriter(depth=2) as writer:
        for item in range(6):
            writer.submit(write, item)
    assert [item for item, _ in written] == list(range(6))
    assert threading.get_ident() not in {thread for _, thread in written}


def test_a_failed_write_is_raised_by_the_writer() -> None:
    def write(item: int) -> None:
        if item == 1:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with BackgroundWriter() as writer:
            for item in range(3):
                writer.submit(write, item)


@pytest.mark.parametrize("weights", [[1] * 5, [100] * 5, [100, 1, 1, 100, 1, 100, 100]])
def test_a_heavy_write_waits_alone_while_light_ones_wait_depth_deep(weights: list[int]) -> None:
    finished: list[int] = []

    def write(item: int) -> None:
        time.sleep(0.05)
        finished.append(item)

    with BackgroundWriter(depth=2, budget=10) as writer:
        for item, weight in enumerate(weights):
            writer.submit(write, item, weight=weight)
            # beside the write just queued wait at most depth - 1 others, weighing no more than the budget together
            beside = [weights[earlier] for earlier in range(item) if earlier not in finished]
            assert len(beside) <= 1 and sum(beside) <= 10
    assert finished == list(range(len(weights)))


def test_the_next_write_is_queued_beside_a_light_one_without_waiting_however_heavy() -> None:
    release = threading.Event()
    finished: list[int] = []

    def write(item: int) -> None:
        release.wait(5)
        finished.append(item)

    with BackgroundWriter(depth=2, budget=10) as writer:
        writer.submit(write, 0, weight=4)
        writer.submit(write, 1, weight=100)
        assert finished == []  # neither submit waited for a write
        release.set()
    assert finished == [0, 1]
