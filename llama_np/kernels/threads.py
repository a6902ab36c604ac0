"""How many threads the compiled kernels use: every core, unless one is kept busy.

A parallel kernel splits its weight rows evenly over numba's threads and returns when the last
one is done. When another process keeps one of the cores busy, the thread that shares that
core runs only in its timeslices, and every product waits for it: measured on 2 cores with a
busy loop pinned to one, stories15M decode fell from ~410 to 36 tok/s with 2 threads; on the
same machine busy with other processes, 7 tok/s with 2 threads and 40 with 1.

So the kernel layer times its products (`Threads.run`) and keeps, for each product (a matrix
and a row count) and thread count, its recent times. Now and then (PROBE_SECONDS) it tries
another thread count for a few products (PROBE_PRODUCTS): one thread fewer when it uses every
core, else one more; it keeps the new count if most of those products ran faster than their
own recent median with the current count. A product far slower than its median (STRAGGLER
times) is a straggling thread: a few of them (STRAGGLES among the last WINDOW products) start a
try at once. A try that loses costs a few slower products; the wait before the next one then
doubles, up to MAX_PROBE_SECONDS, and a try that wins resets it.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Hashable

import numba

STRAGGLER = 4.0  # a product this many times its recent median ...
SLOWEST_OK = 200e-6  # ... and slower than this (s): shorter ones jitter with any interrupt
WINDOW, STRAGGLES = 16, 3  # so many straggles among the last WINDOW products: try fewer threads
HISTORY = 7  # recent times kept per product and thread count; a median needs 3
PROBE_SECONDS, MAX_PROBE_SECONDS = 0.25, 4.0  # waits before trying another thread count
PROBE_PRODUCTS = 12  # products timed with the other count before deciding
FASTER = 0.9  # a tried product wins if it took less than this × its usual time
KEEP_PRODUCTS = 4096  # products whose times are kept (each matrix and row count is one)


class Threads:
    """The thread count of numba's parallel kernels, adapted to a busy machine."""

    def __init__(self, most: int | None = None) -> None:
        self.most = most or numba.config.NUMBA_NUM_THREADS  # every core numba uses
        self.count = self.most  # threads the products run with
        self.times: dict[tuple[Hashable, int], deque[float]] = {}  # (product, threads) -> s
        self.straggled: deque[bool] = deque(maxlen=WINDOW)
        self.probe_at = time.perf_counter() + PROBE_SECONDS  # when to try another count
        self.probe_wait = PROBE_SECONDS
        self.trying: int | None = None  # the count being tried
        self.wins: list[bool] = []  # per tried product: faster than usual?

    def run(self, product: Hashable, work: Callable[[], None]) -> None:
        """Run `work` (one product of the kernels) with the current thread count, time it, and
        adapt the count for the next products."""
        if self.trying is None and self.most > 1 and time.perf_counter() >= self.probe_at:
            self.trying = self.count - 1 if self.count == self.most else self.count + 1
            self.wins = []
        count = self.count if self.trying is None else self.trying
        numba.set_num_threads(count)
        start = time.perf_counter()
        work()
        seconds = time.perf_counter() - start
        usual = self.median(product, self.count)
        if self.trying is None:
            self.record(product, count, seconds)
            if usual is not None:
                self.straggled.append(seconds > STRAGGLER * usual and seconds > SLOWEST_OK)
                if sum(self.straggled) >= STRAGGLES and self.count > 1:
                    self.straggled.clear()
                    self.probe_at = 0.0  # a thread straggles: try one fewer now
            return
        if usual is not None:
            self.wins.append(seconds < FASTER * usual)
            if self.wins[-1]:  # (a losing try would skew that count's usual times)
                self.record(product, count, seconds)
        if len(self.wins) >= PROBE_PRODUCTS:
            self.decide()

    def decide(self) -> None:
        """After PROBE_PRODUCTS products with the tried count: keep it if most ran faster."""
        if sum(self.wins) > len(self.wins) // 2:
            self.count = self.trying
            self.probe_wait = PROBE_SECONDS
            self.straggled.clear()
        else:
            self.probe_wait = min(2 * self.probe_wait, MAX_PROBE_SECONDS)
        self.trying = None
        self.probe_at = time.perf_counter() + self.probe_wait

    def median(self, product: Hashable, count: int) -> float | None:
        times = self.times.get((product, count))
        return statistics.median(times) if times and len(times) >= 3 else None

    def record(self, product: Hashable, count: int, seconds: float) -> None:
        if len(self.times) > KEEP_PRODUCTS:
            self.times.clear()
        self.times.setdefault((product, count), deque(maxlen=HISTORY)).append(seconds)
