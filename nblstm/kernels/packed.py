"""The padded gate layout and the packed-weight matrix product of the CPU kernels.

Padded gate layout.  The gate pre-activations of a batch row are PyTorch's
four blocks i, f, g, o, each padded from hidden to ``padded`` columns, a whole
number of panels (``padded_hidden``):

    column of (gate, unit j) = gate * padded + j.

The products leave zeros in the padding columns (their weights are zero); the
forward's gate math activates them along with the rest, unused, and the
backward zeroes their gradients.  When threads split the hidden units, each
gate block is padded to whole panels, so that every thread owns whole panels
(or the batch rows of one);
a single thread pads to whole vectors only.  Calls that do not repack the
weights (``packs_weights``) use no padding: the layout is then exactly
PyTorch's.

Packed weights.  ``c = a @ w.T`` (gates from inputs or states) and
``c = a @ w`` (state gradients from gate gradients) run over weights repacked
once per call into panels of ``PANEL_VECTORS`` vectors of columns of c,
contiguous along the reduction: ``packed[p, k, :]`` holds the weights that
multiply ``a[:, k]`` into the columns of panel p.  The microkernel
(``tiles.py``) keeps a tile of c (rows x 4 vectors) in registers for the whole
reduction, streaming one row of the panel per step; on this machine's AVX-512 it runs at 120-170
GFLOP/s per core on LSTM shapes, where OpenBLAS manages 45 (8 rows) to 120 (64 rows).
"""
import functools
import math

import numpy as np
from numba import njit

from .._config import JIT_OPTIONS, STEP_JIT_OPTIONS
from ..params import NUM_GATES
from .simd import lanes_of, transpose_block, vector_lanes, vload, vsplat, vstore
from .tiles import K_BLOCK, PANEL_VECTORS, panel_product, tile_1_row
from .views import borrowed, flat_block, flat_rows, row_of

# Rows of a per pass over all panels: 128 rows of up to a few hundred values stay in
# the L2 cache while every panel uses them.
ROW_BLOCK = 128

# Repacking the weights (a transpose at 0.15-0.35 ns an element, split between the threads that
# read them) pays for itself when the steps that follow run faster by more.  Training packs from 4
# steps below 2^18 weights (hidden 256).  From there the plain products of a step's few rows run as
# ``blas.gemm``'s loops, SIMD dot products (forward) and register tiles (backward), which read the
# weights in place, and training packs from PACK_TRAINING_STEPS: (largest batch, fewest steps), and
# from the first step beyond.  Training step (forward and backward), packed against plain, both in
# one process alternated 7x; time packed / plain (above 1: plain is faster): batch 1: hidden 512 1.22
# at 4 steps, 0.99 at 8, 0.89 at 12, 0.85 at 16; hidden 1024 1.10 at 8, 0.99 at 16; hidden 256
# 1.00 at 8, 0.95 at 16.  Batch 2-4: hidden 256 1.31 at 4, 1.15-1.19 at 8-16, 1.07-1.11 at 32-64;
# hidden 384 1.12 at 16; hidden 512 1.15 at 4, 0.98-0.99 at 12-16, 0.79 at 24-32 (0.65 at batch 2);
# hidden 1024 1.26 at 4, 1.03-1.12 at 12-16, 0.97 at 32.  Batch 6-16: hidden 256 1.13 at 1 step,
# 1.10-1.17 at 6-8 and 0.94 at 12 (batch 8), 0.99 at 8 (batch 12-16); hidden 384 1.17 at 4, 0.94 at
# 8 (batch 6), 1.02 at 10 (batch 8); hidden 512 1.20 at 2, 1.08-1.09 at 4-6, 0.92 at 8 (batch 8),
# 1.00 at 4, 0.97 at 6, 0.91 at 8 (batch 16); hidden 1024 1.32 at 4, 1.16 at 8 (batch 8).  Batch
# 24-32: hidden 256 1.02 at 4, hidden 512 1.05-1.08 at 2.  Below hidden 256: batch 4 hidden 128
# 1.05-1.09 at 8-16; batch 8 hidden 128 0.86 at 4, hidden 192 0.73 at 8.  (Since few-row products
# run on the loops rather than BLAS, a sweep on an AMD EPYC put batch 1's crossover at 12-16 steps
# from hidden 256, but it ran in the machine's slow state; whole calls in its fast state, packing
# from 16 against 8, in-process A/B: L12 N1 H512 0.93x, L10 N1 H256 0.91x, so 8 stays.)
# Inference packs from 4 steps from batch 13.  Below, packing pays from fewest + sqrt(weights) /
# per_step steps: PACK_INFERENCE_STEPS holds (largest batch, fewest, per_step).  Measured on 2 cores
# of an AMD EPYC (Zen 5), input 32, packed against plain in one process, alternated 5x, whole calls
# from no state, two sweeps (the second, from hidden 256, read 1.5-2x slower, packed and plain
# alike: the machine's slow state, a guess); speed of packed / plain: batch 1: hidden 20 0.91x at 4
# steps, 1.00x at 6; hidden 64 0.99-1.03x at 3-4 steps, 1.21x at 6; hidden 128 0.92-0.96x at 4,
# 1.12-1.13x at 6; hidden 256 0.96 / 0.70x at 6, 1.06 / 0.76x at 8, 1.06x at 24 (second); hidden 512
# 1.03 / 0.85x at 8, 1.15 / 0.96x at 12, 1.19 / 1.02x at 16; hidden 1024 1.01 / 1.13x at 16.  Batch
# 2: hidden 20 0.86x at 2, 0.95x at 3, 1.03x at 6; hidden 32 0.98x at 2, 1.10x at 3; hidden 64
# 0.94-0.97x at 2, 1.13-1.21x at 3; hidden 128 0.80-0.82x at 2, 1.01-1.03x at 3, 1.09-1.15x at 4;
# hidden 256 1.02 / 0.87x at 6, 1.08 / 0.96x at 8, 1.08x at 12; hidden 512 1.07 / 0.93x at 8, 1.13 /
# 1.05x at 12; hidden 1024 0.81 / 0.95x at 16, 0.91 / 1.01x at 24.  Batch 4: hidden 64 1.08-1.10x at
# 2; hidden 128 0.95-1.13x at 2, 1.08-1.12x at 3; hidden 256 1.07 / 0.83x at 6, 1.23 / 0.98x at 12,
# 1.03x at 16; hidden 512 1.02 / 0.94x at 12, 1.08 / 0.99x at 16, 1.12 / 1.03x at 24; hidden 1024
# 1.05 / 0.87x at 24, 1.10 / 0.93x at 32.  Batch 8: hidden 256 1.05 / 0.88x at 4, 1.12 / 1.01x at 6;
# hidden 512 1.04 / 0.89x at 4, 1.13 / 0.97x at 6, 1.18 / 1.03x at 8; hidden 1024 1.01 / 0.94x at
# 12, 1.09 / 0.97x at 16.  Batch 16: hidden 512 1.12 / 0.97x at 3, 1.19 / 0.96x at 4, 1.04x at 6;
# hidden 1024 1.08 / 1.02x at 3.  LSTMCell's single inference steps never pack.
PACK_MIN_STEPS = 4
PACK_TRAINING_STEPS_MIN_WEIGHTS = 2**18
PACK_TRAINING_STEPS = ((1, 8), (4, 16), (16, 8), (32, 4))
PACK_INFERENCE_STEPS = ((1, 4, 160), (3, 3, 100), (5, 2, 56), (12, 3, 160))


def packs_weights(seq_len, batch, weights, training):
    """Whether a layer over ``seq_len`` steps of ``batch`` rows, with ``weights`` recurrent weights
    (4*hidden*state), should run on packed weights and padded gates (the plan's ``pack_weights``)."""
    if training:
        if weights < PACK_TRAINING_STEPS_MIN_WEIGHTS:
            return seq_len >= PACK_MIN_STEPS
        for largest_batch, fewest in PACK_TRAINING_STEPS:
            if batch <= largest_batch:
                return seq_len >= fewest
        return True
    for largest_batch, fewest, per_step in PACK_INFERENCE_STEPS:
        if batch <= largest_batch:
            return seq_len >= fewest + math.isqrt(weights) // per_step
    return seq_len >= PACK_MIN_STEPS


def gate_columns(hidden, dtype, parallel, packed):
    """Width of a row of gates: 4 * padded hidden with packed weights, else 4 * hidden."""
    return NUM_GATES * (padded_hidden(hidden, dtype, parallel) if packed else hidden)


def panel_width(dtype):
    """Columns per panel for ``dtype`` (from Python)."""
    return PANEL_VECTORS * vector_lanes(dtype)


@functools.lru_cache(maxsize=64)  # asked at every call: a few small models are called many times
def padded_hidden(hidden, dtype, parallel):
    """hidden rounded up to whole vectors, or, when threads split the hidden units (``parallel``),
    to whole panels, so that every thread's gate columns are whole panels (or rows of one)."""
    unit = panel_width(dtype) if parallel else vector_lanes(dtype)
    return -(-hidden // unit) * unit


@njit(**JIT_OPTIONS)
def weight_row(column, hidden, padded):
    """Row of a (4*hidden, ...) weight that feeds padded-gate ``column``; -1 for padding."""
    unit = column % padded
    return (column // padded) * hidden + unit if unit < hidden else -1


@njit(**JIT_OPTIONS)
def weight_rows(first_column, hidden, padded, rows):
    """rows[c] = weight_row(first_column + c, hidden, padded) for every c, with one division (an
    integer division costs as much as packing a few dozen weights)."""
    gate, unit = first_column // padded, first_column % padded
    for c in range(rows.shape[0]):
        rows[c] = gate * hidden + unit if unit < hidden else -1
        unit += 1
        if unit == padded:
            gate, unit = gate + 1, 0


@njit(**JIT_OPTIONS)
def pack_gate_rows(w, packed, unit_start=0, unit_stop=-1):
    """Pack w (4*hidden, k) for ``gates = a @ w.T`` in the padded gate layout.

    packed: (4*padded / width, k, width); packed[p, kk, c] = w[weight_row(p * width + c), kk],
    zero for padding units.  Only the panels of hidden units [unit_start, unit_stop) (whole
    panels; all by default) in each of the four gates are written: those a thread that owns
    these units reads (``recurrent_product``).  A transpose: a vector of panel columns whose
    weight rows follow each other goes in square blocks of a vector by a vector
    (``simd.transpose_block``; the last k % lanes values in one more block that ends at k,
    overlapping the one before, or element by element where k < lanes), any other (padding units)
    as zeros and then its weight rows one by one.  An empty packed (no panels: weights no step
    reads) is left as it is.
    """
    hidden = w.shape[0] // NUM_GATES
    panels, k, width = packed.shape
    if panels == 0:
        return
    padded = panels * width // NUM_GATES
    # Panels visited: every one, or per_gate panels from ``first`` in each gate's block.
    every = unit_stop < 0
    per_gate = panels if every else (unit_stop - unit_start) // width
    first = 0 if every else unit_start // width
    rows = np.empty(width, np.intp)  # the row of w behind each column of a panel
    w, packed, rows_view = borrowed((w, packed, rows))
    w_flat, w_stride = flat_rows(w)
    lanes = lanes_of(w_flat)
    whole_k = k - k % lanes
    for visit in range(per_gate * (1 if every else NUM_GATES)):
        p = (visit // per_gate) * (panels // NUM_GATES) + first + visit % per_gate
        panel = flat_block(packed, p)
        weight_rows(p * width, hidden, padded, rows_view)
        for block in range(0, width, lanes):
            first_row = rows_view[block]
            consecutive = first_row >= 0
            for c in range(1, lanes):
                consecutive = consecutive and rows_view[block + c] == first_row + c
            if consecutive:
                for kk in range(0, whole_k, lanes):
                    transpose_block(w_flat, first_row * w_stride + kk, w_stride, panel, kk * width + block, width)
                if whole_k < k and k >= lanes:  # the last k % lanes: a block ending at k, over the one before
                    transpose_block(w_flat, first_row * w_stride + k - lanes, w_stride, panel, (k - lanes) * width + block,
                                    width)
                else:
                    for kk in range(whole_k, k):
                        for c in range(lanes):
                            panel[kk * width + block + c] = w[first_row + c, kk]
            else:  # zeros, then the rows that are not padding, one by one
                zero = vsplat(panel.dtype.type(0.0))
                for kk in range(k):
                    vstore(panel, kk * width + block, zero)
                for c in range(lanes):
                    row = rows_view[block + c]
                    if row >= 0:
                        for kk in range(k):
                            panel[kk * width + block + c] = w[row, kk]


@njit(**JIT_OPTIONS)
def _pack_whole_panels(w, packed, panel_start, panel_stop):
    """``pack_columns`` for panels [panel_start, panel_stop), each within w's columns: a panel's row is
    PANEL_VECTORS vectors, copied from its weight row or zero."""
    hidden = w.shape[0] // NUM_GATES
    padded = packed.shape[1] // NUM_GATES
    width = packed.shape[2]
    w, packed = borrowed((w, packed))
    lanes = lanes_of(w)
    zero = vsplat(packed.dtype.type(0.0))
    for kk in range(packed.shape[1]):
        row = weight_row(kk, hidden, padded)
        w_row = row_of(w, max(row, 0))
        for q in range(panel_start, panel_stop):
            panel = flat_block(packed, q)
            for v in range(0, width, lanes):
                vstore(panel, kk * width + v, vload(w_row, q * width + v) if row >= 0 else zero)


@njit(**JIT_OPTIONS)
def pack_columns(w, packed, panel_start=0, panel_stop=-1):
    """Pack w (4*hidden, n) for ``c = a @ w`` with a in the padded gate layout: panels over the n
    columns of w.

    packed: (ceil(n / width), 4*padded, width); packed[q, kk, c] = w[weight_row(kk), q * width + c],
    zero past n and for padding units.  Only panels [panel_start, panel_stop) are written (all by
    default).  The panels within w's columns go by vectors (``_pack_whole_panels``), a last partial
    one element by element, its loop counted from zero (the same loop from a start not known when
    compiling, as a range of panels gives, ran 3-4.5x slower).  One thread, float32, w and packed in
    cache, before -> after: 2048 x 512 128 us (all panels) or 403 (a range, as the threads pack) ->
    73-76 us either way; 512 x 128 5-6 / 27 -> 2.9-3.9; 80 x 20 (no whole panel) 0.54 -> 0.59 us.
    """
    n = w.shape[1]
    width = packed.shape[2]
    panel_stop = packed.shape[0] if panel_stop < 0 else panel_stop
    whole_stop = max(panel_start, min(panel_stop, n // width))
    if whole_stop > panel_start:
        _pack_whole_panels(w, packed, panel_start, whole_stop)
    hidden = w.shape[0] // NUM_GATES
    padded = packed.shape[1] // NUM_GATES
    for kk in range(packed.shape[1]):
        row = weight_row(kk, hidden, padded)
        for q in range(panel_stop - whole_stop):
            for c in range(width):
                column = (whole_stop + q) * width + c
                packed[whole_stop + q, kk, c] = w[row, column] if row >= 0 and column < n else 0.0


@njit(**JIT_OPTIONS)
def pack_row_panels(b, packed, offset):
    """packed[q, offset + r, c] = b[r, q * width + c] for every row r of b (rows, >= panels * width) and
    panel q < panels, packed (panels, >= offset + rows, width): b's rows in panels of its columns,
    contiguous along the rows, for ``gemm_packed`` to reduce over them.  Whole panels only; b may be
    a view with any row stride."""
    width = packed.shape[2]
    b, packed = borrowed((b, packed))
    # Row by row, a slice of width values each side, indexed from zero (no wraparound check, so the
    # copy is vectorised): 6400 rows of 1536 values, one thread, 29 ms over flat indices panel by
    # panel, 2.6 over slices panel by panel, 1.6 over slices row by row.
    for r in range(b.shape[0]):
        row = row_of(b, r)
        for q in range(packed.shape[0]):
            target, values = flat_block(packed, q)[(offset + r) * width:(offset + r + 1) * width], \
                row[q * width:(q + 1) * width]
            for c in range(width):
                target[c] = values[c]


@njit(**JIT_OPTIONS)
def transpose_gate_columns(d_gates, hidden, row_start, a_t):
    """a_t[i, r] = d_gates[r, column of weight row row_start + i] for i < a_t.shape[0] and every row r
    of d_gates (rows, 4*padded), the padded gate layout: the columns that a weight's rows
    (4*hidden, ...) take, transposed (padding columns left out).  a_t (n, >= rows) has contiguous
    rows.  A vector of weight rows within one gate goes in square blocks of a vector by a vector
    (``simd.transpose_block``), any other row (and the last rows % lanes values) element by element."""
    padded = d_gates.shape[1] // NUM_GATES
    rows = d_gates.shape[0]
    (g_flat, g_stride), (t_flat, t_stride) = flat_rows(d_gates), flat_rows(a_t)
    g_flat, t_flat = borrowed((g_flat, t_flat))
    lanes = lanes_of(g_flat)
    whole_rows = rows - rows % lanes
    i = 0
    while i < a_t.shape[0]:
        unit = (row_start + i) % hidden
        column = ((row_start + i) // hidden) * padded + unit
        count = lanes if i + lanes <= a_t.shape[0] and unit + lanes <= hidden else 1
        if count == lanes:
            for r in range(0, whole_rows, lanes):
                transpose_block(g_flat, r * g_stride + column, g_stride, t_flat, i * t_stride + r, t_stride)
        for c in range(count):
            for r in range(whole_rows if count == lanes else 0, rows):
                t_flat[(i + c) * t_stride + r] = g_flat[r * g_stride + column + c]
        i += count


@njit(**JIT_OPTIONS)
def to_padded_rows(w, rows):
    """rows[c] = w[weight_row(c)] for every padded-gate column c (zero for padding): the gate rows of
    w (4*hidden, n) in the padded gate layout, rows (4*padded, n).  Gate block by gate block: a
    ``weight_row`` for each column costs two integer divisions, more than copying a short row."""
    hidden, padded = w.shape[0] // NUM_GATES, rows.shape[0] // NUM_GATES
    for gate in range(NUM_GATES):
        for unit in range(padded):
            if unit < hidden:
                for j in range(rows.shape[1]):
                    rows[gate * padded + unit, j] = w[gate * hidden + unit, j]
            else:
                for j in range(rows.shape[1]):
                    rows[gate * padded + unit, j] = 0.0


@njit(**JIT_OPTIONS)
def add_from_padded_rows(rows, w, accumulate):
    """w[weight_row(c)] (+)= rows[c] for every padded-gate column c: the inverse of to_padded_rows
    (padding rows are dropped), adding to w with ``accumulate``, else overwriting it; gate block by
    gate block, as ``to_padded_rows``."""
    hidden, padded = w.shape[0] // NUM_GATES, rows.shape[0] // NUM_GATES
    for gate in range(NUM_GATES):
        for unit in range(hidden):
            row, column = gate * hidden + unit, gate * padded + unit
            if accumulate:
                for j in range(w.shape[1]):
                    w[row, j] += rows[column, j]
            else:
                for j in range(w.shape[1]):
                    w[row, j] = rows[column, j]


@njit(**JIT_OPTIONS)
def gemm_packed(a, packed, c, accumulate, panel_start, panel_stop, row_start, row_stop, descending=False):
    """c[rows, panel columns] (+)= a[rows] @ (weights of the panels), for panels [panel_start, panel_stop)
    and rows [row_start, row_stop).

    a: (m, k); packed: (panels, k, width) from ``pack_gate_rows`` or ``pack_columns``;
    c: (m, >= panels * width) with contiguous rows.  ``accumulate`` adds to c instead of
    overwriting it.  ``descending`` visits the panels from the last to the first (the
    results are the same): a time loop that alternates the direction at every step
    starts each step on the weights the previous one read last, which are still in cache.
    """
    k, width = packed.shape[1], packed.shape[2]
    if k == 0 and accumulate:
        return
    visits = panel_stop - panel_start
    for block_start in range(row_start, row_stop, ROW_BLOCK):
        block_stop = min(row_stop, block_start + ROW_BLOCK)
        for visit in range(visits):
            p = panel_stop - 1 - visit if descending else panel_start + visit
            panel = flat_block(packed, p)
            col = p * width
            for k_start in range(0, max(k, 1), K_BLOCK):
                k_stop = min(k, k_start + K_BLOCK)
                # prefetched meanwhile: the block of weights read next
                if k_stop < k:  # this panel's next rows
                    ahead, ahead_start, ahead_stop = panel, k_stop * width, min(k, k_stop + K_BLOCK) * width
                elif visit + 1 < visits:  # the next panel's first
                    ahead, ahead_start, ahead_stop = flat_block(packed, p - 1 if descending else p + 1), 0, \
                        min(k, K_BLOCK) * width
                else:
                    ahead, ahead_start, ahead_stop = panel, 0, 0
                panel_product(a, panel, 0, width, c, col, accumulate or k_start > 0, k_start, k_stop,
                              block_start, block_stop, ahead, ahead_start, ahead_stop)


@njit(**STEP_JIT_OPTIONS)
def gemm_packed_row(a_row, packed, c_row, accumulate, panel_start, panel_stop, descending):
    """``gemm_packed`` for one row of a (batch 1): c_row[panel columns] (+)= a_row @ (weights of panels
    [panel_start, panel_stop)), compiled into the caller's step loop.

    a_row: (k,); packed: (panels, k, width); c_row: (>= panels * width,), contiguous.  With one row no
    weight is read twice, so the blocks of rows and of the reduction and the prefetching of
    ``gemm_packed`` buy nothing, and its call cost a step.  One thread, float32, a compiled loop of
    steps alternating ``descending`` (scratch row1.py, medians of 7, Zen 4), ``gemm_packed`` / this
    (ns): hidden 8 52.6 / 31.9, 20 138.9 / 107.4, 32 138.2 / 112.2, 64 543 / 499, 128 2394 / 2317.
    """
    width, k = packed.shape[2], packed.shape[1]
    for visit in range(panel_stop - panel_start):
        p = panel_stop - 1 - visit if descending else panel_start + visit
        tile_1_row(a_row, flat_block(packed, p), 0, width, c_row, p * width, accumulate, 0, k)


@njit(**STEP_JIT_OPTIONS)
def gemm_packed_step(a, packed, c, accumulate, panel_start, panel_stop, descending):
    """``gemm_packed`` over every row of a, for the products of a time step: a batch of one row as
    ``gemm_packed_row``, compiled into the step loop."""
    if a.shape[0] == 1:
        gemm_packed_row(row_of(a, 0), packed, row_of(c, 0), accumulate, panel_start, panel_stop, descending)
    else:
        gemm_packed(a, packed, c, accumulate, panel_start, panel_stop, 0, a.shape[0], descending)
