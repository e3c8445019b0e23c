"""File reading and writing beside the model: the next images are read and normalised, and finished results
written, in background threads, so neither the accelerator nor torch's CPU threads wait on PNG/NIfTI I/O.

Threads, not processes: decoding and encoding images (SimpleITK, Pillow), numpy's normalisation and file writes
release the GIL, so one reader and one writer thread overlap them with the model without copying arrays between
processes or forking a process that holds torch's thread pools (and, under torchrun, a process group). That is
why batchgenerators' multi-process augmenters, built for endless random training batches, are not used here.
At most `depth` images are read ahead and `depth` results wait to be written, so memory does not grow with the
number of images a run predicts; and no further image is read while those read ahead hold more than a budget
(run.py weighs an image by the bytes of its normalised slices), so a large volume is read ahead alone while small
2D images still overlap `depth` deep.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from types import TracebackType
from typing import Callable, Iterable, Iterator, TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")
DEPTH = 2
# in bytes, as run.py weighs images: an image read ahead that is up to a 2048 x 2048 RGB image or a 512 x 512 x 128
# volume (float32) has the next one read beside it; a larger one is read ahead alone
READ_AHEAD_BUDGET = 128 * 2**20


def read_ahead(items: Iterable[Item], read: Callable[[Item], Loaded], *, depth: int = DEPTH,
               weight: Callable[[Loaded], int] | None = None,
               budget: int = READ_AHEAD_BUDGET) -> Iterator[tuple[Item, Loaded]]:
    """(item, read(item)) in order, while a background thread reads up to `depth` items ahead, and none further
    while those read but not yet yielded weigh more than `budget` (`weight(loaded)`; without `weight` nothing
    weighs anything): the next item is always read ahead, however heavy, but a heavy one is not joined by others.
    An error raised by `read` or `weight` is raised here, when its item's turn comes."""
    if budget < 0:
        raise ValueError(f"read_ahead's budget must be >= 0, got {budget}")
    gate = _Gate(budget)
    pending: deque[tuple[Item, Future[tuple[Loaded, int]]]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="automedsam-read") as pool:
        try:
            for item in items:
                pending.append((item, pool.submit(_read_weighed, item, read, weight, gate)))
                if len(pending) > depth:
                    yield _next(pending, gate)
            while pending:
                yield _next(pending, gate)
        finally:
            gate.close()
            for _, future in pending:
                future.cancel()


class _Gate:
    """The weight of the items read but not yet yielded; the reader waits while it is over the budget. Reads are
    in order, one at a time, so when an item's turn comes nothing else waits and its read is let through."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._waiting = 0
        self._closed = False
        self._changed = threading.Condition()

    def enter(self) -> None:
        """Wait until the next item may be read; CancelledError once the reading has ended."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self._waiting <= self.budget)
            if self._closed:
                raise CancelledError

    def add(self, weight: int) -> None:
        with self._changed:
            self._waiting += weight

    def remove(self, weight: int) -> None:
        with self._changed:
            self._waiting -= weight
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


def _read_weighed(item: Item, read: Callable[[Item], Loaded], weight: Callable[[Loaded], int] | None,
                  gate: _Gate) -> tuple[Loaded, int]:
    """read(item) once the gate lets it through, and its weight, which waits until the item is yielded."""
    gate.enter()
    loaded = read(item)
    heavy = 0 if weight is None else weight(loaded)
    gate.add(heavy)
    return loaded, heavy


def _next(pending: deque[tuple[Item, Future[tuple[Loaded, int]]]], gate: _Gate) -> tuple[Item, Loaded]:
    """The first pending item and what was read of it, its weight no longer waiting."""
    item, future = pending.popleft()
    loaded, heavy = future.result()
    gate.remove(heavy)
    return item, loaded


class BackgroundWriter:
    """Runs write calls in one background thread, in order, at most `depth` waiting; a failed write is raised by
    the next `submit` or at the end of the `with` block, which waits for every write."""

    def __init__(self, depth: int = DEPTH) -> None:
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="automedsam-write")
        self._pending: deque[Future] = deque()

    def submit(self, write: Callable[..., object], *args: object, **kwargs: object) -> None:
        while len(self._pending) >= self.depth or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(write, *args, **kwargs))

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
