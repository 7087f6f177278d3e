"""Register tiles of ``c = a @ w``: the microkernel of the CPU kernels' matrix products.

A tile keeps rows x ``PANEL_VECTORS`` vectors of c in registers for a whole reduction, streaming
one row of the weights per step: ``weights[offset + kk * stride:][:width]`` multiplies ``a[:, kk]``
into columns col..col + width of c (width = PANEL_VECTORS vectors).  The weights are either a
panel packed for it (``packed.py``: stride = width, contiguous along the reduction) or the rows of
a plain matrix read in place (stride = its row stride, ``gemm_nn_panels``).  Products of only one or
two vectors of columns run on narrow tiles of as many vectors (``gemm_nn_narrow``).
"""
from numba import njit

from .._config import JIT_OPTIONS, STEP_JIT_OPTIONS
from .simd import VECTOR_BITS, lanes_of, prefetch, vadd, vfma, vload, vsplat, vstore
from .views import flat_rows, row_of

PANEL_VECTORS = 4  # vectors of c per register tile row
# Reduction steps per pass over a panel: 128 rows of 4 vectors (32 KiB) stay in the
# L1 cache while every row tile of c uses them.
K_BLOCK = 128
# Rows of c per register tile: 4 x 4 vectors is 16 accumulators, which AVX-512's
# 32 registers hold with room to spare; AVX2's 16 registers take one row.
TILE_ROWS = 4 if VECTOR_BITS == 512 else 1


@njit(**JIT_OPTIONS)
def _weights_row(weights, base, lanes):
    """The PANEL_VECTORS vectors of weights from ``base``: those that multiply one column of a."""
    return vload(weights, base), vload(weights, base + lanes), vload(weights, base + 2 * lanes), \
        vload(weights, base + 3 * lanes)


@njit(**JIT_OPTIONS)
def _row_fma(a_value, weights, c0, c1, c2, c3):
    """(c0..c3) + a_value * weights: one row of a register tile, one reduction step."""
    x = vsplat(a_value)
    return vfma(x, weights[0], c0), vfma(x, weights[1], c1), vfma(x, weights[2], c2), vfma(x, weights[3], c3)


@njit(**JIT_OPTIONS)
def _store_row(c_row, col, lanes, accumulate, v0, v1, v2, v3):
    if accumulate:
        v0, v1 = vadd(v0, vload(c_row, col)), vadd(v1, vload(c_row, col + lanes))
        v2, v3 = vadd(v2, vload(c_row, col + 2 * lanes)), vadd(v3, vload(c_row, col + 3 * lanes))
    vstore(c_row, col, v0)
    vstore(c_row, col + lanes, v1)
    vstore(c_row, col + 2 * lanes, v2)
    vstore(c_row, col + 3 * lanes, v3)


@njit(**JIT_OPTIONS)
def _tile_4_rows(a, weights, offset, stride, c, r0, col, accumulate, k_start, k_stop, ahead, ahead_start,
                 ahead_stop):
    """c[r0:r0+4, col:col+width] (+)= a[r0:r0+4, k_start:k_stop] @ (rows k_start:k_stop of the
    weights), prefetching a cache line of ahead[ahead_start:ahead_stop] at each reduction step."""
    lanes = lanes_of(weights)
    zero = vsplat(weights.dtype.type(0.0))
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = zero
    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = zero
    a0, a1, a2, a3 = a[r0], a[r0 + 1], a[r0 + 2], a[r0 + 3]
    line = ahead_start  # a vector is one 64-byte cache line on AVX-512
    for kk in range(k_start, k_stop):
        if line < ahead_stop:
            prefetch(ahead, line)
            line += lanes
        w = _weights_row(weights, offset + kk * stride, lanes)
        c00, c01, c02, c03 = _row_fma(a0[kk], w, c00, c01, c02, c03)
        c10, c11, c12, c13 = _row_fma(a1[kk], w, c10, c11, c12, c13)
        c20, c21, c22, c23 = _row_fma(a2[kk], w, c20, c21, c22, c23)
        c30, c31, c32, c33 = _row_fma(a3[kk], w, c30, c31, c32, c33)
    _store_row(row_of(c, r0), col, lanes, accumulate, c00, c01, c02, c03)
    _store_row(row_of(c, r0 + 1), col, lanes, accumulate, c10, c11, c12, c13)
    _store_row(row_of(c, r0 + 2), col, lanes, accumulate, c20, c21, c22, c23)
    _store_row(row_of(c, r0 + 3), col, lanes, accumulate, c30, c31, c32, c33)


@njit(**JIT_OPTIONS)
def _tile_2_rows(a, weights, offset, stride, c, r0, col, accumulate, k_start, k_stop):
    """``_tile_4_rows`` for rows r0 and r0 + 1: a batch of 2 or 3 rows reads the weights once."""
    lanes = lanes_of(weights)
    zero = vsplat(weights.dtype.type(0.0))
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = zero
    a0, a1 = a[r0], a[r0 + 1]
    for kk in range(k_start, k_stop):
        w = _weights_row(weights, offset + kk * stride, lanes)
        c00, c01, c02, c03 = _row_fma(a0[kk], w, c00, c01, c02, c03)
        c10, c11, c12, c13 = _row_fma(a1[kk], w, c10, c11, c12, c13)
    _store_row(row_of(c, r0), col, lanes, accumulate, c00, c01, c02, c03)
    _store_row(row_of(c, r0 + 1), col, lanes, accumulate, c10, c11, c12, c13)


@njit(**STEP_JIT_OPTIONS)
def tile_1_row(a_row, weights, offset, stride, c_row, col, accumulate, k_start, k_stop):
    """c_row[col:col+width] (+)= a_row[k_start:k_stop] @ (rows k_start:k_stop of the weights); two
    accumulators per vector (even and odd k) keep eight fused multiply-adds in flight."""
    lanes = lanes_of(weights)
    zero = vsplat(weights.dtype.type(0.0))
    e0 = e1 = e2 = e3 = o0 = o1 = o2 = o3 = zero
    for kk in range(k_start, k_stop - 1, 2):
        e0, e1, e2, e3 = _row_fma(a_row[kk], _weights_row(weights, offset + kk * stride, lanes), e0, e1, e2, e3)
        o0, o1, o2, o3 = _row_fma(a_row[kk + 1], _weights_row(weights, offset + (kk + 1) * stride, lanes),
                                  o0, o1, o2, o3)
    if (k_stop - k_start) % 2:
        e0, e1, e2, e3 = _row_fma(a_row[k_stop - 1], _weights_row(weights, offset + (k_stop - 1) * stride, lanes),
                                  e0, e1, e2, e3)
    _store_row(c_row, col, lanes, accumulate, vadd(e0, o0), vadd(e1, o1), vadd(e2, o2), vadd(e3, o3))


@njit(**STEP_JIT_OPTIONS)
def panel_product(a, weights, offset, stride, c, col, accumulate, k_start, k_stop, row_start, row_stop,
                  ahead, ahead_start, ahead_stop):
    """c[rows, col:col + width] (+)= a[rows, k_start:k_stop] @ (rows k_start:k_stop of the weights)
    for rows [row_start, row_stop), in register tiles of TILE_ROWS, 2 and 1 rows.

    a: (m, >= k_stop), its rows contiguous or not (``gemm_nn_panels``); weights: flat, row kk of the panel at
    offset + kk * stride; c: (m, >= col + width) with contiguous rows.  ``accumulate`` adds to c
    instead of overwriting it.  The TILE_ROWS-row tiles prefetch ahead[ahead_start:ahead_stop]
    (flat, the weights the caller reads next), a line a reduction step each, while they work on
    weights that the first tile brought into the L1 cache: the next block then arrives in time
    where the first tile over it would wait for memory.  (The 2- and 1-row tiles, over weights
    that few rows share, do not.)
    """
    r = row_start
    while r + TILE_ROWS <= row_stop and TILE_ROWS > 1:
        _tile_4_rows(a, weights, offset, stride, c, r, col, accumulate, k_start, k_stop, ahead, ahead_start,
                     ahead_stop)
        ahead_start += (k_stop - k_start) * lanes_of(weights)
        r += TILE_ROWS
    if r + 2 <= row_stop and TILE_ROWS > 1:
        _tile_2_rows(a, weights, offset, stride, c, r, col, accumulate, k_start, k_stop)
        r += 2
    for row in range(r, row_stop):
        tile_1_row(a[row], weights, offset, stride, row_of(c, row), col, accumulate, k_start, k_stop)


@njit(**JIT_OPTIONS)
def gemm_nn_panels(a, b, c, accumulate):
    """c[:, :whole] (+)= a @ b[:, :whole] over the whole panels of b's columns (whole = n - n %
    width, returned), b's rows read in place: nothing is repacked, which pays where few rows of a
    share each weight, and for a transposed a whatever its rows (``blas.uses_panels``).

    a: (m, k), or the transpose of a (k, m) array (the tiles read a value by value, and a tile's
    four values of one reduction step are then neighbours); b: (k, n), c: (m, n), each with a
    contiguous last axis.  Blocks of K_BLOCK rows of b go outermost, each read once by every panel:
    panel after panel over all of k reads b with its row stride and ran 0.5-0.6x as fast once b
    left the caches.
    """
    m, n = c.shape
    k = b.shape[0]
    b_flat, stride = flat_rows(b)
    width = PANEL_VECTORS * lanes_of(b_flat)
    whole = n - n % width
    for k_start in range(0, k, K_BLOCK):
        k_stop = min(k, k_start + K_BLOCK)
        for col in range(0, whole, width):
            panel_product(a, b_flat, col, stride, c, col, accumulate or k_start > 0, k_start, k_stop, 0, m,
                          b_flat, 0, 0)
    return whole


# Rows of c per narrow tile (``gemm_nn_narrow``): eight accumulators keep both FMA units busy
# through their latency, as 8 rows of one vector or 4 rows of two.
NARROW_TILE_ROWS = 8
NARROW_MAX_VECTORS = 2


@njit(**STEP_JIT_OPTIONS)
def _store_vector(c_flat, at, value, accumulate):
    vstore(c_flat, at, vadd(value, vload(c_flat, at)) if accumulate else value)


@njit(**STEP_JIT_OPTIONS)
def _narrow_8_rows(a, b_flat, b_stride, c_flat, c_stride, r0, k, accumulate):
    """c[r0:r0+8, :lanes] (+)= a[r0:r0+8] @ b for b of one vector of columns (flat, row kk at kk *
    b_stride) and c flat with rows c_stride apart."""
    zero = vsplat(b_flat.dtype.type(0.0))
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = zero
    a0, a1, a2, a3 = row_of(a, r0), row_of(a, r0 + 1), row_of(a, r0 + 2), row_of(a, r0 + 3)
    a4, a5, a6, a7 = row_of(a, r0 + 4), row_of(a, r0 + 5), row_of(a, r0 + 6), row_of(a, r0 + 7)
    for kk in range(k):
        w = vload(b_flat, kk * b_stride)
        c0, c1 = vfma(vsplat(a0[kk]), w, c0), vfma(vsplat(a1[kk]), w, c1)
        c2, c3 = vfma(vsplat(a2[kk]), w, c2), vfma(vsplat(a3[kk]), w, c3)
        c4, c5 = vfma(vsplat(a4[kk]), w, c4), vfma(vsplat(a5[kk]), w, c5)
        c6, c7 = vfma(vsplat(a6[kk]), w, c6), vfma(vsplat(a7[kk]), w, c7)
    for r, value in enumerate((c0, c1, c2, c3, c4, c5, c6, c7)):
        _store_vector(c_flat, (r0 + r) * c_stride, value, accumulate)


@njit(**STEP_JIT_OPTIONS)
def _narrow_4_rows_2_vectors(a, b_flat, b_stride, c_flat, c_stride, r0, k, accumulate):
    """``_narrow_8_rows`` for b of two vectors of columns, four rows of c."""
    lanes = lanes_of(b_flat)
    zero = vsplat(b_flat.dtype.type(0.0))
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = zero
    a0, a1, a2, a3 = row_of(a, r0), row_of(a, r0 + 1), row_of(a, r0 + 2), row_of(a, r0 + 3)
    for kk in range(k):
        w0, w1 = vload(b_flat, kk * b_stride), vload(b_flat, kk * b_stride + lanes)
        x0, x1, x2, x3 = vsplat(a0[kk]), vsplat(a1[kk]), vsplat(a2[kk]), vsplat(a3[kk])
        c00, c01, c10, c11 = vfma(x0, w0, c00), vfma(x0, w1, c01), vfma(x1, w0, c10), vfma(x1, w1, c11)
        c20, c21, c30, c31 = vfma(x2, w0, c20), vfma(x2, w1, c21), vfma(x3, w0, c30), vfma(x3, w1, c31)
    for r, (first, second) in enumerate(((c00, c01), (c10, c11), (c20, c21), (c30, c31))):
        _store_vector(c_flat, (r0 + r) * c_stride, first, accumulate)
        _store_vector(c_flat, (r0 + r) * c_stride + lanes, second, accumulate)


@njit(**STEP_JIT_OPTIONS)
def _narrow_1_row(a_row, b_flat, b_stride, c_flat, at, vectors, k, accumulate):
    """One row of c (flat, from ``at``) over ``vectors`` vectors of columns, two accumulators a vector
    (even and odd k)."""
    lanes = lanes_of(b_flat)
    for v in range(vectors):
        even = odd = vsplat(b_flat.dtype.type(0.0))
        for kk in range(0, k - 1, 2):
            even = vfma(vsplat(a_row[kk]), vload(b_flat, kk * b_stride + v * lanes), even)
            odd = vfma(vsplat(a_row[kk + 1]), vload(b_flat, (kk + 1) * b_stride + v * lanes), odd)
        if k % 2:
            even = vfma(vsplat(a_row[k - 1]), vload(b_flat, (k - 1) * b_stride + v * lanes), even)
        _store_vector(c_flat, at + v * lanes, vadd(even, odd), accumulate)


@njit(**JIT_OPTIONS)
def gemm_nn_narrow(a, b, c, accumulate):
    """c (+)= a @ b for b of one or two whole vectors of columns (NARROW_MAX_VECTORS), fewer than a
    panel, b's rows read in place: tiles of 8 rows of one vector or 4 rows of two, then single rows.

    a: (m, k); b: (k, n); c: (m, n); each with a contiguous last axis.  The panels' tiles
    (``panel_product``) would run on a panel padded to 4 vectors, 2-4x the work.  One thread, AMD EPYC
    (Zen 5), float32, against the same product padded to a packed panel of 64 columns / BLAS: 32 x 64 by
    16 columns 0.63 against 1.54 / 1.46 us; 32 x 128 by 32 1.49 against 2.53 / 3.95; 3200 x 64 by 32 59
    against 101 / 116; 3200 x 128 by 32 113 against 197 / 228.
    """
    m = c.shape[0]
    k = b.shape[0]
    b_flat, b_stride = flat_rows(b)
    c_flat, c_stride = flat_rows(c)
    vectors = c.shape[1] // lanes_of(b_flat)
    r = 0
    if vectors == 1:
        while r + NARROW_TILE_ROWS <= m:
            _narrow_8_rows(a, b_flat, b_stride, c_flat, c_stride, r, k, accumulate)
            r += NARROW_TILE_ROWS
    else:
        while r + NARROW_TILE_ROWS // 2 <= m:
            _narrow_4_rows_2_vectors(a, b_flat, b_stride, c_flat, c_stride, r, k, accumulate)
            r += NARROW_TILE_ROWS // 2
    for row in range(r, m):
        _narrow_1_row(row_of(a, row), b_flat, b_stride, c_flat, row * c_stride, vectors, k, accumulate)
