"""Forward pass of one LSTM layer in one direction, compiled with Numba.

Gates are kept in the padded gate layout of ``packed.py`` (PyTorch's i, f, g,
o blocks, each padded to whole panels).  Per layer and direction:

1. the weights are rearranged once: w_hh repacked (``pack_gate_rows``) so that
   every step's small product streams it contiguously from cache (by the
   threads of the time loop's parallel region: each packs the panels it reads
   where they can meet at a barrier, or its own copy of all of them where they
   split the batch), w_ih repacked too (or, where BLAS projects the inputs,
   its rows put in the padded gate layout); a model whose weights never change
   (``nblstm.freeze``) has them packed before its calls, once for all of them
   (``new_packed_weights``, ``pack_layer_weights``);
2. the input projection ``x_t @ w_ih.T`` of a block of time steps is one
   large matrix product (the packed product, its rows split between the
   threads, ``projects_packed``; BLAS with threads on machines without
   AVX-512; the whole sequence in training, a fixed-size block in inference,
   so memory does not grow with seq_len); in a short call that packs its
   weights, the threads that split the units each pack their units' part of
   w_ih and project their units' inputs in the time loop's region
   (``projects_in_threads``);
3. a compiled loop over time in which each thread owns a range of hidden
   units (whole panels; where the threads do not divide the panels, one
   panel is shared by batch rows, ``unit_share``): it adds
   ``h_{t-1} @ w_hh.T`` to the four gate blocks of its units, then applies
   the fused gate math
   ``c_t = f * c_{t-1} + i * g``, ``h_t = o * tanh(c_t)``
   (with a projection, ``h_t = w_hr @ (o * tanh(c_t))`` in a second parallel
   region).  Threads never write the same element, so there are no races.

Short problems (the plan's ``pack_weights``, from ``packed.packs_weights``:
few time steps for their batch and weights, as LSTMCell's inference steps) skip
the repacking and the padding, which would cost more than they save: their
gates are in PyTorch's layout and every product is a plain one (``blas.gemm``).

All arrays are preallocated by the caller and indexed by time step, so the
reverse direction runs the same loop backwards in time.
"""
import numpy as np
from numba import njit, prange

from .._config import JIT_OPTIONS, PARALLEL_JIT_OPTIONS, STEP_JIT_OPTIONS
from ..params import NUM_GATES
from .activations import sigmoid, tanh
from .barrier import BARRIER_STATE_SIZE, arrive_together, wait_for_all
from .blas import LOOPS_MAX_ROWS, gemm
from .packed import gemm_packed, gemm_packed_step, pack_gate_rows, to_padded_rows
from .parallel import (PART_BLOCK, empty_aligned, gemm_packed_rows, grid_share, matmul, part_range, share_first_rows,
                       share_segment, shares_split_blocks)
from .simd import lanes_of
from .tiles import PANEL_VECTORS, TILE_ROWS
from .views import borrowed, row_of

# Threads that split the batch project their own rows' inputs with packed w_ih up to this input size,
# rather than in one BLAS product split between them before: no parallel region and no BLAS calls
# of its own (measured on 2 cores of a Xeon, forward, alternating processes: L10 N8 H128 input 32
# 0.14-0.16 -> 0.13-0.145 ms, L100 N64 H128 input 64 6.2-6.7 -> 5.5-6.3 ms; even at input 128 and 256;
# 0.75x at L100 N8 input 512 hidden 256, where packed w_ih (2 MiB) no longer stays in cache).  On an
# AMD EPYC, where OpenBLAS runs its AVX2 (Haswell) kernels, in-process A/B against 64, forward: L100
# N64 I256 H256 22.6 -> 15.7 ms, L100 N16 I256 H64 1.56x, L10 N8 I128 H128 1.29x, L100 N8 I512 H256
# 1.24x (so 512 there), L10 N64 I256 H256 0.90x (each thread packs 1 MiB of w_ih for 10 steps);
# training L100 N64 I256 H256 72.1 -> 65.5 ms, L100 N16 I256 H64 1.13x.  On AVX-512, where the
# alternative is one packed w_ih shared by the threads (``projects_packed``), 128: inference on an AMD
# EPYC (Zen 5), two processes a setting, alternated, shared / own (ms): L1000 N8 I256 H256 22.1-22.4 /
# 23.9-24.8, L100 N8 I256 H256 2.19-2.45 / 2.61-2.62, L100 N64 I256 H256 15.5-16.1 / 16.0-16.3; at input
# 128 and below own rows as fast or faster (L100 N16 I128 H128 1.15-1.18 / 1.10-1.16, L100 N64 I64 H256
# 10.2-10.7 / 10.0-10.3).
PROJECT_BY_BATCH_MAX_INPUT = 128 if TILE_ROWS > 1 else 256
# Calls of up to this many (time, batch) rows project their inputs on w_ih as it is (its rows in the
# padded gate layout), not packed, even where the recurrent weights are: packing w_ih costs more
# than so few rows save.  Time packed / plain, the projection with its packing, float32, hidden 128
# and 512, input 32-512 (one thread; two, where one packs and both project): 1-4 rows 0.8-2.9x
# (1.4-6.3x), 8 rows 0.5-1.3x (1.0-2.6x), 16 rows 0.45-0.9x (0.7-1.8x).  Products of so few rows
# never call BLAS (``blas.LOOPS_MAX_ROWS``).
PLAIN_INPUT_MAX_ROWS = LOOPS_MAX_ROWS
# Threads that split the hidden units share a panel by batch rows where they do not divide the panels
# (``unit_share``) from this many steps: the thread without the panel's first rows waits for it to be
# packed and reads it from the other core's cache, which only later steps repay (measured on 2 cores,
# the time loop alone, both splits alternated in one process, batch 8: hidden 320 0.82x at 2 steps,
# 1.01x at 8, 1.04x at 12, 1.11x at 100; hidden 448 0.96x at 4, 1.01x at 8, 1.03x at 16, 1.03-1.08x at
# 100; hidden 192 1.06x at 16, 1.12x at 100; at batch 2-6, 1 or 2 rows a thread, 0.99-1.05x at 100).
SHARE_PANEL_MIN_STEPS = 8
# Threads that split the units in one region, in a call that packs its weights, pack w_ih's panels of their
# units there and project their units' inputs (``projects_in_threads``) up to this many (time, batch) rows:
# otherwise one thread packs w_ih before the region and the threads split the product's rows, each reading
# every panel just written in the other core's cache.  Measured on 2 cores of an AMD EPYC (Zen 4), plan
# (2, True, False, True) forced, processes of both versions alternated 5x: the cores near each other (77-98 ns
# meetings), L3 N4 H128 (12 rows) 1.16x, L6 N4 H128 1.12x, L10 N1 H128 1.16x, L10 N4 H128 1.13x, L10 N8 H256
# (80 rows) 1.02x, L100 N4 H128 (not in this path) 1.00x; far apart (320-350 ns), 1.25-1.28x, 1.18x, 1.25x,
# 1.15-1.17x and 1.06-1.07x; 128 rows none (L32 N4 H128 0.98-1.03x, L16 N8 H256 1.03-1.07x), 256-400 rows
# 0.92-0.95x (L64 N4, L100 N4 H128: each thread's gate columns of a block of steps then fill half of its
# cache's sets).  With weights packed before the call (``nblstm.freeze``) 0.96-1.06x at 12-80 rows.  Training
# (rules' plans) L6 and L10 N4 H128 1.04x.
REGION_PROJECTION_MAX_ROWS = 96


@njit(**JIT_OPTIONS)
def projects_by_batch(n_parts, by_batch, input_size):
    """Whether threads that split the batch project their own rows' inputs (with packed w_ih)."""
    return n_parts > 1 and by_batch and input_size <= PROJECT_BY_BATCH_MAX_INPUT


@njit(**JIT_OPTIONS)
def projects_packed(n_parts, by_batch, input_size, rows):
    """Whether the threads project the inputs of (time, batch) ``rows`` with one packed w_ih, the rows
    split between them (``gemm_packed_rows``), rather than in a plain product: from more than
    PLAIN_INPUT_MAX_ROWS rows, on one thread always, on several where the register tiles hold rows
    of four (AVX-512) and threads that split the batch do not project their own rows
    (``projects_by_batch``).  Measured on 2 cores of an AMD EPYC (Zen 5, AVX-512), 6400
    rows, float32: 470 GFLOP/s against OpenBLAS's 247 (its AVX2 kernels); forward calls, in-process
    A/B against BLAS: L100 N64 I512 H1024 1.32x, L100 N8 I512 H256 1.53x, L10 N64 I512 H512 1.43x,
    L100 N64 I128 H512 1.20x."""
    return rows > PLAIN_INPUT_MAX_ROWS and (
        n_parts == 1 or (TILE_ROWS > 1 and not projects_by_batch(n_parts, by_batch, input_size)))


@njit(**JIT_OPTIONS)
def projects_in_threads(plan, prepacked, packs_ih, rows):
    """Whether the threads that split each step's units in one region (``_run_steps_together``) pack w_ih's
    panels of their units there and project their units' inputs (``project_share``), rather than one thread
    packing all of it before and the threads splitting the rows of one product: in a call that packs the
    weights (not ``prepacked``) with packed w_ih (``packs_ih``), of up to REGION_PROJECTION_MAX_ROWS
    (time, batch) ``rows``."""
    n_parts, together, by_batch, _ = plan
    return (packs_ih and n_parts > 1 and together and not by_batch and not prepacked
            and rows <= REGION_PROJECTION_MAX_ROWS)


def calls_blas(plan, input_size, projecting, rows):
    """Whether ``lstm_layer_forward`` calls BLAS with this plan, layer input size, projection (or none)
    and (time, batch) rows: not with up to LOOPS_MAX_ROWS rows, whose plain products are loops, nor
    when it runs on packed weights, projects the inputs with them (``projects_by_batch``,
    ``projects_packed``), and no projection follows the cell."""
    n_parts, _, by_batch, pack_weights = plan
    packed_inputs = (projects_by_batch(n_parts, by_batch, input_size)
                     or projects_packed(n_parts, by_batch, input_size, rows))
    return rows > LOOPS_MAX_ROWS and not (packed_inputs and pack_weights and not projecting)


@njit(**STEP_JIT_OPTIONS)
def time_index(step, seq_len, reverse):
    """Time index visited at loop step ``step`` (the reverse direction walks backwards)."""
    return seq_len - 1 - step if reverse else step


@njit(**STEP_JIT_OPTIONS)
def gate_slices(row, padded, start, stop):
    """The i, f, g, o entries of hidden units [start, stop) in a (4*padded,) row of gates.

    Kernels loop over these zero-based slices rather than over range(start, stop):
    with a non-negative loop index Numba emits no negative-index wraparound, which
    lets LLVM vectorise the gate math.
    """
    return (row[start:stop], row[padded + start:padded + stop],
            row[2 * padded + start:2 * padded + stop], row[3 * padded + start:3 * padded + stop])


@njit(**STEP_JIT_OPTIONS)
def gate_math_part(gates_t, bias, c_prev, c_t, h_dst, h_dst_col, start, stop):
    """The fused gate math of one step for the gate columns of units [start, stop).

    gates_t:  (batch, 4*padded) pre-activations less the bias, padded gate layout;
              on return the activations i, f, g, o of those units
    (every array 2-D with contiguous rows; a block of batch rows of larger arrays will do)
    bias:     (4*padded,) b_ih + b_hh, padded gate layout
    c_prev:   (batch, hidden) previous cell state
    c_t:      (batch, hidden) receives the new cell state (not c_prev: vectorisation needs them apart)
    h_dst:    (batch, >= h_dst_col + hidden) receives o * tanh(c_t) in columns h_dst_col + j
    stop may pass hidden (up to padded): the activations then run over the padding columns too,
    so that with whole vectors of units LLVM leaves no scalar remainder of four transcendentals
    per unit; the cell state and output cover the units below hidden.
    One loop a gate: LLVM checks at run time, before each vectorised loop, that the arrays it writes
    overlap none it reads, and one loop over all four gates and their biases took 44 comparisons a row,
    four loops 2 each (one thread, batch 64, the gate math alone: 1.78 -> 1.45 ns a unit at hidden 16,
    1.12 -> 1.08 at 32, 0.91 -> 0.86 at 64, 0.80 -> 0.77 at 128).
    """
    padded = gates_t.shape[1] // NUM_GATES
    units = min(stop, c_t.shape[1]) - start
    i_bias, f_bias, g_bias, o_bias = gate_slices(bias, padded, start, stop)
    for b in range(gates_t.shape[0]):
        i_row, f_row, g_row, o_row = gate_slices(row_of(gates_t, b), padded, start, stop)
        for j in range(stop - start):
            i_row[j] = sigmoid(i_row[j] + i_bias[j])
        for j in range(stop - start):
            f_row[j] = sigmoid(f_row[j] + f_bias[j])
        for j in range(stop - start):
            g_row[j] = tanh(g_row[j] + g_bias[j])
        for j in range(stop - start):
            o_row[j] = sigmoid(o_row[j] + o_bias[j])
        c_prev_row, c_row = row_of(c_prev, b)[start:start + units], row_of(c_t, b)[start:start + units]
        h_row = row_of(h_dst, b)[h_dst_col + start:h_dst_col + start + units]
        for j in range(units):
            c = f_row[j] * c_prev_row[j] + i_row[j] * g_row[j]
            c_row[j] = c
            h_row[j] = o_row[j] * tanh(c)


@njit(**STEP_JIT_OPTIONS)
def recurrent_product(h_prev, w_hh, packed_hh, gates_t, start, stop, descending):
    """gates_t[:, gate columns of units [start, stop)] += h_prev @ w_hh.T for those columns.

    With packed weights (packed_hh from ``pack_gate_rows``) one packed product over every
    panel, or, for a part of the units (whole panels), one per gate block; without (packed_hh
    empty, gates_t in PyTorch's layout) plain products, one for all four gates when the part
    is every unit.
    h_prev: (batch, state); w_hh: (4*hidden, state); gates_t: (batch, 4*padded).
    ``descending`` visits the packed weights backwards (see ``gemm_packed``).
    """
    hidden, padded = w_hh.shape[0] // NUM_GATES, gates_t.shape[1] // NUM_GATES
    if packed_hh.shape[0] > 0 and start == 0 and stop == padded:
        gemm_packed_step(h_prev, packed_hh, gates_t, True, 0, packed_hh.shape[0], descending)
    elif packed_hh.shape[0] > 0:
        width = packed_hh.shape[2]
        blocks = packed_hh.shape[0] // NUM_GATES
        for visit in range(NUM_GATES):
            gate = NUM_GATES - 1 - visit if descending else visit
            gemm_packed_step(h_prev, packed_hh, gates_t, True, gate * blocks + start // width,
                             gate * blocks + stop // width, descending)
    elif start == 0 and stop >= hidden:
        gemm(h_prev, w_hh, gates_t, False, True, 1.0)
    else:
        for gate in range(NUM_GATES):
            gemm(h_prev, w_hh[gate * hidden + start:gate * hidden + stop],
                 gates_t[:, gate * padded + start:gate * padded + stop], False, True, 1.0)


@njit(**STEP_JIT_OPTIONS)
def adds_recurrent_product(step, h0):
    """Whether loop step ``step`` adds h_prev @ w_hh.T: not the first from a zero initial state (as
    when the caller gives none), whose product is zero: a one-step call then never reads w_hh."""
    return step > 0 or h0.any()


@njit(**STEP_JIT_OPTIONS)
def cell_forward_part(gates_t, bias, h_prev, w_hh, packed_hh, c_prev, c_t, h_dst, h_dst_col, start, stop, step,
                      adds_product):
    """Time step ``step`` for hidden units [start, stop): with ``adds_product``, add h_prev @ w_hh.T
    to their gates (see ``recurrent_product``; odd steps read the weights backwards), then the gate
    math."""
    if adds_product:
        recurrent_product(h_prev, w_hh, packed_hh, gates_t, start, stop, step % 2 == 1)
    gate_math_part(gates_t, bias, c_prev, c_t, h_dst, h_dst_col, start, stop)


@njit(**JIT_OPTIONS)
def unit_share(part, n_parts, gates_t, block, row_tile):
    """The ``grid_share`` of thread ``part`` when threads split the hidden units: blocks of ``block`` units
    by the batch rows of gates_t (batch, 4*padded), rows cut in tiles of ``row_tile``."""
    padded = gates_t.shape[1] // NUM_GATES
    return grid_share(part, n_parts, -(-padded // block), gates_t.shape[0], row_tile)


@njit(**JIT_OPTIONS)
def cell_forward_share(gates_t, bias, h_prev, w_hh, packed_hh, c_prev, c_t, h_dst, h_dst_col, share, block, step,
                       adds_product):
    """cell_forward_part over a thread's ``unit_share``, segment by segment (``share_segment``; backwards
    on odd steps, which read the weights backwards)."""
    padded = gates_t.shape[1] // NUM_GATES
    for visit in range(3):
        segment = 2 - visit if step % 2 == 1 else visit
        start, stop, row_start, row_stop = share_segment(share, segment, gates_t.shape[0], block, padded)
        if stop > start and row_stop > row_start:
            rows = slice(row_start, row_stop)
            cell_forward_part(gates_t[rows], bias, h_prev[rows], w_hh, packed_hh, c_prev[rows], c_t[rows],
                              h_dst[rows], h_dst_col, start, stop, step, adds_product)


@njit(**PARALLEL_JIT_OPTIONS)
def cell_forward_parallel(gates_t, bias, h_prev, w_hh, packed_hh, c_prev, c_t, h_dst, h_dst_col, block, row_tile,
                          n_parts, step, adds_product):
    """cell_forward_part over every hidden unit and batch row, split between ``n_parts`` threads (``unit_share``)."""
    for part in prange(n_parts):
        cell_forward_share(gates_t, bias, h_prev, w_hh, packed_hh, c_prev, c_t, h_dst, h_dst_col,
                           unit_share(part, n_parts, gates_t, block, row_tile), block, step, adds_product)


@njit(**JIT_OPTIONS)
def in_gate_layout(w, padded):
    """w (4*hidden, k) with its gate rows in the padded gate layout (4*padded, k): w itself without
    padding, else a copy with zero rows for the padding units."""
    if padded * NUM_GATES == w.shape[0]:
        return w
    rows = np.empty((NUM_GATES * padded, w.shape[1]), w.dtype)
    to_padded_rows(w, rows)
    return rows


@njit(**JIT_OPTIONS)
def gate_bias(b_ih, b_hh, hidden, padded):
    """b_ih + b_hh in the padded gate layout, (4*padded,); b_ih, b_hh (4*hidden,), or (0,) without
    bias: zeros."""
    bias = empty_aligned((NUM_GATES * padded,), b_ih)
    bias[:] = 0.0
    if b_ih.shape[0] > 0:
        for gate in range(NUM_GATES):
            block = bias[gate * padded:gate * padded + hidden]
            b_ih_block, b_hh_block = b_ih[gate * hidden:(gate + 1) * hidden], b_hh[gate * hidden:(gate + 1) * hidden]
            for unit in range(hidden):
                block[unit] = b_ih_block[unit] + b_hh_block[unit]
    return bias


@njit(**STEP_JIT_OPTIONS)
def step_arrays(step, seq_len, reverse, h0, c0, c_seq, h_cell_seq, out, out_col, projecting):
    """What loop step ``step`` reads and writes: (t, h_prev, c_prev, c_t, h_dst, h_dst_col).

    h_dst, h_dst_col: where o * tanh(c_t) goes: the step's output columns, or with a projection
    the work space it is projected from.
    """
    t = time_index(step, seq_len, reverse)
    c_slots = c_seq.shape[0]
    if step == 0:
        h_prev = h0
        c_prev = c0
    else:
        t_prev = time_index(step - 1, seq_len, reverse)
        h_prev = out[t_prev][:, out_col:out_col + h0.shape[1]]
        c_prev = c_seq[t_prev % c_slots]
    if projecting:
        h_dst, h_dst_col = h_cell_seq[t % c_slots], 0
    else:
        h_dst, h_dst_col = out[t], out_col
    return t, h_prev, c_prev, c_seq[t % c_slots], h_dst, h_dst_col


@njit(**JIT_OPTIONS)
def _run_steps(step0, step1, reverse, rows_start, rows_stop, gates, bias, w_hh, packed_hh, w_hr, h0, c0, c_seq,
               h_cell_seq, out, out_col, block, row_tile, n_parts):
    """Loop steps [step0, step1) for batch rows [rows_start, rows_stop), one parallel region per
    step (or none with one part; ``unit_share`` with blocks of ``block`` units, rows in tiles of
    ``row_tile``).  The loop works on ``borrowed`` views: no reference counting."""
    rows = slice(rows_start, rows_stop)
    gates, h0, c0, c_seq, h_cell_seq, out = borrowed((gates[:, rows], h0[rows], c0[rows], c_seq[:, rows],
                                                      h_cell_seq[:, rows], out[:, rows]))
    bias, w_hh, packed_hh, w_hr = borrowed((bias, w_hh, packed_hh, w_hr))
    seq_len, state, padded = out.shape[0], h0.shape[1], gates.shape[2] // NUM_GATES
    projecting = w_hr.shape[0] > 0
    for step in range(step0, step1):
        t, h_prev, c_prev, c_t, h_dst, h_dst_col = step_arrays(step, seq_len, reverse, h0, c0, c_seq,
                                                               h_cell_seq, out, out_col, projecting)
        gates_t = gates[t % gates.shape[0]]
        adds_product = adds_recurrent_product(step, h0)
        if n_parts > 1:
            cell_forward_parallel(gates_t, bias, h_prev, w_hh, packed_hh, c_prev, c_t, h_dst, h_dst_col,
                                  block, row_tile, n_parts, step, adds_product)
        else:
            cell_forward_part(gates_t, bias, h_prev, w_hh, packed_hh, c_prev, c_t, h_dst, h_dst_col, 0, padded,
                              step, adds_product)
        if projecting:
            matmul(h_dst, w_hr, out[t][:, out_col:out_col + state], False, True, 0.0, n_parts)


@njit(**PARALLEL_JIT_OPTIONS)
def _run_steps_by_batch(step0, step1, reverse, x, w_ih, packed_ih, gates, bias, w_hh, packed_hh, w_hr, h0, c0, c_seq,
                        h_cell_seq, out, out_col, n_parts, together, packs):
    """Loop steps [step0, step1) with the batch split between threads: rows of a batch never meet, so
    each thread runs its rows (whole register tiles) through every step on its own, on its own copy
    of the packed weights, packed_hh[part] (and packed_ih[part]), which it first packs itself with
    ``packs``: threads that shared the packing would each read half of their weights from the other
    core's cache, and at the next call write panels the other core holds.  With packed_ih (not
    empty), each thread also projects its rows of those steps' inputs, x_t @ w_ih.T, itself.
    Where every part runs on its own thread (``together``), the threads first meet
    (``arrive_together``), so that one woken on the other's core moves away before either works;
    their rows never meet, so a meeting called off changes nothing."""
    barrier = np.zeros(BARRIER_STATE_SIZE, np.int64)
    for part in prange(n_parts):
        if together:
            arrive_together(barrier, n_parts)
        packed_hh_part, packed_ih_part = packed_hh[part], packed_ih[part]
        if packs:
            pack_gate_rows(w_hh, packed_hh_part)
            if packed_ih_part.shape[0] > 0:
                pack_gate_rows(w_ih, packed_ih_part)
        rows_start, rows_stop = part_range(part, n_parts, out.shape[1], TILE_ROWS)
        if packed_ih_part.shape[0] > 0:
            for step in range(step0, step1):
                t = time_index(step, out.shape[0], reverse)
                gemm_packed(x[t], packed_ih_part, gates[t % gates.shape[0]], False, 0, packed_ih_part.shape[0],
                            rows_start, rows_stop)
        _run_steps(step0, step1, reverse, rows_start, rows_stop, gates, bias, w_hh, packed_hh_part, w_hr, h0, c0,
                   c_seq, h_cell_seq, out, out_col, 1, 1, 1)


@njit(**JIT_OPTIONS)
def project_share(x_block, packed_ih, gates_block, share, block, batch):
    """gates_block[rows, columns of the share] = x_block @ w_ih.T for one thread's ``unit_share`` of a block of
    steps: x_block (steps * batch, input_size) and gates_block (steps * batch, 4*padded), their (time, batch)
    rows; packed_ih from ``pack_gate_rows``, panels of ``block`` columns."""
    padded = gates_block.shape[1] // NUM_GATES
    per_gate = packed_ih.shape[0] // NUM_GATES
    for segment in range(3):
        start, stop, row_start, row_stop = share_segment(share, segment, batch, block, padded)
        if stop <= start or row_stop <= row_start:
            continue
        for gate in range(NUM_GATES):
            first, last = gate * per_gate + start // block, gate * per_gate + stop // block
            if row_start == 0 and row_stop == batch:  # every row of the block's steps in one product
                gemm_packed(x_block, packed_ih, gates_block, False, first, last, 0, x_block.shape[0])
            else:  # a panel shared by rows: the share's rows of each step
                for row in range(0, x_block.shape[0], batch):
                    gemm_packed(x_block, packed_ih, gates_block, False, first, last, row + row_start,
                                row + row_stop)


@njit(**PARALLEL_JIT_OPTIONS)
def _run_steps_together(step0, step1, reverse, gates, bias, w_hh, packed_hh, w_hr, h0, c0, c_seq, h_cell_seq,
                        out, out_col, block, row_tile, n_parts, packs, x_block, gates_block, w_ih, packed_ih,
                        projects):
    """Loop steps [step0, step1) in one parallel region: each thread computes its share of units (and
    rows, ``unit_share``) of every step and the threads meet at a barrier after each (see
    ``barrier``).  With ``packs``, each thread first packs the panels of w_hh it will read (its units
    of every gate; a panel that threads share by rows, the thread with its first row, and they meet
    before reading) into packed_hh: in parallel, and into the cache of the core that reads them.
    With ``projects`` too (``projects_in_threads``), it packs its panels of w_ih likewise into packed_ih
    and projects its share of the inputs, x_block (the block's (time, batch) rows, (rows, input_size)),
    into gates_block (the same rows of ``gates``) before the steps (``project_share``).
    Returns False, having done nothing, when the threads did not start together.  Works on
    ``borrowed`` views."""
    gates, bias, w_hh, packed_hh, w_hr = borrowed((gates, bias, w_hh, packed_hh, w_hr))
    x_block, gates_block, w_ih, packed_ih = borrowed((x_block, gates_block, w_ih, packed_ih))
    h0, c0, c_seq, h_cell_seq, out = borrowed((h0, c0, c_seq, h_cell_seq, out))
    seq_len, padded = out.shape[0], gates.shape[2] // NUM_GATES
    projecting = w_hr.shape[0] > 0
    barrier = np.zeros(BARRIER_STATE_SIZE, np.int64)
    started = np.zeros(n_parts, np.bool_)
    for part in prange(n_parts):
        started[part] = arrive_together(barrier, n_parts)
        if started[part]:
            share = unit_share(part, n_parts, gates[0], block, row_tile)
            proj_start, proj_stop = part_range(part, n_parts, w_hr.shape[0])
            if packs:
                first, stop = share_first_rows(share)
                pack_gate_rows(w_hh, packed_hh, first * block, stop * block)
                if projects:
                    pack_gate_rows(w_ih, packed_ih, first * block, stop * block)
                if shares_split_blocks(n_parts, padded // block, out.shape[1], row_tile):
                    wait_for_all(barrier, n_parts)
            if projects:
                project_share(x_block, packed_ih, gates_block, share, block, out.shape[1])
            for step in range(step0, step1):
                t, h_prev, c_prev, c_t, h_dst, h_dst_col = step_arrays(step, seq_len, reverse, h0, c0, c_seq,
                                                                       h_cell_seq, out, out_col, projecting)
                cell_forward_share(gates[t % gates.shape[0]], bias, h_prev, w_hh, packed_hh, c_prev, c_t, h_dst,
                                   h_dst_col, share, block, step, adds_recurrent_product(step, h0))
                wait_for_all(barrier, n_parts)
                if projecting:
                    gemm(h_dst, w_hr[proj_start:proj_stop],
                         out[t][:, out_col + proj_start:out_col + proj_stop], False, True, 0.0)
                    wait_for_all(barrier, n_parts)
    return started[0]


@njit(**JIT_OPTIONS)
def _packs(plan, gate_columns, width):
    """Whether a forward with ``plan`` runs on packed weights: it asks for them (``pack_weights``) and
    its rows of gate_columns padded gates are whole panels of ``width``."""
    return plan[3] and gate_columns % width == 0


@njit(**JIT_OPTIONS)
def new_packed_weights(seq_len, batch, input_size, state, reads_hh, plan, gate_columns, like):
    """The packed weights a layer's forward with ``plan`` runs on, allocated (not filled; ``like``'s
    dtype), for (seq_len, batch, input_size) input and gates of ``gate_columns`` columns; an array
    with no panels where the forward does not use it:

    packed_hh:         (copies, panels, state, width) w_hh: one copy, or one for each thread where
                       threads split the batch (each packs and reads its own, ``_run_steps_by_batch``);
                       no panels where the plan does not pack or no step reads w_hh (``reads_hh``
                       false: one step from a zero initial state, ``adds_recurrent_product``)
    packed_ih_by_rows: (copies, panels, input_size, width) w_ih for threads that split the batch and
                       project their own rows' inputs, when they are few (``projects_by_batch``)
    packed_ih:         (panels, input_size, width) one w_ih that serves every thread
                       (``projects_packed``): no BLAS call, whose own threads would wake up and spin
                       beside a serial loop, and on AVX-512 the packed product runs faster.  A call of
                       a few rows (``PLAIN_INPUT_MAX_ROWS``) projects on w_ih as it is.
    """
    n_parts, _, by_batch, _ = plan
    width = PANEL_VECTORS * lanes_of(like)  # columns per panel
    packing = _packs(plan, gate_columns, width)
    panels = gate_columns // width
    copies = n_parts if by_batch else 1
    packed_hh = empty_aligned((copies, panels if packing and reads_hh else 0, state, width), like)
    by_rows_ih = packing and projects_by_batch(n_parts, by_batch, input_size)
    packed_ih_by_rows = empty_aligned((copies, panels if by_rows_ih else 0, input_size, width), like)
    packs_ih = packing and projects_packed(n_parts, by_batch, input_size, seq_len * batch)
    packed_ih = empty_aligned((panels if packs_ih else 0, input_size, width), like)
    return packed_hh, packed_ih_by_rows, packed_ih


@njit(**JIT_OPTIONS)
def pack_layer_weights(w_ih, w_hh, packed_hh, packed_ih_by_rows, packed_ih):
    """Pack w_ih and w_hh into every array and copy of ``new_packed_weights``, for
    ``lstm_layer_forward`` to run on: weights that do not change, packed once for the calls of a
    plan and input shape, rather than at every call."""
    for copy in range(packed_hh.shape[0]):
        pack_gate_rows(w_hh, packed_hh[copy])
        pack_gate_rows(w_ih, packed_ih_by_rows[copy])
    pack_gate_rows(w_ih, packed_ih)


@njit(**JIT_OPTIONS)
def lstm_layer_forward(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, k, reverse, plan,
                       gates, c_seq, h_cell_seq, out, out_col, h_n, c_n, packed_hh_copies, packed_ih_copies, packed_ih):
    """Run one layer in one direction over the whole sequence.

    x:          (seq_len, batch, input_size) layer input, C-contiguous
    w_ih:       (4*hidden, input_size)
    w_hh:       (4*hidden, state)           state = proj_size or hidden
    b_ih, b_hh: (4*hidden,), or (0,) without bias
    w_hr:       (proj_size, hidden), or (0, 0) without projection
    h0, c0:     (L*D, batch, state), (L*D, batch, hidden) initial states of every layer and direction
    k:          this layer and direction (layer * D + direction): it starts from h0[k], c0[k]
                (whole arrays, not views: a view made for each call cost 0.06-0.09 us)
    reverse:    walk the sequence from the last time step to the first
    plan:       (n_parts, together, by_batch, pack_weights): threads to split the work between
                (1 runs serially); whether they split the batch (each thread runs its rows on its
                own) or each step's hidden units, and then whether they may run many steps in one
                parallel region, meeting at a barrier; whether to repack the weights (and pad
                the gates; ``packed.packs_weights``)
    gates:      (gate_slots, batch, 4*padded) work space in the padded gate layout
                (``packed.gate_columns``, the plan's); time t uses slot t % gate_slots.  With
                gate_slots == seq_len it keeps every step's activations for backward.
    c_seq:      (c_slots, batch, hidden) cell states, slot t % c_slots (c_slots: seq_len, or 2
                to keep only c_{t-1} and c_t)
    h_cell_seq: (c_slots, batch, hidden) o * tanh(c) before the projection; unused (may be
                (0, 0, 0)) without projection
    out:        (seq_len, batch, >= out_col + state) receives h_t in columns out_col:out_col + state
    h_n, c_n:   like h0, c0: h_n[k], c_n[k] receive the final states
    packed_hh_copies, packed_ih_copies, packed_ih: the weights packed before the call for this plan
                and these arrays' shapes (``new_packed_weights``' packed_hh, packed_ih_by_rows and
                packed_ih, filled by ``pack_layer_weights``: a model whose weights never change; a
                one-step call from zero states may be given a packed_hh it does not read), or arrays
                of no elements, for the kernel to pack the weights itself at every call.  One entry
                point for both: each compiles the whole layer (about a minute, per dtype).
    """
    # The arguments as ``borrowed`` views: the views and calls below would otherwise count references
    # with about 70 atomic adds a call (L10 N1 H20; 0.3 us).
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = borrowed((x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0))
    gates, c_seq, h_cell_seq, out, h_n, c_n = borrowed((gates, c_seq, h_cell_seq, out, h_n, c_n))
    packed_hh_copies, packed_ih_copies, packed_ih = borrowed((packed_hh_copies, packed_ih_copies, packed_ih))
    h0, c0, h_n, c_n = h0[k], c0[k], h_n[k], c_n[k]
    prepacked = packed_hh_copies.shape[0] > 0  # packed weights have a copy at least
    if not prepacked:
        packed_hh_copies, packed_ih_copies, packed_ih = new_packed_weights(
            x.shape[0], x.shape[1], x.shape[2], h0.shape[1], x.shape[0] > 1 or adds_recurrent_product(0, h0), plan,
            gates.shape[2], gates)
    n_parts, together, by_batch, _ = plan
    seq_len, batch = x.shape[0], x.shape[1]
    state = h0.shape[1]
    gate_slots = gates.shape[0]
    padded = gates.shape[2] // NUM_GATES
    width = PANEL_VECTORS * lanes_of(gates)  # columns per panel
    packing = _packs(plan, gates.shape[2], width)
    packed_hh = packed_hh_copies[0]
    by_rows_ih = packed_ih_copies.shape[1] > 0
    packs_ih = packed_ih.shape[0] > 0
    # Threads that split the batch, or that can meet at a barrier, pack their own panels of w_hh
    # (below); otherwise pack here.
    in_region = packing and n_parts > 1 and (together or by_batch) and not prepacked
    projects_in_region = projects_in_threads(plan, prepacked, packs_ih, seq_len * batch)
    if not prepacked:
        if not projects_in_region:  # else the threads pack it in the region
            pack_gate_rows(w_ih, packed_ih)
        if packing and not in_region:
            pack_gate_rows(w_hh, packed_hh)
    w_ih_rows = in_gate_layout(w_ih, padded) if not (packs_ih or by_rows_ih) else w_ih
    bias_rows = gate_bias(b_ih, b_hh, w_hh.shape[0] // NUM_GATES, padded)
    block = width if packing else PART_BLOCK
    # Threads that split the units, and not the panels evenly, share a panel by rows (``unit_share``)
    # in whole register tiles, where the batch has two and the call enough steps; else whole blocks.
    sharing = packing and batch >= 2 * TILE_ROWS and seq_len >= SHARE_PANEL_MIN_STEPS
    row_tile = TILE_ROWS if sharing else batch
    n_blocks = (seq_len + gate_slots - 1) // gate_slots
    for visit in range(n_blocks):
        t0 = (n_blocks - 1 - visit if reverse else visit) * gate_slots
        t1 = min(seq_len, t0 + gate_slots)
        x_block = x[t0:t1].reshape(((t1 - t0) * batch, x.shape[2]))
        gates_block = gates[:t1 - t0].reshape(((t1 - t0) * batch, gates.shape[2]))
        if packs_ih and not projects_in_region:
            gemm_packed_rows(x_block, packed_ih, gates_block, False, n_parts)
        elif not packs_ih and not by_rows_ih:
            matmul(x_block, w_ih_rows, gates_block, False, True, 0.0, n_parts)
        step0, step1 = (seq_len - t1, seq_len - t0) if reverse else (t0, t1)
        if n_parts > 1 and by_batch:
            _run_steps_by_batch(step0, step1, reverse, x, w_ih, packed_ih_copies, gates, bias_rows, w_hh,
                                packed_hh_copies, w_hr, h0, c0, c_seq, h_cell_seq, out, out_col, n_parts, together,
                                in_region)
            in_region = False
            continue
        if n_parts > 1 and together:
            together = _run_steps_together(step0, step1, reverse, gates, bias_rows, w_hh, packed_hh, w_hr, h0, c0,
                                           c_seq, h_cell_seq, out, out_col, block, row_tile, n_parts, in_region,
                                           x_block, gates_block, w_ih, packed_ih, projects_in_region)
            if together:  # packed_ih is whole now, for any later block
                in_region = projects_in_region = False
                continue
        if projects_in_region:  # the threads did not start together, and did nothing
            pack_gate_rows(w_ih, packed_ih)
            gemm_packed_rows(x_block, packed_ih, gates_block, False, n_parts)
            projects_in_region = False
        if in_region:
            pack_gate_rows(w_hh, packed_hh)
            in_region = False
        _run_steps(step0, step1, reverse, 0, batch, gates, bias_rows, w_hh, packed_hh, w_hr, h0, c0, c_seq,
                   h_cell_seq, out, out_col, block, row_tile, n_parts)
    t_last = time_index(seq_len - 1, seq_len, reverse)
    h_n[:, :] = out[t_last][:, out_col:out_col + state]
    c_n[:, :] = c_seq[t_last % c_seq.shape[0]]
