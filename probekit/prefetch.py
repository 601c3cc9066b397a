"""Read ahead of the consumer: a background thread fills a bounded queue from an iterator.

Used by probe training (minibatches read from HDF5 while the previous one is on the model) and by extraction
(input images loaded while the previous batch runs): I/O and torch's kernels release the GIL, so the two
overlap. The queue bound keeps memory at ``depth`` items.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` in order, produced up to ``depth`` ahead in a background thread (depth 0: inline)."""
    if depth <= 0:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            buffer.put(exc)

    worker = threading.Thread(target=produce, name="probekit-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = buffer.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # the consumer stopped early (or failed): let the producer exit
        stop.set()
        while worker.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
