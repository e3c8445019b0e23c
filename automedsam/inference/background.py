"""File reading and writing beside the model: the next images are read and normalised, and finished results
written, in background threads, so neither the accelerator nor torch's CPU threads wait on PNG/NIfTI I/O.

Threads, not processes: decoding and encoding images (SimpleITK, Pillow), numpy's normalisation and file writes
release the GIL, so one reader and one writer thread overlap them with the model without copying arrays between
processes or forking a process that holds torch's thread pools (and, under torchrun, a process group). That is
why batchgenerators' multi-process augmenters, built for endless random training batches, are not used here.
At most `depth` images are read ahead and `depth` results wait to be written, so memory does not grow with the
number of images a run predicts (it grows with their size: `depth` large volumes ahead are held whole).
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Callable, Iterable, Iterator, TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")
DEPTH = 2


def read_ahead(items: Iterable[Item], read: Callable[[Item], Loaded], *,
               depth: int = DEPTH) -> Iterator[tuple[Item, Loaded]]:
    """(item, read(item)) in order, while a background thread reads up to `depth` items ahead. An error raised
    by `read` is raised here, when its item's turn comes."""
    pending: deque[tuple[Item, Future]] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="automedsam-read") as pool:
        try:
            for item in items:
                pending.append((item, pool.submit(read, item)))
                if len(pending) > depth:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, future in pending:
                future.cancel()


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
