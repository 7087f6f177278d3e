"""Backpropagation through time for one LSTM layer in one direction, compiled with Numba.

The per-step chain runs backwards in one compiled loop.  Each step:

1. dh = (gradient from the next step) + (gradient of this step's output);
   with a projection, dh_cell = dh @ w_hr;
2. each thread, for its hidden units (whole panels of the padded gate
   layout, see ``packed.py``), turns dh and the running dc into the gate
   gradients (written over the saved activations in ``gates``) and the next dc;
3. the gradient flowing into the previous step, d_gates @ w_hh, a packed
   product whose columns are split between the threads.

After the loop the weight gradients are a few large matrix products over all
time steps at once (``d_gates.T @ x`` and so on; on AVX-512 over packed blocks
of rows, ``add_weight_gradients``), not one small product per step.  Every
weight gradient is accumulated into (``+=``), as PyTorch accumulates ``.grad``.
"""
import numpy as np
from numba import njit, prange

from .._config import JIT_OPTIONS, PARALLEL_JIT_OPTIONS, STEP_JIT_OPTIONS
from ..params import NUM_GATES
from .activations import tanh
from .barrier import BARRIER_STATE_SIZE, arrive_together, wait_for_all
from .blas import PANELS_MIN_COLUMNS, gemm
from .cpu_forward import gate_slices, in_gate_layout, time_index
from .packed import (ROW_BLOCK, add_from_padded_rows, gemm_packed, gemm_packed_step, pack_columns, pack_row_panels,
                     transpose_gate_columns)
from .parallel import PART_BLOCK, empty_aligned, gemm_packed_rows, matmul, part_range
from .simd import lanes_of
from .tiles import NARROW_MAX_VECTORS, PANEL_VECTORS, TILE_ROWS, gemm_nn_narrow
from .views import borrowed, row_of

# The weight gradient of fewer inputs than a panel (d_gates.T @ inputs) runs as inputs.T @ d_gates on the
# register tiles, added to dw transposed, from this many rows (seq_len x batch): the transposed add costs
# about 1 ns a value of dw.  One thread, BLAS time / the tiles' with the add: 800 rows by 512 x 32 1.84x
# (0.294 against 0.160 ms), 80 rows by 2048 x 32 0.92x, 8 rows 0.3x.  Whole training calls, in-process A/B
# with the add at every row count: L100 N8 H128 (800 rows) 1.06x, L10 N8 H512 (80 rows) 0.97x.
TRANSPOSED_GRADIENT_MIN_ROWS = 256
# Where the register tiles hold rows of four (AVX-512), the products over all (time, batch) rows run on
# packed operands (``packs_gradients``) from this many rows, over blocks of GRADIENT_BLOCK_ROWS rows: the
# weight gradients d_gates.T @ inputs with d_gates transposed and the inputs packed block by block
# (``_weight_gradients_packed_part``), dx = d_gates @ w_ih with w_ih packed.  Read in place, d_gates' rows of
# 4*padded values (a power of two apart: one cache set) and the inputs' rows likely thrash the L1 cache
# (a guess from their strides; the times below are what was measured).
# Measured on 2 cores of an AMD EPYC (Zen 5), float32, 6400 rows, hidden 1024, input 512: dw_ih and dw_hh
# 297 ms read in place (291 and 262 GFLOP/s), 179 packed (449); dx 103 ms with OpenBLAS, 58 packed (464).
# Training calls, in-process A/B against 0156653 (which also projected the forward's inputs with
# BLAS, ``cpu_forward.projects_packed``): L100 N64 I512 H1024 1.29x, L100 N64 I256 H256
# 1.09x, L1000 N8 I256 H256 1.10x, L50 N16 I100 H70 1.56x, L10 N64 I128 H128 (640 rows) 1.13x, but L100
# N4 I64 H64 (400 rows) 0.90x.
PACKED_GRADIENT_MIN_ROWS = 512
GRADIENT_BLOCK_ROWS = 256


@njit(**STEP_JIT_OPTIONS)
def cell_backward_part(gates_t, c_t, c_prev, dh, dc, start, stop):
    """Gate gradients of one step for hidden units [start, stop).

    gates_t: (batch, 4*padded) activations i, f, g, o in the padded gate layout; on return
             the gradients of the pre-activation gates (zero for padding units)
    c_t, c_prev: (batch, hidden) cell state after and before the step
    dh:      (batch, >= hidden) gradient of o * tanh(c_t)
    dc:      (batch, hidden) gradient of c_t from later steps; on return that of c_prev
    """
    padded = gates_t.shape[1] // NUM_GATES
    units = min(stop, c_t.shape[1]) - start
    one = c_t.dtype.type(1.0)
    for b in range(gates_t.shape[0]):
        i_row, f_row, g_row, o_row = gate_slices(row_of(gates_t, b), padded, start, stop)
        c_row, c_prev_row = row_of(c_t, b)[start:start + units], row_of(c_prev, b)[start:start + units]
        dh_row, dc_row = row_of(dh, b)[start:start + units], row_of(dc, b)[start:start + units]
        for j in range(units):
            i_gate, f_gate, g_gate, o_gate = i_row[j], f_row[j], g_row[j], o_row[j]
            tanh_c = tanh(c_row[j])
            dc_t = dc_row[j] + dh_row[j] * o_gate * (one - tanh_c * tanh_c)
            i_row[j] = dc_t * g_gate * i_gate * (one - i_gate)
            f_row[j] = dc_t * c_prev_row[j] * f_gate * (one - f_gate)
            g_row[j] = dc_t * i_gate * (one - g_gate * g_gate)
            o_row[j] = dh_row[j] * tanh_c * o_gate * (one - o_gate)
            dc_row[j] = dc_t * f_gate
        for j in range(units, stop - start):  # padding must not feed NaN or inf into the products
            i_row[j] = f_row[j] = g_row[j] = o_row[j] = 0.0


@njit(**PARALLEL_JIT_OPTIONS)
def cell_backward_parallel(gates_t, c_t, c_prev, dh, dc, block, n_parts):
    """cell_backward_part over every hidden unit, blocks of ``block`` units split between ``n_parts`` threads."""
    for part in prange(n_parts):
        start, stop = part_range(part, n_parts, gates_t.shape[1] // NUM_GATES, block)
        cell_backward_part(gates_t, c_t, c_prev, dh, dc, start, stop)


@njit(**STEP_JIT_OPTIONS)
def _sum_into(total, a, b):
    """total = a + b for three (rows, cols) arrays with contiguous rows, row by row over ``row_of`` views:
    the callers' column slices index as layout 'A', which is not vectorised (64 rows of 256 columns
    of float32, one thread: 4.2 us indexed, 1.5 over rows; 8 rows 0.54 -> 0.09 us)."""
    for r in range(total.shape[0]):
        total_row, a_row, b_row = row_of(total, r), row_of(a, r), row_of(b, r)
        for col in range(total.shape[1]):
            total_row[col] = a_row[col] + b_row[col]


@njit(**JIT_OPTIONS)
def _column_sums_into(total, matrix, start, stop):
    """total[j] += sum over rows of matrix[:, j] for j in [start, stop)."""
    total_part = total[start:stop]
    for r in range(matrix.shape[0]):
        row = matrix[r, start:stop]
        for j in range(stop - start):
            total_part[j] += row[j]


@njit(**PARALLEL_JIT_OPTIONS)
def column_sums_into_parallel(total, matrix, n_parts):
    """total += matrix.sum(axis=0), the columns split between ``n_parts`` threads."""
    for part in prange(n_parts):
        start, stop = part_range(part, n_parts, matrix.shape[1])
        _column_sums_into(total, matrix, start, stop)


@njit(**JIT_OPTIONS)
def state_columns(part, n_parts, state, packed_hh):
    """The columns of the state gradient (dh, and d_gates @ w_hh) that ``part`` computes: whole panels
    of packed_hh (from ``pack_columns``), or blocks of PART_BLOCK without packed weights.  Without a
    projection they are the part's hidden units."""
    if packed_hh.shape[0] > 0:
        first, last = part_range(part, n_parts, packed_hh.shape[0], 1)
        return first * packed_hh.shape[2], min(state, last * packed_hh.shape[2])
    return part_range(part, n_parts, state)


@njit(**JIT_OPTIONS)
def state_panel_width(state, lanes):
    """Columns of a panel of w_hh packed for the state gradient d_gates @ w_hh: PANEL_VECTORS vectors, or
    for a state of up to NARROW_MAX_VECTORS vectors that many (one narrow panel, ``tiles.gemm_nn_narrow``),
    where a whole panel would be mostly padding.  One thread, AMD EPYC (Zen 5), float32, 32 rows by 4 *
    hidden: state 16 0.63 against 1.54 us, state 32 1.49 against 2.53."""
    vectors = -(-state // lanes)
    return vectors * lanes if vectors <= NARROW_MAX_VECTORS else PANEL_VECTORS * lanes


@njit(**STEP_JIT_OPTIONS)
def state_product_part(gates_t, w_hh, packed_hh, dh_next, part, n_parts, step):
    """The part's columns of dh_next = gates_t @ w_hh (gates_t in the padded gate layout) at time
    step ``step``; odd steps read the packed weights backwards (see ``packed.gemm_packed``).  A single
    narrow panel (``state_panel_width``) is the product of the part ``part_range`` gives it to."""
    if packed_hh.shape[0] > 0:
        first, last = part_range(part, n_parts, packed_hh.shape[0], 1)
        if packed_hh.shape[2] < PANEL_VECTORS * lanes_of(packed_hh[0, 0]):
            if first < last:
                gemm_nn_narrow(gates_t, packed_hh[0], dh_next, False)
        else:
            gemm_packed_step(gates_t, packed_hh, dh_next, False, first, last, step % 2 == 1)
    else:
        start, stop = state_columns(part, n_parts, w_hh.shape[1], packed_hh)
        gemm(gates_t, w_hh[:, start:stop], dh_next[:, start:stop], False, False, 0.0)


@njit(**PARALLEL_JIT_OPTIONS)
def _state_product_parallel(gates_t, w_hh, packed_hh, dh_next, n_parts, step):
    for part in prange(n_parts):
        state_product_part(gates_t, w_hh, packed_hh, dh_next, part, n_parts, step)


@njit(**JIT_OPTIONS)
def _backward_steps(reverse, rows_start, rows_stop, gates, c_seq, c0, w_hh, packed_hh, w_hr, d_out, dh, dc,
                    dh_cell, dh_seq, dh_next, block, n_parts):
    """The backward time loop for batch rows [rows_start, rows_stop), one parallel region per step
    (or none with one part).

    d_out: (seq_len, batch, state) this direction's output gradients; the other arguments as
    in ``lstm_layer_backward`` (dh_next holds dh_n on entry and dh0 on return, dc likewise).
    The loop works on ``borrowed`` views: no reference counting.
    """
    rows = slice(rows_start, rows_stop)
    gates, c_seq, d_out, dh_seq = borrowed((gates[:, rows], c_seq[:, rows], d_out[:, rows], dh_seq[:, rows]))
    c0, dh, dc, dh_cell, dh_next = borrowed((c0[rows], dh[rows], dc[rows], dh_cell[rows], dh_next[rows]))
    w_hh, packed_hh, w_hr = borrowed((w_hh, packed_hh, w_hr))
    seq_len, state = d_out.shape[0], d_out.shape[2]
    padded = gates.shape[2] // NUM_GATES
    projecting = w_hr.shape[0] > 0
    for step in range(seq_len - 1, -1, -1):
        t = time_index(step, seq_len, reverse)
        _sum_into(dh, dh_next[:, :state], d_out[t])
        c_prev = c0 if step == 0 else c_seq[time_index(step - 1, seq_len, reverse)]
        if projecting:
            dh_seq[t, :, :] = dh
            matmul(dh, w_hr, dh_cell, False, False, 0.0, n_parts)
            dh_hidden = dh_cell
        else:
            dh_hidden = dh
        if n_parts > 1:
            cell_backward_parallel(gates[t], c_seq[t], c_prev, dh_hidden, dc, block, n_parts)
            _state_product_parallel(gates[t], w_hh, packed_hh, dh_next, n_parts, step)
        else:
            cell_backward_part(gates[t], c_seq[t], c_prev, dh_hidden, dc, 0, padded)
            state_product_part(gates[t], w_hh, packed_hh, dh_next, 0, 1, step)


@njit(**PARALLEL_JIT_OPTIONS)
def _backward_steps_by_batch(reverse, gates, c_seq, c0, w_hh, packed_hh, w_hr, d_out, dh, dc, dh_cell, dh_seq,
                             dh_next, n_parts, together, packs):
    """``_backward_steps`` with the batch split between threads, each running its rows on its own on
    its own copy of the packed weights, packed_hh[part], which it first packs itself with ``packs``
    (as the forward's ``_run_steps_by_batch``, meeting first where every part has its own thread)."""
    barrier = np.zeros(BARRIER_STATE_SIZE, np.int64)
    for part in prange(n_parts):
        if together:
            arrive_together(barrier, n_parts)
        if packs:
            pack_columns(w_hh, packed_hh[part])
        rows_start, rows_stop = part_range(part, n_parts, d_out.shape[1], TILE_ROWS)
        _backward_steps(reverse, rows_start, rows_stop, gates, c_seq, c0, w_hh, packed_hh[part], w_hr, d_out, dh, dc,
                        dh_cell, dh_seq, dh_next, 1, 1)


@njit(**PARALLEL_JIT_OPTIONS)
def _backward_steps_together(reverse, gates, c_seq, c0, w_hh, packed_hh, w_hr, d_out, dh, dc, dh_cell, dh_seq,
                             dh_next, block, n_parts, packs):
    """``_backward_steps`` in one parallel region: each thread owns hidden units and state columns of
    every step, the threads meeting at a barrier whenever one needs what others wrote.  With
    ``packs``, each thread first packs the panels of w_hh it reads (its state columns) into
    packed_hh.  Returns False, having done nothing, when the threads did not start together.  Works
    on ``borrowed`` views."""
    gates, c_seq, c0, w_hh, packed_hh, w_hr = borrowed((gates, c_seq, c0, w_hh, packed_hh, w_hr))
    d_out, dh, dc, dh_cell, dh_seq, dh_next = borrowed((d_out, dh, dc, dh_cell, dh_seq, dh_next))
    seq_len, state = d_out.shape[0], d_out.shape[2]
    padded, hidden = gates.shape[2] // NUM_GATES, c0.shape[1]
    projecting = w_hr.shape[0] > 0
    barrier = np.zeros(BARRIER_STATE_SIZE, np.int64)
    started = np.zeros(n_parts, np.bool_)
    for part in prange(n_parts):
        started[part] = arrive_together(barrier, n_parts)
        if started[part]:
            start, stop = part_range(part, n_parts, padded, block)
            units_stop = min(stop, hidden)
            col_start, col_stop = state_columns(part, n_parts, state, packed_hh)
            if packs:
                pack_columns(w_hh, packed_hh, *part_range(part, n_parts, packed_hh.shape[0], 1))
            for step in range(seq_len - 1, -1, -1):
                t = time_index(step, seq_len, reverse)
                _sum_into(dh[:, col_start:col_stop], dh_next[:, col_start:col_stop], d_out[t][:, col_start:col_stop])
                c_prev = c0 if step == 0 else c_seq[time_index(step - 1, seq_len, reverse)]
                if projecting:
                    dh_seq[t][:, col_start:col_stop] = dh[:, col_start:col_stop]
                    wait_for_all(barrier, n_parts)  # dh complete
                    gemm(dh, w_hr[:, start:units_stop], dh_cell[:, start:units_stop], False, False, 0.0)
                    dh_hidden = dh_cell
                else:
                    dh_hidden = dh
                cell_backward_part(gates[t], c_seq[t], c_prev, dh_hidden, dc, start, stop)
                wait_for_all(barrier, n_parts)  # every gate gradient of the step written
                state_product_part(gates[t], w_hh, packed_hh, dh_next, part, n_parts, step)
    return started[0]


@njit(**JIT_OPTIONS)
def _product_is_zero(d_gates, inputs):
    """Whether d_gates.T @ inputs is zero for certain: inputs all zero (the initial state of a call
    given none) and d_gates finite (0 * inf is NaN, which the product must carry).  A pass over dw
    costs as much as zeroing it (0.12 ms at hidden 512), against a few us to tell."""
    if inputs.any():
        return False
    for row in range(d_gates.shape[0]):
        for value in d_gates[row]:
            if not np.isfinite(value):
                return False
    return True


@njit(**JIT_OPTIONS)
def add_weight_gradient(d_gates, inputs, dw, beta, n_parts):
    """dw (4*hidden, k) = d_gates.T @ inputs + beta * dw (beta 0 or 1), d_gates (rows, 4*padded) in the
    padded gate layout, inputs (rows, k); padding rows are dropped.  With no rows and beta 0, dw is
    zero (``gemm`` over an empty reduction).  With fewer inputs than a panel of columns and
    ``TRANSPOSED_GRADIENT_MIN_ROWS`` rows, the product runs the other way round, inputs.T @ d_gates on
    the register tiles (``blas.uses_panels``), and is added transposed."""
    if dw.shape[1] == 0:
        return
    if inputs.shape[1] < PANELS_MIN_COLUMNS <= d_gates.shape[1] and d_gates.shape[0] >= TRANSPOSED_GRADIENT_MIN_ROWS:
        # rows a little longer than the gate columns: a power-of-two stride would put every value
        # that the transposed add reads for one row of dw in the same cache set
        columns = empty_aligned((inputs.shape[1], d_gates.shape[1] + PART_BLOCK), d_gates)[:, :d_gates.shape[1]]
        matmul(inputs, d_gates, columns, True, False, 0.0, n_parts)
        add_from_padded_rows(columns.T, dw, beta != 0.0)
    elif d_gates.shape[1] == dw.shape[0]:
        matmul(d_gates, inputs, dw, True, False, beta, n_parts)
    else:
        padded_rows = empty_aligned((d_gates.shape[1], dw.shape[1]), d_gates)
        matmul(d_gates, inputs, padded_rows, True, False, 0.0, n_parts)
        add_from_padded_rows(padded_rows, dw, beta != 0.0)


@njit(**JIT_OPTIONS)
def packs_gradients(rows):
    """Whether the products over ``rows`` (time, batch) rows run on packed operands
    (``PACKED_GRADIENT_MIN_ROWS``)."""
    return TILE_ROWS > 1 and rows >= PACKED_GRADIENT_MIN_ROWS


@njit(**JIT_OPTIONS)
def _pack_previous_states(h_seq, h0, reverse, row_start, row_stop, packed):
    """Pack (``pack_row_panels``) the state before each of the (time, batch) rows [row_start, row_stop):
    h0's row for the first step's rows, else the output row one step earlier in the direction's
    order (batch rows before, or after in reverse).  h_seq (rows, state) the outputs, h0 (batch,
    state)."""
    rows, batch = h_seq.shape[0], h0.shape[0]
    first = rows - batch if reverse else 0  # the first step's rows: [first, first + batch)
    shift = batch if reverse else -batch
    for start, stop in ((row_start, min(row_stop, first)), (max(row_start, first + batch), row_stop)):
        if start < stop:
            pack_row_panels(h_seq[start + shift:stop + shift], packed, start - row_start)
    start, stop = max(row_start, first), min(row_stop, first + batch)
    if start < stop:
        pack_row_panels(h0[start - first:stop - first], packed, start - row_start)


@njit(**JIT_OPTIONS)
def _weight_gradients_packed_part(d_gates, x, h_seq, h0, reverse, dw_ih, dw_hh, beta, part, n_parts):
    """The whole panels of columns of dw_ih = d_gates.T @ x + beta * dw_ih and dw_hh = d_gates.T @
    (the states before each row, ``_pack_previous_states``) + beta * dw_hh (beta 0 or 1), for the
    ``part``-th of ``n_parts`` ranges of weight rows (whole vectors).

    d_gates (rows, 4*padded) padded gate layout; x (rows, input_size); h_seq (rows, state) the
    outputs; h0 (batch, state); dw_ih, dw_hh (4*hidden, input_size / state), C-contiguous.
    Block by block of GRADIENT_BLOCK_ROWS rows, the part packs that block of the inputs and states
    itself and transposes its gate columns of d_gates (``transpose_gate_columns``) ROW_BLOCK weight
    rows at a time, so every product reads contiguous operands (``gemm_packed``)."""
    rows, weight_rows = d_gates.shape[0], dw_ih.shape[0]
    hidden = weight_rows // NUM_GATES
    lanes = lanes_of(d_gates[0])
    width = PANEL_VECTORS * lanes
    ih_panels, hh_panels = x.shape[1] // width, h0.shape[1] // width
    block = min(rows, GRADIENT_BLOCK_ROWS)
    weight_start, weight_stop = part_range(part, n_parts, weight_rows, lanes)
    a_t = empty_aligned((ROW_BLOCK, block), d_gates)
    for row_start in range(0, rows, block):
        row_stop = min(rows, row_start + block)
        packed_x = empty_aligned((ih_panels, row_stop - row_start, width), d_gates)
        packed_h = empty_aligned((hh_panels, row_stop - row_start, width), d_gates)
        pack_row_panels(x[row_start:row_stop], packed_x, 0)
        _pack_previous_states(h_seq, h0, reverse, row_start, row_stop, packed_h)
        accumulate = beta != 0.0 or row_start > 0
        for chunk_start in range(weight_start, weight_stop, ROW_BLOCK):
            chunk_stop = min(weight_stop, chunk_start + ROW_BLOCK)
            chunk = a_t[:chunk_stop - chunk_start, :row_stop - row_start]
            transpose_gate_columns(d_gates[row_start:row_stop], hidden, chunk_start, chunk)
            gemm_packed(chunk, packed_x, dw_ih[chunk_start:chunk_stop], accumulate, 0, ih_panels, 0,
                        chunk.shape[0])
            gemm_packed(chunk, packed_h, dw_hh[chunk_start:chunk_stop], accumulate, 0, hh_panels, 0,
                        chunk.shape[0])


@njit(**PARALLEL_JIT_OPTIONS)
def _weight_gradients_packed_parallel(d_gates, x, h_seq, h0, reverse, dw_ih, dw_hh, beta, n_parts):
    """``_weight_gradients_packed_part`` for every part, each on its own thread."""
    for part in prange(n_parts):
        _weight_gradients_packed_part(d_gates, x, h_seq, h0, reverse, dw_ih, dw_hh, beta, part, n_parts)


@njit(**JIT_OPTIONS)
def add_weight_gradients(d_gates, x, h_seq, h0, reverse, dw_ih, dw_hh, beta, n_parts):
    """dw_ih = d_gates.T @ x + beta * dw_ih and dw_hh = d_gates.T @ (each row's previous state: the
    output row one step earlier, h0's for the first step) + beta * dw_hh; arrays as for
    ``_weight_gradients_packed_part``.  On packed operands where ``packs_gradients`` (the whole panels of
    columns), the rest with ``add_weight_gradient``."""
    width = PANEL_VECTORS * lanes_of(d_gates[0])
    ih_whole = x.shape[1] - x.shape[1] % width if packs_gradients(d_gates.shape[0]) else 0
    hh_whole = h0.shape[1] - h0.shape[1] % width if packs_gradients(d_gates.shape[0]) else 0
    if ih_whole > 0 or hh_whole > 0:
        # one part never opens a parallel region: its threads, woken for nothing, would spin beside the
        # BLAS threads of the products that follow (L512 N1 I32 H64: 8.0 ms a training call, against 0.75)
        if n_parts > 1:
            _weight_gradients_packed_parallel(d_gates, x, h_seq, h0, reverse, dw_ih, dw_hh, beta, n_parts)
        else:
            _weight_gradients_packed_part(d_gates, x, h_seq, h0, reverse, dw_ih, dw_hh, beta, 0, 1)
        _add_weight_gradients_in_place(d_gates, x[:, ih_whole:], h_seq[:, hh_whole:], h0[:, hh_whole:], reverse,
                                       dw_ih[:, ih_whole:], dw_hh[:, hh_whole:], beta, n_parts)
    else:  # the arrays themselves: their column slices type as non-contiguous, slower code (a training
        # call of L10 N1 H20, in-process A/B against 0156653: 0.96-0.98x with the slices, 0.99-1.01x without)
        _add_weight_gradients_in_place(d_gates, x, h_seq, h0, reverse, dw_ih, dw_hh, beta, n_parts)


@njit(**JIT_OPTIONS)
def _add_weight_gradients_in_place(d_gates, x, h_seq, h0, reverse, dw_ih, dw_hh, beta, n_parts):
    """dw_ih and dw_hh as ``add_weight_gradients`` says, every product by ``add_weight_gradient`` (d_gates
    read in place)."""
    rows, batch = d_gates.shape[0], h0.shape[0]
    add_weight_gradient(d_gates, x, dw_ih, beta, n_parts)
    later, earlier = (0, batch) if reverse else (batch, 0)
    first = rows - batch if reverse else 0
    add_weight_gradient(d_gates[later:later + rows - batch], h_seq[earlier:earlier + rows - batch], dw_hh, beta,
                        n_parts)
    if dw_hh.shape[1] > 0 and not _product_is_zero(d_gates[first:first + batch], h0):
        add_weight_gradient(d_gates[first:first + batch], h0, dw_hh, 1.0, n_parts)


@njit(**JIT_OPTIONS)
def add_input_gradient(d_gates, w_ih, dx, beta, n_parts):
    """dx = d_gates @ w_ih + beta * dx (beta 0 or 1): d_gates (rows, 4*padded) padded gate layout, w_ih
    (4*hidden, input_size), dx (rows, input_size) C-contiguous.  Whole panels of dx's columns on packed
    w_ih where ``packs_gradients``, the rest as one product (``matmul``)."""
    padded = d_gates.shape[1] // NUM_GATES
    width = PANEL_VECTORS * lanes_of(d_gates[0])
    whole = dx.shape[1] - dx.shape[1] % width if packs_gradients(d_gates.shape[0]) else 0
    if whole > 0:
        packed_ih = empty_aligned((whole // width, d_gates.shape[1], width), d_gates)
        pack_columns(w_ih, packed_ih)
        gemm_packed_rows(d_gates, packed_ih, dx, beta != 0.0, n_parts)
    if whole == 0:  # the arrays themselves, as in ``add_weight_gradients``
        matmul(d_gates, in_gate_layout(w_ih, padded), dx, False, False, beta, n_parts)
    elif whole < dx.shape[1]:
        matmul(d_gates, in_gate_layout(w_ih, padded)[:, whole:], dx[:, whole:], False, False, beta, n_parts)


@njit(**JIT_OPTIONS)
def lstm_layer_backward(x, w_ih, w_hh, w_hr, h0, c0, out, out_col, gates, c_seq, h_cell_seq,
                        reverse, plan, d_out, dh_n, dc_n, dh, dc, dh_cell, dh_seq,
                        dx, dx_beta, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dw_beta):
    """Backward pass of ``lstm_layer_forward`` (training mode) for one layer and direction.

    Forward inputs and saved state, as given to ``lstm_layer_forward``:
      x (seq_len, batch, input_size); w_ih (4*hidden, input_size); w_hh (4*hidden, state);
      w_hr (proj_size, hidden) or (0, 0); h0 (batch, state); c0 (batch, hidden);
      out (seq_len, batch, >= out_col + state) forward outputs;
      gates (seq_len, batch, 4*padded) activations in the padded gate layout, overwritten
      with the gate gradients; c_seq, h_cell_seq (seq_len, batch, hidden) (h_cell_seq unused
      without projection).
    plan: as for ``lstm_layer_forward``.
    Upstream gradients: d_out like out (columns out_col:out_col + state are read);
      dh_n (batch, state); dc_n (batch, hidden).
    Work space: dh (batch, state); dc, dh_cell (batch, hidden); dh_seq (seq_len, batch, state)
      with projection, else unused.
    Results: dx (seq_len, batch, input_size) = d_gates @ w_ih + dx_beta * dx;
      dh0 (batch, state); dc0 (batch, hidden); dw_ih, dw_hh, db_ih, db_hh ((4*hidden,), or (0,)
      without bias; both get the bias gradient), dw_hr (like w_hr, (0, 0) without projection)
      = their gradient + dw_beta * themselves (dw_beta 1 accumulates, 0 overwrites).
    """
    # The arguments as ``borrowed`` views, as in ``lstm_layer_forward``.
    x, w_ih, w_hh, w_hr, h0, c0, out, gates, c_seq, h_cell_seq = borrowed(
        (x, w_ih, w_hh, w_hr, h0, c0, out, gates, c_seq, h_cell_seq))
    d_out, dh_n, dc_n, dh, dc, dh_cell, dh_seq = borrowed((d_out, dh_n, dc_n, dh, dc, dh_cell, dh_seq))
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = borrowed((dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr))
    n_parts, together, by_batch, pack_weights = plan
    seq_len, batch = x.shape[0], x.shape[1]
    state = h0.shape[1]
    gate_columns = gates.shape[2]
    lanes = lanes_of(gates[0, 0])
    width = PANEL_VECTORS * lanes  # columns per panel
    packing = pack_weights and gate_columns % width == 0  # as the forward did
    projecting = w_hr.shape[0] > 0
    # Threads that split the batch each pack their own copy of the weights (``_backward_steps_by_batch``).
    copies = n_parts if by_batch else 1
    hh_width = state_panel_width(state, lanes)
    packed_hh_copies = empty_aligned((copies, (state + hh_width - 1) // hh_width if packing else 0, gate_columns,
                                      hh_width), gates)
    packed_hh = packed_hh_copies[0]
    # Threads that split the batch, or that can meet at a barrier, pack their own panels (below);
    # otherwise pack here.
    in_region = packing and n_parts > 1 and (together or by_batch)
    if packing and not in_region:
        pack_columns(w_hh, packed_hh)
    # d_gates @ w_hh, the gradient flowing into the previous step (padded to whole panels)
    dh_next = empty_aligned((batch, packed_hh.shape[0] * hh_width if packing else state), gates)
    dh_next[:, :state] = dh_n
    dc[:, :] = dc_n
    block = width if packing else PART_BLOCK
    d_out_cols = d_out[:, :, out_col:out_col + state]
    if n_parts > 1 and by_batch:
        _backward_steps_by_batch(reverse, gates, c_seq, c0, w_hh, packed_hh_copies, w_hr, d_out_cols, dh, dc, dh_cell,
                                 dh_seq, dh_next, n_parts, together, in_region)
    elif not (n_parts > 1 and together and _backward_steps_together(
            reverse, gates, c_seq, c0, w_hh, packed_hh, w_hr, d_out_cols, dh, dc, dh_cell, dh_seq, dh_next,
            block, n_parts, in_region)):
        if in_region:
            pack_columns(w_hh, packed_hh)
        _backward_steps(reverse, 0, batch, gates, c_seq, c0, w_hh, packed_hh, w_hr, d_out_cols, dh, dc, dh_cell,
                        dh_seq, dh_next, block, n_parts)
    dh0[:, :] = dh_next[:, :state]
    dc0[:, :] = dc

    rows = seq_len * batch
    d_gates = gates.reshape((rows, gate_columns))
    # h_{t-1} of every step is the output row of the step before it (h0 for the first step).
    h_seq = out.reshape((rows, out.shape[2]))[:, out_col:out_col + state]
    add_weight_gradients(d_gates, x.reshape((rows, x.shape[2])), h_seq, h0, reverse, dw_ih, dw_hh, dw_beta, n_parts)
    if db_ih.shape[0] > 0:
        bias_rows = np.zeros((gate_columns, 1), gates.dtype)
        if n_parts > 1:
            column_sums_into_parallel(bias_rows[:, 0], d_gates, n_parts)
        else:
            _column_sums_into(bias_rows[:, 0], d_gates, 0, gate_columns)
        for db in (db_ih, db_hh):
            add_from_padded_rows(bias_rows, db.reshape((db.shape[0], 1)), dw_beta != 0.0)
    if projecting:
        matmul(dh_seq.reshape((rows, state)), h_cell_seq.reshape((rows, h_cell_seq.shape[2])),
               dw_hr, True, False, dw_beta, n_parts)
    add_input_gradient(d_gates, w_ih, dx.reshape((rows, dx.shape[2])), dx_beta, n_parts)
