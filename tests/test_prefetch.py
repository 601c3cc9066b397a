import threading
import time

import pytest

from probekit.prefetch import prefetched


def test_order_is_kept_and_production_runs_ahead_by_at_most_depth():
    produced = []

    def source():
        for i in range(20):
            produced.append(i)
            yield i

    seen = []
    for item in prefetched(source(), depth=3):
        time.sleep(0.002)  # a slow consumer: the producer fills the queue and must then wait
        # queue (3) + the item being handed over (1) + the one the producer holds while blocked (1)
        assert len(produced) - len(seen) <= 5
        seen.append(item)
    assert seen == list(range(20))


def test_errors_reach_the_consumer_after_the_good_items():
    def source():
        yield 1
        yield 2
        raise OSError("chunk 7 unreadable")

    got = []
    with pytest.raises(OSError, match="chunk 7"):
        for item in prefetched(source(), depth=2):
            got.append(item)
    assert got == [1, 2]


def test_stopping_early_ends_the_background_thread():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    def ours() -> set:
        return {t for t in threading.enumerate() if t.name == "probekit-prefetch"}

    before = ours()
    gen = prefetched(endless(), depth=2)
    for item in gen:
        if item == 5:
            break
    started = ours() - before
    assert len(started) == 1 and all(t.is_alive() for t in started)  # blocked on the full queue
    gen.close()  # what leaving the loop does once the generator is dropped; close() joins the thread
    assert not any(t.is_alive() for t in started)


def test_depth_zero_reads_inline():
    assert list(prefetched(iter(range(4)), depth=0)) == [0, 1, 2, 3]
