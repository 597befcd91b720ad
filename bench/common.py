"""Timing helpers shared by the benchmark sections.

The machine these run on may be shared, so comparisons are interleaved (a, b, a, b, ...) and
report medians; `interleaved_timings` also reports the process CPU time per call (all threads),
which noise from other processes disturbs much less than wall time.
"""

from __future__ import annotations

import statistics
import time


def median_ms(fn, repeats=7, warmup=2):
    """Median wall time of fn() in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def interleaved_timings(fns, repeats=7, warmup=2):
    """{name: (median wall ms, median process CPU ms)} of several functions timed in turn."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c = time.process_time()
            t = time.perf_counter()
            fn()
            wall[name].append((time.perf_counter() - t) * 1000.0)
            cpu[name].append((time.process_time() - c) * 1000.0)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}
