"""Pieces every CUDA kernel shares: compile options, constants, the tiled matrix product, element-wise kernels.

Launch shapes come from the backend's plan (``nblstm.cuda_backend.CUDAPlan``):
the tiled kernels run blocks of ``plan.tile`` x ``plan.tile`` threads and use
``cuda.blockDim.x`` as their tile edge, so the tile can shrink at run time
(the tests shrink it so that tiny inputs span several blocks) while the
shared-memory tiles keep their compile-time size ``MAX_TILE``.

Constants are float32 NumPy scalars: Numba types them float32, so arithmetic
on float32 data stays float32 and on float64 data is promoted exactly
(0 and 1 are representable in both).  Numba's CUDA simulator runs kernels as
Python, where ``math.exp`` returns a Python float that a float32 constant
would round to float32 (NumPy's promotion rules), so there they are Python
floats.
"""
import functools
import math

import numpy as np
from numba import config, cuda

from .._config import CACHE

# fastmath stays off on the GPU: Numba's CUDA fastmath implies no-NaN / no-inf,
# and NaN and inf must propagate as in PyTorch.
CUDA_JIT_OPTIONS = {"cache": CACHE}

_CONSTANT = float if config.ENABLE_CUDASIM else np.float32
ZERO, ONE = _CONSTANT(0.0), _CONSTANT(1.0)

# Largest tile edge; tiles are padded by one column against shared-memory bank conflicts.
MAX_TILE = 16
PADDED_TILE = MAX_TILE + 1

# Dynamic shared memory a block may use without an opt-in on every CUDA GPU.
SHARED_BYTES_LIMIT = 48 * 1024


def blocks_for(size, per_block):
    """Blocks of ``per_block`` threads that cover ``size`` items."""
    return max(1, math.ceil(size / per_block))


@cuda.jit(device=True)
def element_or_zero(matrix, row, col):
    """matrix[row, col], or 0 outside the matrix (the ragged edge of a tile)."""
    if row < matrix.shape[0] and col < matrix.shape[1]:
        return matrix[row, col]
    return ZERO


@cuda.jit(device=True)
def slice_length(start, length, size):
    """How many of the ``length`` items from ``start`` on lie below ``size`` (0 when none do).

    Written out because Numba 0.68's CUDA target fails to type the builtin min/max of two integers.
    """
    stop = start + length if start + length < size else size
    return stop - start if stop > start else 0


@cuda.jit(device=True)
def gemm_tile(a, b, c, trans_a, trans_b, beta, addend):
    """The body of ``gemm_tiles``: this thread block's tile of c (see there)."""
    tile = cuda.blockDim.x
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    row0, col0 = cuda.blockIdx.y * tile, cuda.blockIdx.x * tile
    depth = a.shape[0] if trans_a else a.shape[1]
    a_tile = cuda.shared.array((MAX_TILE, PADDED_TILE), c.dtype)  # a_tile[row, kk]
    b_tile = cuda.shared.array((MAX_TILE, PADDED_TILE), c.dtype)  # b_tile[kk, col]
    total = ZERO
    for k0 in range(0, depth, tile):
        if trans_a:
            a_tile[tx, ty] = element_or_zero(a, k0 + ty, row0 + tx)
        else:
            a_tile[ty, tx] = element_or_zero(a, row0 + ty, k0 + tx)
        if trans_b:
            b_tile[tx, ty] = element_or_zero(b, col0 + ty, k0 + tx)
        else:
            b_tile[ty, tx] = element_or_zero(b, k0 + ty, col0 + tx)
        cuda.syncthreads()
        for kk in range(tile):
            total += a_tile[ty, kk] * b_tile[kk, tx]
        cuda.syncthreads()
    row, col = row0 + ty, col0 + tx
    if row < c.shape[0] and col < c.shape[1]:
        c[row, col] = total + beta * addend[row, col] if beta != 0 else total


@cuda.jit(**CUDA_JIT_OPTIONS)
def gemm_tiles(a, b, c, trans_a, trans_b, beta, addend):
    """c = op(a) @ op(b) + beta * addend, one (tile x tile) block of c per thread block.

    a: (m, k), or (k, m) with trans_a;  b: (k, n), or (n, k) with trans_b;
    c, addend: (m, n); addend may be c itself and is not read when beta == 0.
    Any strides.  Launch: blocks of (tile, tile) threads, tile <= MAX_TILE,
    grid (ceil(n / tile), ceil(m / tile)).  Both operands are staged through
    shared memory, loaded so that consecutive threads read consecutive addresses.
    """
    gemm_tile(a, b, c, trans_a, trans_b, beta, addend)


def matmul(a, b, c, trans_a, trans_b, beta, plan, addend=None):
    """c = op(a) @ op(b) + beta * (c, or addend when given), as ``gemm_tiles`` launches (see there for shapes)."""
    rows, cols = c.shape
    if rows == 0 or cols == 0:
        return
    tile = plan.tile
    grid = (blocks_for(cols, tile), blocks_for(rows, tile))
    gemm_tiles[grid, (tile, tile)](a, b, c, trans_a, trans_b, c.dtype.type(beta), c if addend is None else addend)


# Operations of ``elementwise_kernel``.
COPY, ADD, MULTIPLY = 0, 1, 2


@cuda.jit(**CUDA_JIT_OPTIONS)
def elementwise_kernel(a, b, out, op):
    """out = a (COPY), a + b (ADD) or a * b (MULTIPLY), element-wise over (rows, cols) arrays of any strides.

    out may be a or b itself; b is not read by COPY.  Launch: a 1-D grid of any size (grid-stride loop).
    """
    cols = out.shape[1]
    for item in range(cuda.grid(1), out.shape[0] * cols, cuda.gridsize(1)):
        row, col = item // cols, item % cols
        if op == COPY:
            out[row, col] = a[row, col]
        elif op == ADD:
            out[row, col] = a[row, col] + b[row, col]
        else:
            out[row, col] = a[row, col] * b[row, col]


@cuda.jit(**CUDA_JIT_OPTIONS)
def fill_kernel(out, value):
    """out[...] = value for a (rows, cols) array.  Launch: a 1-D grid of any size."""
    cols = out.shape[1]
    for item in range(cuda.grid(1), out.shape[0] * cols, cuda.gridsize(1)):
        out[item // cols, item % cols] = value


@cuda.jit(**CUDA_JIT_OPTIONS)
def swap_leading_axes_kernel(src, dst):
    """dst[j, i, k] = src[i, j, k] for src (A, B, F) and dst (B, A, F).  Launch: a 1-D grid of any size."""
    rows, cols, features = src.shape
    for item in range(cuda.grid(1), rows * cols * features, cuda.gridsize(1)):
        i, rest = item // (cols * features), item % (cols * features)
        j, k = rest // features, rest % features
        dst[j, i, k] = src[i, j, k]


def flat_launch(size, plan):
    """(blocks, threads) for a 1-D grid-stride kernel over ``size`` items."""
    return blocks_for(size, plan.threads), plan.threads


def as_rows(array):
    """A 2-D (rows, last axis) view of a C-contiguous device array; a vector becomes one row."""
    cols = array.shape[array.ndim - 1]
    return array.reshape((array.size // cols if cols else 0, cols))


def zeros(shape, dtype, plan):
    """A new device array of zeros."""
    array = cuda.device_array(shape, dtype)
    if array.size:
        fill_kernel[flat_launch(array.size, plan)](as_rows(array), array.dtype.type(0))
    return array


def elementwise(op, a, b, out, plan):
    """``elementwise_kernel`` over 2-D device arrays of one shape (b may be None for COPY)."""
    if out.size:
        elementwise_kernel[flat_launch(out.size, plan)](a, a if b is None else b, out, op)


def group_lanes(threads, items, terms):
    """Threads that share one sum of ``terms`` products when a block of ``threads`` computes ``items`` sums.

    A power of two that divides ``threads``, as large as leaves a group of threads for each
    item (up to ``threads`` items) and no larger than ``terms``: a block computing one or a
    few long dot products spreads each over many threads instead of one thread looping.
    """
    lanes = 1
    while threads % (2 * lanes) == 0 and 2 * lanes * min(items, threads) <= threads and 2 * lanes <= terms:
        lanes *= 2
    return lanes


@cuda.jit(device=True)
def sum_groups(partial, base, sums, thread, threads, lanes):
    """Add up the values of each group of ``lanes`` consecutive threads, for ``sums`` sums at once.

    partial: shared memory; partial[base + s*threads + thread] holds the thread's term of sum s.
    On return the first thread of each group (thread % lanes == 0) holds the group's totals in
    its own slots.  A tree of log2(lanes) rounds; lanes is a power of two dividing ``threads``.
    Every thread of the block must call it: it meets the block's barrier (none when lanes is 1:
    then each thread holds its own total).
    """
    if lanes == 1:
        return
    stride = lanes // 2
    while stride > 0:
        cuda.syncthreads()
        if thread % lanes < stride:
            for s in range(sums):
                partial[base + s * threads + thread] += partial[base + s * threads + thread + stride]
        stride //= 2
    cuda.syncthreads()


@functools.cache
def cooperative_launch_supported():
    """Grid-wide sync needs CUDA's static device runtime (libcudadevrt.a) at link time."""
    if config.ENABLE_CUDASIM:
        return True
    from numba.cuda.cudadrv import libs

    try:
        libs.check_static_lib(libs.get_cudalib("cudadevrt", static=True))
    except FileNotFoundError:
        return False
    return True


@functools.cache
def cooperative_block_limit(kernel, signature, threads, shared_bytes):
    """How many blocks of ``kernel`` compiled for ``signature`` (its arguments' Numba types) can run
    at once in a cooperative grid (1 under the simulator, which runs cooperative grids of one block
    only).  Cached: ``persistent_grid`` took the host 0.33-0.39 ms a call on an H200 without the
    cache and 0.14-0.15 ms with it, most of that typing the arguments for the key
    (tools/cuda_host_cost.py)."""
    if config.ENABLE_CUDASIM:
        return 1
    return kernel.compile(signature).max_cooperative_grid_blocks(threads, shared_bytes)


def persistent_grid(kernel, args, threads, itemsize, shared_elements, units):
    """(blocks, shared bytes) of a persistent launch of ``kernel``, or (0, 0) when its weights
    do not fit in on-chip memory.

    ``shared_elements(blocks)`` gives the shared-memory elements each block needs when
    ``units`` units of work are split between ``blocks`` blocks; more blocks need less
    each but must all be resident at once.
    """
    if not cooperative_launch_supported():
        return 0, 0
    # The simulator types nothing (and cooperative_block_limit answers 1 there).
    signature = () if config.ENABLE_CUDASIM else tuple(kernel.typeof_pyval(arg) for arg in args)
    blocks = min(units, cooperative_block_limit(kernel, signature, threads, 0))
    while blocks > 0:
        shared_bytes = shared_elements(blocks) * itemsize
        if shared_bytes > SHARED_BYTES_LIMIT:
            return 0, 0
        resident = cooperative_block_limit(kernel, signature, threads, shared_bytes)
        if blocks <= resident:
            return blocks, shared_bytes
        blocks = resident
    return 0, 0
