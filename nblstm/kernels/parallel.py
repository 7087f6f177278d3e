"""Splitting work between Numba's threads: slices of a range, matrix products split by rows or columns.

Each thread writes its own slice of the output, so no two threads touch the
same element: no atomics, no reductions across threads.
"""
import numba
import numpy as np
from numba import njit, prange

from .._config import JIT_OPTIONS, PARALLEL_JIT_OPTIONS
from .blas import PANELS_MIN_COLUMNS, gemm
from .packed import gemm_packed
from .tiles import TILE_ROWS

# A cached kernel that calls a parallel one does not start Numba's threading
# layer when it is loaded from the cache, and crashes (numba issue #8578).
# Starting the layer here, before any kernel can load, avoids that.
numba.get_num_threads()

# Ranges are split in blocks of this many elements (one cache line of float32,
# a whole number of SIMD vectors).
PART_BLOCK = 16
CACHE_LINE = 64
# A matrix product whose threads split its reduction (``splits_reduction``) gives each at least this
# many rows of it, in blocks of as many.  Measured on 2 cores of an AMD EPYC (Zen 5), float32, c = a.T @ b
# over 6400 rows, BLAS on one thread (medians of 200): to 32 x 64 one thread 115 us, its columns split
# 221 (two 32-column products in BLAS), its rows split 86, its reduction 66; to 16 x 64 61, 138, 63, 35.
REDUCTION_BLOCK = 256


@njit(**JIT_OPTIONS)
def part_range(part, n_parts, size, block=PART_BLOCK):
    """[start, stop) of the ``part``-th of ``n_parts`` near-equal slices of range(size), in whole blocks."""
    n_blocks = (size + block - 1) // block
    start = min(size, (part * n_blocks // n_parts) * block)
    stop = min(size, ((part + 1) * n_blocks // n_parts) * block)
    return start, stop


@njit(**JIT_OPTIONS)
def _grid_cut(share, n_parts, blocks, rows, row_tile):
    """(block, row) where the ``share``-th of ``n_parts`` shares of a blocks x rows grid starts (see
    ``grid_share``): the nearest cut between whole tiles of rows."""
    cell = share * blocks * rows // n_parts
    block, row = cell // rows, cell % rows
    row = min(rows, (row + row_tile // 2) // row_tile * row_tile)
    return (block + 1, 0) if row == rows else (block, row)


@njit(**JIT_OPTIONS)
def grid_share(part, n_parts, blocks, rows, row_tile):
    """The ``part``-th of ``n_parts`` near-equal shares of a grid of work, ``blocks`` (of columns) by
    ``rows``, taken block by block and each block row by row: ((block, row) where the share starts,
    (block, row) where the next one does).  Where the threads do not divide the blocks (7 panels
    between 2), a block is split by rows between neighbours instead of one thread taking a whole
    block more.  Rows are cut between whole tiles of ``row_tile`` (``rows`` for whole blocks only).
    """
    return _grid_cut(part, n_parts, blocks, rows, row_tile), _grid_cut(part + 1, n_parts, blocks, rows, row_tile)


@njit(**JIT_OPTIONS)
def share_segment(share, segment, rows, block, size):
    """Segment 0, 1 or 2 of a ``grid_share`` of blocks of ``block`` columns of ``size``, as (start, stop,
    row_start, row_stop) of the columns and rows it covers: its first block from its first row (when
    the share starts within that block, or lies within it), its whole blocks, its last block up to
    its last row.  An empty segment has no columns or no rows."""
    (first_block, first_row), (stop_block, stop_row) = share
    if segment == 0:
        block_start, block_stop, row_start = first_block, first_block + 1, first_row
        row_stop = stop_row if first_block == stop_block else (rows if first_row > 0 else 0)
    elif segment == 1:
        block_start, block_stop, row_start, row_stop = first_block + (first_row > 0), stop_block, 0, rows
    else:
        block_start, block_stop, row_start = stop_block, stop_block + 1, 0
        row_stop = stop_row if stop_block > first_block else 0
    return min(size, block_start * block), min(size, block_stop * block), row_start, row_stop


@njit(**JIT_OPTIONS)
def share_first_rows(share):
    """[start, stop) of the blocks whose first row is in ``share``: each block of a ``grid_share`` has one
    such share (the one that, say, prepares what the block's other rows read)."""
    (first_block, first_row), (stop_block, stop_row) = share
    return first_block + (first_row > 0), stop_block + (stop_row > 0)


@njit(**JIT_OPTIONS)
def shares_split_blocks(n_parts, blocks, rows, row_tile):
    """Whether some block of the grid is split by rows between ``grid_share``s."""
    for part in range(1, n_parts):
        if _grid_cut(part, n_parts, blocks, rows, row_tile)[1] > 0:
            return True
    return False


@njit(**JIT_OPTIONS)
def cache_line_offset(raw):
    """Bytes from the start of the array ``raw`` to the next cache-line boundary (0 on one)."""
    return -raw.ctypes.data % CACHE_LINE


@njit(**JIT_OPTIONS)
def empty_aligned(shape, dtype_of):
    """np.empty(shape) of ``dtype_of``'s dtype, starting on a cache-line boundary: threads writing
    neighbouring parts of a row then do not share a cache line, and the packed products' vector
    loads (a whole cache line each on AVX-512) never straddle two lines.  Numba's np.empty aligns
    to 32 bytes only: its arrays start mid-line about half the time, depending on the allocator
    (a 256 KiB one in 199 of 200 allocations).  Packed products from weights 32 bytes off a line,
    one thread of an AMD EPYC (Zen 5), float32: 1.03-1.05x slower at hidden 128-512, batch 4-64."""
    size = 1
    for extent in shape:
        size *= extent
    per_line = CACHE_LINE // dtype_of.itemsize
    raw = np.empty(size + per_line, dtype_of.dtype)
    start = cache_line_offset(raw) // dtype_of.itemsize
    return raw[start:start + size].reshape(shape)


@njit(**JIT_OPTIONS)
def _matmul_part(a, b, c, trans_a, trans_b, beta, part, n_parts):
    if c.shape[1] >= c.shape[0]:
        start, stop = part_range(part, n_parts, c.shape[1])
        b_part = b[start:stop] if trans_b else b[:, start:stop]
        gemm(a, b_part, c[:, start:stop], trans_a, trans_b, beta)
    else:
        start, stop = part_range(part, n_parts, c.shape[0])
        a_part = a[:, start:stop] if trans_a else a[start:stop]
        gemm(a_part, b, c[start:stop], trans_a, trans_b, beta)


@njit(**PARALLEL_JIT_OPTIONS)
def _matmul_parallel(a, b, c, trans_a, trans_b, beta, n_parts):
    for part in prange(n_parts):
        _matmul_part(a, b, c, trans_a, trans_b, beta, part, n_parts)


@njit(**PARALLEL_JIT_OPTIONS)
def _matmul_split_reduction(a, b, c, beta, n_parts):
    """c = a.T @ b + beta * c, each of ``n_parts`` threads over its rows of a and b (blocks of
    REDUCTION_BLOCK), the first into c, the others into partial products added to c after."""
    partials = empty_aligned((n_parts - 1, c.shape[0], c.shape[1]), c)
    for part in prange(n_parts):
        start, stop = part_range(part, n_parts, a.shape[0], REDUCTION_BLOCK)
        if part == 0:
            gemm(a[start:stop], b[start:stop], c, True, False, beta)
        else:
            gemm(a[start:stop], b[start:stop], partials[part - 1], True, False, 0.0)
    _add_partials(c, partials)


@njit(**JIT_OPTIONS)
def _add_partials(c, partials):
    """c += every partials[p] (outside a parallel function: there each row's add would be a parallel
    region of its own, 30 us for 32 rows)."""
    for partial in partials:
        for row in range(c.shape[0]):
            c_row, partial_row = c[row], partial[row]
            for col in range(c.shape[1]):
                c_row[col] += partial_row[col]


@njit(**JIT_OPTIONS)
def splits_reduction(a, c, trans_a, trans_b, n_parts):
    """Whether ``matmul`` splits the reduction of a.T @ b (``_matmul_split_reduction``): c's columns make
    whole panels (``blas.uses_panels``) that its slices would not, and the reduction gives every
    thread REDUCTION_BLOCK rows."""
    return (trans_a and not trans_b and c.shape[1] >= PANELS_MIN_COLUMNS > c.shape[1] // n_parts
            and a.shape[0] >= n_parts * REDUCTION_BLOCK)


@njit(**JIT_OPTIONS)
def matmul(a, b, c, trans_a, trans_b, beta, n_parts):
    """c = op(a) @ op(b) + beta * c (see ``gemm``) on ``n_parts`` threads.

    Each thread computes a slice of the longer side of c: of its columns when it has at least as
    many as rows, else of its rows.  Split the other way, few rows (an LSTM's input projection of
    a short call, 8 rows by 2048 columns) leave a thread idle (rows are split in blocks of 16) or
    read every weight on both cores; few columns leave BLAS thin products.  Measured on 2 cores (both
    splits alternated in one process, medians of 7), rows vs columns: a @ b.T, 8 x 512 by 512 x 2048:
    527 vs 283 us, 64 rows 914 vs 698, 800 rows even; a.T @ b to 256 x 1024 over 6400: 22.3 vs 17.1
    ms; where rows outnumber columns, 2048 x 32 over 800: 0.80 vs 1.26 ms, 6400 x 256 over 1024:
    12.6 vs 14.4 ms.  A weight gradient a.T @ b of fewer columns than two panels, over many rows,
    splits its reduction instead (``splits_reduction``).
    """
    if n_parts > 1 and splits_reduction(a, c, trans_a, trans_b, n_parts):
        _matmul_split_reduction(a, b, c, beta, n_parts)
    elif n_parts > 1:
        _matmul_parallel(a, b, c, trans_a, trans_b, beta, n_parts)
    else:
        gemm(a, b, c, trans_a, trans_b, beta)


@njit(**PARALLEL_JIT_OPTIONS)
def _gemm_packed_parallel(a, packed, c, accumulate, n_parts):
    for part in prange(n_parts):
        row_start, row_stop = part_range(part, n_parts, a.shape[0], TILE_ROWS)
        gemm_packed(a, packed, c, accumulate, 0, packed.shape[0], row_start, row_stop)


@njit(**JIT_OPTIONS)
def gemm_packed_rows(a, packed, c, accumulate, n_parts):
    """c[:, :panels * width] (+)= a @ (the packed weights), ``packed.gemm_packed`` over every panel with
    the rows of a (whole register tiles) split between ``n_parts`` threads: each reads every panel,
    so the product needs no threads to meet, whatever its shape."""
    if n_parts > 1:
        _gemm_packed_parallel(a, packed, c, accumulate, n_parts)
    else:
        gemm_packed(a, packed, c, accumulate, 0, packed.shape[0], 0, a.shape[0])
