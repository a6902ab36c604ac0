"""How many threads the compiled kernels use: every core, unless one is kept busy.

A parallel kernel splits its weight rows evenly over numba's threads and returns when the last
one is done. When another process keeps one of the cores busy, the thread that shares that
core runs only in its timeslices, and every product waits for it: measured on 2 cores with a
busy loop pinned to one, stories15M decode fell from ~410 to 36 tok/s with 2 threads; on the
same machine busy with other processes, 7 tok/s with 2 threads and 40 with 1.

So the kernel layer times its products (`Threads.run`) and keeps, for each product (a matrix
and a row count) and thread count, its recent times. Now and then (PROBE_SECONDS) it tries
another thread count for a few products (PROBE_PRODUCTS): one thread fewer when it uses every
core, else one more; it keeps the new count if most of those products ran faster than their own
recent mean with the current count (by 10% for fewer threads, at all for more: FASTER); it ends
at the third slower one (a try with a thread on a busy core costs ~30x per product). A
product far slower than its median (STRAGGLER times) is a straggling thread: a few of them
(STRAGGLES among the last WINDOW products) start a try at once. A try that loses costs a few
slower products; the wait before the next one then doubles, up to MAX_PROBE_SECONDS for tries
of fewer threads and MAX_RETURN_SECONDS for tries of more, and a try that wins resets it. The
two caps differ: tries of fewer threads on a machine that is only a little busy (a server's
clients and event loop) sometimes win by chance, and more of them cost throughput (a 1 s cap:
54-67 against 68-69 output tok/s on benchmarks/serve.py's trace at 8 clients); tries of more
threads decide how long decode stays on fewer once the core is free again (busy decode was
the same with a 1 s cap as with 4 s).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

import numba

STRAGGLER = 4.0  # a product this many times its recent median ...
SLOWEST_OK = 200e-6  # ... and slower than this (s): shorter ones jitter with any interrupt
WINDOW, STRAGGLES = 16, 3  # so many straggles among the last WINDOW products: try fewer threads
HISTORY = 7  # recent times kept per product and thread count; a median needs 3
# Waits before trying another thread count: at first, and at most before a try of fewer or of
# more threads (the longest that decode stays on fewer threads once a busy core is free).
PROBE_SECONDS, MAX_PROBE_SECONDS, MAX_RETURN_SECONDS = 0.25, 4.0, 1.0
PROBE_PRODUCTS, LOSSES = 12, 3  # a try: products timed, slower ones that end it at once
TRY_AT_MOST = 4 * PROBE_PRODUCTS  # products a try runs at most, compared or not
# A tried product wins if it took less than this × its usual time: a try of fewer threads must
# be clearly faster (else chance wins on a machine only a little busy), a try of more threads
# only faster (stories15M's small products gain ~10% from a second thread on a free machine,
# where a busy core makes them ~30x slower).
FASTER, FASTER_WITH_MORE = 0.9, 1.0
KEEP_PRODUCTS = 4096  # products whose times are kept (each matrix and row count is one)
TIMED = 3  # one product in TIMED is checked (a stride prime to most counts of products a step)


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
        self.wins: list[bool] = []  # per tried product with a usual time: faster than it?
        self.tried = 0  # products run in the try
        self.set_to: dict[int, int] = {}  # Python thread -> the count numba was given there
        self.calls = 0  # products run

    def run(self, product: Hashable, work: Callable[..., None], *args) -> None:
        """Run work(*args) (one product of the kernels) with the current thread count, time it,
        and adapt the count: each product's time is kept, and one product in TIMED is checked
        for a straggle (the median costs ~2 us, a stories15M step ~25 products of 10-100 us)."""
        self.calls += 1
        start = time.perf_counter()
        if self.trying is None and self.most > 1 and start >= self.probe_at:
            self.trying = self.count - 1 if self.count == self.most else self.count + 1
            self.wins, self.tried = [], 0
        count = self.count if self.trying is None else self.trying
        if self.set_to.get(threading.get_ident()) != count:  # (numba's count is per thread)
            numba.set_num_threads(count)
            self.set_to[threading.get_ident()] = count
            start = time.perf_counter()
        work(*args)
        seconds = time.perf_counter() - start
        if self.trying is None:
            times = self.record(product, count, seconds)
            if self.calls % TIMED == 0 and len(times) >= 3:
                straggle = seconds > STRAGGLER * sorted(times)[len(times) // 2]
                self.straggled.append(straggle and seconds > SLOWEST_OK)
                if sum(self.straggled) >= STRAGGLES and self.count > 1:
                    self.straggled.clear()
                    self.probe_at = 0.0  # a thread straggles: try one fewer now
            return
        # Against the mean of its recent times: it counts the straggles a median would skip
        times = self.times.get((product, self.count))
        usual = sum(times) / len(times) if times and len(times) >= 3 else None
        if usual is not None:
            faster = FASTER_WITH_MORE if self.trying > self.count else FASTER
            self.wins.append(seconds < faster * usual)
            if self.wins[-1]:  # (a losing try would skew that count's usual times)
                self.record(product, count, seconds)
        self.tried += 1
        losses = len(self.wins) - sum(self.wins)
        if len(self.wins) >= PROBE_PRODUCTS or losses >= LOSSES:
            self.decide()
        elif self.tried >= (TRY_AT_MOST if self.wins else PROBE_PRODUCTS):
            # Too few products with usual times to compare (a server's steps change their row
            # counts, and each count is a product of its own): try later. A try that ran on
            # until it had compared PROBE_PRODUCTS of them kept 75% of a server's products on
            # one thread (Q8_0, 16 clients: 64 against 87-101 output tok/s).
            self.trying = None
            self.probe_at = time.perf_counter() + self.probe_wait

    def decide(self) -> None:
        """After PROBE_PRODUCTS products with the tried count, keep it if no more than LOSSES
        of them ran slower; after LOSSES slower ones, give it up at once."""
        if len(self.wins) - sum(self.wins) < LOSSES:
            self.count = self.trying
            self.probe_wait = PROBE_SECONDS
            self.straggled.clear()
        else:  # the next try is of fewer threads when on every core, else of more
            longest = MAX_PROBE_SECONDS if self.count == self.most else MAX_RETURN_SECONDS
            self.probe_wait = min(2 * self.probe_wait, longest)
        self.trying = None
        self.probe_at = time.perf_counter() + self.probe_wait

    def record(self, product: Hashable, count: int, seconds: float) -> deque[float]:
        if len(self.times) > KEEP_PRODUCTS:
            self.times.clear()
        times = self.times.get((product, count))
        if times is None:
            times = self.times[product, count] = deque(maxlen=HISTORY)
        times.append(seconds)
        return times
