"""Per-case work spread over worker processes, with a progress bar and a clear error when a worker dies.

concurrent.futures raises BrokenProcessPool when a worker is killed (out of memory, a signal), so such a run
stops with a message instead of hanging forever as a bare multiprocessing pool would.
"""
from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Callable, Sequence, TypeVar

from automedsam.errors import AutomedsamError
from automedsam.progress import progress_bar

Job = TypeVar("Job")
Result = TypeVar("Result")
MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """Worker processes used when -np is not given: the CPU count, at most 4 (image reading is I/O bound)."""
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def check_workers(num_workers: int) -> int:
    """Refuse a worker count below 1 with the option's name in the message."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise AutomedsamError(f"-np must be a whole number of worker processes >= 1, got {num_workers!r}.")
    return num_workers


def parallel_map(function: Callable[[Job], Result], jobs: Sequence[Job], *, num_workers: int, description: str,
                 progress: bool = True) -> list[Result]:
    """`[function(job) for job in jobs]`, in `num_workers` processes (in this one when 1), results in job order."""
    check_workers(num_workers)
    results: list[Result] = [None] * len(jobs)  # type: ignore[list-item]
    with progress_bar(progress) as bar:
        task = bar.add_task(description, total=len(jobs))
        if num_workers == 1 or len(jobs) <= 1:
            for index, job in enumerate(jobs):
                results[index] = function(job)
                bar.advance(task)
            return results
        workers = min(num_workers, len(jobs))
        waiting = iter(enumerate(jobs))
        try:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                # one job per worker in flight: jobs handed to the pool ahead run even after shutdown(cancel_futures),
                # so a failed case or Ctrl-C would wait for them
                running: dict[Future, int] = {}
                try:
                    for index, job in islice(waiting, workers):
                        running[pool.submit(function, job)] = index
                    while running:
                        finished, _ = wait(running, return_when=FIRST_COMPLETED)
                        for future in finished:
                            results[running.pop(future)] = future.result()
                            bar.advance(task)
                            for index, job in islice(waiting, 1):
                                running[pool.submit(function, job)] = index
                except BaseException:
                    pool.shutdown(cancel_futures=True)  # a failed case stops the run without waiting for the rest
                    raise
        except BrokenProcessPool:
            raise AutomedsamError(
                f"A worker process died during '{description}' (killed, probably out of memory). Rerun with "
                "fewer workers (-np 1 uses the least memory); finished work is kept."
            ) from None
    return results
