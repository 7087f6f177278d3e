"""Splitting work between Numba's threads: slices of a range, matrix products split by rows or columns.

Each thread writes its own slice of the output, so no two threads touch the
same element: no atomics, no reductions across threads.
"""
import numba
import numpy as np
from numba import njit, prange

from .._config import JIT_OPTIONS, PARALLEL_JIT_OPTIONS
from .blas import gemm

# A cached kernel that calls a parallel one does not start Numba's threading
# layer when it is loaded from the cache, and crashes (numba issue #8578).
# Starting the layer here, before any kernel can load, avoids that.
numba.get_num_threads()

# Ranges are split in blocks of this many elements (one cache line of float32,
# a whole number of SIMD vectors).
PART_BLOCK = 16
CACHE_LINE = 64


@njit(**JIT_OPTIONS)
def part_range(part, n_parts, size, block=PART_BLOCK):
    """[start, stop) of the ``part``-th of ``n_parts`` near-equal slices of range(size), in whole blocks."""
    n_blocks = (size + block - 1) // block
    start = min(size, (part * n_blocks // n_parts) * block)
    stop = min(size, ((part + 1) * n_blocks // n_parts) * block)
    return start, stop


@njit(**JIT_OPTIONS)
def empty_aligned(rows, cols, dtype_of):
    """np.empty((rows, cols)) of ``dtype_of``'s dtype, starting on a cache-line boundary, so that
    threads writing neighbouring parts of a row do not share a cache line."""
    per_line = CACHE_LINE // dtype_of.itemsize
    raw = np.empty(rows * cols + per_line, dtype_of.dtype)
    start = -(raw.ctypes.data // dtype_of.itemsize) % per_line
    return raw[start:start + rows * cols].reshape((rows, cols))


@njit(**JIT_OPTIONS)
def _matmul_part(a, b, c, trans_a, trans_b, beta, split_cols, part, n_parts):
    if split_cols:
        start, stop = part_range(part, n_parts, c.shape[1])
        b_part = b[start:stop] if trans_b else b[:, start:stop]
        gemm(a, b_part, c[:, start:stop], trans_a, trans_b, beta)
    else:
        start, stop = part_range(part, n_parts, c.shape[0])
        a_part = a[:, start:stop] if trans_a else a[start:stop]
        gemm(a_part, b, c[start:stop], trans_a, trans_b, beta)


@njit(**PARALLEL_JIT_OPTIONS)
def _matmul_parallel(a, b, c, trans_a, trans_b, beta, split_cols, n_parts):
    for part in prange(n_parts):
        _matmul_part(a, b, c, trans_a, trans_b, beta, split_cols, part, n_parts)


@njit(**JIT_OPTIONS)
def matmul(a, b, c, trans_a, trans_b, beta, split_cols, n_parts):
    """c = op(a) @ op(b) + beta * c (see ``gemm``) on ``n_parts`` threads.

    Each thread computes a slice of the columns of c (``split_cols``) or of its rows.
    """
    if n_parts > 1:
        _matmul_parallel(a, b, c, trans_a, trans_b, beta, split_cols, n_parts)
    else:
        gemm(a, b, c, trans_a, trans_b, beta)
