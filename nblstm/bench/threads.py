"""One thread count for every backend, restored afterwards."""
import contextlib
import sys

import numba


def max_threads():
    """The most threads Numba can use in this process (NUMBA_NUM_THREADS, by default the CPU count)."""
    return numba.config.NUMBA_NUM_THREADS


@contextlib.contextmanager
def thread_limit(threads):
    """Run on ``threads`` threads: Numba's pool, PyTorch's (when torch is already imported) and every
    BLAS/OpenMP pool threadpoolctl finds (NumPy's and SciPy's OpenBLAS, MKL, libgomp).  ONNX Runtime
    takes the count per session (``intra_op_num_threads``).  Everything is restored on exit.

    Use no more threads than idle cores: a parallel region waits for its slowest thread, so a
    core busy with another process can make small multi-threaded calls many times slower.
    """
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    previous_numba = numba.get_num_threads()
    previous_torch = torch.get_num_threads() if torch else None
    numba.set_num_threads(threads)
    try:
        if torch:
            torch.set_num_threads(threads)
        with threadpool_limits(limits=threads):
            yield
    finally:
        numba.set_num_threads(previous_numba)
        if torch:
            torch.set_num_threads(previous_torch)
