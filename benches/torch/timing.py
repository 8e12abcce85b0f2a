"""Timing shared by the PyTorch twins of the criterion benches."""
import time


def median_ms(fn, warmup=3, runs=15):
    """Median wall time of `fn()` in milliseconds over `runs` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]
