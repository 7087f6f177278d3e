"""The machine's practical ceiling: large matrix-product throughput through NumPy's BLAS."""
import time

import numpy as np

from .threads import thread_limit

DEFAULT_SIZE = 2048


def measure_peak(dtype="float32", size=DEFAULT_SIZE, threads=1, repeats=5, seed=0):
    """GFLOP/s (2 * size**3 FLOPs per call) of a (size, size) @ (size, size) product on ``threads``.

    One untimed call warms up; ``gflops`` is the best of ``repeats`` calls (the ceiling),
    ``median_gflops`` their median.
    """
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    out = np.empty((size, size), dtype)
    times = []
    with thread_limit(threads):
        np.matmul(a, b, out=out)
        for _ in range(repeats):
            start = time.perf_counter()
            np.matmul(a, b, out=out)
            times.append(time.perf_counter() - start)
    flops = 2.0 * size ** 3
    return {"dtype": str(np.dtype(dtype)), "size": size, "threads": threads, "repeats": repeats,
            "gflops": flops / min(times) / 1e9, "median_gflops": flops / float(np.median(times)) / 1e9}
