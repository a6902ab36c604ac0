"""How many threads the compiled kernels use: every core, unless one is kept busy.

A parallel kernel splits its weight rows evenly over numba's threads and returns when the last
one is done. When another process keeps one of the cores busy, the thread that shares that
core runs only in its timeslices, and every product waits for it: measured on 2 cores with a
busy loop pinned to one, stories15M decode fell from ~410 to 36 tok/s with 2 threads, while
one thread alone, on the free core, loses only its share of the work.

So the kernel layer times its products (`Threads.run`) and keeps, for each product (a matrix
and a row count) and thread count, its recent times. A product far slower than its own recent
median (STRAGGLER times, and slower than SLOWEST_OK) is a straggle; a few of them among the
last products (STRAGGLES in WINDOW) and the next products run with one thread fewer. Every
PROBE_SECONDS or so the kernels try one thread more for a few products (PROBE_PRODUCTS), and
keep it if those ran faster than the same products did with fewer threads: the core is free
again. Trying costs a few slow products each time while the core stays busy; the wait between
tries doubles then, up to MAX_PROBE_SECONDS.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Hashable

import numba

STRAGGLER = 4.0  # a product this many times its recent median ...
SLOWEST_OK = 200e-6  # ... and slower than this (s): shorter ones jitter with any interrupt
WINDOW, STRAGGLES = 16, 3  # so many straggles among the last WINDOW products: fewer threads
HISTORY = 7  # recent times kept per product and thread count; a median needs 3
PROBE_SECONDS, MAX_PROBE_SECONDS = 0.25, 4.0  # then try more threads again
PROBE_PRODUCTS = 12  # products timed with more threads before deciding
KEEP_PRODUCTS = 4096  # products whose times are kept (a prefill of each length is a product)


class Threads:
    """The thread count of numba's parallel kernels, adapted to a busy machine."""

    def __init__(self, most: int | None = None) -> None:
        self.most = most or numba.config.NUMBA_NUM_THREADS  # every core numba uses
        self.count = self.most  # threads the next product runs with
        self.times: dict[tuple[Hashable, int], deque[float]] = {}  # (product, threads) -> s
        self.straggled: deque[bool] = deque(maxlen=WINDOW)
        self.probe_at = 0.0  # when to try one thread more (perf_counter seconds)
        self.probe_wait = PROBE_SECONDS
        self.probing: list[bool] | None = None  # faster with more threads? per probe product

    def run(self, product: Hashable, work: Callable[[], None]) -> None:
        """Run `work` (one product of the kernels) with the current thread count, time it, and
        adapt the count for the next products."""
        if self.probing is None and self.count < self.most and time.perf_counter() >= self.probe_at:
            self.probing = []  # a try: the next products run with one thread more
        count = self.count + (self.probing is not None)
        numba.set_num_threads(count)
        start = time.perf_counter()
        work()
        seconds = time.perf_counter() - start
        if self.probing is not None:
            fewer = self.median(product, count - 1)
            if fewer is not None:
                self.probing.append(seconds < fewer)
                if seconds < fewer:  # (a slow try would skew this count's usual times)
                    self.record(product, count, seconds)
            if len(self.probing) >= PROBE_PRODUCTS:
                self.decide_probe()
            return
        usual = self.median(product, count)
        self.record(product, count, seconds)
        if usual is not None:
            self.straggled.append(seconds > STRAGGLER * usual and seconds > SLOWEST_OK)
            if sum(self.straggled) >= STRAGGLES and self.count > 1:
                self.count -= 1  # a thread straggles: do without it
                self.straggled.clear()
                self.probe_at = time.perf_counter() + self.probe_wait

    def decide_probe(self) -> None:
        """After PROBE_PRODUCTS products with one thread more: keep it if most ran faster."""
        faster = sum(self.probing) > len(self.probing) // 2
        self.probing = None
        if faster:
            self.count += 1
            self.probe_wait = PROBE_SECONDS
            self.straggled.clear()
        else:
            self.probe_wait = min(2 * self.probe_wait, MAX_PROBE_SECONDS)
        self.probe_at = time.perf_counter() + self.probe_wait

    def median(self, product: Hashable, count: int) -> float | None:
        times = self.times.get((product, count))
        return statistics.median(times) if times and len(times) >= 3 else None

    def record(self, product: Hashable, count: int, seconds: float) -> None:
        if len(self.times) > KEEP_PRODUCTS:
            self.times.clear()
        self.times.setdefault((product, count), deque(maxlen=HISTORY)).append(seconds)
