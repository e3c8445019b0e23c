"""Reading ahead and writing in background threads: order, bounded depth, errors where they belong."""
from __future__ import annotations

import threading
import time

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


def test_a_read_error_is_raised_when_its_item_comes() -> None:
    def read(item: int) -> int:
        if item == 2:
            raise AutomedsamError("image 2 is unreadable")
        return item

    got = []
    with pytest.raises(AutomedsamError, match="image 2 is unreadable"):
        for item, _ in read_ahead(range(5), read):
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
