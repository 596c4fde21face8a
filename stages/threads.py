"""A stage job's work spread over the CPUs it was given, with the same results as one thread.

FFmpeg's decoders, OpenCV, MediaPipe's graphs, libwebp and NumPy's large array operations release
Python's GIL while they compute, so threads of one process run them on several cores at once:
``prefetched`` runs a producer (e.g. a video decoder) ahead of its consumer, ``ordered_map`` runs
independent items (e.g. a track's frames) side by side, and a ``Pool`` lends each thread its own
instance of what is not thread-safe (a MediaPipe graph). Both keep their inputs' order, so a job's
output does not depend on how many threads it had. Both are bounded: at most ``depth`` items wait,
so memory does not grow with the title.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


def worker_cpus() -> int:
    """CPUs this worker was given: ``OMP_NUM_THREADS`` where it is set to a positive number (Ray
    sets it to an actor's CPUs), else the CPUs this process may run on."""
    try:
        given = int(os.environ.get("OMP_NUM_THREADS", "0"))
    except ValueError:
        given = 0
    return given if given > 0 else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prefetched(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """The items of ``items`` in order, produced up to ``depth`` ahead in a background thread.

    An exception raised while producing is raised here, at the item it replaced. Leaving the loop
    early (``break``, an exception, ``close()``) stops the producer at its next item and closes
    ``items`` (a generator's ``finally`` and ``with`` blocks run, in the producer's thread).
    """
    waiting: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        waiting.put((item, None), timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            waiting.put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, raised there
            waiting.put((_DONE, exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="dubline-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            item, error = waiting.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting to put
            try:
                waiting.get(timeout=0.05)
            except queue.Empty:
                pass
        producer.join()


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                depth: int | None = None) -> Iterator[R]:
    """``map(function, items)`` on ``workers`` threads (default: ``worker_cpus()``), results in
    the items' order, at most ``depth`` (default 2 × workers) items in flight. One worker maps in
    this thread. ``function`` must not depend on the other items' calls (each call gets its item
    alone). An exception is raised at its item's place; the items after it are not taken."""
    workers = worker_cpus() if workers is None else workers
    if workers <= 1:
        yield from map(function, items)
        return
    depth = max(1, depth or 2 * workers)
    pending: queue.SimpleQueue[Future[R]] = queue.SimpleQueue()
    in_flight = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dubline-map") as pool:
        try:
            for item in items:
                pending.put(pool.submit(function, item))
                in_flight += 1
                if in_flight >= depth:
                    in_flight -= 1
                    yield pending.get().result()
            while in_flight:
                in_flight -= 1
                yield pending.get().result()
        finally:
            while not pending.empty():
                pending.get().cancel()


class Pool(Generic[T]):
    """Instances of something not thread-safe (e.g. MediaPipe graphs), each lent to one thread at
    a time: as many threads as instances use them at once."""

    def __init__(self, instances: Iterable[T]):
        self._instances = list(instances)
        if not self._instances:
            raise ValueError("a pool needs at least one instance")
        self._free: queue.SimpleQueue[T] = queue.SimpleQueue()
        for instance in self._instances:
            self._free.put(instance)

    def __len__(self) -> int:
        return len(self._instances)

    @contextmanager
    def lend(self) -> Iterator[T]:
        """A free instance for the ``with`` block (waits for one)."""
        instance = self._free.get()
        try:
            yield instance
        finally:
            self._free.put(instance)
