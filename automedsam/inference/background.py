"""File reading and writing beside the model: the next images are read and normalised, and finished results
written, in background threads, so neither the accelerator nor torch's CPU threads wait on PNG/NIfTI I/O.

Threads, not processes: decoding and encoding images (SimpleITK, Pillow), numpy's normalisation and file writes
release the GIL, so one reader and one writer thread overlap them with the model without copying arrays between
processes or forking a process that holds torch's thread pools (and, under torchrun, a process group). That is
why batchgenerators' multi-process augmenters, built for endless random training batches, are not used here.
At most `depth` images are read ahead and `depth` results wait to be written, so memory does not grow with the
number of images a run predicts; and no further image is read while those read ahead hold more than a budget
(run.py weighs an image by the bytes of its normalised slices), nor a further result handed to the writer while
those waiting hold more than a budget (run.py weighs a result by the bytes of its probabilities), so a large
volume is read ahead alone and waits to be written alone, while small 2D images still overlap `depth` deep. Where
the writer is the slower side (a fast accelerator), the model then waits with one large volume's result instead of
queueing it beside another and going on to the next.
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
# in bytes, as run.py weighs results (float32 probabilities per label): a result waiting to be written that is up to
# a 2048 x 2048 2D image of 8 labels or a 512 x 512 x 128 volume of one label has the next one wait beside it
WRITE_BUDGET = 128 * 2**20


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
    """Runs write calls in one background thread, in order, at most `depth` waiting, and none added while those
    waiting (the one being written included) weigh more than `budget`; a failed write is raised by the next `submit`
    or at the end of the `with` block, which waits for every write."""

    def __init__(self, depth: int = DEPTH, *, budget: int = WRITE_BUDGET) -> None:
        self.depth = depth
        self.budget = budget
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="automedsam-write")
        self._pending: deque[tuple[Future, int]] = deque()

    def submit(self, write: Callable[..., object], *args: object, weight: int = 0, **kwargs: object) -> None:
        """Queue write(*args, **kwargs), which holds `weight` bytes until it is done (not passed to `write`); first
        wait while the queue is full or weighs more than the budget: the next write is always queued, however heavy,
        but a heavy one is not joined by others."""
        while self._pending and (len(self._pending) >= self.depth or self._pending[0][0].done()
                                 or sum(held for _, held in self._pending) > self.budget):
            self._pending.popleft()[0].result()
        self._pending.append((self._pool.submit(write, *args, **kwargs), weight))

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            while self._pending:
                self._pending.popleft()[0].result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
