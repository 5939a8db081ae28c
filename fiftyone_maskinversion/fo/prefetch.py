"""Reading ahead: a worker thread prepares the next samples (decoded image, rasterised masks) while
the engine inverts the current one, so images with few regions no longer wait on I/O."""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()


def prefetched(items: Iterable, prepare: Callable[..., T], depth: int = 2) -> Iterator[T]:
    """``prepare(item)`` for each item, in order, computed up to ``depth`` items ahead in a thread.

    An exception in the worker is raised here, at the item that caused it; stopping early (an exception
    in the consumer, a kill of the generator) stops the worker too."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                results.put(prepare(item))
            results.put(_END)
        except BaseException as err:  # handed to the consumer
            results.put(err)

    worker = threading.Thread(target=work, name="maskinversion-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            result = results.get()
            if result is _END:
                return
            if isinstance(result, BaseException):
                raise result
            yield result
    finally:
        stop.set()
        while worker.is_alive():  # unblock a worker waiting to put
            try:
                results.get_nowait()
            except queue.Empty:
                worker.join(0.05)
